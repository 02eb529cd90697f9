//! The WAL followers of this process, one per source file (`register`), and what each
//! table's last walk left for the next one to follow on from (`TableMemo`). owsyncd
//! registers a follower per WAL-mode tenant and polls it between syncs; a sync finds it by
//! the source's path. With none registered (`owsyncctl sync --once`), a sync walks as before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::Source;
use super::pages::Memo;
use super::wal::{Mark, WalFollower, snapshot_pos};

/// What a table's last walk left: the snapshot it walked (a mark of the follower that
/// placed it), the digest of the page state it made, and its memo. Used only when the
/// table's recorded state is exactly that state (same digest), i.e. its sync committed.
pub struct TableMemo {
    pub instance: u64,
    pub mark: Mark,
    pub digest: u128,
    /// The walk's memo (its `rows`: the table's rows at the walk).
    pub memo: Memo,
}

/// A follower, the memos of the tables of its database, and their recorded page states.
pub struct Followed {
    pub follower: WalFollower,
    pub tables: HashMap<String, TableMemo>,
    /// What this process's last sync of each table recorded, so that the next one need not
    /// read it back from PostgreSQL (a 2 GB tenant's states are ~10 MB).
    pub recorded: HashMap<String, RecordedState>,
}

/// A table's page state as a sync in this process recorded it: usable as the recorded
/// state only while its `table_state` row is still the version that sync wrote
/// (`store::table_state::recorded` compares them), whoever wrote to it since.
#[derive(Clone)]
pub struct RecordedState {
    /// The `table_state` row's version (`store::table_state::recorded`).
    pub version: String,
    /// The state (`PageState::encode`) and its xxh3-128.
    pub state: Arc<Vec<u8>>,
    pub digest: u128,
    /// The base the row holds (the state itself, or the base its delta is against).
    pub base: Arc<Vec<u8>>,
}

/// A recorded state to keep once its row is written (`remember`), or as it is when the
/// table needed no write.
pub struct Keep {
    handle: Handle,
    table: String,
    state: RecordedState,
}

impl Keep {
    pub fn new(handle: Handle, table: &str, state: RecordedState) -> Keep {
        Keep { handle, table: table.to_string(), state }
    }

    /// Keeps the state, as the row version `version` (the one written), or as the version
    /// it was read at when `None` (nothing was written).
    pub fn remember(self, version: Option<String>) {
        let mut state = self.state;
        if let Some(v) = version {
            state.version = v;
        }
        let mut f = self.handle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.recorded.insert(self.table, state);
    }
}

/// The recorded states this process keeps for the database at `path` (shared, not copied).
pub fn recorded_states(path: &Path) -> HashMap<String, RecordedState> {
    let Some(h) = lookup(path) else { return HashMap::new() };
    let f = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f.recorded.clone()
}

/// Drops the recorded state kept for `table` of the database at `path` (its sync recorded
/// none).
pub fn forget_recorded(path: &Path, table: &str) {
    if let Some(h) = lookup(path) {
        h.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recorded.remove(table);
    }
}

pub type Handle = Arc<Mutex<Followed>>;

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Mutex<Followed>>>> {
    static R: std::sync::OnceLock<Mutex<HashMap<PathBuf, Weak<Mutex<Followed>>>>> = std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

/// The follower of the database at `path`, made if there is none yet (it reads the WAL at
/// its first `poll`). It lasts while someone holds a handle (owsyncd's follower task).
pub fn register(path: &Path) -> Handle {
    let mut r = registry().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    r.retain(|_, w| w.strong_count() > 0);
    if let Some(h) = r.get(path).and_then(Weak::upgrade) {
        return h;
    }
    let h = Arc::new(Mutex::new(Followed {
        follower: WalFollower::new(path),
        tables: HashMap::new(),
        recorded: HashMap::new(),
    }));
    r.insert(path.to_path_buf(), Arc::downgrade(&h));
    h
}

/// Stops finding the follower of `path` (syncs then walk every leaf).
pub fn unregister(path: &Path) {
    registry().lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(path);
}

/// The follower registered for `path`, if any.
pub fn lookup(path: &Path) -> Option<Handle> {
    registry().lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(path).and_then(Weak::upgrade)
}

/// What a table's walk may follow on from, taken inside its read transaction.
pub struct Start {
    pub handle: Handle,
    /// This snapshot's mark, when the follower could place it.
    pub mark: Option<(u64, Mark)>,
    /// The pages committed since the table's last walk, and that walk's memo and digest.
    pub since: Option<(Vec<u32>, TableMemo)>,
}

/// Places the snapshot of `conn`'s open read transaction (it must have read something)
/// and takes `table`'s memo.
pub fn start(handle: Handle, conn: &rusqlite::Connection, table: &str) -> Start {
    let pos = snapshot_pos(conn);
    let mut f = handle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(e) = f.follower.poll() {
        tracing::debug!(error = %e, "WAL follower: read failed");
    }
    let instance = f.follower.instance();
    let mark = pos.and_then(|p| f.follower.mark_at(&p)).map(|m| (instance, m));
    let memo = f.tables.remove(table).filter(|m| m.instance == instance);
    let since = memo.and_then(|m| f.follower.changed_since(m.mark).map(|c| (c, m)));
    drop(f);
    Start { handle, mark, since }
}

/// Keeps what `table`'s walk left, for the next sync to follow on from.
pub fn finish(handle: &Handle, table: &str, memo: TableMemo) {
    let mut f = handle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f.tables.insert(table.to_string(), memo);
    // No sync will ask about a mark older than the oldest a table keeps.
    if let Some(oldest) = f.tables.values().map(|m| m.mark).min() {
        f.follower.forget_until(oldest);
    }
}

/// The row count of `table` at the snapshot of `src`'s open read transaction (it must have
/// read something), when the follower of `src`'s file can tell it without a count: from the
/// table's last walk, unchanged when no commit since wrote a page of its b-tree that walk
/// noted (adding, moving or removing a row writes a leaf, or the interior page above a new
/// one), else reading only the pages written (`walk::rows_followed`). `None`: count them.
pub fn vouched_rows(src: &Source, table: &str) -> Option<i64> {
    let handle = lookup(src.path())?;
    let pos = snapshot_pos(&src.conn)?;
    let mut f = handle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(e) = f.follower.poll() {
        tracing::debug!(error = %e, "WAL follower: read failed");
    }
    // Placed: the follower has read every commit up to this snapshot.
    f.follower.mark_at(&pos)?;
    let m = f.tables.get(table).filter(|m| m.instance == f.follower.instance())?;
    let noted = m.memo.noted_of(&f.follower.changed_since(m.mark)?);
    if noted.is_empty() {
        return Some(m.memo.rows);
    }
    super::walk::rows_followed(src, table, &noted, &m.memo).ok().flatten()
}
