//! The followed region of the report (`--followed`): owsync with the tenant's WAL followed
//! and with the walk of every leaf, each against the bare upsert of the same rows.

use std::fmt::Write as _;

use crate::Args;
use crate::results::{FollowedCases, FollowedRun, Results};
use crate::util::median;

/// The raw results file of a `--followed` run of this size.
pub fn json_name(chats: u32, msgs: u32) -> String {
    format!("followed-{chats}-m{msgs}")
}

/// The size the CPU time of the same change set is compared against.
const BASE_CHATS: u32 = 10_000;
const BASE_MSGS: u32 = 6;

pub fn render(a: &Args, r: &Results, x: &FollowedCases, total_secs: f64) -> String {
    let (d, e) = (&r.data, &r.env);
    let mut s = String::new();
    crate::report::region_head(&mut s, "Following the WAL", a, r, total_secs);
    let _ = writeln!(s, "PostgreSQL: {}.  ", e.pg_settings);
    let _ = writeln!(
        s,
        "Source: **{:.1} MB**, {} rows (chat {}, chat_message {}); first sync (untimed setup) {:.1} s.\n",
        d.file_bytes as f64 / 1e6,
        d.rows,
        d.counts.get("chat").unwrap_or(&0),
        d.counts.get("chat_message").unwrap_or(&0),
        x.first_sync_secs
    );
    let _ = writeln!(
        s,
        "The writer (the bench, `fixtures::mutate` with the chat-changing ops, Open WebUI's connection held open \
         throughout) writes in bursts of {} ops; **followed**: a long-lived child follows the WAL as owsyncd does \
         (a follower registered before the changes, read every 200 ms and after each burst) and runs the sync; \
         **walk**: a fresh child with no follower (the walk of every leaf, as before issue 13). owsync s and CPU s: \
         the child's `sync_tenant` wall time and its user + system time over it. Bare upsert: one transaction \
         that COPYs exactly the changed rows into temp tables and upserts them (DELETE for rows gone) into the \
         COPY ceiling's tables (TCP_NODELAY, as psql).\n",
        x.burst
    );
    rounds_table(&mut s, a, &x.rounds);
    single_table(&mut s, &x.single);
    if let Some(u) = &x.unchanged {
        crate::report::unchanged_paragraph(&mut s, u, "", "");
    }
    targets(&mut s, a, x);
    s
}

fn med(runs: &[&FollowedRun], f: impl Fn(&FollowedRun) -> f64) -> f64 {
    median(&mut runs.iter().map(|r| f(r)).collect::<Vec<_>>())
}

fn split(runs: &[FollowedRun]) -> (Vec<&FollowedRun>, Vec<&FollowedRun>) {
    runs.iter().partition(|r| r.followed)
}

/// `chat followed 812, chat_message followed 3403, 44 others followed 12`: the changed
/// tables' capture and pages read, and those of the others together.
fn captures(r: &FollowedRun) -> String {
    let mut parts = Vec::new();
    let (mut others, mut pages_others, mut how) = (0, 0, std::collections::BTreeSet::new());
    for (t, (capture, pages)) in &r.captures {
        if r.changed_tables.contains(t) {
            parts.push(format!("{t} {capture} {pages}"));
        } else {
            others += 1;
            pages_others += pages;
            how.insert(capture.as_str());
        }
    }
    if others > 0 {
        let how: Vec<&str> = how.into_iter().collect();
        parts.push(format!("{others} others {} {pages_others}", how.join("/")));
    }
    parts.join(", ")
}

fn rounds_table(s: &mut String, a: &Args, runs: &[FollowedRun]) {
    let _ = writeln!(s, "#### {} changed chats per sync, followed and walked alternately\n", a.changed);
    let _ = writeln!(
        s,
        "| round | capture | changed chats / rows (tables) | owsync s | owsync CPU s | bare upsert s | owsync / upsert \
         | pages read | per table: capture, pages | RSS MiB | follower lost track | ok |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} / {} ({}) | {:.3} | {:.3} | {:.3} | {:.2}x | {} | {} | {:.0} | {} | {} |",
            i + 1,
            if r.followed { "**followed**" } else { "walk" },
            r.changed_chats,
            r.changed_rows,
            r.changed_tables.join(", "),
            r.owsync_secs,
            r.owsync_cpu_secs,
            r.upsert_secs,
            r.owsync_secs / r.upsert_secs,
            r.pages_read,
            captures(r),
            r.rss_mib,
            r.losses,
            if r.ok { "yes" } else { "**no**" }
        );
    }
    let (f, w) = split(runs);
    let ratio = |r: &FollowedRun| r.owsync_secs / r.upsert_secs;
    let _ = writeln!(
        s,
        "\nMedians: **followed {:.3} s (CPU {:.3} s), {:.2}x the bare upsert**; walk {:.3} s (CPU {:.3} s), {:.2}x; \
         bare upsert {:.3} s (owsync / upsert: the median of the per-round ratios).\n",
        med(&f, |r| r.owsync_secs),
        med(&f, |r| r.owsync_cpu_secs),
        med(&f, ratio),
        med(&w, |r| r.owsync_secs),
        med(&w, |r| r.owsync_cpu_secs),
        med(&w, ratio),
        med(&runs.iter().collect::<Vec<_>>(), |r| r.upsert_secs),
    );
}

fn single_table(s: &mut String, runs: &[FollowedRun]) {
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(s, "#### One changed chat per sync (one mutate op)\n");
    let _ = writeln!(
        s,
        "| run | capture | rows (tables) | owsync ms | owsync CPU ms | bare upsert ms | pages read | per table: \
         capture, pages | ok |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {} ({}) | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            i + 1,
            if r.followed { "**followed**" } else { "walk" },
            r.changed_rows,
            r.changed_tables.join(", "),
            r.owsync_secs * 1e3,
            r.owsync_cpu_secs * 1e3,
            r.upsert_secs * 1e3,
            r.pages_read,
            captures(r),
            if r.ok { "yes" } else { "**no**" }
        );
    }
    let (f, w) = split(runs);
    let _ = writeln!(
        s,
        "\nMedians: **followed {:.1} ms** (CPU {:.1} ms, {:.0} pages read); walk {:.1} ms (CPU {:.1} ms); bare \
         upsert {:.1} ms.\n",
        med(&f, |r| r.owsync_secs * 1e3),
        med(&f, |r| r.owsync_cpu_secs * 1e3),
        med(&f, |r| r.pages_read as f64),
        med(&w, |r| r.owsync_secs * 1e3),
        med(&w, |r| r.owsync_cpu_secs * 1e3),
        med(&runs.iter().collect::<Vec<_>>(), |r| r.upsert_secs * 1e3),
    );
}

/// The median CPU time of the followed rounds of the 10k x 6 run in the same work
/// directory, and when it ran.
fn base_cpu(a: &Args) -> Option<(f64, String)> {
    let path = a.work.join(format!("results-{}.json", json_name(BASE_CHATS, BASE_MSGS)));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let mut cpu: Vec<f64> = v["followed"]["rounds"]
        .as_array()?
        .iter()
        .filter(|r| r["followed"].as_bool() == Some(true))
        .filter_map(|r| r["owsync_cpu_secs"].as_f64())
        .collect();
    (!cpu.is_empty()).then(|| (median(&mut cpu), v["env"]["date"].as_str().unwrap_or("?").to_string()))
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

fn targets(s: &mut String, a: &Args, x: &FollowedCases) {
    let _ = writeln!(s, "#### Against the targets of issue 13 item 5\n\n| target | measured | |\n|---|---|---|");
    let (f, _) = split(&x.rounds);
    let ratio = med(&f, |r| r.owsync_secs / r.upsert_secs);
    let _ = writeln!(
        s,
        "| incremental, {} changed chats, followed, <= 1.0x the bare upsert | {ratio:.2}x (median of {} rounds) | {} |",
        a.changed,
        f.len(),
        met(ratio <= 1.0)
    );
    let (one, _) = split(&x.single);
    let ms = med(&one, |r| r.owsync_secs * 1e3);
    let _ = writeln!(
        s,
        "| one changed chat, followed, <= 20 ms end to end (the issue's size: 100k x 6) | {ms:.1} ms (median of {}) | \
         {} |",
        one.len(),
        met(ms <= 20.0)
    );
    if (a.chats, a.msgs) != (BASE_CHATS, BASE_MSGS) {
        let cpu = med(&f, |r| r.owsync_cpu_secs);
        match base_cpu(a) {
            Some((base, when)) => {
                let _ = writeln!(
                    s,
                    "| owsync's CPU for the same change set <= 1.2x its CPU at 10k x 6 | {:.2}x ({cpu:.3} s here, \
                     {base:.3} s in the 10k x 6 run of {when}) | {} |",
                    cpu / base,
                    met(cpu / base <= 1.2)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| owsync's CPU <= 1.2x its CPU at 10k x 6 | {cpu:.3} s (no 10k x 6 run to compare) | — |"
                );
            }
        }
    }
    if let Some(u) = &x.unchanged {
        let _ = writeln!(
            s,
            "| unchanged cycle < 1 ms | median {:.2} ms, p99 {:.2} ms | {} median, {} p99 |",
            u.median_ms,
            u.p99_ms,
            met(u.median_ms < 1.0),
            met(u.p99_ms < 1.0)
        );
    }
}
