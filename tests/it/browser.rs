//! A real headless Chromium driven over its DevTools protocol (JSON over a WebSocket, spoken
//! with the tokio-tungstenite we already have), for the demo page's test. Each tab runs
//! JavaScript through `Runtime.evaluate`, which is how a test types and clicks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{POLL, eventually};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The Chromium to drive: `CHAT_TEST_CHROMIUM`, else the first of the usual names on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHAT_TEST_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|candidate| candidate.is_file())
}

/// A headless Chromium process with its own profile; killed when dropped.
pub struct Browser {
    child: Child,
    port: u16,
    control: Socket,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromium` headless and connects to its DevTools endpoint.
    pub async fn launch(chromium: &PathBuf) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium)
            .args([
                "--headless",
                // Root in a container has no user namespace for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        // Chromium writes the port it picked, and the browser endpoint's path, to this file.
        let active = profile.path().join("DevToolsActivePort");
        let opened = "chromium opens its DevTools port";
        let (port, path) = eventually(Duration::from_secs(30), POLL, opened, async || {
            let text = std::fs::read_to_string(&active).ok()?;
            let mut lines = text.lines();
            let (port, path) = (lines.next()?, lines.next()?);
            Some((port.parse::<u16>().unwrap(), path.to_owned()))
        })
        .await;
        let (control, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .unwrap();
        Browser {
            child,
            port,
            control,
            next_id: 1,
            _profile: profile,
        }
    }

    /// Opens `url` in a new tab.
    pub async fn open(&mut self, url: &str) -> Tab {
        let answer = call(
            &mut self.control,
            &mut self.next_id,
            "Target.createTarget",
            json!({ "url": url }),
        )
        .await;
        let target = answer["targetId"].as_str().unwrap().to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(format!(
            "ws://127.0.0.1:{}/devtools/page/{target}",
            self.port
        ))
        .await
        .unwrap();
        let mut tab = Tab {
            socket,
            next_id: 1,
            target,
        };
        // A new tab starts on about:blank, which is complete at once: wait for the page itself.
        tab.wait_for("location.href !== 'about:blank' && document.readyState === 'complete'")
            .await;
        tab
    }

    /// Closes a tab the way a user closes it: its page, and its WebSocket, go away.
    pub async fn close(&mut self, tab: Tab) {
        call(
            &mut self.control,
            &mut self.next_id,
            "Target.closeTarget",
            json!({ "targetId": tab.target }),
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab.
pub struct Tab {
    socket: Socket,
    next_id: u64,
    target: String,
}

impl Tab {
    /// The value of a JavaScript expression (awaited when it is a promise); panics with the
    /// page's exception when it throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let answer = call(
            &mut self.socket,
            &mut self.next_id,
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        )
        .await;
        if let Some(e) = answer.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        answer["result"]["value"].clone()
    }

    /// Waits up to 10 s until `predicate` (JavaScript) is true.
    pub async fn wait_for(&mut self, predicate: &str) {
        for _ in 0..100 {
            if self.eval(&format!("!!({predicate})")).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let page = self
            .eval("document.body ? document.body.innerText : ''")
            .await;
        panic!("waited 10 s for {predicate}; the page shows:\n{page}");
    }

    /// Saves what the tab shows as a PNG at `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine;
        let shot = call(
            &mut self.socket,
            &mut self.next_id,
            "Page.captureScreenshot",
            json!({ "format": "png" }),
        )
        .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Types `text` into the input `#id` as a user would (the page hears `input`).
    pub async fn type_into(&mut self, id: &str, text: &str) {
        let text = serde_json::to_string(text).unwrap();
        self.eval(&format!(
            "(() => {{ const el = document.getElementById('{id}'); el.focus(); el.value = {text};
                el.dispatchEvent(new Event('input', {{ bubbles: true }})); }})()"
        ))
        .await;
    }

    /// Clicks `selector`.
    pub async fn click(&mut self, selector: &str) {
        let selector = serde_json::to_string(selector).unwrap();
        self.eval(&format!("document.querySelector({selector}).click()"))
            .await;
    }

    /// The visible text of `selector` ("" when absent).
    pub async fn text(&mut self, selector: &str) -> String {
        let selector = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(document.querySelector({selector}) || {{ innerText: '' }}).innerText"
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }
}

/// One DevTools command and its result (events that come meanwhile are skipped).
async fn call(socket: &mut Socket, next_id: &mut u64, method: &str, params: Value) -> Value {
    let id = *next_id;
    *next_id += 1;
    let request = json!({ "id": id, "method": method, "params": params });
    socket
        .send(Message::text(request.to_string()))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .unwrap_or_else(|_| panic!("{method} got no answer in 20 s"))
            .expect("the DevTools socket stays open")
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let answer: Value = serde_json::from_str(&text).unwrap();
        if answer["id"] == json!(id) {
            if let Some(e) = answer.get("error") {
                panic!("{method} failed: {e}");
            }
            return answer["result"].clone();
        }
    }
}
