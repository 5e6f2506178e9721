//! A stand-in for the user service (kaha-main-v3) for local use and demos:
//! `chat-backend dev-user-service --file users.json` serves its two endpoints from a JSON file
//! (see `docs/dev-users.json`), so business chats can be tried without the real service.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use chat_actors::ids::UserId;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A person's or business's public profile.
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    /// Display name.
    pub name: String,
    /// Avatar.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// For a business: its agents.
    #[serde(default)]
    pub agents: Vec<UserId>,
}

/// The file: users and businesses by UUID.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Directory {
    /// Users (agents included).
    #[serde(default)]
    pub users: HashMap<UserId, Entry>,
    /// Businesses, each with its agents.
    #[serde(default)]
    pub businesses: HashMap<UserId, Entry>,
}

impl Directory {
    /// Reads the JSON file.
    pub fn load(path: &Path) -> anyhow::Result<Directory> {
        let text = std::fs::read_to_string(path)?;
        Ok(serde_json::from_str(&text)?)
    }
}

#[derive(Deserialize)]
struct Batch {
    #[serde(default)]
    user_uuids: Vec<UserId>,
    #[serde(default)]
    business_uuids: Vec<UserId>,
}

/// Serves the directory on `listener` until `stop`; `token`, when not empty, is required as bearer.
pub async fn serve(dir: Directory, token: String, listener: TcpListener, stop: CancellationToken) {
    let state = Arc::new((dir, token));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    state: Arc<(Directory, String)>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (dir, token) = (&state.0, &state.1);
    let reply = |status: u16, body: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() =
            hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        Ok(r)
    };
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !token.is_empty() && bearer != Some(&format!("Bearer {token}")) {
        return reply(401, json!({"error": "unauthorized"}));
    }
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::POST, ["api", "batch", "profiles"]) => {
            let Ok(body) = Limited::new(req.into_body(), 1 << 20).collect().await else {
                return reply(400, json!({"error": "unreadable body"}));
            };
            let Ok(batch) = serde_json::from_slice::<Batch>(&body.to_bytes()) else {
                return reply(400, json!({"error": "invalid JSON"}));
            };
            let rows = |ids: &[UserId], table: &HashMap<UserId, Entry>| -> Vec<serde_json::Value> {
                ids.iter()
                    .filter_map(|id| {
                        table.get(id).map(
                            |e| json!({"uuid": id, "name": e.name, "avatar_url": e.avatar_url}),
                        )
                    })
                    .collect()
            };
            reply(
                200,
                json!({"users": rows(&batch.user_uuids, &dir.users), "businesses": rows(&batch.business_uuids, &dir.businesses)}),
            )
        }
        (Method::GET, ["api", "businesses", id, "agents"]) => {
            match UserId::parse(id).and_then(|b| dir.businesses.get(&b)) {
                Some(b) => reply(200, json!({"agents": b.agents})),
                None => reply(404, json!({"error": "unknown business"})),
            }
        }
        _ => reply(404, json!({"error": "no route"})),
    }
}
