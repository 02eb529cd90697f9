//! Page-level change capture: hashes every leaf of a table's b-tree (with the overflow
//! pages of its cells) through SQLite's `sqlite_dbpage` virtual table, which reads pages
//! through the pager and so sees WAL content. Comparing two walks by page number tells
//! which rowid ranges may have changed: a leaf with the same page number and the same
//! bytes holds exactly the same rows, so only the ranges of leaves that changed, appeared
//! or disappeared need re-reading.

use std::time::Instant;

use rusqlite::OptionalExtension;

use super::btree::{self, TablePage};
use super::{Result, Source, SourceError};

/// One leaf of a table b-tree as of a walk. `min > max` for a leaf without cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub pgno: u32,
    pub hash: [u8; 16],
    pub min: i64,
    pub max: i64,
    /// Rowid and xxh3-64 hash (cell bytes and overflow chain) of each of the leaf's rows
    /// that spill to overflow pages: such big rows (a chat's JSON) are few per leaf, so
    /// when the leaf changed, those that did not are told apart and not re-read.
    pub big_rows: Vec<(i64, u64)>,
}

/// Page number of entries that stand for "rows read while the source moved": never a
/// real page, so the next walk always counts them as changed.
pub const SUSPECT_PGNO: u32 = 0;

/// The leaves of one table, sorted by page number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PageState {
    pub leaves: Vec<Leaf>,
}

/// `OWP3`: leaves hashed with xxh3-128, with the hashes of their big rows. Older encodings
/// (`OWP1`: SHA-256; `OWP2`: no row hashes) are not understood: a table recorded with one
/// takes one full pass.
const MAGIC: &[u8; 4] = b"OWP3";
/// A leaf's fixed part: pgno, hash, min, max, number of big rows.
const RECORD: usize = 40;
/// One big row: rowid, hash.
const ROW: usize = 16;

impl PageState {
    /// Compact encoding, bound to the mirror table it describes (`target`): `OWP3`, u16
    /// length + target name, then per leaf a 40-byte record (pgno, hash, min, max, number
    /// of big rows) followed by 16 bytes (rowid, hash) per big row.
    pub fn encode(&self, target: &str) -> Vec<u8> {
        let rows: usize = self.leaves.iter().map(|l| l.big_rows.len()).sum();
        let mut out = Vec::with_capacity(6 + target.len() + self.leaves.len() * RECORD + rows * ROW);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(target.len() as u16).to_be_bytes());
        out.extend_from_slice(target.as_bytes());
        for l in &self.leaves {
            out.extend_from_slice(&l.pgno.to_be_bytes());
            out.extend_from_slice(&l.hash);
            out.extend_from_slice(&l.min.to_be_bytes());
            out.extend_from_slice(&l.max.to_be_bytes());
            out.extend_from_slice(&(l.big_rows.len() as u32).to_be_bytes());
            for (rowid, hash) in &l.big_rows {
                out.extend_from_slice(&rowid.to_be_bytes());
                out.extend_from_slice(&hash.to_be_bytes());
            }
        }
        out
    }

    /// `None` when the bytes are not a page state of `target` (another mirror, a damaged or
    /// older encoding): the table then takes a full pass.
    pub fn decode(b: &[u8], target: &str) -> Option<PageState> {
        if b.get(..4)? != MAGIC {
            return None;
        }
        let n = usize::from(u16::from_be_bytes(b.get(4..6)?.try_into().ok()?));
        if b.get(6..6 + n)? != target.as_bytes() {
            return None;
        }
        let mut body = &b[6 + n..];
        let mut leaves = Vec::with_capacity(body.len() / RECORD);
        let i64_at = |b: &[u8], at: usize| Some(i64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?));
        while !body.is_empty() {
            let r = body.get(..RECORD)?;
            let rows = usize::try_from(u32::from_be_bytes(r[36..40].try_into().ok()?)).ok()?;
            let row_bytes = body.get(RECORD..RECORD.checked_add(rows.checked_mul(ROW)?)?)?;
            leaves.push(Leaf {
                pgno: u32::from_be_bytes(r[0..4].try_into().ok()?),
                hash: r[4..20].try_into().ok()?,
                min: i64_at(r, 20)?,
                max: i64_at(r, 28)?,
                big_rows: row_bytes
                    .chunks_exact(ROW)
                    .map(|c| Some((i64_at(c, 0)?, u64::from_be_bytes(c[8..16].try_into().ok()?))))
                    .collect::<Option<Vec<_>>>()?,
            });
            body = &body[RECORD + row_bytes.len()..];
        }
        Some(PageState { leaves })
    }

    /// Adds entries for rowid ranges read while the source was changing.
    pub fn add_suspect(&mut self, ranges: &[(i64, i64)]) {
        for &(min, max) in &merge_ranges(ranges.to_vec()) {
            self.leaves.push(Leaf { pgno: SUSPECT_PGNO, hash: [0; 16], min, max, big_rows: Vec::new() });
        }
        self.leaves.sort_by_key(|l| l.pgno);
    }
}

/// What changed between a recorded state and a new walk.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Merged, sorted, inclusive rowid ranges to re-read.
    pub ranges: Vec<(i64, i64)>,
    /// Leaves of the new walk that differ from the recorded state.
    pub changed_leaves: usize,
    pub total_leaves: usize,
}

/// Rowid ranges that may differ between the rows `old` describes and those of `new`.
pub fn diff(old: &PageState, new: &PageState) -> Changes {
    let by_pgno: std::collections::HashMap<u32, &Leaf> = old.leaves.iter().map(|l| (l.pgno, l)).collect();
    let mut ranges = Vec::new();
    let mut changed_leaves = 0;
    let mut kept = std::collections::HashSet::new();
    for l in &new.leaves {
        match by_pgno.get(&l.pgno) {
            Some(o) if o.hash == l.hash && l.pgno != SUSPECT_PGNO => {
                kept.insert(l.pgno);
            }
            other => {
                changed_leaves += 1;
                ranges.push((l.min, l.max));
                if let Some(o) = other {
                    ranges.push((o.min, o.max));
                    kept.insert(l.pgno);
                }
            }
        }
    }
    for o in &old.leaves {
        if !kept.contains(&o.pgno) || o.pgno == SUSPECT_PGNO {
            ranges.push((o.min, o.max));
        }
    }
    // Big rows of changed leaves that are byte for byte what was recorded (wherever they
    // were) and not read while the source moved: the mirror already has them.
    let suspect: Vec<(i64, i64)> =
        old.leaves.iter().filter(|o| o.pgno == SUSPECT_PGNO).map(|o| (o.min, o.max)).collect();
    let recorded: std::collections::HashMap<i64, u64> =
        old.leaves.iter().filter(|o| o.pgno != SUSPECT_PGNO).flat_map(|o| o.big_rows.iter().copied()).collect();
    let mut same: Vec<i64> = new
        .leaves
        .iter()
        .filter(|l| !kept_same(&by_pgno, l))
        .flat_map(|l| l.big_rows.iter())
        .filter(|(r, h)| recorded.get(r) == Some(h) && !suspect.iter().any(|(a, b)| a <= r && r <= b))
        .map(|(r, _)| *r)
        .collect();
    same.sort_unstable();
    Changes { ranges: without_points(merge_ranges(ranges), &same), changed_leaves, total_leaves: new.leaves.len() }
}

/// Whether `l` is recorded in `old` with the same hash (an unchanged leaf).
fn kept_same(old: &std::collections::HashMap<u32, &Leaf>, l: &Leaf) -> bool {
    l.pgno != SUSPECT_PGNO && old.get(&l.pgno).is_some_and(|o| o.hash == l.hash)
}

/// Sorted disjoint `ranges` less the sorted rowids `points`.
fn without_points(ranges: Vec<(i64, i64)>, points: &[i64]) -> Vec<(i64, i64)> {
    let mut out = Vec::with_capacity(ranges.len());
    let mut p = points.iter().copied().peekable();
    for (mut a, b) in ranges {
        while let Some(&x) = p.peek() {
            if x > b {
                break;
            }
            p.next();
            if x < a {
                continue;
            }
            if x > a {
                out.push((a, x - 1));
            }
            if x == b {
                a = b;
                break;
            }
            a = x + 1;
        }
        if a <= b && !(a == b && points.binary_search(&a).is_ok()) {
            out.push((a, b));
        }
    }
    out
}

/// Sorted, disjoint, inclusive ranges covering the given ones (empty ones dropped).
pub fn merge_ranges(mut r: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    r.retain(|(a, b)| a <= b);
    r.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

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
    let root: Option<i64> = src
        .conn
        .prepare_cached("SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = ?1")
        .and_then(|mut s| s.query_row([table], |r| r.get(0)).optional())
        .map_err(src.err(table))?;
    let Some(root) = root.and_then(|r| u32::try_from(r).ok()).filter(|r| *r > 0) else { return Ok(None) };
    for _ in 0..WALK_TRIES {
        match walk_once(src, table, root, in_txn)? {
            Attempt::Done(w) => return Ok(Some(w)),
            Attempt::Unparsable(why) => {
                tracing::debug!(table, why, "page walk not possible; full pass");
                return Ok(None);
            }
            Attempt::Moved => continue,
        }
    }
    Ok(None)
}

/// The usable page size (page size less the reserved bytes) from page 1's file header
/// (<https://www.sqlite.org/fileformat2.html>, section 1.3); `None` if it makes no sense.
fn usable_size(page1: &[u8]) -> Option<usize> {
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
/// without copying them; `Ok(None)`: no such page.
fn with_page<T>(src: &Source, table: &str, pgno: u32, f: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
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

fn walk_once(src: &Source, table: &str, root: u32, in_txn: bool) -> Result<Attempt> {
    let mut stack = vec![root];
    let mut leaves = Vec::new();
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
            let Some(usable) = with_page(src, table, 1, usable_size)?.flatten() else {
                return Ok(Some(Attempt::Unparsable("page 1 header: unusable page size".into())));
            };
            let dv = data_version(src)?;
            if *version.get_or_insert((dv, usable)) != (dv, usable) {
                return Ok(Some(Attempt::Moved));
            }
            let started = Instant::now();
            while let Some(pgno) = stack.pop() {
                visited += 1;
                if visited > max_pages {
                    return Ok(Some(Attempt::Unparsable("b-tree loop".into())));
                }
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
                let Some(parsed) = parsed else {
                    return Ok(Some(Attempt::Unparsable(format!("page {pgno} missing"))));
                };
                match parsed {
                    Ok(TablePage::Interior { children }) => stack.extend(children.into_iter().rev()),
                    Ok(TablePage::Leaf { cells }) => {
                        let mut big_rows = Vec::with_capacity(big.len());
                        for (c, mut ch) in cells.iter().filter(|c| c.overflow.is_some()).zip(big) {
                            let mut next = c.overflow;
                            let mut hops = 0u64;
                            while let Some(p) = next.filter(|p| *p != 0) {
                                hops += 1;
                                let found = with_page(src, table, p, |ov| {
                                    ch.update(ov);
                                    btree::u32_at(ov, 0)
                                })?;
                                match found {
                                    Some(n) if hops < max_pages => next = n,
                                    _ => return Ok(Some(Attempt::Unparsable(format!("overflow page {p} missing")))),
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
                        rows += cells.len() as i64;
                        leaves.push(Leaf { pgno, hash, min, max, big_rows });
                    }
                    Err(e) => return Ok(Some(Attempt::Unparsable(e.to_string()))),
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
    leaves.sort_by_key(|l| l.pgno);
    Ok(Attempt::Done(Walked {
        state: PageState { leaves },
        rows,
        data_version: version.map(|v| v.0).ok_or_else(|| SourceError::Read {
            path: src.path.clone(),
            table: table.to_string(),
            source: rusqlite::Error::QueryReturnedNoRows,
        })?,
    }))
}

#[cfg(test)]
mod tests;
