//! The browser demo at `/`: two tabs of a real headless Chromium sign in, chat, see typing,
//! receipts and presence, and one catches up after its connection drops. Also the HTTP side:
//! browsers get the page, programs the JSON pointer, and the switch turns it off.

use serde_json::Value;
use uuid::Uuid;

use crate::browser::{Browser, Tab, find_chromium};
use crate::helpers::{Backend, Binary};

/// Without Chromium this test says so and passes, unless `CHAT_REQUIRE_BROWSER` is set (as
/// `scripts/test` does after installing it): then a missing browser fails.
fn chromium_or_skip() -> Option<std::path::PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("CHAT_REQUIRE_BROWSER").is_none(),
            "CHAT_REQUIRE_BROWSER is set and no Chromium was found (install Debian's chromium)"
        );
        eprintln!("SKIPPED: no chromium on PATH (set CHAT_TEST_CHROMIUM); the demo was not driven");
    }
    found
}

async fn sign_in(tab: &mut Tab, user: Uuid) {
    tab.type_into("user-id", &user.to_string()).await;
    tab.click("#signin-button").await;
    tab.wait_for("document.getElementById('status').className === 'online'")
        .await;
}

/// The `.msg` element whose body is `body`, as a JavaScript expression.
fn message(body: &str) -> String {
    let body = serde_json::to_string(body).unwrap();
    format!(
        "[...document.querySelectorAll('#messages .msg')].find((m) => m.querySelector('.body').innerText === {body})"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_tabs_chat_through_the_demo_page() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    // The development secret, as on a newcomer's first run: the page mints its own tokens.
    let node = Binary::start(Backend::Sqlite, &[("CHAT_JWT_SECRET", "")]).await;
    let page = format!("http://127.0.0.1:{}/", node.port);
    let mut browser = Browser::launch(&chromium).await;
    let (asha, ishwor) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = browser.open(&page).await;
    let mut b = browser.open(&page).await;
    sign_in(&mut a, asha).await;
    sign_in(&mut b, ishwor).await;

    // Asha starts a direct chat with Ishwor's id; it shows up in Ishwor's list by itself.
    a.type_into("direct-user", &ishwor.to_string()).await;
    a.click("#direct-create").await;
    a.wait_for("!document.getElementById('body').disabled")
        .await;
    b.wait_for("document.querySelector('#conversations li')")
        .await;
    b.click("#conversations li").await;
    b.wait_for("!document.getElementById('body').disabled")
        .await;

    // Presence: each sees the other online.
    a.wait_for("document.getElementById('chat-title').innerText.includes('online')")
        .await;

    // Typing shows on the other side, then the message arrives and the typing line clears.
    a.type_into("body", "Namaste from the first tab").await;
    b.wait_for("document.getElementById('typing').innerText.includes('typing')")
        .await;
    a.click("#send").await;
    b.wait_for(&message("Namaste from the first tab")).await;
    b.wait_for("document.getElementById('typing').innerText === ''")
        .await;

    // Ishwor has the chat open, so it is read at once, and Asha sees the receipt.
    let sent = message("Namaste from the first tab");
    a.wait_for(&format!(
        "{sent} && {sent}.querySelector('.meta').innerText.includes('read by')"
    ))
    .await;

    // A reply goes the other way.
    b.type_into("body", "Hajur, namaste!").await;
    b.click("#send").await;
    a.wait_for(&message("Hajur, namaste!")).await;

    // Ishwor's connection drops (a phone changing networks); he is offline for Asha, misses a
    // push, and catches up from his last seq when the page reconnects.
    b.eval("S.backoff = 2500; S.ws.close()").await;
    a.wait_for("document.getElementById('chat-title').innerText.includes('offline')")
        .await;
    a.type_into("body", "while you were away").await;
    a.click("#send").await;
    a.wait_for(&format!(
        "{0} && {0}.dataset.seq",
        message("while you were away")
    ))
    .await;
    b.wait_for("document.getElementById('status').className === 'online'")
        .await;
    b.wait_for(&message("while you were away")).await;
    let seqs: Value = b
        .eval("[...document.querySelectorAll('#messages .msg')].map((m) => Number(m.dataset.seq))")
        .await;
    assert_eq!(
        seqs,
        serde_json::json!([1, 2, 3]),
        "dense, in order, once each"
    );
    // What was caught up in the open chat counts as read: no unread badge stays on it.
    b.wait_for("document.querySelector('#conversations li.selected .unread').innerText === ''")
        .await;
    a.wait_for("document.getElementById('chat-title').innerText.includes('online')")
        .await;

    // A group with a third id: it appears in Ishwor's list with its name.
    let third = Uuid::new_v4();
    a.type_into("group-name", "Trek planning").await;
    a.type_into("group-members", &format!("{ishwor}, {third}"))
        .await;
    a.click("#group-create").await;
    b.wait_for("document.getElementById('conversations').innerText.includes('Trek planning')")
        .await;

    // `CHAT_TEST_SCREENSHOTS=DIR` keeps what each tab showed, to look at the page.
    if let Some(dir) = std::env::var_os("CHAT_TEST_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        a.screenshot(&dir.join("demo-first-tab.png")).await;
        b.screenshot(&dir.join("demo-second-tab.png")).await;
    }

    // Closing Asha's tab takes her offline for Ishwor.
    b.click("#conversations li:last-child").await;
    browser.close(a).await;
    b.wait_for("document.getElementById('chat-title').innerText.includes('offline')")
        .await;
    assert!(
        b.text("#log").await.contains("hello from"),
        "the page logs its connections"
    );
}

#[tokio::test]
async fn browsers_get_the_page_programs_get_json_and_the_switch_turns_it_off() {
    let node = Binary::start(Backend::Sqlite, &[("CHAT_JWT_SECRET", "")]).await;
    let html = node.get_accepting("/", "text/html,*/*;q=0.8").await;
    assert!(
        html.0 == 200 && html.1.contains("chat-backend demo"),
        "{html:?}"
    );
    let (status, body) = node.get_accepting("/", "application/json").await;
    assert_eq!(status, 200);
    assert!(body.contains("/v1/ws"), "{body}");
    let user = Uuid::new_v4();
    let (status, body) = node
        .get_accepting(&format!("/demo/token?user={user}"), "*/*")
        .await;
    assert_eq!(status, 200, "{body}");
    let token: Value = serde_json::from_str(&body).unwrap();
    let token = token["token"].as_str().unwrap();
    // The token opens a real connection as that user.
    let client = crate::helpers::Client::connect(&node.url(), token).await;
    assert_eq!(client.hello["user"], user.to_string());

    // With a real secret, no token is minted: it would be a way around the secret.
    let secured = Binary::start(Backend::Sqlite, &[]).await;
    let (status, body) = secured
        .get_accepting(&format!("/demo/token?user={user}"), "*/*")
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("chat-backend token"), "{body}");

    let off = Binary::start(Backend::Sqlite, &[("CHAT_DEMO", "false")]).await;
    let (status, body) = off.get_accepting("/", "text/html").await;
    assert_eq!(status, 200);
    assert!(!body.contains("<html"), "the demo is off: {body}");
    assert_eq!(off.get_accepting("/demo/token", "*/*").await.0, 404);
}
