//! Page-level change capture: the state of every leaf of a table's b-tree (with the
//! overflow pages of its cells), as the walk (`walk.rs`, reading pages through
//! `pagefile.rs`) hashed them. Comparing two walks by page number tells
//! which rowid ranges may have changed: a leaf with the same page number and the same
//! bytes holds exactly the same rows, so only the ranges of leaves that changed, appeared
//! or disappeared need re-reading.
//!
//! Memory: a state is one flat array of fixed-size leaf entries plus one array of big
//! rows, with no allocation per leaf; a recorded state is compared as the bytes it was
//! stored as (`Recorded`), never decoded; the comparison is a merge of two page-sorted
//! sequences that keeps only what changed. At 100k chats a state has ~150k leaves.

pub use super::walk::{Memo, Walked, data_version, is_wal, walk, walk_followed, walk_noting};

pub mod delta;
mod policy;

pub use policy::{Capture, Settled, StateWrite, Stored};

/// One leaf of a table b-tree as of a walk. `min > max` for a leaf without cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf<'a> {
    pub pgno: u32,
    pub hash: [u8; 16],
    pub min: i64,
    pub max: i64,
    /// Rowid and xxh3-64 hash (cell bytes and overflow chain) of each of the leaf's rows
    /// that spill to overflow pages: such big rows (a chat's JSON) are few per leaf, so
    /// when the leaf changed, those that did not are told apart and not re-read.
    pub big_rows: BigRows<'a>,
}

/// A leaf's big rows, as their encoded 16-byte records (rowid, hash; big-endian).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BigRows<'a>(&'a [u8]);

impl<'a> BigRows<'a> {
    pub fn len(&self) -> usize {
        self.0.len() / ROW
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(rowid, hash)` in the leaf's cell order.
    pub fn iter(&self) -> impl Iterator<Item = (i64, u64)> + 'a {
        self.0.chunks_exact(ROW).map(row_at)
    }
}

impl std::fmt::Debug for BigRows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

fn row_at(c: &[u8]) -> (i64, u64) {
    let mut rowid = [0u8; 8];
    let mut hash = [0u8; 8];
    rowid.copy_from_slice(&c[..8]);
    hash.copy_from_slice(&c[8..ROW]);
    (i64::from_be_bytes(rowid), u64::from_be_bytes(hash))
}

/// Page number of entries that stand for "rows read while the source moved": never a
/// real page, so the next walk always counts them as changed.
pub const SUSPECT_PGNO: u32 = 0;

/// A leaf in a `PageState`: fixed size (48 bytes); its big rows are `rows[at..at + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    pgno: u32,
    rows_len: u32,
    rows_at: usize,
    hash: [u8; 16],
    min: i64,
    max: i64,
}

/// The leaves of one table (sorted by page number once `sort` ran): one flat array of
/// leaf entries and one of big-row records, in the stored encoding's byte order.
#[derive(Debug, Clone, Default)]
pub struct PageState {
    entries: Vec<Entry>,
    rows: Vec<[u8; ROW]>,
}

impl PartialEq for PageState {
    fn eq(&self, other: &PageState) -> bool {
        self.entries.len() == other.entries.len() && self.leaves().eq(other.leaves())
    }
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
        let len = 6 + target.len() + self.entries.len() * RECORD + self.rows.len() * ROW;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(target.len() as u16).to_be_bytes());
        out.extend_from_slice(target.as_bytes());
        for l in self.leaves() {
            put_leaf(&mut out, &l);
        }
        out
    }

    /// `None` when the bytes are not a page state of `target` (see `Recorded::parse`).
    pub fn decode(b: &[u8], target: &str) -> Option<PageState> {
        let rec = Recorded::parse(b, target)?;
        let mut state = PageState { entries: Vec::with_capacity(rec.leaves), rows: Vec::new() };
        for l in rec.leaves() {
            state.push(l.pgno, l.hash, l.min, l.max, l.big_rows.0.chunks_exact(ROW));
        }
        Some(state)
    }

    /// Adds one leaf of a walk, in any order (`sort` puts them in page order).
    pub fn push_leaf(&mut self, pgno: u32, hash: [u8; 16], min: i64, max: i64, big_rows: &[(i64, u64)]) {
        let mut buf = [0u8; ROW];
        let rows = big_rows.iter().map(|(r, h)| {
            buf[..8].copy_from_slice(&r.to_be_bytes());
            buf[8..].copy_from_slice(&h.to_be_bytes());
            buf
        });
        self.push_rows(pgno, hash, min, max, rows);
    }

    /// Adds a leaf of a recorded state as it is (a leaf a followed walk did not read).
    pub fn push_recorded(&mut self, l: &Leaf<'_>) {
        self.push(l.pgno, l.hash, l.min, l.max, l.big_rows.0.chunks_exact(ROW));
    }

    fn push<'r>(&mut self, pgno: u32, hash: [u8; 16], min: i64, max: i64, rows: impl Iterator<Item = &'r [u8]>) {
        let mut buf = [0u8; ROW];
        self.push_rows(
            pgno,
            hash,
            min,
            max,
            rows.map(|c| {
                buf.copy_from_slice(c);
                buf
            }),
        );
    }

    fn push_rows(&mut self, pgno: u32, hash: [u8; 16], min: i64, max: i64, rows: impl Iterator<Item = [u8; ROW]>) {
        let rows_at = self.rows.len();
        self.rows.extend(rows);
        // A leaf holds fewer than 65,536 cells, so its big rows always fit a u32.
        let rows_len = u32::try_from(self.rows.len() - rows_at).unwrap_or(u32::MAX);
        self.entries.push(Entry { pgno, rows_len, rows_at, hash, min, max });
    }

    /// Puts the leaves in page-number order, as `encode` and `diff` expect them (suspect
    /// entries, all on page 0, by rowid range). Sorts in place: no scratch buffer.
    pub fn sort(&mut self) {
        self.entries.sort_unstable_by_key(|e| (e.pgno, e.min, e.max));
    }

    /// How many leaves the walk found.
    pub fn leaf_count(&self) -> usize {
        self.entries.len()
    }

    /// The leaves, in the state's order (page order once sorted).
    pub fn leaves(&self) -> impl Iterator<Item = Leaf<'_>> + Clone {
        self.entries.iter().map(|e| {
            let rows = self.rows.get(e.rows_at..e.rows_at + e.rows_len as usize).unwrap_or_default();
            Leaf { pgno: e.pgno, hash: e.hash, min: e.min, max: e.max, big_rows: BigRows(rows.as_flattened()) }
        })
    }

    /// Adds entries for rowid ranges read while the source was changing.
    pub fn add_suspect(&mut self, ranges: &[(i64, i64)]) {
        for &(min, max) in &merge_ranges(ranges.to_vec()) {
            self.push_rows(SUSPECT_PGNO, [0; 16], min, max, std::iter::empty());
        }
        self.sort();
    }

    fn is_sorted(&self) -> bool {
        self.entries.is_sorted_by_key(|e| (e.pgno, e.min, e.max))
    }
}

/// A recorded page state as the bytes it is stored as, checked once and then read in
/// place: comparing a walk against it costs no copy of it.
#[derive(Debug, Clone, Copy)]
pub struct Recorded<'a> {
    body: &'a [u8],
    leaves: usize,
}

impl<'a> Recorded<'a> {
    /// `None` when the bytes are not a page state of `target` (another mirror, a damaged or
    /// older encoding, leaves out of page order): the table then takes a full pass.
    pub fn parse(b: &'a [u8], target: &str) -> Option<Recorded<'a>> {
        if b.get(..4)? != MAGIC {
            return None;
        }
        let n = usize::from(u16::from_be_bytes(b.get(4..6)?.try_into().ok()?));
        if b.get(6..6 + n)? != target.as_bytes() {
            return None;
        }
        let body = b.get(6 + n..)?;
        let mut rest = body;
        let mut leaves = 0;
        let mut last: Option<u32> = None;
        while !rest.is_empty() {
            let (l, r) = next_leaf(rest)?;
            // Suspect entries first, then each real page once, in order: what `sort` makes.
            if last.is_some_and(|p| l.pgno < p || (l.pgno == p && p != SUSPECT_PGNO)) {
                return None;
            }
            last = Some(l.pgno);
            leaves += 1;
            rest = r;
        }
        Some(Recorded { body, leaves })
    }

    /// The recorded leaves, in page order.
    pub fn leaves(&self) -> impl Iterator<Item = Leaf<'a>> + Clone + use<'a> {
        let mut rest = self.body;
        std::iter::from_fn(move || {
            let (l, r) = next_leaf(rest)?;
            rest = r;
            Some(l)
        })
    }

    pub fn leaf_count(&self) -> usize {
        self.leaves
    }
}

/// Appends a leaf's record (`PageState::encode`).
fn put_leaf(out: &mut Vec<u8>, l: &Leaf<'_>) {
    out.extend_from_slice(&l.pgno.to_be_bytes());
    out.extend_from_slice(&l.hash);
    out.extend_from_slice(&l.min.to_be_bytes());
    out.extend_from_slice(&l.max.to_be_bytes());
    out.extend_from_slice(&(l.big_rows.len() as u32).to_be_bytes());
    out.extend_from_slice(l.big_rows.0);
}

/// The leaf record at the start of `b`, and what follows it.
fn next_leaf(b: &[u8]) -> Option<(Leaf<'_>, &[u8])> {
    let r = b.get(..RECORD)?;
    let rows = usize::try_from(u32::from_be_bytes(r[36..40].try_into().ok()?)).ok()?;
    let end = RECORD.checked_add(rows.checked_mul(ROW)?)?;
    let leaf = Leaf {
        pgno: u32::from_be_bytes(r[0..4].try_into().ok()?),
        hash: r[4..20].try_into().ok()?,
        min: i64::from_be_bytes(r[20..28].try_into().ok()?),
        max: i64::from_be_bytes(r[28..36].try_into().ok()?),
        big_rows: BigRows(b.get(RECORD..end)?),
    };
    Some((leaf, &b[end..]))
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
    if !old.is_sorted() {
        let mut o = old.clone();
        o.sort();
        return diff(&o, new);
    }
    diff_recorded_leaves(old.leaves(), new)
}

/// Rowid ranges that may differ between the rows the recorded state describes and those of
/// `new`, read from the recorded bytes in place.
pub fn diff_recorded(old: &Recorded<'_>, new: &PageState) -> Changes {
    diff_recorded_leaves(old.leaves(), new)
}

fn diff_recorded_leaves<'a>(old: impl Iterator<Item = Leaf<'a>>, new: &PageState) -> Changes {
    if !new.is_sorted() {
        let mut n = new.clone();
        n.sort();
        return diff_recorded_leaves(old, &n);
    }
    diff_sorted(old, new.leaves())
}

/// The comparison of two page-sorted leaf sequences, in one merge: a leaf is unchanged when
/// the same page has the same hash in both; every other leaf's range (old and new) is
/// re-read, less the big rows of changed leaves that are byte for byte what was recorded
/// (wherever they were) and not read while the source moved: the mirror already has them.
/// Memory follows what changed, not the size of the states.
fn diff_sorted<'a, 'b>(old: impl Iterator<Item = Leaf<'a>>, new: impl Iterator<Item = Leaf<'b>>) -> Changes {
    let (mut old, mut new) = (old.peekable(), new.peekable());
    let mut ranges = Vec::new();
    let mut suspect = Vec::new();
    let (mut changed_leaves, mut total_leaves) = (0, 0);
    // Big rows of the new walk's changed leaves, and of the recorded leaves that changed or
    // disappeared (an unchanged leaf keeps its rows: a row found in a changed new leaf was
    // recorded, if at all, in a leaf that changed or disappeared).
    let mut new_rows: Vec<(i64, u64)> = Vec::new();
    let mut old_rows: Vec<(i64, u64)> = Vec::new();
    loop {
        let (o, n) = (old.peek().copied(), new.peek().copied());
        let take_old = match (o, n) {
            (None, None) => break,
            (Some(o), _) if o.pgno == SUSPECT_PGNO => {
                suspect.push((o.min, o.max));
                true
            }
            (Some(o), Some(n)) if o.pgno == n.pgno && n.pgno != SUSPECT_PGNO => {
                total_leaves += 1;
                if o.hash != n.hash {
                    changed_leaves += 1;
                    ranges.push((n.min, n.max));
                    ranges.push((o.min, o.max));
                    new_rows.extend(n.big_rows.iter());
                    old_rows.extend(o.big_rows.iter());
                }
                old.next();
                new.next();
                continue;
            }
            (Some(o), Some(n)) => o.pgno < n.pgno && n.pgno != SUSPECT_PGNO,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if take_old {
            if let Some(o) = old.next() {
                ranges.push((o.min, o.max));
                if o.pgno != SUSPECT_PGNO {
                    old_rows.extend(o.big_rows.iter());
                }
            }
        } else if let Some(n) = new.next() {
            total_leaves += 1;
            changed_leaves += 1;
            ranges.push((n.min, n.max));
            new_rows.extend(n.big_rows.iter());
        }
    }
    let same = same_big_rows(new_rows, old_rows, &merge_ranges(suspect));
    Changes { ranges: without_points(merge_ranges(ranges), &same), changed_leaves, total_leaves }
}

/// Sorted rowids of `new` rows recorded in `old` with the same hash, outside `suspect`.
fn same_big_rows(mut new: Vec<(i64, u64)>, mut old: Vec<(i64, u64)>, suspect: &[(i64, i64)]) -> Vec<i64> {
    if new.is_empty() || old.is_empty() {
        return Vec::new();
    }
    new.sort_unstable();
    old.sort_unstable();
    let mut same = Vec::new();
    for &(r, h) in &new {
        if old.binary_search(&(r, h)).is_ok() && !in_ranges(suspect, r) {
            same.push(r);
        }
    }
    same.dedup();
    same
}

/// Whether `x` is in one of the sorted, disjoint `ranges`.
fn in_ranges(ranges: &[(i64, i64)], x: i64) -> bool {
    let i = ranges.partition_point(|(_, b)| *b < x);
    ranges.get(i).is_some_and(|(a, _)| *a <= x)
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

#[cfg(test)]
mod tests;
