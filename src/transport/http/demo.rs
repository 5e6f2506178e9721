//! The browser demo: one dependency-free page embedded in the binary (`demo.html`), served at
//! `/` to browsers while `CHAT_DEMO` is on, and development tokens for it.
//!
//! Tokens are minted here only while the node signs with its built-in development secret: that
//! secret is public, so anyone can mint such tokens anyway and the endpoint gives nothing away.
//! With a real secret or a public key the page asks for a token instead.

use std::time::Duration;

use chat_actors::ids::UserId;
use chat_actors::protocol::Rejection;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, Uri};

use super::api::{Answer, ok_json, query};
use super::response::{Body, respond};
use crate::auth;
use crate::transport::state::Demo;

/// The page, as built into the binary.
const PAGE: &str = include_str!("demo.html");

/// How long a demo token lasts.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

impl Demo {
    /// A development token for `?user=UUID`.
    pub fn token(&self, uri: &Uri) -> Answer {
        let Some(config) = &self.dev_tokens else {
            return Err(Rejection::not_found(
                "this node has a real token secret: demo tokens exist only with the development \
                 secret; paste a token made with `chat-backend token --user ID`",
            ));
        };
        let q = query(uri);
        let user = q
            .get("user")
            .and_then(|u| uuid::Uuid::parse_str(u).ok())
            .map(UserId::from)
            .ok_or_else(|| Rejection::bad_request("user must be a UUID"))?;
        let token = auth::sign(config, user, TOKEN_TTL).map_err(|_| Rejection::internal())?;
        ok_json(
            200,
            &serde_json::json!({ "token": token, "expires_in": TOKEN_TTL.as_secs() }),
        )
    }
}

/// Whether a `GET /` comes from a browser (it asks for HTML) rather than a program.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// The page. Its script is inline, so the policy allows inline scripts and styles from this
/// page only, and connections back to this origin.
pub fn page() -> Response<Body> {
    let mut res = respond(200, "text/html; charset=utf-8", PAGE);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn browsers_get_the_page_and_programs_do_not() {
        let mut h = HeaderMap::new();
        assert!(!wants_html(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_html(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        );
        assert!(wants_html(&h));
    }

    #[test]
    fn tokens_are_minted_only_with_the_development_secret() {
        let uri: Uri = "/demo/token?user=6f1c7a52-0b7e-4c55-9d8e-2f4a1b3c5d6e"
            .parse()
            .unwrap();
        let dev = Demo::new(&Config::default()).unwrap();
        assert!(dev.token(&uri).is_ok());
        assert!(
            dev.token(&"/demo/token?user=nope".parse().unwrap())
                .is_err()
        );
        let real = Config {
            jwt_secret: "a real secret".into(),
            ..Config::default()
        };
        assert!(Demo::new(&real).unwrap().token(&uri).is_err());
        let off = Config {
            demo: false,
            ..Config::default()
        };
        assert!(Demo::new(&off).is_none());
    }
}
