//! When a tenant syncs next: the requeue delay (interval after a success, a resetting
//! exponential backoff after failures), the wake-up (due, requested, source changed,
//! stop) and the debounced watch of the source file. Time-driven through `tokio::time`,
//! so the tests run on paused time.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::backoff::backoff_delay;
use super::policy::Requeue;

/// The requeue delay of one tenant: `interval` after a success; after the n-th
/// consecutive failure 5 s doubling to 5 min (+/-20% jitter); reset by a success.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    failures: u32,
}

impl Schedule {
    /// `failures`: consecutive failures so far (kept in the status across restarts).
    pub fn new(interval: Duration, failures: u32) -> Schedule {
        Schedule { interval, failures }
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the tenant is backing off after failures.
    pub fn backing_off(&self) -> bool {
        self.failures > 0
    }

    pub fn succeeded(&mut self) -> Duration {
        self.failures = 0;
        self.interval
    }

    /// `jitter` in [-1, 1] (see `backoff::random_jitter`).
    pub fn failed(&mut self, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        backoff_delay(self.failures, jitter)
    }

    /// Takes the policy's decision: the delay before the next reconcile (`None`: stop).
    pub fn apply(&mut self, requeue: Requeue) -> Option<Duration> {
        match requeue {
            Requeue::Interval => Some(self.succeeded()),
            Requeue::Backoff { attempt, delay } => {
                self.failures = attempt;
                Some(delay)
            }
            Requeue::Stop => None,
        }
    }
}

/// Why a reconciler woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The requeue delay elapsed.
    Due,
    /// A sync was requested (`owsyncctl trigger`, `POST /api/v1/sync/trigger`).
    Requested,
    /// The source file changed (file watch).
    Changed,
    /// The reconciler is to stop.
    Stop,
}

impl Wake {
    /// The `sync_jobs.trigger` of the run it starts.
    pub fn trigger(self) -> &'static str {
        match self {
            Wake::Due | Wake::Stop => "schedule",
            Wake::Requested => "request",
            Wake::Changed => "watch",
        }
    }
}

/// Waits for the next reason to sync: stop first, then a request, a change of the
/// source (when `watch` is given), then the delay.
pub async fn next_wake(
    delay: Duration,
    requested: &Notify,
    watch: Option<&mut FileWatch>,
    stop: &CancellationToken,
) -> Wake {
    let changed = async {
        match watch {
            Some(w) => w.changed().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = stop.cancelled() => Wake::Stop,
        () = requested.notified() => Wake::Requested,
        () = changed => Wake::Changed,
        () = tokio::time::sleep(delay) => Wake::Due,
    }
}

/// Size and modification time of each watched file (`None`: missing).
pub type Fingerprint = Vec<Option<(u64, SystemTime)>>;

type StatFn = Box<dyn FnMut(&Path) -> Option<(u64, SystemTime)> + Send>;

/// An empty file counts as missing: SQLite creates an empty `-wal` when a reader (owsync's
/// first sync) opens a WAL database whose writer is not running, and that is no change
/// (otherwise every such tenant re-syncs right after its first sync: seen at 1,000 tenants).
fn stat_file(p: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(p).ok().filter(|m| m.len() > 0)?;
    Some((m.len(), m.modified().ok()?))
}

/// Timings of the file watch.
#[derive(Debug, Clone)]
pub struct WatchTimings {
    /// How often the files are looked at.
    pub poll: Duration,
    /// A change fires once the files have been quiet this long...
    pub quiet: Duration,
    /// ...or, while they keep changing, this long after the first change.
    pub max_delay: Duration,
    /// At most one sync per this period (measured from the start of the last one).
    pub min_gap: Duration,
}

impl Default for WatchTimings {
    fn default() -> Self {
        WatchTimings {
            poll: Duration::from_millis(250),
            quiet: Duration::from_millis(500),
            max_delay: Duration::from_secs(3),
            min_gap: Duration::from_secs(1),
        }
    }
}

/// A debounced watch of a SQLite source: `webui.db` and `webui.db-wal`, polled for size
/// and mtime (no inotify: works on every filesystem, including network mounts, and a
/// reader never changes either file: owsync opens read-only and never checkpoints).
pub struct FileWatch {
    paths: Vec<PathBuf>,
    stat: StatFn,
    timings: WatchTimings,
    /// What the last sync started from.
    baseline: Fingerprint,
    last_seen: Fingerprint,
    first_change: Option<Instant>,
    last_change: Option<Instant>,
    last_sync: Option<Instant>,
}

impl FileWatch {
    /// Watches `source` and its `-wal` file.
    pub fn new(source: &Path) -> FileWatch {
        FileWatch::with_stat(
            vec![source.to_path_buf(), crate::source::companion(source, "-wal")],
            WatchTimings::default(),
            Box::new(stat_file),
        )
    }

    /// With another way to look at the files (tests).
    pub fn with_stat(paths: Vec<PathBuf>, timings: WatchTimings, mut stat: StatFn) -> FileWatch {
        let fp: Fingerprint = paths.iter().map(|p| stat(p)).collect();
        FileWatch {
            paths,
            stat,
            timings,
            baseline: fp.clone(),
            last_seen: fp,
            first_change: None,
            last_change: None,
            last_sync: None,
        }
    }

    fn look(&mut self) -> Fingerprint {
        let stat = &mut self.stat;
        self.paths.iter().map(|p| stat(p)).collect()
    }

    /// Called as a sync starts: what it reads is the new baseline, so a change made
    /// during the sync fires again afterwards.
    pub fn mark_synced(&mut self) {
        let fp = self.look();
        self.baseline = fp.clone();
        self.last_seen = fp;
        self.first_change = None;
        self.last_change = None;
        self.last_sync = Some(Instant::now());
    }

    /// Resolves when the files differ from the baseline and the debounce allows a sync.
    pub async fn changed(&mut self) {
        let mut tick = tokio::time::interval(self.timings.poll);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let fp = self.look();
            if fp != self.last_seen {
                self.last_seen = fp;
                self.last_change = Some(now);
            }
            if self.last_seen == self.baseline {
                // Changed and changed back (or nothing at all).
                self.first_change = None;
                continue;
            }
            let first = *self.first_change.get_or_insert(self.last_change.unwrap_or(now));
            let quiet = self.last_change.is_none_or(|c| now.duration_since(c) >= self.timings.quiet);
            let overdue = now.duration_since(first) >= self.timings.max_delay;
            let gap_ok = self.last_sync.is_none_or(|s| now.duration_since(s) >= self.timings.min_gap);
            if (quiet || overdue) && gap_ok {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn an_empty_file_is_no_change_from_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("webui.db-wal");
        assert_eq!(stat_file(&wal), None);
        std::fs::write(&wal, b"").unwrap();
        assert_eq!(stat_file(&wal), None, "an empty -wal created by a reader");
        std::fs::write(&wal, b"frames").unwrap();
        assert_eq!(stat_file(&wal).map(|s| s.0), Some(6));
    }

    #[test]
    fn success_requeues_after_interval_and_resets_backoff() {
        let mut s = Schedule::new(Duration::from_secs(300), 0);
        assert_eq!(s.succeeded(), Duration::from_secs(300));
        assert_eq!(s.failed(0.0), Duration::from_secs(5));
        assert_eq!(s.failed(0.0), Duration::from_secs(10));
        assert_eq!(s.failed(0.0), Duration::from_secs(20));
        assert!(s.backing_off());
        assert_eq!(s.failures(), 3);
        assert_eq!(s.succeeded(), Duration::from_secs(300));
        assert_eq!(s.failures(), 0);
        // After a reset the backoff starts again from 5 s, not where it was.
        assert_eq!(s.failed(0.0), Duration::from_secs(5));
        for _ in 0..20 {
            s.failed(1.0);
        }
        assert_eq!(s.failed(1.0), Duration::from_secs(360), "capped at 5 min + 20%");
        assert_eq!(s.failed(-1.0), Duration::from_secs(240), "capped at 5 min - 20%");
        // A restarted controller continues from the recorded failures.
        let mut s = Schedule::new(Duration::from_secs(60), 4);
        assert_eq!(s.failed(0.0), Duration::from_secs(80));
        // The policy's decisions, applied.
        let backoff = Requeue::Backoff { attempt: 6, delay: Duration::from_secs(160) };
        assert_eq!(s.apply(backoff), Some(Duration::from_secs(160)));
        assert_eq!(s.failures(), 6);
        assert_eq!(s.apply(Requeue::Stop), None);
        assert_eq!(s.failures(), 6, "stopping changes nothing");
        assert_eq!(s.apply(Requeue::Interval), Some(Duration::from_secs(60)));
        assert!(!s.backing_off());
    }

    /// A reconciler's loop on paused time: each outcome, then when it wakes.
    #[tokio::test(start_paused = true)]
    async fn backoff_sequence_on_paused_time() {
        let stop = CancellationToken::new();
        let req = Notify::new();
        let mut s = Schedule::new(Duration::from_secs(60), 0);
        let t0 = Instant::now();
        let mut wakes = Vec::new();
        for ok in [false, false, false, true, false, true] {
            let delay = if ok { s.succeeded() } else { s.failed(0.0) };
            let before = Instant::now();
            assert_eq!(next_wake(delay, &req, None, &stop).await, Wake::Due);
            wakes.push(Instant::now().duration_since(before).as_secs());
        }
        assert_eq!(wakes, vec![5, 10, 20, 60, 5, 60]);
        assert_eq!(Instant::now().duration_since(t0), Duration::from_secs(160));
    }

    #[tokio::test(start_paused = true)]
    async fn request_and_stop_cut_the_wait_short() {
        let stop = CancellationToken::new();
        let req = Arc::new(Notify::new());
        let t0 = Instant::now();
        let r = req.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(7)).await;
            r.notify_one();
        });
        assert_eq!(next_wake(Duration::from_secs(300), &req, None, &stop).await, Wake::Requested);
        assert_eq!(Instant::now().duration_since(t0), Duration::from_secs(7));
        // A request made while no one waits (during a sync) is kept for the next wait.
        req.notify_one();
        assert_eq!(next_wake(Duration::from_secs(300), &req, None, &stop).await, Wake::Requested);
        assert_eq!(Instant::now().duration_since(t0), Duration::from_secs(7));
        let st = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            st.cancel();
        });
        assert_eq!(next_wake(Duration::from_secs(300), &req, None, &stop).await, Wake::Stop);
        assert_eq!(Instant::now().duration_since(t0), Duration::from_secs(10));
        // Stop wins over everything else that is ready.
        req.notify_one();
        assert_eq!(next_wake(Duration::ZERO, &req, None, &stop).await, Wake::Stop);
    }

    type Files = Arc<Mutex<HashMap<PathBuf, (u64, SystemTime)>>>;

    fn fake_watch(files: &Files) -> FileWatch {
        let f = files.clone();
        let paths = vec![PathBuf::from("/t/webui.db"), PathBuf::from("/t/webui.db-wal")];
        FileWatch::with_stat(paths, WatchTimings::default(), Box::new(move |p| f.lock().unwrap().get(p).copied()))
    }

    fn touch(files: &Files, path: &str, len: u64) {
        let mut f = files.lock().unwrap();
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        let mtime = f.get(Path::new(path)).map_or(first, |(_, m)| *m + Duration::from_nanos(1));
        f.insert(PathBuf::from(path), (len, mtime));
    }

    /// Runs `next_wake` with the watch in a task; returns when it woke, from now.
    async fn wake_after(w: &mut FileWatch, delay: Duration) -> (Wake, Duration) {
        let stop = CancellationToken::new();
        let req = Notify::new();
        let t = Instant::now();
        let r = next_wake(delay, &req, Some(w), &stop).await;
        (r, Instant::now().duration_since(t))
    }

    #[tokio::test(start_paused = true)]
    async fn watch_fires_after_a_quiet_period() {
        let files: Files = Default::default();
        touch(&files, "/t/webui.db", 4096);
        let mut w = fake_watch(&files);
        w.mark_synced();
        tokio::time::advance(Duration::from_secs(5)).await;
        // Nothing changed: the interval decides.
        assert_eq!(wake_after(&mut w, Duration::from_secs(60)).await, (Wake::Due, Duration::from_secs(60)));
        // One write to the WAL (a file that did not exist): fires 500 ms after it was
        // seen (seen within a 250 ms poll).
        let f = files.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            touch(&f, "/t/webui.db-wal", 8192);
        });
        let (wake, after) = wake_after(&mut w, Duration::from_secs(60)).await;
        assert_eq!(wake, Wake::Changed);
        assert!(after >= Duration::from_millis(600) && after <= Duration::from_millis(1000), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn watch_debounces_a_burst_and_caps_the_delay() {
        let files: Files = Default::default();
        touch(&files, "/t/webui.db", 4096);
        let mut w = fake_watch(&files);
        w.mark_synced();
        tokio::time::advance(Duration::from_secs(5)).await;
        // A burst: a write every 200 ms for 1 s, then quiet: one wake-up, about 500 ms
        // after the last write.
        let f = files.clone();
        tokio::spawn(async move {
            for i in 0..5 {
                touch(&f, "/t/webui.db-wal", 1000 + i);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let (wake, after) = wake_after(&mut w, Duration::from_secs(60)).await;
        assert_eq!(wake, Wake::Changed);
        assert!(after >= Duration::from_millis(1300) && after <= Duration::from_millis(1800), "{after:?}");
        w.mark_synced();
        // Nonstop writes (never 500 ms quiet) still sync, at most max_delay (3 s) after
        // the first change.
        let f = files.clone();
        let writer = tokio::spawn(async move {
            for i in 0.. {
                touch(&f, "/t/webui.db-wal", 2000 + i);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let (wake, after) = wake_after(&mut w, Duration::from_secs(60)).await;
        writer.abort();
        assert_eq!(wake, Wake::Changed);
        assert!(after >= Duration::from_secs(3) && after <= Duration::from_millis(3500), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn watch_allows_at_most_one_sync_per_second() {
        let files: Files = Default::default();
        touch(&files, "/t/webui.db", 4096);
        let mut w = fake_watch(&files);
        let mut syncs = Vec::new();
        let t0 = Instant::now();
        w.mark_synced();
        // A change right after each sync starts: the next one waits for the 1 s gap
        // (quiet would allow it sooner).
        for i in 0..4 {
            touch(&files, "/t/webui.db", 5000 + i);
            let (wake, _) = wake_after(&mut w, Duration::from_secs(60)).await;
            assert_eq!(wake, Wake::Changed);
            syncs.push(Instant::now().duration_since(t0));
            w.mark_synced();
        }
        for pair in syncs.windows(2) {
            assert!(pair[1].checked_sub(pair[0]).unwrap() >= Duration::from_secs(1), "{syncs:?}");
        }
        // A change made during a sync (after mark_synced) fires again; a change that was
        // undone does not.
        touch(&files, "/t/webui.db", 1);
        w.mark_synced();
        let before = files.lock().unwrap().get(Path::new("/t/webui.db")).copied();
        touch(&files, "/t/webui.db", 2);
        let f = files.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            f.lock().unwrap().insert(PathBuf::from("/t/webui.db"), before.unwrap());
        });
        assert_eq!(wake_after(&mut w, Duration::from_secs(10)).await.0, Wake::Due);
    }
}
