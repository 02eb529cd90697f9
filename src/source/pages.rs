//! Page-level change capture: hashes every leaf of a table's b-tree (with the overflow
//! pages of its cells) through SQLite's `sqlite_dbpage` virtual table, which reads pages
//! through the pager and so sees WAL content. Comparing two walks by page number tells
//! which rowid ranges may have changed: a leaf with the same page number and the same
//! bytes holds exactly the same rows, so only the ranges of leaves that changed, appeared
//! or disappeared need re-reading.

pub use super::walk::{Walked, data_version, is_wal, walk};

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

    /// Adds one leaf of a walk, in any order (`sort` puts them in page order).
    pub fn push_leaf(&mut self, pgno: u32, hash: [u8; 16], min: i64, max: i64, big_rows: &[(i64, u64)]) {
        self.leaves.push(Leaf { pgno, hash, min, max, big_rows: big_rows.to_vec() });
    }

    /// Puts the leaves in page-number order, as `encode` and `diff` expect them.
    pub fn sort(&mut self) {
        self.leaves.sort_by_key(|l| l.pgno);
    }

    /// How many leaves the walk found.
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
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

#[cfg(test)]
mod tests;
