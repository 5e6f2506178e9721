//! The expiry job: erases deleted bodies after the audit period and removes messages past the
//! retention period (on PostgreSQL a week's partition at a time, src/store/postgres/partitions.rs). On
//! PostgreSQL an advisory lock makes it run on one node at a time.

use std::sync::Arc;
use std::time::Duration;

use chat_actors::clock::now_ms;
use chat_actors::ports::{Purged, Store};
use tokio_util::sync::CancellationToken;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Runs the job now and then every `every` until `stop`.
pub async fn run(
    store: Arc<dyn Store>,
    retention_days: u32,
    audit_days: u32,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        let now = now_ms();
        let retention_cutoff = now - i64::from(retention_days) * DAY_MS;
        let audit_cutoff = now - i64::from(audit_days) * DAY_MS;
        match store.purge(retention_cutoff, audit_cutoff).await {
            Ok(done) if done == Purged::default() => {}
            Ok(Purged {
                erased,
                removed,
                partitions,
            }) => tracing::info!(erased, removed, partitions, "retention job"),
            Err(e) => tracing::warn!(error = %e, "retention job failed; retrying next round"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
