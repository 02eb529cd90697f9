//! The followed walk: a table's page state from the last walk's (`old`, with the `Memo` that
//! walk noted) and the pages committed since (`changed`, from the WAL follower), reading
//! only what changed. A page no commit wrote holds the same bytes as at the last walk, so a
//! subtree of the last walk's tree none of whose pages was written is the same subtree,
//! with the same leaves, wherever it hangs now: it is kept unread and unvisited. The walk
//! descends only through the pages above a written page (through the children the memo
//! noted, unread, when the page itself was not written), reads the written pages (and the
//! pages new to the tree below a written interior page), and drops the leaves of the
//! subtrees a written interior page let go. Its cost follows what changed, but for one
//! merge of the kept leaves into the new state (no hashing, no page read).

use std::collections::HashSet;

use super::{Followed, MAX_PAGES, Memo, Visit, Walked, data_version, geometry, root_of, visit, with_page};
use crate::source::btree::{self, TablePage};
use crate::source::pages::{Changes, PageState, Recorded, SUSPECT_PGNO, Spliced, diff_followed};
use crate::source::{Result, Source};

/// What the descent found: the leaves it read (with their rows), the last walk's leaves it
/// dropped (with their rows), and the pages it reached.
#[derive(Default)]
struct Descent {
    read: PageState,
    read_rows: i64,
    dropped: Vec<u32>,
    dropped_rows: i64,
    reached: HashSet<u32>,
    /// Children the last walk noted under pages read now that are no longer theirs.
    let_go: Vec<u32>,
    /// The children of every interior page read (a page let go of is still in the tree
    /// when one of them: hanging it elsewhere wrote its new parent).
    adopted: Vec<u32>,
}

/// A walk that reads only what changed (see the module doc). Call inside the read
/// transaction whose snapshot `changed` (sorted) reaches (WAL mode); `memo` is updated to
/// this walk's. `Ok(None)`: not possible (suspect ranges recorded, another root, a page
/// not understood): walk in full. Returns the walk and the pages read.
pub fn walk_followed(
    src: &Source,
    table: &str,
    old: &Recorded<'_>,
    changed: &[u32],
    memo: &mut Memo,
) -> Result<Option<(Walked, u64)>> {
    let Some(root) = root_of(src, table)? else { return Ok(None) };
    if root != memo.root || old.leaves().next().is_some_and(|l| l.pgno == SUSPECT_PGNO) {
        return Ok(None);
    }
    let Some((usable, page_size)) = geometry(src, table)? else { return Ok(None) };
    let data_version = data_version(src)?;
    src.pagefile.borrow_mut().begin(&src.conn, &src.path, page_size);
    let read_before = src.pages_read();
    let (dirty, touched) = dirty_and_touched(changed, memo);
    memo.forget_chains(changed);
    let Some(mut d) = descend(src, table, usable, root, &dirty, &touched, memo)? else { return Ok(None) };
    drop_let_go(&mut d, memo);
    let Some((encoded, changes, leaves)) = merge(old, &mut d) else { return Ok(None) };
    memo.rows += d.read_rows - d.dropped_rows;
    let read = src.pages_read() - read_before;
    let (gone, read_leaves) = (std::mem::take(&mut d.dropped), std::mem::take(&mut d.read));
    let followed = Followed { encoded, leaves, changes, gone, read: read_leaves };
    let state = PageState::default();
    Ok(Some((Walked { state, rows: memo.rows, data_version, followed: Some(followed) }, read)))
}

/// The pages to read again (the written pages the last walk noted, and the leaf owning
/// each written overflow page) and those to descend through (those and every page above
/// one in the last walk's tree).
fn dirty_and_touched(changed: &[u32], memo: &Memo) -> (HashSet<u32>, HashSet<u32>) {
    let changed = memo.noted_of(changed);
    let mut dirty: HashSet<u32> = changed.iter().copied().collect();
    dirty.extend(changed.iter().filter_map(|p| memo.leaf_of_overflow(*p)));
    let touched = above(&dirty, memo);
    (dirty, touched)
}

/// The written pages and every page above one in the last walk's tree.
fn above(dirty: &HashSet<u32>, memo: &Memo) -> HashSet<u32> {
    let mut touched = dirty.clone();
    for &d in dirty {
        let mut p = d;
        while let Some(&q) = memo.parent.get(&p) {
            if !touched.insert(q) {
                break;
            }
            p = q;
        }
    }
    touched
}

/// Descends from the root through the pages above a written page; `None`: not a tree this
/// walk understands (a page reached twice, one it cannot parse).
fn descend(
    src: &Source,
    table: &str,
    usable: usize,
    root: u32,
    dirty: &HashSet<u32>,
    touched: &HashSet<u32>,
    memo: &mut Memo,
) -> Result<Option<Descent>> {
    let mut d = Descent::default();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if !d.reached.insert(p) || d.reached.len() as u64 > MAX_PAGES {
            return Ok(None);
        }
        let known = memo.cells.contains_key(&p) || memo.interior.contains_key(&p);
        if !touched.contains(&p) && known {
            continue; // a subtree no commit wrote
        }
        if !dirty.contains(&p)
            && let Some(children) = memo.interior.get(&p)
        {
            // An unwritten page has the children noted: only those above a written page
            // need a visit (a page let go of elsewhere and hung here would have written it).
            stack.extend(children.iter().rev().filter(|c| touched.contains(c)));
            continue;
        }
        if let Some(n) = memo.cells.remove(&p) {
            d.dropped.push(p);
            d.dropped_rows += i64::from(n);
        }
        let before = memo.interior.remove(&p);
        match visit(src, table, p, usable, &mut d.read, &mut d.read_rows, Some(memo))? {
            Visit::Interior(children) => {
                let mut now = children.clone();
                now.sort_unstable();
                d.let_go.extend(before.into_iter().flatten().filter(|c| now.binary_search(c).is_err()));
                memo.parent.extend(children.iter().map(|c| (*c, p)));
                // The children above a written page, and those new to the tree.
                let visit = |c: &&u32| touched.contains(c) || !memo.notes_tree(**c);
                stack.extend(children.iter().rev().filter(visit));
                d.adopted.extend_from_slice(&children);
                memo.interior.insert(p, children);
            }
            Visit::Leaf => d.let_go.extend(before.into_iter().flatten()),
            Visit::Unparsable(why) => {
                tracing::debug!(table, why, "followed walk not possible; full walk");
                return Ok(None);
            }
        }
    }
    Ok(Some(d))
}

/// Drops from the memo, and from the state (`d.dropped`), the subtrees let go of that the
/// descent did not reach elsewhere: they are no longer in the tree.
fn drop_let_go(d: &mut Descent, memo: &mut Memo) {
    let mut stack = std::mem::take(&mut d.let_go);
    d.adopted.sort_unstable();
    while let Some(c) = stack.pop() {
        if d.reached.contains(&c) || d.adopted.binary_search(&c).is_ok() {
            continue;
        }
        memo.parent.remove(&c);
        if let Some(n) = memo.cells.remove(&c) {
            d.dropped.push(c);
            d.dropped_rows += i64::from(n);
        }
        if let Some(children) = memo.interior.remove(&c) {
            stack.extend(children);
        }
    }
}

/// The new state, encoded as stored: the last walk's leaves less those dropped, and the
/// leaves read, in page order (the kept records copied as they are recorded, a run at a
/// time), with what changed (`pages::diff_followed`) and how many leaves it has. `None`
/// when a leaf read is also one kept (the memo and the state disagree).
fn merge(old: &Recorded<'_>, d: &mut Descent) -> Option<(Vec<u8>, Changes, usize)> {
    d.dropped.sort_unstable();
    d.read.sort();
    let mut state = Spliced::new(*old, d.read.encoded_len());
    let (mut gone, mut kept) = (Vec::with_capacity(d.dropped.len()), 0);
    let mut read = d.read.leaves().peekable();
    for (l, at) in old.records() {
        while let Some(r) = read.next_if(|r| r.pgno < l.pgno) {
            state.put(&r);
        }
        if d.dropped.binary_search(&l.pgno).is_ok() {
            gone.push(l);
            continue;
        }
        if read.peek().is_some_and(|r| r.pgno == l.pgno) {
            return None;
        }
        state.keep(at);
        kept += 1;
    }
    read.for_each(|r| state.put(&r));
    let changes = diff_followed(gone.into_iter(), &d.read, kept);
    Some((state.finish(), changes, kept + d.read.leaf_count()))
}

/// How exactly [`rows_followed`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// The table's rows.
    Exact,
    /// A number of rows the table has at least, reading only the written pages the last
    /// walk found interior (a thousand changed rows write as many leaves and split some,
    /// and the deletion guard needs an exact count only when this bound would hold a
    /// sync): a written leaf and a page new to the tree count no row, whatever they hold
    /// now (cells, or children the descent then does not reach).
    AtLeast,
}

/// The table's rows now, from the last walk's `memo` and the pages committed since
/// (`changed`, sorted), as `walk_followed` would count them, reading the same pages (with
/// `Count::AtLeast`, fewer) but hashing none and leaving the memo as it is. Call inside a
/// read transaction whose snapshot `changed` reaches. `None`: not possible (another root,
/// a page reached twice or not understood): count them.
pub fn rows_followed(src: &Source, table: &str, changed: &[u32], memo: &Memo, how: Count) -> Result<Option<i64>> {
    let Some(root) = root_of(src, table)? else { return Ok(None) };
    let Some((usable, page_size)) = geometry(src, table)?.filter(|_| root == memo.root) else { return Ok(None) };
    src.pagefile.borrow_mut().begin(&src.conn, &src.path, page_size);
    // Only the written pages: a leaf whose overflow pages alone were written has its cells.
    let dirty: HashSet<u32> = memo.noted_of(changed).into_iter().collect();
    let touched = above(&dirty, memo);
    let cells = |p: &u32| memo.cells.get(p).map_or(0, |n| i64::from(*n));
    let (mut rows, mut reached, mut let_go, mut stack) = (memo.rows, HashSet::new(), Vec::new(), vec![root]);
    let mut adopted: Vec<u32> = Vec::new();
    while let Some(p) = stack.pop() {
        if !reached.insert(p) || reached.len() as u64 > MAX_PAGES {
            return Ok(None);
        }
        let known = memo.cells.contains_key(&p) || memo.interior.contains_key(&p);
        if !touched.contains(&p) && known {
            continue;
        }
        let before = memo.interior.get(&p);
        if !dirty.contains(&p)
            && let Some(children) = before
        {
            stack.extend(children.iter().rev().filter(|c| touched.contains(c)));
            continue;
        }
        rows -= cells(&p);
        if how == Count::AtLeast && !memo.interior.contains_key(&p) {
            continue;
        }
        match with_page(src, table, p, |data| btree::parse_table_page(p, data, usable))? {
            Some(Ok(TablePage::Interior { children })) => {
                let mut now = children.clone();
                now.sort_unstable();
                let_go.extend(before.into_iter().flatten().filter(|c| now.binary_search(c).is_err()));
                // The children above a written page, and (counted exactly) those new to it.
                let visit = |c: &&u32| touched.contains(c) || (how == Count::Exact && !memo.notes_tree(**c));
                stack.extend(children.iter().rev().filter(visit));
                adopted.extend_from_slice(&now);
            }
            Some(Ok(TablePage::Leaf { cells })) => {
                rows += cells.len() as i64;
                let_go.extend(before.into_iter().flatten());
            }
            _ => return Ok(None),
        }
    }
    // The subtrees let go of and not hung elsewhere: their rows are gone.
    adopted.sort_unstable();
    while let Some(c) = let_go.pop() {
        if adopted.binary_search(&c).is_err() && reached.insert(c) {
            rows -= cells(&c);
            let_go.extend(memo.interior.get(&c).into_iter().flatten());
        }
    }
    Ok(Some(rows))
}
