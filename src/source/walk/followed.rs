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

use super::{MAX_PAGES, Memo, Visit, Walked, data_version, geometry, root_of, visit, with_page};
use crate::source::btree::{self, TablePage};
use crate::source::pages::{PageState, Recorded, SUSPECT_PGNO};
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
    let Some(state) = merge(old, &mut d) else { return Ok(None) };
    memo.rows += d.read_rows - d.dropped_rows;
    let read = src.pages_read() - read_before;
    Ok(Some((Walked { state, rows: memo.rows, data_version }, read)))
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
            stack.extend(children.iter().rev());
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
                stack.extend(children.iter().rev());
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
    while let Some(c) = stack.pop() {
        if d.reached.contains(&c) {
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

/// The new state: the last walk's leaves less those dropped, and the leaves read, in page
/// order. `None` when a leaf read is also one kept (the memo and the state disagree).
fn merge(old: &Recorded<'_>, d: &mut Descent) -> Option<PageState> {
    d.dropped.sort_unstable();
    d.read.sort();
    let mut state = PageState::default();
    let mut read = d.read.leaves().peekable();
    for l in old.leaves() {
        while let Some(r) = read.next_if(|r| r.pgno < l.pgno) {
            state.push_recorded(&r);
        }
        if d.dropped.binary_search(&l.pgno).is_ok() {
            continue;
        }
        if read.peek().is_some_and(|r| r.pgno == l.pgno) {
            return None;
        }
        state.push_recorded(&l);
    }
    read.for_each(|r| state.push_recorded(&r));
    Some(state)
}

/// The table's rows now, from the last walk's `memo` and the pages committed since
/// (`changed`, sorted), as `walk_followed` would count them, reading the same pages but
/// hashing none and leaving the memo as it is. Call inside a read transaction whose
/// snapshot `changed` reaches. `None`: not possible (another root, a page reached twice or
/// not understood): count them.
pub fn rows_followed(src: &Source, table: &str, changed: &[u32], memo: &Memo) -> Result<Option<i64>> {
    let Some(root) = root_of(src, table)? else { return Ok(None) };
    let Some((usable, page_size)) = geometry(src, table)?.filter(|_| root == memo.root) else { return Ok(None) };
    src.pagefile.borrow_mut().begin(&src.conn, &src.path, page_size);
    let (dirty, touched) = dirty_and_touched(changed, memo);
    let cells = |p: &u32| memo.cells.get(p).map_or(0, |n| i64::from(*n));
    let (mut rows, mut reached, mut let_go, mut stack) = (memo.rows, HashSet::new(), Vec::new(), vec![root]);
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
            stack.extend(children.iter().rev());
            continue;
        }
        rows -= cells(&p);
        match with_page(src, table, p, |data| btree::parse_table_page(p, data, usable))? {
            Some(Ok(TablePage::Interior { children })) => {
                let mut now = children.clone();
                now.sort_unstable();
                let_go.extend(before.into_iter().flatten().filter(|c| now.binary_search(c).is_err()));
                stack.extend(children.iter().rev());
            }
            Some(Ok(TablePage::Leaf { cells })) => {
                rows += cells.len() as i64;
                let_go.extend(before.into_iter().flatten());
            }
            _ => return Ok(None),
        }
    }
    // The subtrees let go of and not reached elsewhere: their rows are gone.
    while let Some(c) = let_go.pop() {
        if reached.insert(c) {
            rows -= cells(&c);
            let_go.extend(memo.interior.get(&c).into_iter().flatten());
        }
    }
    Ok(Some(rows))
}
