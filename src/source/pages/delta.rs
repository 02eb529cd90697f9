//! A page state recorded as what changed: an incremental sync of 1,000 chats changes ~2,000
//! of a table's leaves, but writing its whole state again costs what the table holds
//! (6 MB for `chat_message` at 100k chats, every sync). So a sync records, beside the base
//! state it read, only the leaves that differ from that base (`between`); readers rebuild
//! the state from both (`apply`). The delta is against the base, not the previous delta,
//! so it grows with what changed since the base was written, and a sync writes a new base
//! once the delta stops being small (`sync::table`).
//!
//! Encoding `OWD1`: the base's xxh3-64 and length (a delta is applied only to the base it
//! was made against), the number of removed pages and their numbers, then the changed and
//! new leaves as `OWP3` records (`PageState::encode`), in page order. Page 0 holds the
//! suspect ranges: when they differ at all, page 0 is removed and the new ones added.

use super::{Leaf, MAGIC as STATE_MAGIC, Recorded, SUSPECT_PGNO, next_leaf, put_leaf};

const MAGIC: &[u8; 4] = b"OWD1";
const HEADER: usize = 4 + 8 + 8 + 4;

fn base_hash(base: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(base)
}

/// What turns the state `base` into `new` (both encoded page states of `target`); `None`
/// when either is not one.
pub fn between(base: &[u8], new: &[u8], target: &str) -> Option<Vec<u8>> {
    let (b, n) = (Recorded::parse(base, target)?, Recorded::parse(new, target)?);
    let mut removed: Vec<u32> = Vec::new();
    let mut records: Vec<u8> = Vec::new();
    let suspects = |r: &Recorded<'_>| r.leaves().take_while(|l| l.pgno == SUSPECT_PGNO).count();
    let (bs, ns) = (suspects(&b), suspects(&n));
    if !b.leaves().take(bs).eq(n.leaves().take(ns)) {
        if bs > 0 {
            removed.push(SUSPECT_PGNO);
        }
        n.leaves().take(ns).for_each(|l| put_leaf(&mut records, &l));
    }
    let (mut bi, mut ni) = (b.leaves().skip(bs).peekable(), n.leaves().skip(ns).peekable());
    loop {
        match (bi.peek(), ni.peek()) {
            (None, None) => break,
            (Some(x), Some(y)) if x.pgno == y.pgno => {
                if x != y {
                    put_leaf(&mut records, y);
                }
                bi.next();
                ni.next();
            }
            (Some(x), y) if y.is_none_or(|y| x.pgno < y.pgno) => {
                removed.push(x.pgno);
                bi.next();
            }
            (_, Some(y)) => {
                put_leaf(&mut records, y);
                ni.next();
            }
            (_, None) => unreachable!("handled by the arms above"),
        }
    }
    let mut out = Vec::with_capacity(HEADER + 4 * removed.len() + records.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&base_hash(base).to_be_bytes());
    out.extend_from_slice(&(base.len() as u64).to_be_bytes());
    out.extend_from_slice(&u32::try_from(removed.len()).ok()?.to_be_bytes());
    for p in &removed {
        out.extend_from_slice(&p.to_be_bytes());
    }
    out.extend_from_slice(&records);
    Some(out)
}

/// The state `delta` made of `base` (an encoded page state of `target`); `None` when the
/// delta was not made against this base or either does not parse: the table then takes a
/// full pass, as with no recorded state.
pub fn apply(base: &[u8], delta: &[u8], target: &str) -> Option<Vec<u8>> {
    let b = Recorded::parse(base, target)?;
    if delta.get(..4)? != MAGIC
        || u64::from_be_bytes(delta.get(4..12)?.try_into().ok()?) != base_hash(base)
        || u64::from_be_bytes(delta.get(12..20)?.try_into().ok()?) != base.len() as u64
    {
        return None;
    }
    let n_removed = usize::try_from(u32::from_be_bytes(delta.get(20..24)?.try_into().ok()?)).ok()?;
    let removed_end = HEADER.checked_add(n_removed.checked_mul(4)?)?;
    let removed: Vec<u32> =
        delta.get(HEADER..removed_end)?.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    let mut records: Vec<Leaf<'_>> = Vec::new();
    let mut rest = delta.get(removed_end..)?;
    while !rest.is_empty() {
        let (l, r) = next_leaf(rest)?;
        records.push(l);
        rest = r;
    }
    let replace_suspects = removed.first() == Some(&SUSPECT_PGNO) || records.first().is_some_and(|l| l.pgno == 0);
    let header = 6 + target.len();
    let mut out = Vec::with_capacity(base.len() + delta.len());
    out.extend_from_slice(base.get(..header)?);
    debug_assert_eq!(&out[..4], STATE_MAGIC);
    let suspects = if replace_suspects {
        records.iter().take_while(|l| l.pgno == SUSPECT_PGNO).for_each(|l| put_leaf(&mut out, l));
        b.leaves().take_while(|l| l.pgno == SUSPECT_PGNO).count()
    } else {
        b.leaves().take_while(|l| l.pgno == SUSPECT_PGNO).map(|l| put_leaf(&mut out, &l)).count()
    };
    let changed = records.iter().skip_while(|l| l.pgno == SUSPECT_PGNO);
    let (mut bi, mut ci) = (b.leaves().skip(suspects).peekable(), changed.peekable());
    let mut gone = removed.iter().copied().filter(|p| *p != SUSPECT_PGNO).peekable();
    while let Some(x) = bi.peek().copied() {
        while gone.next_if(|p| *p < x.pgno).is_some() {}
        while let Some(c) = ci.next_if(|c| c.pgno < x.pgno) {
            put_leaf(&mut out, c);
        }
        let replaced = ci.peek().is_some_and(|c| c.pgno == x.pgno);
        if gone.next_if_eq(&x.pgno).is_none() && !replaced {
            put_leaf(&mut out, &x);
        }
        bi.next();
    }
    ci.for_each(|c| put_leaf(&mut out, c));
    // What came out must be a page state in order, as any recorded one.
    Recorded::parse(&out, target)?;
    Some(out)
}

#[cfg(test)]
mod tests;
