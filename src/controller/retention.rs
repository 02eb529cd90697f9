//! History retention, run by the leader: finished sync runs (`sync_jobs`, one per cycle
//! of every tenant) and events older than `--history-retention` are deleted, a batch at a
//! time, shortly after the lease is taken and then every ten minutes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Shared;
use crate::store::jobs;

const EVERY: Duration = Duration::from_secs(600);
const FIRST_AFTER: Duration = Duration::from_secs(5);
const BATCH: i32 = 5000;

pub(super) async fn run(shared: Arc<Shared>, epoch: i64, keep: Duration, token: CancellationToken) {
    let cluster = shared.config.cluster.clone();
    let mut wait = FIRST_AFTER;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = token.cancelled() => return,
        }
        wait = EVERY;
        if !shared.lease_valid(epoch) {
            continue;
        }
        match jobs::expire_history(&shared.pool, &cluster, keep, BATCH).await {
            Ok((0, 0)) => debug!(retention = %humantime::format_duration(keep), "no history to expire"),
            Ok((runs, events)) => {
                info!(runs, events, retention = %humantime::format_duration(keep), "expired old sync runs and events");
            }
            Err(e) => warn!(error = %e, "cannot expire old sync runs and events; retrying in 10 minutes"),
        }
    }
}
