//! Before a people run: every planned conversation is created over the HTTP API by its creator,
//! as the apps made them in the past, so that the list each user reads on connecting is whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::population::{ConvKind, Population};
use crate::client::token;
use crate::plan::TokenSpec;

/// What the setup did.
#[derive(Default, serde::Serialize, Clone, Copy)]
pub(crate) struct Made {
    pub(crate) conversations: u64,
    pub(crate) failed: u64,
    pub(crate) seconds: f64,
}

/// `ws://host:port/v1/ws` → `http://host:port`.
pub(crate) fn http_base(ws_url: &str) -> String {
    let rest = ws_url
        .strip_prefix("ws://")
        .or_else(|| ws_url.strip_prefix("wss://"))
        .unwrap_or(ws_url);
    let host = rest.split('/').next().unwrap_or(rest);
    format!("http://{host}")
}

/// Creates every conversation of `pop`, each on its creator's node, `parallel` at a time.
pub(crate) async fn create_all(
    pop: &Population,
    urls: &[String],
    tokens: &TokenSpec,
    parallel: usize,
) -> Made {
    let started = Instant::now();
    // reqwest is built without a default TLS provider (as the node is): name one
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .pool_max_idle_per_host(parallel)
        .timeout(std::time::Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("load: no HTTP client: {e}");
            return Made {
                failed: pop.convs.len() as u64,
                ..Made::default()
            };
        }
    };
    let bases: Vec<String> = urls.iter().map(|u| http_base(u)).collect();
    let bar = ProgressBar::new(pop.convs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("creating conversations {bar:40} {pos}/{len} {per_sec}")
            .expect("template"),
    );
    let failed = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None::<String>));
    futures_util::stream::iter(pop.convs.iter())
        .for_each_concurrent(parallel, |conv| {
            let creator = conv.members[0];
            let base = &bases[creator as usize % bases.len()];
            let body = match conv.kind {
                ConvKind::Direct | ConvKind::Group => {
                    let members: Vec<String> = conv.members[1..]
                        .iter()
                        .map(|m| pop.users[*m as usize].to_string())
                        .collect();
                    let kind = if conv.kind == ConvKind::Direct {
                        "direct"
                    } else {
                        "group"
                    };
                    json!({"kind": kind, "members": members})
                }
                ConvKind::Business => json!({
                    "kind": "business",
                    "business": conv.business.map(|b| pop.businesses[b as usize].id.to_string()),
                }),
            };
            let req = client
                .post(format!("{base}/v1/conversations"))
                .bearer_auth(token(tokens, pop.users[creator as usize]))
                .json(&body);
            let (bar, failed, first_failure) = (&bar, &failed, &first_failure);
            async move {
                let ok = match req.send().await {
                    Ok(r) if r.status().is_success() => true,
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        if let Ok(mut f) = first_failure.lock() {
                            f.get_or_insert(format!("{status} {text}"));
                        }
                        false
                    }
                    Err(e) => {
                        if let Ok(mut f) = first_failure.lock() {
                            f.get_or_insert(e.to_string());
                        }
                        false
                    }
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                bar.inc(1);
            }
        })
        .await;
    bar.finish_and_clear();
    let failed = failed.load(Ordering::Relaxed);
    if let Ok(Some(why)) = first_failure.lock().map(|f| f.clone()) {
        // a business the user service does not know is a 404
        let hint = if why.starts_with("404") {
            " (business chats need a user service that knows the seed's businesses: \
             --print-directory)"
        } else {
            ""
        };
        eprintln!("load: {failed} conversations could not be created; the first: {why}{hint}");
    }
    Made {
        conversations: pop.convs.len() as u64 - failed,
        failed,
        seconds: started.elapsed().as_secs_f64(),
    }
}
