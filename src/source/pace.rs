//! Gentle reads of a rollback-journal source. There every slice's SHARED lock is one a
//! writer's COMMIT may have to wait for, and SQLite's busy handler makes a writer that
//! finds a lock sleep 1, 2, 5, 10 ms... (far longer than a short lock was held, and longer
//! still on a loaded machine). So a slice is short (`ROLLBACK_SLICE`), does not start
//! while a writer is in a write transaction (SQLite's RESERVED lock, probed through its
//! own VFS), and ends early, after its current row or page, as soon as one begins.
//! The reader also measures each hold (wall time, and the CPU time its thread got
//! meanwhile: the gap is time spent preempted while holding the lock) and logs them at
//! debug level when the source closes.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Lock-hold statistics of one source handle.
#[derive(Debug, Default, Clone)]
pub struct HoldStats {
    pub holds: u64,
    pub total: Duration,
    /// The longest hold, and the CPU time the reader's thread got during it.
    pub longest: Duration,
    pub longest_cpu: Duration,
    /// Holds longer than 2, 5, 10, 20 and 50 ms.
    pub over: [u64; 5],
    /// Slices put off because a writer was in a write transaction, and the time waited.
    pub deferrals: u64,
    pub deferred: Duration,
    /// Slices cut short because a writer started a write transaction.
    pub yielded: u64,
}

const OVER_MS: [u64; 5] = [2, 5, 10, 20, 50];

/// The start of one lock hold.
pub(crate) struct Hold {
    wall: Instant,
    cpu: Duration,
    waited: Duration,
}

/// How long one slice of a rollback-journal read may hold SQLite's read lock (a writer's
/// COMMIT waits for it). Short, so that the reader is rarely preempted while it holds
/// the lock (BENCHMARKS.md, "Measurements behind the code").
pub const ROLLBACK_SLICE: Duration = Duration::from_micros(500);

thread_local! {
    /// Time this thread's reads spent in SQLite's busy handler (waiting on a writer).
    static WAITED: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// SQLite's own busy-timeout schedule (what `busy_timeout` does), up to `BUSY_TIMEOUT`
/// in all, recording the time spent so that lock holds exclude waits on a writer.
pub(crate) fn busy_handler(n: i32) -> bool {
    const DELAYS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];
    let n = usize::try_from(n).unwrap_or(0);
    let before: u64 = DELAYS.iter().take(n).sum::<u64>() + 100 * n.saturating_sub(DELAYS.len()) as u64;
    if Duration::from_millis(before) >= super::BUSY_TIMEOUT {
        return false;
    }
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(DELAYS[n.min(DELAYS.len() - 1)]));
    WAITED.with(|w| w.set(w.get() + t.elapsed()));
    true
}

fn waited() -> Duration {
    WAITED.with(std::cell::Cell::get)
}

#[derive(Default)]
pub(crate) struct Pace {
    stats: RefCell<HoldStats>,
    /// When the current slice last probed for a writer.
    last_probe: std::cell::Cell<Option<Instant>>,
}

/// How often a slice probes for a writer (a probe costs about 1 us, a small row less):
/// a writer that starts a transaction then finds the lock gone within this long, well
/// inside its first 1 ms busy sleep.
const PROBE_EVERY: Duration = Duration::from_micros(50);

/// How long a slice waits for a writer's transaction to end before it reads anyway (a
/// reader's SHARED lock does not stop a writer's RESERVED one; only its COMMIT waits).
const MAX_DEFER: Duration = Duration::from_millis(250);
/// How often a deferred slice looks again.
const DEFER_POLL: Duration = Duration::from_micros(300);

impl super::Source {
    /// Called before each slice of a rollback-journal read, before it takes the lock: waits
    /// (up to `MAX_DEFER`) while a writer is in a write transaction, whose COMMIT would
    /// otherwise find this slice's lock; then starts the slice on a fresh scheduler slice.
    pub(crate) fn before_slice(&self) {
        let t = Instant::now();
        if self.writer_active() {
            while t.elapsed() < MAX_DEFER && self.writer_active() {
                std::thread::sleep(DEFER_POLL);
            }
            self.pace.deferred(t.elapsed());
        } else {
            std::thread::yield_now();
        }
    }

    /// Whether a writer holds SQLite's RESERVED lock (it is in a write transaction; its
    /// COMMIT will need every reader's lock gone). Asks SQLite's own VFS, which sees both
    /// this process's locks and other processes' (`fcntl(F_GETLK)` on Unix).
    pub(crate) fn writer_active(&self) -> bool {
        use rusqlite::ffi;
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: `handle()` is this open connection's; SQLITE_FCNTL_FILE_POINTER writes one
        // `sqlite3_file*` (owned by SQLite, valid while the connection is open, which it is
        // for the whole call) into `file`. The method table is checked before use.
        unsafe {
            let rc = ffi::sqlite3_file_control(
                self.conn.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_FILE_POINTER,
                (&raw mut file).cast(),
            );
            if rc != ffi::SQLITE_OK || file.is_null() || (*file).pMethods.is_null() {
                return false;
            }
            let Some(check) = (*(*file).pMethods).xCheckReservedLock else { return false };
            let mut reserved = 0;
            check(file, &raw mut reserved) == ffi::SQLITE_OK && reserved != 0
        }
    }

    /// Whether a slice that started at `started` should end now (after at least one row):
    /// its time is up, or a writer has started a write transaction.
    pub(crate) fn slice_over(&self, started: Instant, budget: Duration) -> bool {
        let now = Instant::now();
        if now.duration_since(started) >= budget {
            return true;
        }
        if self.pace.last_probe.get().is_some_and(|p| now.duration_since(p) < PROBE_EVERY) {
            return false;
        }
        self.pace.last_probe.set(Some(now));
        let w = self.writer_active();
        if w {
            self.pace.stats.borrow_mut().yielded += 1;
        }
        w
    }
}

impl Pace {
    pub(crate) fn begin(&self) -> Hold {
        self.last_probe.set(None);
        Hold { wall: Instant::now(), cpu: thread_cpu(), waited: waited() }
    }

    pub(crate) fn end(&self, h: Hold) {
        let wall = h.wall.elapsed().saturating_sub(waited().saturating_sub(h.waited));
        let cpu = thread_cpu().saturating_sub(h.cpu);
        let mut s = self.stats.borrow_mut();
        s.holds += 1;
        s.total += wall;
        if wall > s.longest {
            s.longest = wall;
            s.longest_cpu = cpu;
        }
        for (n, ms) in s.over.iter_mut().zip(OVER_MS) {
            *n += u64::from(wall > Duration::from_millis(ms));
        }
    }

    fn deferred(&self, d: Duration) {
        let mut s = self.stats.borrow_mut();
        s.deferrals += 1;
        s.deferred += d;
    }

    pub(crate) fn stats(&self) -> HoldStats {
        self.stats.borrow().clone()
    }
}

/// CPU time consumed by the calling thread so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests;
