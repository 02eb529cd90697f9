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
            Attempt::Done(w) => return Ok(Some(w)),
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
/// overflow page belonged to, and how many rows each leaf held.
#[derive(Debug, Default, Clone)]
pub struct Memo {
    pub(super) owners: std::collections::HashMap<u32, u32>,
    pub(super) cells: std::collections::HashMap<u32, u32>,
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

fn walk_once(src: &Source, table: &str, root: u32, in_txn: bool, mut memo: Option<&mut Memo>) -> Result<Attempt> {
    let mut stack = vec![root];
    let mut state = PageState::default();
    let mut rows = 0i64;
    let mut version: Option<(i64, usize)> = None;
    let max_pages = u64::from(u32::MAX);
    let mut visited = 0u64;
    while !stack.is_empty() {
        // One slice: its own read transaction unless the caller holds one.
        let hold = (!in_txn).then(|| {
            src.before_slice();
            src.pace.begin()
        });
        if hold.is_some() {
            src.conn.execute_batch("BEGIN").map_err(src.err(table))?;
        }
        let slice = (|| -> Result<Option<Attempt>> {
            // Reading page 1 takes the read lock, so data_version is this snapshot's; its
            // header gives the page geometry the tree is parsed with.
            let geometry = with_page_sqlite(src, table, 1, |p| usable_size(p).map(|u| (u, p.len())))?.flatten();
            let Some((usable, page_size)) = geometry else {
                return Ok(Some(Attempt::Unparsable("page 1 header: unusable page size".into())));
            };
            let dv = data_version(src)?;
            if *version.get_or_insert((dv, usable)) != (dv, usable) {
                return Ok(Some(Attempt::Moved));
            }
            src.pagefile.borrow_mut().begin(&src.conn, &src.path, page_size);
            let started = Instant::now();
            while let Some(pgno) = stack.pop() {
                visited += 1;
                if visited > max_pages {
                    return Ok(Some(Attempt::Unparsable("b-tree loop".into())));
                }
                match visit(src, table, pgno, usable, &mut state, &mut rows, memo.as_deref_mut())? {
                    Visit::Interior(children) => stack.extend(children.into_iter().rev()),
                    Visit::Leaf => {}
                    Visit::Unparsable(why) => return Ok(Some(Attempt::Unparsable(why))),
                }
                if !in_txn && src.slice_over(started, super::ROLLBACK_SLICE) {
                    break;
                }
            }
            Ok(None)
        })();
        if let Some(hold) = hold {
            src.conn.execute_batch("COMMIT").map_err(src.err(table))?;
            src.pace.end(hold);
        }
        if let Some(a) = slice? {
            return Ok(a);
        }
    }
    state.sort();
    Ok(Attempt::Done(Walked {
        state,
        rows,
        data_version: version.map(|v| v.0).ok_or_else(|| SourceError::Read {
            path: src.path.clone(),
            table: table.to_string(),
            source: rusqlite::Error::QueryReturnedNoRows,
        })?,
    }))
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
    let max_pages = u64::from(u32::MAX);
    let mut h = LeafHasher::new();
    // One hasher per big row, started with the row's bytes on the leaf.
    let mut big: Vec<LeafHasher> = Vec::new();
    let parsed = with_page(src, table, pgno, |data| {
        let p = btree::parse_table_page(pgno, data, usable);
        if let Ok(TablePage::Leaf { cells }) = &p {
            h.update(data);
            for c in cells.iter().filter(|c| c.overflow.is_some()) {
                let mut ch = LeafHasher::new();
                ch.update(&data[c.bytes.clone()]);
                big.push(ch);
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
    for (c, mut ch) in cells.iter().filter(|c| c.overflow.is_some()).zip(big) {
        let mut next = c.overflow;
        let mut hops = 0u64;
        while let Some(p) = next.filter(|p| *p != 0) {
            hops += 1;
            if let Some(m) = memo.as_deref_mut() {
                m.owners.insert(p, pgno);
            }
            let found = with_page(src, table, p, |ov| {
                ch.update(ov);
                btree::u32_at(ov, 0)
            })?;
            match found {
                Some(n) if hops < max_pages => next = n,
                _ => return Ok(Visit::Unparsable(format!("overflow page {p} missing"))),
            }
        }
        let digest = ch.digest();
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

/// A walk that reads only what changed, given the recorded state of the last walk
/// (`old`, with the `memo` that walk noted) and the pages committed since its snapshot
/// (`changed`, sorted; from the WAL follower, `wal.rs`). Every interior page is read, to
/// place leaves new to the table; a leaf is copied from `old` unread when it was a leaf
/// there and neither it nor an overflow page of its rows is in `changed` (a page no commit
/// wrote holds the same bytes). Call inside the read transaction whose snapshot `changed`
/// reaches (WAL mode). `Ok(None)`: not possible (suspect ranges recorded, a leaf the memo
/// does not know, a page not understood): walk in full. Returns the walk and the pages read.
pub fn walk_followed(
    src: &Source,
    table: &str,
    old: &super::pages::Recorded<'_>,
    changed: &[u32],
    memo: &mut Memo,
) -> Result<Option<(Walked, u64)>> {
    let Some(root) = root_of(src, table)? else { return Ok(None) };
    let geometry = with_page_sqlite(src, table, 1, |p| usable_size(p).map(|u| (u, p.len())))?.flatten();
    let Some((usable, page_size)) = geometry else { return Ok(None) };
    let data_version = data_version(src)?;
    src.pagefile.borrow_mut().begin(&src.conn, &src.path, page_size);
    let old: Vec<super::pages::Leaf<'_>> = old.leaves().collect();
    if old.first().is_some_and(|l| l.pgno == super::pages::SUSPECT_PGNO) {
        return Ok(None);
    }
    let mut dirty: std::collections::HashSet<u32> = changed.iter().copied().collect();
    dirty.extend(changed.iter().filter_map(|p| memo.owners.get(p)));
    let read_before = { src.pagefile.borrow().direct + src.pagefile.borrow().via_sqlite };
    let (mut state, mut rows, mut stack, mut visited) = (PageState::default(), 0i64, vec![root], 0u64);
    while let Some(pgno) = stack.pop() {
        visited += 1;
        if visited > u64::from(u32::MAX) {
            return Ok(None);
        }
        if !dirty.contains(&pgno)
            && let Ok(i) = old.binary_search_by_key(&pgno, |l| l.pgno)
        {
            let Some(cells) = memo.cells.get(&pgno) else { return Ok(None) };
            let l = old[i];
            state.push_leaf(pgno, l.hash, l.min, l.max, &l.big_rows.iter().collect::<Vec<_>>());
            rows += i64::from(*cells);
            continue;
        }
        match visit(src, table, pgno, usable, &mut state, &mut rows, Some(memo))? {
            Visit::Interior(children) => stack.extend(children.into_iter().rev()),
            Visit::Leaf => {}
            Visit::Unparsable(why) => {
                tracing::debug!(table, why, "followed walk not possible; full walk");
                return Ok(None);
            }
        }
    }
    state.sort();
    let read = { src.pagefile.borrow().direct + src.pagefile.borrow().via_sqlite } - read_before;
    Ok(Some((Walked { state, rows, data_version }, read)))
}
