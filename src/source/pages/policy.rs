//! The page-state policy of a table's pass, in one place: how its changes are found (the
//! pages the WAL follower names, a walk of every leaf, or none: a full pass), whether its
//! rows are read incrementally or in full, and how its new state is recorded (the whole
//! state as a new base, or a delta against the recorded base).

use std::borrow::Cow;
use std::sync::Arc;

use super::{Memo, Recorded, Walked, delta, diff_recorded, walk_followed, walk_noting};
use crate::source::follow::{self, Keep, RecordedState, TableMemo};
use crate::source::{Result, Source, TableInfo};

/// A table's page state as `table_state` holds it: a base state (`pages`) and, when a sync
/// wrote only what changed since, a delta against it (`pages_delta`, `pages::delta`).
pub struct Stored {
    pub base: Arc<Vec<u8>>,
    pub delta: Option<Vec<u8>>,
    /// The state base and delta make, with its xxh3-128, when this process already has it
    /// (`follow::RecordedState`): neither made nor hashed again.
    pub made: Option<(Arc<Vec<u8>>, u128)>,
    /// The `table_state` row's version it was read at.
    pub version: String,
}

impl Stored {
    /// What this process kept of the row at `version`.
    pub fn kept(k: RecordedState) -> Stored {
        Stored { base: k.base, delta: None, made: Some((k.state, k.digest)), version: k.version }
    }

    /// The state as of the last sync; `None` when the delta does not fit the base (then
    /// there is no usable state: a full pass).
    fn state(&self, target: &str) -> Option<Cow<'_, [u8]>> {
        match (&self.made, &self.delta) {
            (Some((made, _)), _) => Some(Cow::Borrowed(made.as_slice())),
            (None, None) => Some(Cow::Borrowed(self.base.as_slice())),
            (None, Some(d)) => delta::apply(&self.base, d, target).map(Cow::Owned),
        }
    }
}

/// How a sync records a table's new page state.
pub enum StateWrite {
    /// The whole state, as the new base (no delta).
    Full(Arc<Vec<u8>>),
    /// Only what changed since the recorded base, which stays.
    Delta(Vec<u8>),
}

impl StateWrite {
    /// A delta when there is a base to make it against and it is at most a quarter of the
    /// whole state; otherwise the whole state, which then becomes the base.
    fn choose(base: Option<&[u8]>, new: &Arc<Vec<u8>>, target: &str) -> StateWrite {
        match base.and_then(|b| delta::between(b, new, target)) {
            Some(d) if d.len() * 4 <= new.len() => StateWrite::Delta(d),
            _ => StateWrite::Full(new.clone()),
        }
    }
}

/// One table's capture, from its walk to the state its sync records. Begun and finished
/// inside the table's read transaction (WAL mode), so the state describes the rows read.
pub struct Capture {
    /// The walk; `None`: no usable walk (the pass is full and records no state).
    pub walked: Option<Walked>,
    /// The rowid ranges to re-read; `None`: read every row.
    pub ranges: Option<Vec<(i64, i64)>>,
    /// Pages the walk read.
    pub pages_read: u64,
    followed: bool,
    table: String,
    memo: Option<Memo>,
    start: Option<follow::Start>,
    old_digest: Option<u128>,
    /// The recorded base the next state may be a delta against.
    base: Option<Arc<Vec<u8>>>,
    /// The version of the `table_state` row the recorded state was read at.
    version: Option<String>,
    /// The recorded state and the table's rows, when the follower vouched that no page of
    /// the table was written since the walk that made it: nothing was walked.
    same: Option<(Arc<Vec<u8>>, i64)>,
}

/// The state to record once a table's rows are read.
pub struct Settled {
    pub pages: StateWrite,
    /// Rows in the table at the walk.
    pub rows: i64,
    /// No leaf changed since the recorded state and nothing was read: the mirror and the
    /// recorded state are already right, so the table needs no PostgreSQL transaction (and
    /// `pages` is the whole state, not to be written).
    pub unchanged: bool,
    /// The state for the sync's follower to keep once recorded (with a follower only).
    pub keep: Option<Keep>,
}

impl Capture {
    /// Walks `t` (only what the WAL follower names when it can vouch for the interval since
    /// the walk that made the recorded state `old`, else every leaf) and compares the walk
    /// with `old`: an incremental pass when at most half the leaves changed.
    pub fn begin(
        src: &Source,
        t: &TableInfo,
        old: Option<Stored>,
        target: &str,
        in_txn: bool,
        mut start: Option<follow::Start>,
    ) -> Result<Capture> {
        // The recorded state as stored (or as its delta makes it); its digest is kept, to
        // tell an unchanged table at the end, and its base, to record the next state against.
        let recorded = old.as_ref().and_then(|s| s.state(target));
        let known = old.as_ref().and_then(|s| s.made.as_ref()).map(|m| m.1);
        let old_digest = recorded.as_deref().map(|r| known.unwrap_or_else(|| xxhash_rust::xxh3::xxh3_128(r)));
        let same = match (&old, &recorded) {
            (Some(old), Some(r)) => untouched(src, &mut start, old_digest, t)?.map(|(memo, rows)| {
                let state = old.made.as_ref().map_or_else(|| Arc::new(r.to_vec()), |m| m.0.clone());
                (memo, state, rows)
            }),
            _ => None,
        };
        // Nothing of the table was written: nothing to walk, nothing to read.
        let (walked, ranges, followed, pages_read, memo, same) = if let Some((memo, state, rows)) = same {
            (None, Some(Vec::new()), true, 0, Some(memo), Some((state, rows)))
        } else {
            let w = walk_and_compare(src, t, recorded.as_deref(), target, old_digest, in_txn, &mut start)?;
            (w.0, w.1, w.2, w.3, w.4, None)
        };
        let usable = recorded.is_some();
        // The recorded state is freed before any row is read.
        drop(recorded);
        let (base, version) = old.map(|s| (s.base, s.version)).filter(|_| usable).unzip();
        let table = t.name.clone();
        Ok(Capture { walked, ranges, pages_read, followed, table, memo, start, old_digest, base, version, same })
    }

    /// How the changes were found: `followed` (the pages the WAL follower named),
    /// `changed-pages` (a walk of every leaf), `full` (every row read).
    pub fn how(&self) -> &'static str {
        match (&self.ranges, self.followed) {
            (None, _) => "full",
            (Some(_), true) => "followed",
            (Some(_), false) => "changed-pages",
        }
    }

    /// The state to record, with the rowid ranges read while the source moved (`suspect`)
    /// and whether any row was read; `None` with no usable walk. Leaves the follower what
    /// the next sync follows on from, should this state be recorded.
    pub fn finish(mut self, suspect: &[(i64, i64)], read_any: bool, target: &str) -> Option<Settled> {
        let (pages, digest, rows) = match (self.same.take(), self.walked.take()) {
            // Nothing of the table was written since its recorded state: that state stands.
            (Some((state, rows)), _) => (state, self.old_digest?, rows),
            (None, w) => {
                let w = w?;
                let mut state = w.state;
                state.add_suspect(suspect);
                let pages = Arc::new(state.encode(target));
                let digest = xxhash_rust::xxh3::xxh3_128(&pages);
                (pages, digest, w.rows)
            }
        };
        let unchanged = !read_any && self.old_digest == Some(digest);
        if let (Some(s), Some(memo)) = (&self.start, self.memo)
            && let Some((instance, mark)) = s.mark
        {
            follow::finish(&s.handle, &self.table, TableMemo { instance, mark, digest, memo });
        }
        // An unchanged table records nothing: no delta to make.
        let write = match (&self.base, unchanged) {
            (Some(base), false) => StateWrite::choose(Some(base), &pages, target),
            _ => StateWrite::Full(pages.clone()),
        };
        let keep = self.start.map(|s| {
            // The base the row holds afterwards: the recorded one when nothing is written or
            // only a delta against it.
            let base = match (&write, self.base) {
                (StateWrite::Delta(_), Some(base)) => base,
                (_, Some(base)) if unchanged => base,
                _ => pages.clone(),
            };
            let version = self.version.unwrap_or_default();
            Keep::new(s.handle, &self.table, RecordedState { version, state: pages, digest, base })
        });
        Some(Settled { pages: write, rows, unchanged, keep })
    }
}

/// The memo and rows of `t`'s last walk when the follower vouches that no page of `t` that
/// walk noted was written since, the table has the same root, and that walk made the
/// recorded state (`digest`): the table is as recorded (a page it did not note is reached
/// only below a noted page that was written). Takes the memo out of `start`; leaves it
/// there otherwise.
fn untouched(
    src: &Source,
    start: &mut Option<follow::Start>,
    digest: Option<u128>,
    t: &TableInfo,
) -> Result<Option<(Memo, i64)>> {
    let Some(s) = start.as_mut() else { return Ok(None) };
    let Some((changed, tm)) = s.since.as_ref() else { return Ok(None) };
    if t.without_rowid || digest != Some(tm.digest) || !tm.memo.noted_of(changed).is_empty() {
        return Ok(None);
    }
    if crate::source::walk::root_of(src, &t.name)? != Some(tm.memo.root) {
        return Ok(None);
    }
    let Some((_, tm)) = s.since.take() else { return Ok(None) };
    let rows = tm.memo.rows;
    Ok(Some((tm.memo, rows)))
}

/// What a walk of `t` found against its `recorded` state: the walk, the rowid ranges to
/// re-read (`None`: all, when there is no recorded state or most leaves changed), whether
/// it was followed, the pages it read and its memo.
type Compared = (Option<Walked>, Option<Vec<(i64, i64)>>, bool, u64, Option<Memo>);

fn walk_and_compare(
    src: &Source,
    t: &TableInfo,
    recorded: Option<&[u8]>,
    target: &str,
    digest: Option<u128>,
    in_txn: bool,
    start: &mut Option<follow::Start>,
) -> Result<Compared> {
    let parsed = recorded.and_then(|b| Recorded::parse(b, target));
    let (walked, followed, pages_read, memo) = walk_table(src, t, parsed.as_ref(), digest, in_txn, start)?;
    let ranges = match (&walked, &parsed) {
        (Some(w), Some(o)) => {
            let c = diff_recorded(o, &w.state);
            // Most leaves changed (a VACUUM, a bulk rewrite): a plain full pass is cheaper.
            (c.changed_leaves * 2 <= c.total_leaves).then_some(c.ranges)
        }
        _ => None,
    };
    Ok((walked, ranges, followed, pages_read, memo))
}

/// Walks `t`: only what the WAL follower names when it can vouch for the interval since
/// the walk that made the recorded state (`recorded`, parsed, whose digest is `digest`),
/// else every leaf. Returns the walk, whether it was followed, the pages it read and its
/// memo.
fn walk_table(
    src: &Source,
    t: &TableInfo,
    recorded: Option<&Recorded<'_>>,
    digest: Option<u128>,
    in_txn: bool,
    start: &mut Option<follow::Start>,
) -> Result<(Option<Walked>, bool, u64, Option<Memo>)> {
    if t.without_rowid {
        return Ok((None, false, 0, None));
    }
    let before = src.pages_read();
    if let Some((changed, mut tm)) = start.as_mut().and_then(|s| s.since.take())
        && let Some(old) = recorded.filter(|_| digest == Some(tm.digest))
        && let Some((w, read)) = walk_followed(src, &t.name, old, &changed, &mut tm.memo)?
    {
        return Ok((Some(w), true, read, Some(tm.memo)));
    }
    let mut memo = start.is_some().then(Memo::default);
    let walked = walk_noting(src, &t.name, in_txn, memo.as_mut())?;
    Ok((walked, false, src.pages_read() - before, memo))
}
