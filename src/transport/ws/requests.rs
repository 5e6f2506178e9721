//! What each request frame asks of the node, and how its answer becomes a frame: the one table
//! from the protocol's requests to the node's typed operations. A refused request becomes an
//! `error` frame (a denied access is logged); every answer's latency is a metric.

use std::pin::Pin;
use std::time::Instant;

use chat_actors::ids::{ConversationId, UserId};
use chat_actors::node::handle::CreateRequest;
use chat_actors::node::{Caller, Node};
use chat_actors::protocol::{ErrorCode, Rejection, Request, ServerFrame};

use crate::transport::error::error_frame;

/// A request's answer, once the node gives it.
pub(super) type Reply = Pin<Box<dyn std::future::Future<Output = ServerFrame> + Send>>;

/// How a request is answered.
/// Starts `req` on the node for `caller`: answered now, later (after the node answers), or not
/// at all. `Err` gives back the requests that change the connection's own state (`watch`,
/// `auth`), which the session answers itself.
pub(super) fn start(node: &Node, caller: Caller, req: Request) -> Result<Dispatched, Request> {
    let id = req.id();
    let node = node.clone();
    let started = Instant::now();
    let (user, conv) = (caller.user, req.conv());
    let asked = |kind: &'static str| Asked { user, conv, kind };
    Ok(match req {
        Request::Ping { id } => Dispatched::Now(ServerFrame::Pong { id }),
        Request::Send {
            conv,
            mid,
            body,
            kind,
            ..
        } => {
            let fut = node.send(caller, conv, mid, body, kind);
            later(id, asked("send"), started, async move {
                let s = fut.await?;
                Ok(ServerFrame::Sent {
                    id,
                    conv: s.conv,
                    mid: s.mid,
                    seq: s.seq,
                    at: s.at,
                })
            })
        }
        Request::History {
            conv,
            after,
            before,
            limit,
            ..
        } => later(id, asked("history"), started, async move {
            let (messages, more) = node.history(caller, conv, after, before, limit).await?;
            Ok(ServerFrame::History {
                id,
                conv,
                messages,
                more,
            })
        }),
        Request::Read { conv, seq, .. } => later(id, asked("read"), started, async move {
            node.read(caller, conv, seq).await?;
            Ok(ServerFrame::Ok { id })
        }),
        Request::Typing { conv, on, id: None } => {
            node.typing(caller, conv, on);
            Dispatched::Nothing
        }
        Request::Typing { conv, on, .. } => later(id, asked("typing"), started, async move {
            node.typing_answered(caller, conv, on).await?;
            Ok(ServerFrame::Ok { id })
        }),
        Request::Delete { mid, .. } => later(id, asked("delete"), started, async move {
            node.delete(caller, mid).await?;
            Ok(ServerFrame::Ok { id })
        }),
        Request::Create {
            kind,
            members,
            name,
            business,
            ..
        } => later(id, asked("create"), started, async move {
            let req = CreateRequest {
                kind,
                members: members.unwrap_or_default(),
                name,
                business,
            };
            let (conversation, _) = node.create(caller, req).await?;
            Ok(ServerFrame::Conversation {
                id,
                conversation: Box::new(conversation),
            })
        }),
        Request::Get { conv, .. } => later(id, asked("get"), started, async move {
            let conversation = node.get(caller, conv).await?;
            Ok(ServerFrame::Conversation {
                id,
                conversation: Box::new(conversation),
            })
        }),
        Request::Conversations {
            limit,
            before,
            since,
            ..
        } => later(id, asked("conversations"), started, async move {
            let (items, more) = node.conversations(caller, limit, before, since).await?;
            Ok(ServerFrame::Conversations { id, items, more })
        }),
        Request::AddMember { conv, user, .. } => {
            later(id, asked("add_member"), started, async move {
                node.add_member(caller, conv, user).await?;
                Ok(ServerFrame::Ok { id })
            })
        }
        Request::RemoveMember { conv, user, .. } => {
            later(id, asked("remove_member"), started, async move {
                node.remove_member(caller, conv, user).await?;
                Ok(ServerFrame::Ok { id })
            })
        }
        Request::Mute { conv, on, .. } => later(id, asked("mute"), started, async move {
            node.mute(caller, conv, on).await?;
            Ok(ServerFrame::Ok { id })
        }),
        Request::Transfer { conv, agent, .. } => {
            later(id, asked("transfer"), started, async move {
                node.transfer(caller, conv, agent).await?;
                Ok(ServerFrame::Ok { id })
            })
        }
        Request::Presence { users, .. } => Dispatched::Now(match node.presence(caller, &users) {
            Ok(items) => ServerFrame::PresenceReply { id, items },
            Err(r) => refused(id, &asked("presence"), r),
        }),
        Request::Watch { .. } | Request::Auth { .. } => return Err(req),
    })
}

pub(super) enum Dispatched {
    Now(ServerFrame),
    Later(Reply),
    Nothing,
}

/// Who asked for what: the context of the warn line a refused request leaves.
pub(super) struct Asked {
    pub(super) user: UserId,
    pub(super) conv: Option<ConversationId>,
    pub(super) kind: &'static str,
}

/// The `error` frame for a rejection; a denied access (`forbidden`, `unauthorized`) is also
/// logged at warn, with the user and the conversation masked.
pub(super) fn refused(id: Option<u64>, asked: &Asked, r: Rejection) -> ServerFrame {
    if matches!(r.code, ErrorCode::Forbidden | ErrorCode::Unauthorized) {
        tracing::warn!(
            user = %asked.user.masked(),
            conv = asked.conv.map(|c| c.masked().to_string()),
            request = asked.kind,
            code = ?r.code,
            reason = %r.message,
            "access denied"
        );
    }
    error_frame(id, r)
}

/// Wraps a request's future: its error becomes an `error` frame, its latency a metric.
fn later(
    id: Option<u64>,
    asked: Asked,
    started: Instant,
    fut: impl std::future::Future<Output = Result<ServerFrame, Rejection>> + Send + 'static,
) -> Dispatched {
    Dispatched::Later(Box::pin(async move {
        let frame = match fut.await {
            Ok(frame) => frame,
            Err(r) => refused(id, &asked, r),
        };
        crate::metrics::hot().record_request(asked.kind, started.elapsed().as_secs_f64());
        frame
    }))
}
