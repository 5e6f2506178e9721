//! Receiving: what arrives on this node's channels goes to the core, and a lost connection is
//! followed by subscribing again until it holds. On a Redis Cluster a connection is lost when
//! any shard's server goes (a replica too), and the shard that owns a channel changes on a
//! failover; subscribing again is answered by the shard that owns each channel now (the
//! connection follows the cluster's new layout on the way), so whatever was lost, this node
//! ends up listening where its messages are published.

use std::sync::Arc;
use std::time::Duration;

use chat_actors::ports::BusInbox;
use redis::{PushInfo, PushKind};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::health::Health;
use crate::redis_conn::RedisConn;

/// How long a subscription may take before this node counts itself cut off.
const SUBSCRIBE_WITHIN: Duration = Duration::from_millis(500);
/// How often a node cut off tries to subscribe again.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// This node's subscriptions: its own channel and the one for all.
pub(super) struct Subscriptions {
    pub(super) conn: RedisConn,
    pub(super) channels: [String; 2],
}

impl Subscriptions {
    /// Subscribes to both channels (again: a channel already subscribed is confirmed).
    pub(super) async fn subscribe(&mut self) -> redis::RedisResult<()> {
        for channel in &self.channels {
            self.conn.subscribe(channel).await?;
        }
        Ok(())
    }

    /// [`Subscriptions::subscribe`] within [`SUBSCRIBE_WITHIN`].
    async fn subscribe_in_time(&mut self) -> bool {
        matches!(
            tokio::time::timeout(SUBSCRIBE_WITHIN, self.subscribe()).await,
            Ok(Ok(()))
        )
    }

    /// Runs the receiving side until `stop`: delivers what arrives to `inbox`, and subscribes
    /// again after a lost connection.
    pub(super) fn run(
        self,
        incoming: mpsc::UnboundedReceiver<PushInfo>,
        health: Arc<Health>,
        inbox: Arc<dyn BusInbox>,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) {
        let lost = Arc::new(Notify::new());
        tasks.spawn(receive(
            incoming,
            self.channels.clone(),
            inbox.clone(),
            lost.clone(),
            stop.clone(),
        ));
        tasks.spawn(self.resubscribe(lost, health, inbox, stop));
    }

    /// Each time `lost` is notified: subscribes again. Answered at once (a replica went, or
    /// the connection came straight back), it only resyncs; otherwise this node is cut off
    /// (what waits for other nodes is answered `unavailable`, requests are refused) until a
    /// subscription holds again.
    async fn resubscribe(
        mut self,
        lost: Arc<Notify>,
        health: Arc<Health>,
        inbox: Arc<dyn BusInbox>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = lost.notified() => {}
            }
            if !self.subscribe_in_time().await {
                tracing::warn!("the bus lost this node's channels; subscribing again");
                health.set_inbound(false);
                inbox.lost();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_EVERY) => {}
                    }
                    if self.subscribe_in_time().await {
                        break;
                    }
                }
                health.set_inbound(true);
                tracing::info!("the bus carries this node's channels again");
            }
            // Messages may have been lost while the connection was down: every node hears
            // again who is connected here.
            inbox.regained();
        }
    }
}

/// Delivers every message that arrives; a lost connection, or a channel the server dropped
/// (its slot moved to another shard), notifies `lost`.
async fn receive(
    mut incoming: mpsc::UnboundedReceiver<PushInfo>,
    channels: [String; 2],
    inbox: Arc<dyn BusInbox>,
    lost: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let push = tokio::select! {
            _ = stop.cancelled() => break,
            push = incoming.recv() => match push {
                Some(push) => push,
                None => break,
            },
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(Ok(payload)) =
                    push.data.get(1).map(redis::from_redis_value_ref::<Vec<u8>>)
                {
                    inbox.received(&payload);
                }
            }
            PushKind::Disconnection => {
                metrics::counter!("chat_bus_disconnections_total").increment(1);
                lost.notify_one();
            }
            PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                let ours = push
                    .data
                    .first()
                    .and_then(|c| redis::from_redis_value_ref::<String>(c).ok())
                    .is_some_and(|c| channels.contains(&c));
                if ours {
                    lost.notify_one();
                }
            }
            _ => {}
        }
    }
}
