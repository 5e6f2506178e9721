//! One WebSocket connection: read a frame, decode, ask the node, write the reply; write pushes
//! from the connection's bounded queue; ping, watch the token's expiry, say `bye` and close.
//!
//! Requests run concurrently (a slow `history` does not hold up a `send`), but each is handed to
//! its actor before the next frame is read, so one connection's sends keep their order.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use chat_actors::delivery::Outbound;
use chat_actors::ids::{SessionId, UserId};
use chat_actors::node::Caller;
use chat_actors::protocol::encode::DecodeFailure;
use chat_actors::protocol::frames::ByeReason;
use chat_actors::protocol::{
    ErrorCode, Format, Rejection, Request, ServerFrame, SharedFrame, decode_request, encode_frame,
};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use super::requests::{self, Asked, Dispatched, Reply, refused};
use super::slot::Slot;
use crate::auth::Identity;
use crate::transport::codec::to_message;
use crate::transport::error::error_frame;
use crate::transport::state::Transport;

/// Requests of one connection in flight at once; past this the connection is not read.
const MAX_IN_FLIGHT: usize = 256;
/// tungstenite's first read buffer: small, since most connections are idle most of the time
/// and most frames are a few hundred bytes; a larger frame grows it to the frame's length (its
/// header says how long), so no frame is read in more pieces for it. 2 KiB → 512 B saved
/// 1.5 KiB of each idle connection (docs/PERFORMANCE.md).
const READ_BUFFER: usize = 512;
/// How long the closing `bye` and close frame may take to a peer that may not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Close code for an expired token (PROTOCOL §2).
const TOKEN_EXPIRED: u16 = 4001;
/// How long a stopping node waits for a connection's requests in flight, so that what it commits
/// is also answered (PROTOCOL §4 bounds every request by 5 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The farthest a token's expiry timer is set: a token may claim any `exp`, and an `Instant` does
/// not hold every one of them.
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

type Ws = WebSocketStream<TcpStream>;

/// How a connection ends.
struct Ending {
    bye: Option<ByeReason>,
    code: CloseCode,
}

/// The connection's own state.
struct Session {
    t: Arc<Transport>,
    format: Format,
    user: UserId,
    id: SessionId,
    outbound: Outbound,
    kick: CancellationToken,
    watching: Vec<UserId>,
    /// When the token expires; `auth` moves it.
    expires: tokio::time::Instant,
    /// Whether the connection has left its user actor and the watch lists; if the task ends any
    /// other way (a panic), `Drop` does it, so no presence or actor outlives the socket.
    detached: bool,
}

impl Session {
    /// Leaves the user actor (the user may go offline) and every watch list.
    fn detach(&mut self) {
        if std::mem::replace(&mut self.detached, true) {
            return;
        }
        self.t.node.unwatch(self.id, &self.watching);
        self.t.node.disconnect(self.user, self.id);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.detach();
    }
}

/// When a token with `remaining` validity expires, as a timer deadline.
fn expiry_after(remaining: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + remaining.min(MAX_TOKEN_LIFE)
}

/// Serves one upgraded connection to the end.
///
/// The opening and the closing are boxed: an async fn is as big as its biggest await, and this
/// task lives as long as the connection, so only the serving loop's state stays resident.
pub async fn run(
    t: Arc<Transport>,
    upgraded: Upgraded,
    identity: Identity,
    format: Format,
    slot: Slot,
) {
    let Some((mut ws, mut s, rx)) = Box::pin(open(t, upgraded, identity, format)).await else {
        return;
    };
    metrics::counter!("chat_connections_opened_total").increment(1);
    let ending = s.serve(&mut ws, rx).await;
    Box::pin(finish(s, ws, ending)).await;
    drop(slot);
}

/// Takes the stream back from hyper and attaches the connection to its user actor.
async fn open(
    t: Arc<Transport>,
    upgraded: Upgraded,
    identity: Identity,
    format: Format,
) -> Option<(Ws, Session, mpsc::Receiver<Arc<SharedFrame>>)> {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(t.ws.max_frame_bytes))
        .max_frame_size(Some(t.ws.max_frame_bytes));
    // Take the TCP stream back from hyper: what it read ahead is replayed into the WebSocket.
    let mut ws = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) if parts.read_buf.is_empty() => {
            WebSocketStream::from_raw_socket(parts.io.into_inner(), Role::Server, Some(config))
                .await
        }
        Ok(parts) => {
            let early = parts.read_buf.to_vec();
            WebSocketStream::from_partially_read(
                parts.io.into_inner(),
                early,
                Role::Server,
                Some(config),
            )
            .await
        }
        Err(_) => {
            tracing::error!("an upgraded connection is not a TCP stream");
            return None;
        }
    };
    let id = SessionId::random();
    let kick = t.shutdown.child_token();
    let (outbound, rx) = Outbound::new(identity.user, id, t.ws.outbound_queue, kick.clone());
    if t.node.connect(outbound.clone()).await.is_err() {
        close(
            &mut ws,
            &Ending {
                bye: None,
                code: CloseCode::Again,
            },
        )
        .await;
        return None;
    }
    let s = Session {
        format,
        user: identity.user,
        id,
        outbound,
        kick,
        watching: Vec::new(),
        expires: expiry_after(identity.remaining()),
        detached: false,
        t,
    };
    Some((ws, s, rx))
}

/// Detaches the connection, says why it ends and closes it.
async fn finish(mut s: Session, mut ws: Ws, ending: Ending) {
    s.detach();
    if let Some(reason) = ending.bye {
        let bye = encode_frame(s.format, &ServerFrame::Bye { reason });
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(to_message(s.format, bye))).await;
    }
    close(&mut ws, &ending).await;
}

/// Sends the close frame and waits (bounded) for the peer's reply before the socket is dropped:
/// dropping it with unread input would send a reset that can destroy the close frame before the
/// client reads it. After a refused oversized frame the stream cannot be parsed any more, so the
/// raw input is drained instead.
async fn close(ws: &mut Ws, ending: &Ending) {
    if ending.code == CloseCode::Abnormal {
        // The socket failed: there is nobody to say goodbye to.
        return;
    }
    if ending.code == CloseCode::Normal {
        // The client closed first; tungstenite has answered it already.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
        return;
    }
    let frame = CloseFrame {
        code: ending.code,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(Some(frame))).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ending.code == CloseCode::Size {
            let io = ws.get_mut();
            // On the heap: an array here would sit in every session task's state, idle or not.
            let mut sink = vec![0u8; 4096];
            while let Ok(n) = io.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        } else {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// Where the pings' grid starts: the first session's start on this node.
static PING_GRID_ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();

/// When a connection's first ping is due. Connections opened in the same seconds (a ramp, a
/// node's restart, a reconnect herd) would otherwise ping in the same seconds for as long as
/// they stay: a burst of the whole node each heartbeat. Spreading every connection's phase
/// evenly costs more than the bursts did (a node woke for each ping and each pong: 2.3 times
/// the CPU with 50,000 idle connections, docs/PERFORMANCE.md), so the phase drawn from the
/// session's random id picks one of 30 slots of the period, on a grid shared by the node's
/// connections: a thirtieth of them are pinged together, once per slot.
fn first_ping_at(
    now: tokio::time::Instant,
    heartbeat: Duration,
    session: SessionId,
) -> tokio::time::Instant {
    // the UUID's last 48 bits are random (its version and variant bits lie above them)
    let bits = (session.uuid().as_u128() & 0xffff_ffff_ffff) as f64;
    let phase = bits / (1u64 << 48) as f64;
    let due = now + heartbeat / 2 + heartbeat.mul_f64(phase);
    let origin = *PING_GRID_ORIGIN.get_or_init(|| now);
    let slot = (heartbeat / PING_SLOTS).max(Duration::from_millis(1));
    let slot_ns = slot.as_nanos();
    let on_grid = due
        .saturating_duration_since(origin)
        .as_nanos()
        .div_ceil(slot_ns)
        * slot_ns;
    origin + Duration::from_nanos(u64::try_from(on_grid).unwrap_or(u64::MAX))
}

/// Slots of a heartbeat period the pings are gathered in.
const PING_SLOTS: u32 = 30;

impl Session {
    async fn serve(&mut self, ws: &mut Ws, mut rx: mpsc::Receiver<Arc<SharedFrame>>) -> Ending {
        let hello = ServerFrame::Hello {
            user: self.user,
            session: self.id,
            node: self.t.ws.node_id.clone(),
            heartbeat_ms: self.t.ws.heartbeat.as_millis() as u64,
            time: chat_actors::clock::now_ms(),
        };
        if self
            .write(ws, encode_frame(self.format, &hello))
            .await
            .is_err()
        {
            return Ending {
                bye: None,
                code: CloseCode::Away,
            };
        }
        let heartbeat = self.t.ws.heartbeat;
        let mut ticks = tokio::time::interval_at(
            first_ping_at(tokio::time::Instant::now(), heartbeat, self.id),
            heartbeat,
        );
        let mut last_heard = Instant::now();
        let mut in_flight: FuturesUnordered<Reply> = FuturesUnordered::new();
        let expiry = tokio::time::sleep_until(self.expires);
        tokio::pin!(expiry);
        // Made once: a cancellation future registers with the token's tree when it is created,
        // which every turn of the loop paid for.
        let kick = self.kick.clone();
        let kicked = kick.cancelled();
        tokio::pin!(kicked);
        loop {
            if expiry.deadline() != self.expires {
                expiry.as_mut().reset(self.expires);
            }
            let outcome: Result<(), Ending> = tokio::select! {
                biased;
                _ = &mut kicked => {
                    if self.t.shutdown.is_cancelled() {
                        self.drain(ws, &mut in_flight).await;
                    }
                    Err(self.kicked())
                }
                _ = &mut expiry => Err(Ending { bye: Some(ByeReason::TokenExpired), code: CloseCode::from(TOKEN_EXPIRED) }),
                Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                    self.write(ws, encode_frame(self.format, &reply)).await
                }
                Some(push) = rx.recv() => self.write_pushes(ws, push, &mut rx).await,
                incoming = ws.next(), if in_flight.len() < MAX_IN_FLIGHT => {
                    last_heard = Instant::now();
                    match incoming {
                        None => Err(Ending { bye: None, code: CloseCode::Normal }),
                        Some(Ok(msg)) => self.on_message(ws, msg, &mut in_flight).await,
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. })))
                        | Some(Err(WsError::Capacity(_))) => Err(Ending { bye: None, code: CloseCode::Size }),
                        Some(Err(e)) => Err(read_failed(&e)),
                    }
                }
                _ = ticks.tick() => {
                    if last_heard.elapsed() > heartbeat * 2 {
                        Err(Ending { bye: None, code: CloseCode::Away })
                    } else {
                        self.send_ws(ws, Message::Ping(Default::default())).await
                    }
                }
            };
            if let Err(ending) = outcome {
                return ending;
            }
        }
    }

    async fn on_message(
        &mut self,
        ws: &mut Ws,
        msg: Message,
        in_flight: &mut FuturesUnordered<Reply>,
    ) -> Result<(), Ending> {
        let data = match (&msg, self.format) {
            (Message::Binary(b), Format::MsgPack) => b.clone(),
            (Message::Text(t), Format::Json) => t.clone().into(),
            (Message::Text(_), Format::MsgPack) | (Message::Binary(_), Format::Json) => {
                return Err(Ending {
                    bye: Some(ByeReason::Policy),
                    code: CloseCode::Unsupported,
                });
            }
            // tungstenite answers pings itself; a close is answered on the next write.
            _ => return Ok(()),
        };
        crate::metrics::hot().frames_in.increment(1);
        match decode_request(self.format, &data) {
            Ok(req) => match self.dispatch(req) {
                Dispatched::Now(frame) => self.write(ws, encode_frame(self.format, &frame)).await,
                Dispatched::Later(fut) => {
                    in_flight.push(fut);
                    Ok(())
                }
                Dispatched::Nothing => Ok(()),
            },
            Err(DecodeFailure { id, rejection }) => {
                self.write(ws, encode_frame(self.format, &error_frame(id, rejection)))
                    .await
            }
        }
    }

    /// Starts one request: answered now, later (after the node answers), or not at all. Watch
    /// lists and re-authentication change the connection's own state and are answered here; the
    /// rest go to the node ([`requests::start`]).
    fn dispatch(&mut self, req: Request) -> Dispatched {
        let id = req.id();
        let caller = Caller {
            user: self.user,
            session: Some(self.id),
        };
        let node = &self.t.node;
        match requests::start(node, caller, req) {
            Ok(started) => started,
            Err(Request::Watch { users, .. }) => {
                let mut unique = users;
                unique.sort();
                unique.dedup();
                Dispatched::Now(match node.watch(&self.outbound, &self.watching, &unique) {
                    Ok(()) => {
                        self.watching = unique;
                        ServerFrame::Ok { id }
                    }
                    Err(r) => refused(id, &self.asked("watch"), r),
                })
            }
            Err(Request::Auth { token, .. }) => Dispatched::Now(match node.charge(caller) {
                Ok(()) => self.reauthenticate(id, &token),
                Err(r) => refused(id, &self.asked("auth"), r),
            }),
            Err(_) => {
                // `requests::start` gives back only watch and auth: a bug if reached.
                tracing::error!("a request was left to the connection that it does not serve");
                Dispatched::Now(refused(id, &self.asked("unknown"), Rejection::internal()))
            }
        }
    }

    /// The node is stopping: answer the requests already handed to the node (a `send` among them
    /// commits, so its `sent` must reach the client), reading nothing new.
    async fn drain(&mut self, ws: &mut Ws, in_flight: &mut FuturesUnordered<Reply>) {
        let format = self.format;
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(reply) = in_flight.next().await {
                let msg = to_message(format, encode_frame(format, &reply));
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        })
        .await;
    }

    /// Why the connection was kicked: the node stops, or the client fell behind.
    fn kicked(&self) -> Ending {
        if self.t.shutdown.is_cancelled() {
            Ending {
                bye: Some(ByeReason::Shutdown),
                code: CloseCode::Away,
            }
        } else {
            Ending {
                bye: Some(ByeReason::SlowConsumer),
                code: CloseCode::Policy,
            }
        }
    }

    /// What the log says was asked, by whom, when a request of `kind` is refused.
    fn asked(&self, kind: &'static str) -> Asked {
        Asked {
            user: self.user,
            conv: None,
            kind,
        }
    }

    /// A fresh token for the same user moves the expiry; any other is refused.
    fn reauthenticate(&mut self, id: Option<u64>, token: &str) -> ServerFrame {
        match self.t.verifier.verify(token) {
            Ok(identity) if identity.user == self.user => {
                self.expires = expiry_after(identity.remaining());
                ServerFrame::Ok { id }
            }
            Ok(_) => refused(
                id,
                &self.asked("auth"),
                Rejection::new(ErrorCode::Unauthorized, "the token is for another user"),
            ),
            Err(_) => refused(
                id,
                &self.asked("auth"),
                Rejection::new(ErrorCode::Unauthorized, "invalid token"),
            ),
        }
    }

    /// Writes `first` and whatever else is queued, then flushes once.
    async fn write_pushes(
        &mut self,
        ws: &mut Ws,
        first: Arc<SharedFrame>,
        rx: &mut mpsc::Receiver<Arc<SharedFrame>>,
    ) -> Result<(), Ending> {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(push) = next.take() {
            let msg = to_message(self.format, push.bytes(self.format));
            self.guarded(ws.feed(msg)).await?;
            written += 1;
            if written < 64 {
                next = rx.try_recv().ok();
            }
        }
        crate::metrics::hot().frames_out.increment(written);
        self.guarded(ws.flush()).await
    }

    async fn write(&mut self, ws: &mut Ws, bytes: bytes::Bytes) -> Result<(), Ending> {
        crate::metrics::hot().frames_out.increment(1);
        self.send_ws(ws, to_message(self.format, bytes)).await
    }

    async fn send_ws(&mut self, ws: &mut Ws, msg: Message) -> Result<(), Ending> {
        self.guarded(ws.send(msg)).await
    }

    /// A write that gives up when the connection is kicked, so a peer that stopped reading
    /// cannot hold this task (and its queue) forever.
    async fn guarded(
        &self,
        write: impl std::future::Future<Output = Result<(), WsError>>,
    ) -> Result<(), Ending> {
        let mut write = std::pin::pin!(write);
        // Most writes finish at once; only one that has to wait watches for a kick.
        let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        if let Poll::Ready(r) = first {
            return r.map_err(|_| Ending {
                bye: None,
                code: CloseCode::Abnormal,
            });
        }
        tokio::select! {
            r = write => r.map_err(|_| Ending { bye: None, code: CloseCode::Abnormal }),
            _ = self.kick.cancelled() => Err(self.kicked()),
        }
    }
}

/// How a failed read ends the connection: a peer that broke the WebSocket protocol hears why
/// (1002, or 1007 for text that is not UTF-8) before the socket closes.
fn read_failed(e: &WsError) -> Ending {
    tracing::debug!(error = %e, "websocket read failed");
    let code = match e {
        WsError::Protocol(_) => CloseCode::Protocol,
        WsError::Utf8(_) => CloseCode::Invalid,
        _ => CloseCode::Abnormal,
    };
    Ending { bye: None, code }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_pings_fall_on_a_grid_of_thirty_slots_spread_over_the_period() {
        let h = Duration::from_secs(30);
        let now = tokio::time::Instant::now();
        let origin = *PING_GRID_ORIGIN.get_or_init(|| now);
        let firsts: Vec<tokio::time::Instant> = (0..3_000)
            .map(|_| first_ping_at(now, h, SessionId::random()))
            .collect();
        let slot = h / PING_SLOTS;
        let mut slots = std::collections::BTreeMap::new();
        for f in &firsts {
            // within half a period of the first (plus the rounding up to a slot)
            assert!(*f >= now + h / 2 && *f <= now + h * 3 / 2 + slot);
            let since = f.duration_since(origin);
            assert_eq!(since.as_nanos() % slot.as_nanos(), 0, "on the grid");
            *slots
                .entry(since.as_nanos() / slot.as_nanos())
                .or_insert(0u32) += 1;
        }
        // sessions opened together are spread over the slots of a whole period (100 each
        // expected; a burst would put them all in one)
        assert!(slots.len() >= 30, "{slots:?}");
        assert!(slots.values().all(|n| *n <= 200), "{slots:?}");
    }
}
