//! AFL++ target: the token verifier on any text where a token goes (header or query). A panic
//! is a finding, and so is an accepted token: nothing here was signed with the secret.

use chat_backend::auth::Verifier;
use chat_backend::config::Config;

fn main() {
    let config = Config {
        jwt_secret: "fuzzing-secret-never-used-to-sign".to_owned(),
        jwt_issuer: "kaha".to_owned(),
        ..Config::default()
    };
    let Ok(verifier) = Verifier::new(&config) else {
        return;
    };
    afl::fuzz!(|data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        assert!(verifier.verify(&text).is_err(), "accepted an unsigned token");
    });
}
