//! `--followed`: incremental syncs with the tenant's WAL followed (a long-lived child that
//! follows it as owsyncd does, `follow_child.rs`) and with none (a fresh child, the walk
//! of every leaf), alternately, each against the bare upsert of exactly the same rows;
//! then one changed chat at a time, and the unchanged cycle. Its own region of the report.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Result, bail};
use owsync::devpg::TempPostgres;
use owsync::fixtures::{self, MutateOptions};
use owsync::source::TableInfo;
use owsync::target::MirrorTable;
use sqlx::{Connection as _, PgConnection};

use crate::child::{ChildRun, run_child};
use crate::csv::export_csv;
use crate::follow_child::FollowChild;
use crate::incremental::{bare_upsert, read_delta, same_as_baseline, unchanged_cycles};
use crate::peers::copy_ceiling;
use crate::results::{FollowedCases, FollowedRun, Results};
use crate::setup::{OwsyncServer, checkpoint, owsync_server, start_pg};
use crate::util::mib;
use crate::verify::mirror_counts_ok;
use crate::{Args, CHAT_OPS};

/// Mutate ops per burst: the follow child reads the WAL after each (as owsyncd's follower
/// does every 200 ms). A burst must not outgrow a WAL generation (`wal_autocheckpoint`,
/// 1,000 pages) between two reads, or the follower loses track and the sync walks.
pub const BURST: usize = 10;

/// Followed syncs of one changed chat.
const SINGLE_RUNS: usize = 9;
/// Syncs of one changed chat with no follower (for comparison).
const SINGLE_WALK_RUNS: usize = 3;

/// Runs chat-changing mutate ops, `BURST` at a time, until exactly `want` distinct chats
/// changed, calling `between` after each burst; the union of changed keys per table.
pub fn mutate_bursts(
    db: &Path,
    want: usize,
    seed: u64,
    between: &mut dyn FnMut() -> Result<()>,
) -> Result<(BTreeMap<String, BTreeSet<String>>, u32)> {
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut ops = 0;
    for i in 0..100_000u64 {
        let have = keys.get("chat").map_or(0, BTreeSet::len);
        if have >= want {
            break;
        }
        let n = (want - have).min(BURST) as u32;
        let opts =
            MutateOptions { ops: n, seed: seed * 100_000 + i, only: Some(CHAT_OPS.to_vec()), ..Default::default() };
        let s = fixtures::mutate(db, &opts)?;
        ops += n;
        for (t, ch) in s.tables {
            keys.entry(t).or_default().extend(ch.inserted.into_iter().chain(ch.updated).chain(ch.deleted));
        }
        between()?;
    }
    Ok((keys, ops))
}

/// What the followed cases run on: owsync's mirror after its first sync, the COPY
/// ceiling's tables that take the bare upserts, and the writer's open connection.
/// (Fields in the reverse order of their creation, so that they drop in that order.)
struct Setup<'a> {
    db: &'a Path,
    tables: &'a [(TableInfo, MirrorTable)],
    admin_c: PgConnection,
    c: OwsyncServer,
    conn_a: PgConnection,
    pg_a: TempPostgres,
}

/// `--followed`: the first sync (untimed), then the followed cases into `res`.
pub async fn cases(a: &Args, db: &Path, tables: &[(TableInfo, MirrorTable)], res: &mut Results) -> Result<()> {
    let csv_dir = tempfile::Builder::new().prefix("owsync-bench-csv-").tempdir_in("/tmp")?;
    std::fs::set_permissions(csv_dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let (csv, csv_bytes) = export_csv(db, tables, csv_dir.path())?;
    res.data.csv_bytes = csv_bytes;
    let pg_a = start_pg(a, &[])?;
    let (_, conn_a) = copy_ceiling(&pg_a, "ceiling", false, tables, &csv, &res.data).await?;
    drop(csv_dir);
    let c = owsync_server(a, db, &[]).await?;
    eprintln!("bench: first sync of {} into a fresh mirror ...", db.display());
    let first = run_child(&c.sync_url)?;
    let mut admin_c = PgConnection::connect(&c.pg.admin_url(&c.db)).await?;
    let bad = mirror_counts_ok(&mut admin_c, tables, db).await?;
    if !bad.is_empty() || !first.failed.is_empty() {
        bail!("the first sync did not fill the mirror: counts {bad}; failed {:?}", first.failed);
    }
    // Open WebUI's connection, open throughout: the WAL stays between syncs (the last
    // connection to close would checkpoint and delete it).
    let writer = rusqlite::Connection::open(db)?;
    writer.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    let mut s = Setup { db, tables, admin_c, c, conn_a, pg_a };
    let mut x = FollowedCases { burst: BURST, first_sync_secs: first.secs, ..Default::default() };
    let mut child = FollowChild::start(&s.c.sync_url)?;
    for round in 0..a.inc_rounds * 2 {
        let followed = round % 2 == 0;
        let seed = a.seed + 500 + round as u64;
        if followed {
            prime(&mut s, &mut child, seed + 50).await?;
        }
        let run = one_round(&mut s, followed.then_some(&mut child), a.changed, seed).await?;
        x.rounds.push(run);
    }
    prime(&mut s, &mut child, a.seed + 900).await?;
    for i in 0..SINGLE_RUNS {
        x.single.push(one_round(&mut s, Some(&mut child), 1, a.seed + 1000 + i as u64).await?);
    }
    for i in 0..SINGLE_WALK_RUNS {
        x.single.push(one_round(&mut s, None, 1, a.seed + 1100 + i as u64).await?);
    }
    // With the writer's connection still open (a checkpoint at its close would change the
    // file), and the follower still reading the WAL.
    if a.unchanged_runs > 0 {
        x.unchanged = Some(unchanged_cycles(a.unchanged_runs, &s.c.sync_url).await?);
    }
    drop(child);
    drop(writer);
    res.followed = Some(x);
    let Setup { admin_c, c, conn_a, pg_a, .. } = s;
    admin_c.close().await?;
    drop(c);
    conn_a.close().await?;
    drop(pg_a);
    Ok(())
}

/// A sync that walks and leaves the follow child's follower what the next one follows on
/// from: after a sync by another process, the recorded states are not the ones it made.
/// Its change goes into the baseline too (untimed).
async fn prime(s: &mut Setup<'_>, child: &mut FollowChild, seed: u64) -> Result<()> {
    let (changes, _) = mutate_bursts(s.db, 1, seed, &mut || child.poll().map(|_| ()))?;
    let (r, _) = child.sync()?;
    if !r.failed.is_empty() {
        bail!("the priming sync failed: {:?}", r.failed);
    }
    let (deltas, _, _) = read_delta(s.db, s.tables, &changes)?;
    bare_upsert(&mut s.conn_a, &deltas).await?;
    Ok(())
}

/// One change set of `want` chats, synced followed (`child`) or walked (a fresh child),
/// and upserted bare into the COPY ceiling's tables; both verified against the source.
async fn one_round(s: &mut Setup<'_>, child: Option<&mut FollowChild>, want: usize, seed: u64) -> Result<FollowedRun> {
    let followed = child.is_some();
    let (r, losses, ops, changes) = if let Some(child) = child {
        let before = child.poll()?;
        let (changes, ops) = mutate_bursts(s.db, want, seed, &mut || child.poll().map(|_| ()))?;
        checkpoint(&s.c.pg)?;
        let (r, after) = child.sync()?;
        (r, after - before, ops, changes)
    } else {
        let (changes, ops) = mutate_bursts(s.db, want, seed, &mut || Ok(()))?;
        checkpoint(&s.c.pg)?;
        (run_child(&s.c.sync_url)?, 0, ops, changes)
    };
    let (deltas, _, delta_bytes) = read_delta(s.db, s.tables, &changes)?;
    checkpoint(&s.pg_a)?;
    let upsert_secs = bare_upsert(&mut s.conn_a, &deltas).await?;
    let (same, note) = same_as_baseline(&mut s.admin_c, &mut s.conn_a, s.tables, s.db).await?;
    let ok = same && r.failed.is_empty() && !r.unchanged;
    let run = FollowedRun {
        followed,
        ops,
        changed_chats: changes.get("chat").map_or(0, BTreeSet::len),
        changed_rows: deltas.iter().map(|d| d.rows + d.deletes.len()).sum(),
        changed_tables: deltas.iter().map(|d| d.m.name.clone()).collect(),
        delta_bytes,
        upsert_secs,
        owsync_secs: r.secs,
        owsync_cpu_secs: r.cpu_secs,
        rss_mib: mib(r.hwm_kib),
        pages_read: r.captures.values().map(|c| c.1).sum(),
        captures: r.captures.clone(),
        losses,
        ok,
        note: if ok { note } else { format!("{note}; failed {:?}; unchanged {}", r.failed, r.unchanged) },
    };
    log_round(&run, &r);
    Ok(run)
}

fn log_round(x: &FollowedRun, r: &ChildRun) {
    let capture: BTreeSet<&str> = r.captures.values().map(|c| c.0.as_str()).collect();
    eprintln!(
        "bench: {} {} chats ({} rows): owsync {:.3} s (cpu {:.3} s, {} pages, capture {:?}, {} losses), \
         bare upsert {:.3} s: {:.2}x{}",
        if x.followed { "followed" } else { "walk" },
        x.changed_chats,
        x.changed_rows,
        x.owsync_secs,
        x.owsync_cpu_secs,
        x.pages_read,
        capture,
        x.losses,
        x.upsert_secs,
        x.owsync_secs / x.upsert_secs,
        if x.ok { "" } else { " NOT OK" }
    );
}
