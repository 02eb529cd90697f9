//! One WAL follower per tenant while its reconciler runs (issue 13): polled between syncs
//! so that it reads each commit's frames before a checkpoint and a WAL reset can overwrite
//! them; the tenant's syncs find it by the source path (`source::follow`). A tick only
//! `stat`s the `-wal` (as the watch does); the follower reads it when its size, time or
//! inode changed. Nothing here opens SQLite, takes a lock or checkpoints.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::source::follow;

/// How often a follower looks at its `-wal`.
pub const POLL: Duration = Duration::from_millis(200);

/// Stops the follower's task when the reconciler ends; the follower goes with the last
/// handle on it.
pub(super) struct Guard {
    _handle: follow::Handle,
    stop: CancellationToken,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.cancel();
        // The follower goes with the last handle (a successor reconciler may share it).
    }
}

/// Starts following the tenant's source at `path` until `token` or the guard ends it.
pub(super) fn spawn(path: &Path, token: &CancellationToken) -> Guard {
    let stop = token.child_token();
    let handle = follow::register(path);
    let (p, s, h) = (path.to_path_buf(), stop.clone(), handle.clone());
    tokio::spawn(async move {
        let handle = h;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wal = crate::source::companion(&p, "-wal");
        let mut seen = None;
        loop {
            tokio::select! {
                () = s.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = std::fs::metadata(&wal).ok().map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()));
            if now == seen {
                continue;
            }
            seen = now;
            let h = handle.clone();
            let polled = tokio::task::spawn_blocking(move || {
                let mut f = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                f.follower.poll()
            })
            .await;
            if let Ok(Err(e)) = polled {
                tracing::debug!(path = %p.display(), error = %e, "WAL follower: read failed");
            }
        }
    });
    Guard { _handle: handle, stop }
}
