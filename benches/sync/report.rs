//! The report: the markdown region of this size in BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::results::{RestoreCases, RestoreRun, Results, Unchanged};
use crate::util::{fmt_s, median};
use crate::{Args, CHAT_OPS};

pub fn render(a: &Args, r: &Results, total_secs: f64) -> String {
    let d = &r.data;
    let mut s = String::new();
    let copy = r.first.iter().find(|c| c.name == "copy").and_then(|c| c.secs);
    let ow = r.first.iter().find(|c| c.name == "owsync");
    let ow_secs = ow.and_then(|c| c.secs);
    let e = &r.env;
    let _ =
        writeln!(s, "### {} chats: {} users x {} chats x {} messages\n", d.chats, d.users, a.chats_per_user, d.msgs);
    let _ = writeln!(
        s,
        "Command: `{}` (or `scripts/bench.sh{}`)  ",
        e.command,
        if a.given.is_empty() { String::new() } else { format!(" {}", a.given.join(" ")) }
    );
    let _ = writeln!(
        s,
        "Run: {}, owsync {}, whole bench {:.0} s. Machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}; \
         load average {} at the start, {} at the end.  ",
        e.date, e.git, total_secs, e.nproc, e.cpu, e.mem_gib, e.kernel, e.load_start, e.load_end
    );
    let _ = writeln!(s, "Software: {}; {}; SQLite {}.  ", e.postgres, e.pgloader, e.sqlite);
    let _ = writeln!(s, "PostgreSQL: {}.\n", e.pg_settings);
    let _ = writeln!(
        s,
        "Source: Open WebUI 0.12.4-shaped `webui.db` (`owsync::fixtures::create`, seed {}, WAL, checkpointed): \
         **{:.1} MB**, {} rows in {} tables ({} non-empty; chat {}, chat_message {}, tag {}, user {}); \
         CSV export {:.1} MB.\n",
        a.seed,
        d.file_bytes as f64 / 1e6,
        d.rows,
        d.tables,
        d.nonempty_tables,
        d.counts.get("chat").unwrap_or(&0),
        d.counts.get("chat_message").unwrap_or(&0),
        d.counts.get("tag").unwrap_or(&0),
        d.counts.get("user").unwrap_or(&0),
        d.csv_bytes as f64 / 1e6
    );

    let _ = writeln!(s, "#### First sync (rows/s over all {} rows; MB/s = SQLite file size / time)\n", d.rows);
    let _ = writeln!(
        s,
        "{} round{} per case, interleaved, each on a fresh server: wall s is the median and time / COPY the \
         median of the per-round ratios to the COPY of the same round (the machine is shared and noisy).\n",
        a.rounds,
        if a.rounds == 1 { "" } else { "s" }
    );
    let _ =
        writeln!(s, "| case | wall s (median) | min-max s | rows/s | MB/s | peak RSS MiB | time / COPY | ok | notes |");
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for c in &r.first {
        let (rps, mbs) = c.secs.map_or(("—".into(), "—".into()), |t| {
            (format!("{:.0}", d.rows as f64 / t), format!("{:.1}", d.file_bytes as f64 / 1e6 / t))
        });
        let mut rs: Vec<f64> = c.ratios.iter().copied().filter(|x| x.is_finite()).collect();
        let ratio = if rs.is_empty() { "—".into() } else { format!("{:.2}", median(&mut rs)) };
        let fin: Vec<f64> = c.runs.iter().copied().filter(|x| x.is_finite()).collect();
        let range = if fin.len() < 2 {
            "—".to_string()
        } else {
            format!(
                "{:.1}-{:.1}",
                fin.iter().copied().fold(f64::INFINITY, f64::min),
                fin.iter().copied().fold(0.0, f64::max)
            )
        };
        let rss = c.rss_mib.map_or("—".into(), |m| format!("{m:.0}"));
        let _ = writeln!(
            s,
            "| {} | {} | {range} | {rps} | {mbs} | {rss} | {ratio} | {} | {} |",
            c.what,
            fmt_s(c.secs),
            if c.ok { "yes" } else { "**no**" },
            c.note
        );
    }
    if let Some((rd, en)) = r.read_encode {
        let _ = writeln!(
            s,
            "| owsync's SQLite reader + COPY encoder alone, one thread, no PostgreSQL (read {rd:.2} s + encode {en:.2} s) | {} | — | {:.0} | {:.1} | — | {} | — | the source side is not the bottleneck |",
            fmt_s(Some(rd + en)),
            d.rows as f64 / (rd + en),
            d.file_bytes as f64 / 1e6 / (rd + en),
            copy.map_or("—".into(), |cp| format!("{:.2}", (rd + en) / cp)),
        );
    }
    let _ = writeln!(s);
    let owc = r.first.iter().find(|c| c.name == "owsync");
    let pglc = r.first.iter().find(|c| c.name == "pgloader");
    let ow_ratio = owc.map(|c| {
        let mut v: Vec<f64> = c.ratios.iter().copied().filter(|x| x.is_finite()).collect();
        median(&mut v)
    });
    let pgl_ratio = match (owc, pglc) {
        (Some(o), Some(p)) => {
            let mut v: Vec<f64> = p.runs.iter().zip(&o.runs).map(|(p, o)| p / o).filter(|x| x.is_finite()).collect();
            (!v.is_empty()).then(|| median(&mut v))
        }
        _ => None,
    };
    if let Some(o) = ow_ratio {
        let _ = write!(s, "**owsync / COPY = {o:.2}** (target <= 0.8)");
        if let Some(p) = pgl_ratio {
            let _ = write!(s, "; **pgloader / owsync = {p:.2}** (target >= 2.3; pgloader on the index-stripped copy)");
        }
        let _ = writeln!(s, " (medians of per-round ratios).\n");
    }

    if let Some(costs) = &r.owsync_first_costs {
        let busy: f64 = costs.categories.values().map(|x| x.0).sum();
        let inc = r.owsync_inc_costs.as_ref();
        let inc_secs = r.incremental.first().map(|x| x.owsync_secs);
        let inc_busy: f64 = inc.map_or(0.0, |c| c.categories.values().map(|x| x.0).sum());
        let _ = writeln!(
            s,
            "Where owsync's time goes, from the server's `log_min_duration_statement = 0` (statement durations \
             summed by kind; first sync: {:.1} s of server statements in a {:.1} s sync; incremental round 1: \
             {:.1} s in {:.1} s):\n",
            busy / 1000.0,
            ow_secs.unwrap_or_default(),
            inc_busy / 1000.0,
            inc_secs.unwrap_or_default()
        );
        let _ = writeln!(s, "| statement kind | first sync s | count | incremental s | count |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        // Every kind either pass had, the first sync's costliest first.
        let mut kinds: Vec<&String> =
            costs.categories.keys().chain(inc.into_iter().flat_map(|c| c.categories.keys())).collect();
        kinds.sort();
        kinds.dedup();
        let first = |k: &String| costs.categories.get(k).copied().unwrap_or((0.0, 0));
        let second = |k: &String| inc.and_then(|c| c.categories.get(k)).copied().unwrap_or((0.0, 0));
        kinds.sort_by(|x, y| first(y).0.total_cmp(&first(x).0).then(second(y).0.total_cmp(&second(x).0)));
        for k in kinds {
            let ((ms, n), (ims, inn)) = (first(k), second(k));
            let _ = writeln!(s, "| {k} | {:.2} | {n} | {:.2} | {inn} |", ms / 1000.0, ims / 1000.0);
        }
        let empty: Vec<_> = costs.tables.iter().filter(|(_, t)| t.2 == 0).collect();
        let nonempty: Vec<_> = costs.tables.iter().filter(|(_, t)| t.2 > 0).collect();
        let empty_span: f64 = empty.iter().map(|(_, t)| t.0).sum();
        let _ = writeln!(
            s,
            "\nPer table, first sync (span from the table's first statement to its COMMIT; busy = its server \
             statements; the rest of a span is the engine reading, encoding and waiting):\n"
        );
        let _ = writeln!(s, "| table | rows | span s | server busy s | incremental span s |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        let mut ne = nonempty.clone();
        ne.sort_by(|x, y| y.1.0.total_cmp(&x.1.0));
        let inc_span =
            |t: &str| inc.and_then(|c| c.tables.get(t)).map_or("—".to_string(), |x| format!("{:.2}", x.0 / 1000.0));
        for (t, (span, busy, rows)) in ne.iter().take(6) {
            let _ = writeln!(s, "| {t} | {rows} | {:.2} | {:.2} | {} |", span / 1000.0, busy / 1000.0, inc_span(t));
        }
        if ne.len() > 6 {
            let rest: f64 = ne.iter().skip(6).map(|x| x.1.0).sum();
            let _ = writeln!(s, "| {} other non-empty tables | | {:.2} | | |", ne.len() - 6, rest / 1000.0);
        }
        if !empty.is_empty() {
            let _ = writeln!(
                s,
                "| {} empty tables | 0 | {:.2} (mean {:.1} ms each) | | |",
                empty.len(),
                empty_span / 1000.0,
                empty_span / empty.len() as f64
            );
        }
        let _ = writeln!(s);
        if let Some(p) = &r.copy_probe {
            let _ = writeln!(
                s,
                "One tiny `COPY ... FROM STDIN` round trip through sqlx (TCP_NODELAY on its sockets since 0.9.1): \
                 **{:.2} ms** (a `SELECT 1`: {:.2} ms).\n",
                p.copy_ms, p.select1_ms,
            );
        }
    }

    if !r.incremental.is_empty() {
        let _ = writeln!(
            s,
            "#### Incremental: {} distinct chats changed per round (mutate ops {})\n",
            a.changed,
            CHAT_OPS.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
        );
        let _ = writeln!(
            s,
            "| round | ops | changed rows (tables) | delta MB | owsync `sync_tenant` s | owsync rows read / written | owsync RSS MiB | longest mirror read during it, ms | bare upsert s (TCP_NODELAY, as psql) | + reading those rows by key s | owsync / upsert | ok |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for (i, x) in r.incremental.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} ({}){} | {:.2} | {:.2} | {} / {} | {:.0} | {:.0} ({} reads) | {:.3} | {:.3} | {:.0}x | {} |",
                i + 1,
                x.ops,
                x.changed_rows,
                x.changed_tables.join(", "),
                if x.deleted_rows > 0 { format!(" + {} deleted", x.deleted_rows) } else { String::new() },
                x.delta_bytes as f64 / 1e6,
                x.owsync_secs,
                x.owsync_rows_read,
                x.owsync_rows_written,
                x.owsync_rss_mib,
                x.mirror_read_stall_ms,
                x.mirror_reads,
                x.upsert_secs,
                x.delta_read_secs,
                x.owsync_secs / x.upsert_secs,
                if x.ok { "yes" } else { "**no**" }
            );
        }
        let mut o: Vec<f64> = r.incremental.iter().map(|x| x.owsync_secs).collect();
        let mut u: Vec<f64> = r.incremental.iter().map(|x| x.upsert_secs).collect();
        let mut ur: Vec<f64> = r.incremental.iter().map(|x| x.upsert_secs + x.delta_read_secs).collect();
        let _ = writeln!(
            s,
            "\nMedian: owsync **{:.2} s** (target <= 0.3 s), bare upsert {:.3} s, upsert + keyed read {:.3} s.\n",
            median(&mut o),
            median(&mut u),
            median(&mut ur)
        );
        if let Some(x) = r.incremental.iter().find(|x| !x.ok) {
            let _ = writeln!(s, "Verification failed: {}\n", x.note);
        }
    }

    if let Some(u) = &r.unchanged {
        unchanged_paragraph(&mut s, u, " (nearest rank; = max at 50 runs)", " (target < 5 ms)");
    }

    // Targets.
    let rss = r.first.iter().find(|c| c.name == "owsync").and_then(|c| c.rss_mib);
    let inc_rss = r.incremental.iter().map(|x| x.owsync_rss_mib).fold(0.0, f64::max);
    let mut o: Vec<f64> = r.incremental.iter().map(|x| x.owsync_secs).collect();
    let inc = if o.is_empty() { None } else { Some(median(&mut o)) };
    let yes = |b: bool| if b { "met" } else { "**not met**" };
    let _ = writeln!(s, "#### Against the targets of issue 3 item 8\n");
    let _ = writeln!(s, "| target | measured | |");
    let _ = writeln!(s, "|---|---|---|");
    if let (Some(o), Some(cp), Some(ratio)) = (ow_secs, copy, ow_ratio) {
        let _ = writeln!(
            s,
            "| first sync <= 0.8x COPY-from-file | {ratio:.2}x (medians {o:.1} s vs {cp:.1} s) | {} |",
            yes(ratio <= 0.8)
        );
        if let Some(p) = pgl_ratio {
            let _ = writeln!(s, "| first sync >= 2.3x faster than pgloader | {p:.2}x | {} |", yes(p >= 2.3));
        }
    }
    if let Some(i) = inc {
        let _ = writeln!(
            s,
            "| incremental, {} changed chats, <= 0.3 s | {:.2} s (median) | {} |",
            a.changed,
            i,
            yes(i <= 0.3)
        );
    }
    if let Some(u) = &r.unchanged {
        let over = u.samples_ms.iter().filter(|t| **t >= 5.0).count();
        let _ = writeln!(
            s,
            "| unchanged cycle < 5 ms | median {:.2} ms, p99 {:.2} ms ({over} of {} runs >= 5 ms) | {} median, {} p99 |",
            u.median_ms,
            u.p99_ms,
            u.runs,
            yes(u.median_ms < 5.0),
            yes(u.p99_ms < 5.0)
        );
    }
    if let Some(m) = rss {
        let peak = m.max(inc_rss);
        let _ = writeln!(
            s,
            "| peak RSS < 100 MB | {peak:.0} MiB (first sync {m:.0}, incremental {inc_rss:.0}) | {} |",
            yes(peak * 1.048_576 < 100.0)
        );
    }
    s
}

/// Replaces this size's region of the report file (or appends it). A data set with other
/// than the default messages per chat has a region of its own.
/// `kind`: `results` (the sync cases) or `restore`.
pub fn write_region(path: &Path, kind: &str, chats: u32, msgs: Option<u32>, body: &str) -> Result<()> {
    let key = match msgs {
        Some(m) => format!("chats={chats} msgs={m}"),
        None => format!("chats={chats}"),
    };
    let begin = format!("<!-- bench:{kind} {key} begin (written by `cargo bench --bench sync`) -->");
    let end = format!("<!-- bench:{kind} {key} end -->");
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| {
        "# owsync benchmarks\n\nResults of `cargo bench --bench sync` (benches/sync.rs).\n\n".to_string()
    });
    let block = format!("{begin}\n{body}\n{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, new)?;
    Ok(())
}

fn restore_row(s: &mut String, what: &str, runs: &[RestoreRun]) {
    let mut t: Vec<f64> = runs.iter().map(|x| x.secs).collect();
    let med = median(&mut t);
    let (lo, hi) = (t.first().copied().unwrap_or(f64::NAN), t.last().copied().unwrap_or(f64::NAN));
    let bytes = runs.first().map_or(0, |x| x.bytes) as f64;
    let rows = runs.first().map_or(0, |x| x.rows) as f64;
    let rss = runs.iter().filter_map(|x| x.rss_mib).fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let ok = runs.iter().all(|x| x.ok);
    let note = runs.iter().find(|x| !x.ok).or(runs.first()).map_or(String::new(), |x| x.note.clone());
    let _ = writeln!(
        s,
        "| {what} | {} | {lo:.2}-{hi:.2} | {:.1} | {:.0} | {:.1} | {} | {} | {note} |",
        fmt_s(Some(med)),
        bytes / 1e6 / med,
        rows / med,
        bytes / 1e6,
        rss.map_or("—".into(), |m| format!("{m:.0}")),
        if ok { "yes" } else { "**no**" },
    );
}

/// The unchanged-source cycles' paragraph, with notes after the p99 and the verdict.
pub fn unchanged_paragraph(s: &mut String, u: &Unchanged, p99_note: &str, target: &str) {
    let _ = writeln!(
        s,
        "#### Unchanged source ({} runs of `sync_tenant`, in process, warm pool)\n\n\
         median **{:.2} ms**, p99 {:.2} ms{p99_note}, min {:.2} ms, max {:.2} ms; \
         every run skipped by the fingerprint: {}{target}.\n",
        u.runs,
        u.median_ms,
        u.p99_ms,
        u.min_ms,
        u.max_ms,
        if u.all_skipped { "yes" } else { "**no**" }
    );
}

/// The restore region: owsync's restore against the naive pipeline, same run.
/// A region's heading (`what`, the tenant's size), the command and the run's machine.
pub fn region_head(s: &mut String, what: &str, a: &Args, r: &Results, total_secs: f64) {
    let (d, e) = (&r.data, &r.env);
    let _ = writeln!(
        s,
        "### {what}, {} chats: {} users x {} chats x {} messages\n",
        d.chats, d.users, a.chats_per_user, d.msgs
    );
    let _ = writeln!(s, "Command: `{}`  ", e.command);
    let _ = writeln!(
        s,
        "Run: {}, owsync {}, whole bench {:.0} s. Machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}; \
         load average {} at the start, {} at the end.  ",
        e.date, e.git, total_secs, e.nproc, e.cpu, e.mem_gib, e.kernel, e.load_start, e.load_end
    );
}

pub fn render_restore(a: &Args, r: &Results, x: &RestoreCases, total_secs: f64) -> String {
    let (d, e) = (&r.data, &r.env);
    let mut s = String::new();
    region_head(&mut s, "Restore", a, r, total_secs);
    let _ = writeln!(s, "Software: {}; {}; sqlite3 CLI {}.  ", e.postgres, x.psql, x.sqlite3);
    let _ = writeln!(
        s,
        "Source: **{:.1} MB**, {} rows in {} tables; mirrored by the bench's first sync{}.\n",
        d.file_bytes as f64 / 1e6,
        d.rows,
        d.tables,
        x.first_sync_secs.map_or(String::new(), |t| format!(" ({t:.1} s)"))
    );
    let n = x.owsync.len();
    let _ = writeln!(
        s,
        "{n} run{} of each, interleaved (the first of each pair alternating); wall s is the median, MB/s the \
         restored file's size / median time, rows/s the source's rows / median time, peak RSS the largest over the \
         runs (GNU time; the naive pipeline's is its larger process).\n",
        if n == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        s,
        "| case | wall s (median) | min-max s | MB/s | rows/s | file MB | peak RSS MiB | row counts = source | notes |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    restore_row(
        &mut s,
        "**owsync**: `owsyncctl restore bench --to FILE` (release binary; includes its `PRAGMA integrity_check` and the \
         switch to WAL)",
        &x.owsync,
    );
    if x.naive.is_empty() {
        let _ = writeln!(s, "| naive pipeline | — | — | — | — | — | — | — | {} |", x.naive_note);
    } else {
        restore_row(
            &mut s,
            "naive: one `psql -c \"\\copy (SELECT <the source's columns> FROM <mirror> WHERE NOT _owsync_deleted) TO \
             'table.csv' CSV\"` per table (one psql), then one `sqlite3 new.db`: the source's DDL (tables, indexes), \
             then `.import --csv --skip 0 table.csv table` per table",
            &x.naive,
        );
        restore_row(
            &mut s,
            "naive, every row: the same, mended so that it gives back every row: psql writes NULL as `\\N` \
             (`(FORMAT csv, NULL '\\N')`) and each table is imported through a view whose INSTEAD OF trigger turns \
             `\\N` into NULL",
            &x.naive_every_row,
        );
    }
    if let Some(b) = &x.baseline_bin {
        restore_row(&mut s, &format!("owsync, another build (`OWSYNC_BENCH_RESTORE_BASELINE={b}`)"), &x.baseline);
        let mut r: Vec<f64> = x.baseline.iter().zip(&x.owsync).map(|(b, o)| b.secs / o.secs).collect();
        let _ = writeln!(s, "\nThat build / this one: {:.2}x in time (median of the per-run ratios).", median(&mut r));
    }
    restore_runs(&mut s, x);
    s
}

/// The restore's per-run table and its targets.
fn restore_runs(s: &mut String, x: &RestoreCases) {
    let _ = writeln!(
        s,
        "\n| run | owsync s | owsync peak RSS MiB | naive s (psql + sqlite3) | naive / owsync (time) | owsync / naive \
         (MB/s) | naive, every row s (psql + sqlite3) | naive, every row / owsync (time) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    let (mut ratios, mut mbs_ratios, mut every_ratios) = (Vec::new(), Vec::new(), Vec::new());
    let secs = |v: Option<&RestoreRun>| {
        v.map_or("—".into(), |v| {
            let parts: Vec<String> = v.parts.iter().map(|(_, t)| format!("{t:.2}")).collect();
            format!("{:.2} ({})", v.secs, parts.join(" + "))
        })
    };
    let times = |r: Option<f64>| r.map_or("—".into(), |r| format!("{r:.2}x"));
    for (i, o) in x.owsync.iter().enumerate() {
        let (nv, ev) = (x.naive.get(i), x.naive_every_row.get(i));
        let ratio = nv.map(|v| v.secs / o.secs);
        let mbs = nv.map(|v| (o.bytes as f64 / o.secs) / (v.bytes as f64 / v.secs));
        let every = ev.map(|v| v.secs / o.secs);
        ratios.extend(ratio);
        mbs_ratios.extend(mbs);
        every_ratios.extend(every);
        let _ = writeln!(
            s,
            "| {} | {:.2} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            o.secs,
            o.rss_mib.map_or("—".into(), |m| format!("{m:.0}")),
            secs(nv),
            times(ratio),
            times(mbs),
            secs(ev),
            times(every),
        );
    }
    restore_targets(s, x, (&mut ratios, &mut mbs_ratios, &mut every_ratios));
}

/// The target lines: the speed against the naive pipeline that gives back every row (the
/// literal one's figures beside it), and the peak RSS.
fn restore_targets(
    s: &mut String,
    x: &RestoreCases,
    (ratios, mbs_ratios, every): (&mut Vec<f64>, &mut Vec<f64>, &mut Vec<f64>),
) {
    let yes = |b: bool| if b { "met" } else { "**not met**" };
    let rss = x.owsync.iter().filter_map(|o| o.rss_mib).fold(0.0, f64::max);
    let _ = writeln!(s, "\n| target (issue 12, item 2) | measured | |\n|---|---|---|");
    if !ratios.is_empty() {
        let (m, mb) = (median(ratios), median(mbs_ratios));
        let lossy = x.naive.iter().any(|v| !v.ok);
        let every_ok = x.naive_every_row.iter().all(|v| v.ok);
        let e = if every.is_empty() { None } else { Some(median(every)) };
        let _ = writeln!(
            s,
            "| restore >= 2x faster than the naive pipeline | {} against the naive pipeline that gives back every row \
             (median of the per-run ratios; {} runs{}); the literal pipeline: {m:.2}x in time, {mb:.2}x in MB/s of \
             restored file{} | {} |",
            e.map_or("—".into(), |e| format!("**{e:.2}x** in time")),
            every.len(),
            if every_ok { "" } else { "; it did not give back every row either: see its notes" },
            if lossy { " (it gave back fewer rows: see its notes)" } else { "" },
            yes(e.is_some_and(|e| e >= 2.0) && every_ok),
        );
    }
    let _ = writeln!(
        s,
        "| peak RSS < 100 MB | {rss:.0} MiB ({:.0} MB) | {} |",
        rss * 1.048_576,
        yes(rss * 1.048_576 < 100.0)
    );
}
