//! The page walk: every leaf of a table's b-tree, with the overflow pages of its cells,
//! hashed as SQLite's pager has them (WAL content included), into a `PageState`
//! (`pages.rs`) that the next sync compares against.

use std::time::Instant;

use rusqlite::OptionalExtension;

use super::btree::{self, TablePage};
use super::pages::PageState;
use super::{Result, Source, SourceError};

/// A consistent walk of one table.
#[derive(Debug)]
pub struct Walked {
    pub state: PageState,
    /// Rows in the table at the walk (the leaves' cells).
    pub rows: i64,
    /// `PRAGMA data_version` of the snapshot walked: another value later means a commit.
    pub data_version: i64,
}

/// How many times a rollback-journal walk starts over when a commit lands in the middle.
const WALK_TRIES: usize = 3;

/// The current `PRAGMA data_version` (inside a transaction: that of its snapshot).
pub fn data_version(src: &Source) -> Result<i64> {
    src.conn.query_row("PRAGMA data_version", [], |r| r.get(0)).map_err(src.err("PRAGMA data_version"))
}

/// Whether the source is in WAL mode (a reader then never blocks the writer).
pub fn is_wal(src: &Source) -> Result<bool> {
    let mode: String =
        src.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(src.err("PRAGMA journal_mode"))?;
    Ok(mode.eq_ignore_ascii_case("wal"))
}

/// Walks `table`'s b-tree. `in_txn`: the caller holds a read transaction (WAL mode), so the
/// walk is one snapshot; otherwise it runs in slices of its own short read transactions
/// and starts over when a commit lands in between. `Ok(None)`: no consistent walk was
/// possible (busy writer, or a page this parser does not understand): take a full pass.
pub fn walk(src: &Source, table: &str, in_txn: bool) -> Result<Option<Walked>> {
    walk_noting(src, table, in_txn, None)
}

/// `walk`, noting in `memo` (cleared first) what a followed walk needs (`followed.rs`).
pub fn walk_noting(src: &Source, table: &str, in_txn: bool, mut memo: Option<&mut Memo>) -> Result<Option<Walked>> {
    let Some(root) = root_of(src, table)? else { return Ok(None) };
    for _ in 0..WALK_TRIES {
        if let Some(m) = memo.as_deref_mut() {
            *m = Memo::default();
        }
        match walk_once(src, table, root, in_txn, memo.as_deref_mut())? {
            Attempt::Done(w) => {
                if let Some(m) = memo {
                    (m.root, m.rows) = (root, w.rows);
                }
                return Ok(Some(w));
            }
            Attempt::Unparsable(why) => {
                tracing::debug!(table, why, "page walk not possible; full pass");
                return Ok(None);
            }
            Attempt::Moved => {}
        }
    }
    Ok(None)
}

/// The root page of `table`'s b-tree; `None` when it has none.
pub(super) fn root_of(src: &Source, table: &str) -> Result<Option<u32>> {
    let root: Option<i64> = src
        .conn
        .prepare_cached("SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = ?1")
        .and_then(|mut s| s.query_row([table], |r| r.get(0)).optional())
        .map_err(src.err(table))?;
    Ok(root.and_then(|r| u32::try_from(r).ok()).filter(|r| *r > 0))
}

/// What a walk learned beyond the page state, for the next followed walk: which leaf each
/// overflow page belonged to, how many rows each leaf held, and the children of each
/// interior page it visited (only those: a page the walk did not reach may have been
/// rewritten unseen while out of the tree).
#[derive(Debug, Default, Clone)]
pub struct Memo {
    /// The first page of the overflow chain each overflow page is in (see `chains`).
    pub(super) owners: std::collections::HashMap<u32, u32>,
    /// Big rows' overflow chains, by their first pages: only chains none of whose pages
    /// was written since they were read (`forget_chains`).
    pub(super) chains: std::collections::HashMap<u32, Chain>,
    pub(super) cells: std::collections::HashMap<u32, u32>,
    pub(super) interior: std::collections::HashMap<u32, Vec<u32>>,
    /// The interior page above each page of the tree (all but the root).
    pub(super) parent: std::collections::HashMap<u32, u32>,
    pub(super) root: u32,
    /// Rows in the table (the leaves' cells).
    pub(super) rows: i64,
}

/// A big row's overflow chain as a walk read it: the leaf whose cell points to it, and
/// the xxh3-64 of the cell's bytes on the leaf and of the whole row. A followed walk that
/// finds a cell with the same bytes on a leaf it reads again takes the row's hash from
/// here, unread: no page of the chain was written since it was read (`Memo::forget_chains`
/// drops a chain at its first written page), and a page no commit wrote holds the same
/// bytes, so the row does too. A changed leaf of `chat` holds
/// several chats, each with an overflow chain of its JSON; only the changed ones are read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chain {
    pub(super) leaf: u32,
    local: u64,
    row: u64,
}

impl Memo {
    /// Drops the chains a page of which is in `changed` (written since the last walk), before
    /// a followed walk reads anything: a chain is known only while none of its pages was
    /// written since it was read, whether or not a cell still points to it (a freed chain's
    /// pages can come back in another chain, or as the same first page of another row).
    pub(super) fn forget_chains(&mut self, changed: &[u32]) {
        for p in changed {
            if let Some(f) = self.owners.get(p) {
                self.chains.remove(f);
            }
        }
    }

    /// The leaf whose row spills to overflow page `pgno`, when the walk noted it.
    pub(super) fn leaf_of_overflow(&self, pgno: u32) -> Option<u32> {
        self.owners.get(&pgno).and_then(|h| self.chains.get(h)).map(|c| c.leaf)
    }

    /// Whether page `pgno` is one of the table's the walk noted (a leaf, an overflow page
    /// of its rows, an interior page).
    pub(super) fn notes(&self, pgno: u32) -> bool {
        self.cells.contains_key(&pgno) || self.owners.contains_key(&pgno) || self.interior.contains_key(&pgno)
    }

    /// The pages of `changed` this walk noted, sorted: all a followed walk or count of this
    /// table needs of the pages committed since (a page it did not note is reached, if at
    /// all, below a noted interior page that was written, and read then). Looked up from
    /// the smaller side: a small table's few noted pages in `changed` (sorted), or each
    /// page of `changed` in a large table's notes; one commit of 1,000 chats names ~8,000
    /// pages, looked up once per table and sync.
    pub(super) fn noted_of(&self, changed: &[u32]) -> Vec<u32> {
        let noted = self.cells.len() + self.owners.len() + self.interior.len();
        let mut v: Vec<u32> = if noted < changed.len() && changed.is_sorted() {
            let keys = self.cells.keys().chain(self.owners.keys()).chain(self.interior.keys());
            keys.copied().filter(|p| changed.binary_search(p).is_ok()).collect()
        } else {
            changed.iter().copied().filter(|p| self.notes(*p)).collect()
        };
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The usable page size (page size less the reserved bytes) from page 1's file header
/// (<https://www.sqlite.org/fileformat2.html>, section 1.3); `None` if it makes no sense.
pub(super) fn usable_size(page1: &[u8]) -> Option<usize> {
    let size = match u16::from_be_bytes(page1.get(16..18)?.try_into().ok()?) {
        1 => 65536,
        n => usize::from(n),
    };
    let usable = size.checked_sub(usize::from(*page1.get(20)?))?;
    (usable >= 480 && size == page1.len()).then_some(usable)
}

enum Attempt {
    Done(Walked),
    Moved,
    Unparsable(String),
}

/// Runs `f` on page `pgno`'s bytes as SQLite's pager has them (WAL content included),
/// without copying them; `Ok(None)`: no such page. Read from the file directly when that
/// is the same (`pagefile.rs`), through `sqlite_dbpage` otherwise.
fn with_page<T>(src: &Source, table: &str, pgno: u32, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
    if let Some(data) = src.pagefile.borrow_mut().get(&src.conn, pgno) {
        return Ok(Some(f(data)));
    }
    with_page_sqlite(src, table, pgno, f)
}

/// `with_page` through SQLite's `sqlite_dbpage` only.
fn with_page_sqlite<T>(src: &Source, table: &str, pgno: u32, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
    let mut stmt = src.conn.prepare_cached("SELECT data FROM sqlite_dbpage WHERE pgno = ?1").map_err(src.err(table))?;
    let mut rows = stmt.query([pgno]).map_err(src.err(table))?;
    match rows.next().map_err(src.err(table))? {
        Some(r) => {
            let data = r.get_ref(0).map_err(src.err(table))?.as_blob().map_err(|e| {
                src.err(table)(rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e)))
            })?;
            Ok(Some(f(data)))
        }
        None => Ok(None),
    }
}

/// A leaf's hash: xxh3-128 over the leaf's bytes and the xxh3-64 hashes of its big rows
/// (their bytes on the leaf and their overflow pages), in cell order; each byte is hashed
/// once. Not cryptographic: it only has to tell a page's versions apart.
type LeafHasher = xxhash_rust::xxh3::Xxh3;

mod followed;
pub use followed::{rows_followed, walk_followed};

/// A walk in progress: the pages still to visit and what the visited ones gave.
struct Progress<'m> {
    stack: Vec<u32>,
    state: PageState,
    rows: i64,
    /// `PRAGMA data_version` and usable page size of the first slice's snapshot: a later
    /// slice that sees others means a commit landed in between.
    version: Option<(i64, usize)>,
    visited: u64,
    memo: Option<&'m mut Memo>,
}

/// More pages than a database can have: the tree has a loop.
const MAX_PAGES: u64 = u32::MAX as u64;

fn walk_once(src: &Source, table: &str, root: u32, in_txn: bool, memo: Option<&mut Memo>) -> Result<Attempt> {
    let mut w = Progress { stack: vec![root], state: PageState::default(), rows: 0, version: None, visited: 0, memo };
    while !w.stack.is_empty() {
        if let Some(a) = one_slice(src, table, in_txn, &mut w)? {
            return Ok(a);
        }
    }
    w.state.sort();
    let data_version = w.version.map(|v| v.0).ok_or_else(|| SourceError::Read {
        path: src.path.clone(),
        table: table.to_string(),
        source: rusqlite::Error::QueryReturnedNoRows,
    })?;
    Ok(Attempt::Done(Walked { state: w.state, rows: w.rows, data_version }))
}

/// One slice of a walk: in the caller's read transaction (`in_txn`), else in its own short
/// one, paced like the rollback-journal reads. `Some`: the walk ends here.
fn one_slice(src: &Source, table: &str, in_txn: bool, w: &mut Progress<'_>) -> Result<Option<Attempt>> {
    if in_txn {
        return walk_slice(src, table, false, w);
    }
    src.before_slice();
    let hold = src.pace.begin();
    let txn = src.read_txn(table)?;
    let walked = walk_slice(src, table, true, w);
    txn.end()?;
    src.pace.end(hold);
    walked
}

/// The usable and the whole page size, from page 1's header as this snapshot has it
/// (reading page 1 takes the read lock, so a `data_version` read next is this snapshot's).
fn geometry(src: &Source, table: &str) -> Result<Option<(usize, usize)>> {
    Ok(with_page_sqlite(src, table, 1, |p| usable_size(p).map(|u| (u, p.len())))?.flatten())
}

/// Visits pages of `w` in the current snapshot until none is left or, when `sliced`, the
/// slice's time is up or a writer waits.
fn walk_slice(src: &Source, table: &str, sliced: bool, w: &mut Progress<'_>) -> Result<Option<Attempt>> {
    let Some((usable, page_size)) = geometry(src, table)? else {
        return Ok(Some(Attempt::Unparsable("page 1 header: unusable page size".into())));
    };
    let dv = data_version(src)?;
    if *w.version.get_or_insert((dv, usable)) != (dv, usable) {
        return Ok(Some(Attempt::Moved));
    }
    src.pagefile.borrow_mut().begin(&src.conn, &src.path, page_size);
    let started = Instant::now();
    while let Some(pgno) = w.stack.pop() {
        w.visited += 1;
        if w.visited > MAX_PAGES {
            return Ok(Some(Attempt::Unparsable("b-tree loop".into())));
        }
        match visit(src, table, pgno, usable, &mut w.state, &mut w.rows, w.memo.as_deref_mut())? {
            Visit::Interior(children) => {
                w.stack.extend(children.iter().rev());
                if let Some(m) = w.memo.as_deref_mut() {
                    m.parent.extend(children.iter().map(|c| (*c, pgno)));
                    m.interior.insert(pgno, children);
                }
            }
            Visit::Leaf => {}
            Visit::Unparsable(why) => return Ok(Some(Attempt::Unparsable(why))),
        }
        if sliced && src.slice_over(started, super::ROLLBACK_SLICE) {
            break;
        }
    }
    Ok(None)
}

/// What visiting one page of a table's b-tree found.
pub(super) enum Visit {
    Interior(Vec<u32>),
    /// A leaf, hashed into the state with its overflow pages.
    Leaf,
    Unparsable(String),
}

/// Reads page `pgno`: an interior page's children, or a leaf hashed (with the overflow
/// pages of its big rows) into `state`, its cells counted into `rows`, noted in `memo`.
pub(super) fn visit(
    src: &Source,
    table: &str,
    pgno: u32,
    usable: usize,
    state: &mut PageState,
    rows: &mut i64,
    mut memo: Option<&mut Memo>,
) -> Result<Visit> {
    let mut h = LeafHasher::new();
    // One hasher per big row, started with the row's bytes on the leaf, and those bytes' hash.
    let mut big: Vec<(LeafHasher, u64)> = Vec::new();
    let parsed = with_page(src, table, pgno, |data| {
        let p = btree::parse_table_page(pgno, data, usable);
        if let Ok(TablePage::Leaf { cells }) = &p {
            h.update(data);
            for c in cells.iter().filter(|c| c.overflow.is_some()) {
                let mut ch = LeafHasher::new();
                let local = &data[c.bytes.clone()];
                ch.update(local);
                big.push((ch, xxhash_rust::xxh3::xxh3_64(local)));
            }
        }
        p
    })?;
    let Some(parsed) = parsed else { return Ok(Visit::Unparsable(format!("page {pgno} missing"))) };
    let cells = match parsed {
        Ok(TablePage::Interior { children }) => return Ok(Visit::Interior(children)),
        Ok(TablePage::Leaf { cells }) => cells,
        Err(e) => return Ok(Visit::Unparsable(e.to_string())),
    };
    let mut big_rows = Vec::with_capacity(big.len());
    for (c, (ch, local)) in cells.iter().filter(|c| c.overflow.is_some()).zip(big) {
        let Some(digest) = row_hash(src, table, pgno, c.overflow, ch, local, memo.as_deref_mut())? else {
            return Ok(Visit::Unparsable(format!("an overflow page of a row on page {pgno} missing")));
        };
        // The leaf's hash covers its big rows through their hashes.
        h.update(&digest.to_be_bytes());
        big_rows.push((c.rowid, digest));
    }
    let hash = h.digest128().to_be_bytes();
    let (min, max) = match (cells.first(), cells.last()) {
        (Some(a), Some(b)) => (a.rowid, b.rowid),
        _ => (1, 0),
    };
    *rows += cells.len() as i64;
    if let Some(m) = memo {
        m.cells.insert(pgno, u32::try_from(cells.len()).unwrap_or(u32::MAX));
    }
    state.push_leaf(pgno, hash, min, max, &big_rows);
    Ok(Visit::Leaf)
}

/// The hash of a big row on leaf `leaf` whose overflow chain starts at `head` (`ch`: a
/// hasher that took the cell's bytes on the leaf, whose hash is `local`): from the memo's
/// chain when the same cell points to a chain no commit wrote since, else reading the chain
/// (and noting it). `None`: a page of the chain is missing.
fn row_hash(
    src: &Source,
    table: &str,
    leaf: u32,
    head: Option<u32>,
    mut ch: LeafHasher,
    local: u64,
    mut memo: Option<&mut Memo>,
) -> Result<Option<u64>> {
    let first = head.filter(|p| *p != 0);
    if let (Some(m), Some(f)) = (memo.as_deref_mut(), first)
        && let Some(c) = m.chains.get_mut(&f).filter(|c| c.local == local)
    {
        c.leaf = leaf;
        return Ok(Some(c.row));
    }
    let mut next = first;
    let mut hops = 0u64;
    while let Some(p) = next.filter(|p| *p != 0) {
        hops += 1;
        if let (Some(m), Some(f)) = (memo.as_deref_mut(), first) {
            m.owners.insert(p, f);
        }
        let found = with_page(src, table, p, |ov| {
            ch.update(ov);
            btree::u32_at(ov, 0)
        })?;
        match found {
            Some(n) if hops < MAX_PAGES => next = n,
            _ => return Ok(None),
        }
    }
    let row = ch.digest();
    if let (Some(m), Some(f)) = (memo, first) {
        m.chains.insert(f, Chain { leaf, local, row });
    }
    Ok(Some(row))
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::Memo;

    /// `noted_of` gives what filtering every changed page through `notes` gives, from
    /// either side (few notes and many changed pages, or the other way round).
    #[test]
    fn noted_of_is_the_changed_pages_the_walk_noted() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for round in 0..400 {
            let mut memo = Memo::default();
            let (notes, changes) = if round % 2 == 0 { (5, 300) } else { (300, 5) };
            for _ in 0..notes {
                let p = rng.random_range(1..1000u32);
                match rng.random_range(0..3) {
                    0 => memo.cells.insert(p, 1).map(|_| ()),
                    1 => memo.owners.insert(p, 2).map(|_| ()),
                    _ => memo.interior.insert(p, vec![]).map(|_| ()),
                };
            }
            let mut changed: Vec<u32> = (0..changes).map(|_| rng.random_range(1..1000u32)).collect();
            changed.sort_unstable();
            changed.dedup();
            let want: Vec<u32> = changed.iter().copied().filter(|p| memo.notes(*p)).collect();
            assert_eq!(memo.noted_of(&changed), want, "round {round}");
        }
    }
}
