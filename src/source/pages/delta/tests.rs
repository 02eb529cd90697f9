//! `apply(base, between(base, new)) == new` on generated pairs of states: leaves changed,
//! added, removed, big rows changed, suspect ranges appearing, changing and going.

use super::*;
use crate::source::pages::PageState;

const T: &str = "\"client_x\".\"chat\"";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A leaf as the generator keeps it: pgno, hash byte, rowid range, big rows.
type Gen = (u32, u8, i64, i64, Vec<(i64, u64)>);

fn state(leaves: &[Gen], suspects: &[(i64, i64)]) -> Vec<u8> {
    let mut s = PageState::default();
    for (pgno, h, min, max, rows) in leaves {
        s.push_leaf(*pgno, [*h; 16], *min, *max, rows);
    }
    s.sort();
    if !suspects.is_empty() {
        s.add_suspect(suspects);
    }
    s.encode(T)
}

fn generate(r: &mut Rng) -> Vec<Gen> {
    let n = r.below(40);
    let mut pgno = 1u32;
    (0..n)
        .map(|i| {
            pgno += 1 + r.below(5) as u32;
            let rows = (0..r.below(3)).map(|k| (i as i64 * 10 + k as i64, r.next())).collect();
            (pgno, r.below(4) as u8, i as i64 * 10, i as i64 * 10 + 9, rows)
        })
        .collect()
}

fn mutate(r: &mut Rng, base: &[Gen]) -> Vec<Gen> {
    let mut out: Vec<Gen> = Vec::new();
    for l in base {
        match r.below(8) {
            0 => {}                                                           // removed
            1 => out.push((l.0, l.1.wrapping_add(1), l.2, l.3, l.4.clone())), // changed
            2 => out.push((l.0, l.1, l.2, l.3, vec![(l.2, r.next())])),       // a big row changed
            3 => {
                // moved to a new page past the end, or a page added beside it
                out.push(l.clone());
                out.push((l.0 + 1000, r.below(4) as u8, l.2 + 5, l.3 + 5, Vec::new()));
            }
            _ => out.push(l.clone()),
        }
    }
    out.sort_by_key(|l| l.0);
    out.dedup_by_key(|l| l.0);
    out
}

fn suspects(r: &mut Rng) -> Vec<(i64, i64)> {
    (0..r.below(3))
        .map(|_| {
            let a = r.below(100) as i64;
            (a, a + r.below(20) as i64)
        })
        .collect()
}

#[test]
fn a_delta_applied_to_its_base_gives_the_new_state() {
    let mut r = Rng(11);
    let mut small = 0;
    for _ in 0..3000 {
        let base_leaves = generate(&mut r);
        let new_leaves = if r.below(5) == 0 { generate(&mut r) } else { mutate(&mut r, &base_leaves) };
        let (bs, ns) = (suspects(&mut r), if r.below(3) == 0 { suspects(&mut r) } else { Vec::new() });
        let base = state(&base_leaves, &bs);
        let new = state(&new_leaves, &ns);
        let d = between(&base, &new, T).expect("a delta");
        assert_eq!(
            apply(&base, &d, T).as_deref(),
            Some(new.as_slice()),
            "base {base_leaves:?} {bs:?}, new {new_leaves:?} {ns:?}"
        );
        if d.len() < new.len() {
            small += 1;
        }
        // A delta fits only its own base.
        let other = state(&generate(&mut r), &[]);
        if other != base {
            assert_eq!(apply(&other, &d, T), None);
        }
    }
    assert!(small > 1000, "deltas smaller than the state: {small} of 3000");
}

#[test]
fn an_unchanged_state_has_an_empty_delta_and_damage_is_refused() {
    let mut r = Rng(5);
    let leaves = generate(&mut r);
    let base = state(&leaves, &[(3, 4)]);
    let d = between(&base, &base, T).unwrap();
    assert_eq!(d.len(), HEADER);
    assert_eq!(apply(&base, &d, T).unwrap(), base);
    assert_eq!(apply(&base, &d[..d.len() - 1], T), None);
    assert_eq!(apply(&base, &d, "\"client_y\".\"chat\""), None);
    let mut wrong = d.clone();
    wrong[0] = b'X';
    assert_eq!(apply(&base, &wrong, T), None);
}
