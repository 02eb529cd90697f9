//! The sync benchmark of issue 3, item 8: owsync against PostgreSQL's COPY-from-file
//! ceiling and pgloader on one Open WebUI-shaped database, all in one run on one
//! machine, plus an incremental sync of N changed chats against the bare upsert of
//! exactly the changed rows, and the unchanged-source cycle.
//!
//! ```text
//! cargo bench --bench sync                      # 10k chats (100 users x 100 chats x 6 msgs)
//! cargo bench --bench sync -- --chats 100000    # the issue's 100k size
//! cargo bench --bench sync -- --help            # every option
//! ```
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a small smoke pass
//! instead (200 chats, no pgloader, nothing written) that fails when a verification fails.
//!
//! Every measurement gets its own throwaway PostgreSQL server (`owsync::devpg`), with
//! the stock durability settings (`fsync`, `synchronous_commit` and `full_page_writes`
//! on, unlike the test servers) unless `--pg-unsafe`, and a CHECKPOINT before the timed
//! part. owsync runs in a child process (this binary, `--child`), so its peak RSS
//! (VmHWM) is the engine's own, not the generator's. The results go to stdout, to
//! `<work>/results-<chats>.json` and into BENCHMARKS.md between the markers of this
//! size (the rest of that file is left alone).
//!
//! Ported, not used at run time: the method of `shared/research/peer-bench` (CSV
//! export, server-side `COPY ... CSV` into pre-created tables with primary keys,
//! pgloader with `prefetch rows = 1000` / `batch rows = 1000`, GNU time for its RSS).

mod child;
mod costs;
mod csv;
mod first_sync;
mod follow_child;
mod followed;
mod incremental;
mod peers;
mod report;
mod report_followed;
mod restore;
mod results;
mod setup;
mod util;
mod verify;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use owsync::fixtures::OpKind;
use owsync::source::TableInfo;
use owsync::target::MirrorTable;
use sqlx::Connection as _;

use crate::child::{child, run_child};
use crate::costs::copy_probe;
use crate::csv::export_csv;
use crate::first_sync::{Kept, read_encode_only};
use crate::report::{render, render_restore, write_region};
use crate::restore::Restore;
use crate::results::{RestoreCases, Results};
use crate::setup::{OwsyncServer, gather_env, owsync_server, prepare_source, tables_of};
use crate::util::loadavg;
use crate::verify::mirror_counts_ok;

const CLUSTER: &str = "bench-host";
const CLIENT: &str = "bench";
const MIRROR_SCHEMA: &str = "client_bench";
const SYNC_PASSWORD: &str = "bench-sync-pw-7c3f";
const PGLOADER_OPTS: [&str; 4] = ["--with", "prefetch rows = 1000", "--with", "batch rows = 1000"];
/// The mutate ops that change an existing chat (no new or deleted chats).
const CHAT_OPS: [OpKind; 10] = owsync::fixtures::CHAT_CHANGING_OPS;

const USAGE: &str = "\
cargo bench --bench sync -- [options]
  --chats N            chats in the generated database (default 10000)
  --chats-per-user N   (default 100; users = chats / this)
  --msgs N             messages per chat (default 6)
  --seed N             generator seed (default 42)
  --rounds N           interleaved rounds of the first-sync cases (default 3)
  --changed N          distinct chats changed per incremental round (default 1000)
  --inc-rounds N       incremental rounds (default 3)
  --unchanged-runs N   unchanged-source cycles timed (default 50)
  --work DIR           scratch and cache directory (default target/owsync-bench)
  --out FILE           report file to update (default BENCHMARKS.md)
  --no-write           do not touch the report file
  --pg-unsafe          keep the test servers' fsync=off (default: stock durability)
  --no-pgloader        skip pgloader
  --no-lz4             skip the lz4 TOAST compression variants
  --restore-runs N     interleaved runs of owsync's restore and the naive pipeline after the
                       first sync (default 3; 0 skips them)
  --restore-only       one first sync, then only the restore runs (writes only the restore
                       region; works on the cached source without copying it)
  --followed           one first sync, then --inc-rounds incremental rounds of --changed chats
                       with the tenant's WAL followed (a long-lived child that follows it as
                       owsyncd does) and as many with none (the walk of every leaf), alternately,
                       each against the bare upsert of the same rows; then single changed chats
                       and the unchanged cycle (writes only the followed region)
  OWSYNC_BENCH_RESTORE_BASELINE=PATH  also run the owsyncctl at PATH in every restore run
                       (to compare two builds of the restore in one run)";

#[derive(Debug, Clone)]
struct Args {
    chats: u32,
    chats_per_user: u32,
    users: u32,
    msgs: u32,
    seed: u64,
    changed: usize,
    rounds: usize,
    inc_rounds: usize,
    unchanged_runs: usize,
    work: PathBuf,
    out: Option<PathBuf>,
    durable: bool,
    pgloader: bool,
    lz4: bool,
    restore_runs: usize,
    restore_only: bool,
    followed: bool,
    /// Fail when any verification fails (the smoke run under `cargo test`).
    strict: bool,
    /// The options given, to print the command that reruns this.
    given: Vec<String>,
}

/// Messages per generated chat unless `--msgs` says otherwise.
const DEFAULT_MSGS: u32 = 6;

fn parse_args(argv: &[String]) -> Result<Args> {
    let mut a = Args {
        chats: 10_000,
        chats_per_user: 100,
        users: 0,
        msgs: DEFAULT_MSGS,
        seed: 42,
        changed: 1000,
        rounds: 3,
        inc_rounds: 3,
        unchanged_runs: 50,
        work: PathBuf::from("target/owsync-bench"),
        out: Some(PathBuf::from("BENCHMARKS.md")),
        durable: true,
        pgloader: true,
        lz4: true,
        restore_runs: 3,
        restore_only: false,
        followed: false,
        strict: false,
        given: Vec::new(),
    };
    let mut it = argv.iter();
    while let Some(x) = it.next() {
        if x == "--bench" {
            continue; // cargo bench passes it to harness = false targets
        }
        let mut val = || -> Result<String> {
            let v = it.next().cloned().ok_or_else(|| anyhow!("{x} needs a value\n{USAGE}"))?;
            Ok(v)
        };
        match x.as_str() {
            "--chats" => a.chats = val()?.parse()?,
            "--chats-per-user" => a.chats_per_user = val()?.parse()?,
            "--msgs" => a.msgs = val()?.parse()?,
            "--seed" => a.seed = val()?.parse()?,
            "--changed" => a.changed = val()?.parse()?,
            "--rounds" => a.rounds = val()?.parse()?,
            "--inc-rounds" => a.inc_rounds = val()?.parse()?,
            "--unchanged-runs" => a.unchanged_runs = val()?.parse()?,
            "--work" => a.work = val()?.into(),
            "--out" => a.out = Some(val()?.into()),
            "--no-write" => a.out = None,
            "--pg-unsafe" => a.durable = false,
            "--no-pgloader" => a.pgloader = false,
            "--no-lz4" => a.lz4 = false,
            "--restore-runs" => a.restore_runs = val()?.parse()?,
            "--restore-only" => a.restore_only = true,
            "--followed" => a.followed = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    // The options as given, to print the command that reruns this.
    a.given = {
        let mut g = Vec::new();
        let mut it = argv.iter().filter(|x| *x != "--bench");
        while let Some(x) = it.next() {
            g.push(x.clone());
            if !matches!(
                x.as_str(),
                "--no-write" | "--pg-unsafe" | "--no-pgloader" | "--no-lz4" | "--restore-only" | "--followed"
            ) && let Some(v) = it.next()
            {
                g.push(v.clone());
            }
        }
        g
    };
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if a.chats == 0 || a.chats_per_user == 0 || a.msgs < 2 {
        bail!("--chats and --chats-per-user must be positive and --msgs at least 2");
    }
    a.chats_per_user = a.chats_per_user.min(a.chats);
    a.users = a.chats.div_ceil(a.chats_per_user);
    a.chats = a.users * a.chats_per_user;
    Ok(a)
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--child") {
        return child(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("--follow-child") {
        return follow_child::follow_child(&argv[1..]);
    }
    // `cargo bench` passes --bench. Without it the binary runs under `cargo test
    // --all-targets` (CI): then it runs a small smoke pass of every case (no pgloader, no
    // report written) that fails when any verification fails, and ignores libtest's
    // arguments.
    let smoke_dir;
    let args = if argv.iter().any(|x| x == "--bench") {
        parse_args(&argv)?
    } else {
        if argv.iter().any(|x| x == "--list") {
            return Ok(()); // a test lister asking for tests: there are none to list
        }
        smoke_dir = tempfile::tempdir()?;
        let mut a = parse_args(
            &"--chats 200 --chats-per-user 20 --rounds 1 --inc-rounds 1 --changed 20 --unchanged-runs 5 \
              --restore-runs 1 --no-write --no-pgloader"
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>(),
        )?;
        a.work = smoke_dir.path().to_path_buf();
        a.strict = true;
        eprintln!("bench: no --bench flag (cargo test): smoke run; `cargo bench --bench sync` measures");
        // Then the followed mode, on the same small tenant.
        let followed = Args { followed: true, restore_runs: 0, ..a.clone() };
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(run(a))?;
        return rt.block_on(run(followed));
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    let pg_bin = owsync::devpg::find_bin_dir()?;
    let mut res = Results { env: gather_env(&a, &pg_bin), ..Default::default() };
    eprintln!("bench: {}", res.env.command);
    let db = prepare_source(&a, &mut res.data)?;
    let tables = tables_of(&db)?;
    if a.restore_only {
        restore_only(&a, &db, &tables, &pg_bin, &mut res).await?;
    } else if a.followed {
        followed::cases(&a, &db, &tables, &mut res).await?;
    } else {
        sync_cases(&a, &db, &tables, &pg_bin, &mut res).await?;
    }
    finish(&a, &mut res, started.elapsed().as_secs_f64())
}

/// The first-sync rounds, the restore runs on the last round's mirror, the incremental
/// rounds and the unchanged-source cycles.
async fn sync_cases(
    a: &Args,
    db: &Path,
    tables: &[(TableInfo, MirrorTable)],
    pg_bin: &Path,
    res: &mut Results,
) -> Result<()> {
    // -- the source's CSV export and the engine's read cost (untimed setup) --
    let csv_dir = tempfile::Builder::new().prefix("owsync-bench-csv-").tempdir_in("/tmp")?;
    std::fs::set_permissions(csv_dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let (csv, csv_bytes) = export_csv(db, tables, csv_dir.path())?;
    res.data.csv_bytes = csv_bytes;
    eprintln!(
        "bench: source {} ({:.1} MB, {} rows in {} tables, {} non-empty); CSV {:.1} MB",
        db.display(),
        res.data.file_bytes as f64 / 1e6,
        res.data.rows,
        res.data.tables,
        res.data.nonempty_tables,
        csv_bytes as f64 / 1e6
    );
    res.read_encode = Some(read_encode_only(db)?);

    // -- first syncs, in interleaved rounds (every case once per round, each on a fresh
    //    server); the last round's COPY database and owsync mirror go on to the restore
    //    runs and the incremental part --
    let keep = first_sync::rounds(a, db, tables, &csv, res).await?;
    drop(csv_dir);
    let Some(mut k) = keep else { bail!("--rounds must be at least 1") };
    if a.restore_runs > 0 {
        let mut x = restore_cases(a, db, tables, &k.c, pg_bin)?;
        x.first_sync_secs = res.first.iter().find(|c| c.name == "owsync").and_then(|c| c.secs);
        res.restore = Some(x);
    }

    // -- incremental rounds --
    incremental::rounds(a, db, tables, &mut k, res).await?;

    // -- unchanged-source cycles, in process --
    if a.unchanged_runs > 0 {
        res.unchanged = Some(incremental::unchanged_cycles(a.unchanged_runs, &k.c.sync_url).await?);
    }
    let Kept { admin_c, c, conn_a, pg_a } = k;
    admin_c.close().await?;
    conn_a.close().await?;
    res.copy_probe = Some(copy_probe(&c.pg.admin_url(&c.db)).await?);
    drop(c);
    drop(pg_a);
    Ok(())
}

/// `--restore-only`: one first sync fills the mirror, then the restore runs.
async fn restore_only(
    a: &Args,
    db: &Path,
    tables: &[(TableInfo, MirrorTable)],
    pg_bin: &Path,
    res: &mut Results,
) -> Result<()> {
    let c = owsync_server(a, db, &[]).await?;
    eprintln!("bench: first sync of {} into a fresh mirror ...", db.display());
    let first = run_child(&c.sync_url)?;
    let mut admin_c = sqlx::PgConnection::connect(&c.pg.admin_url(&c.db)).await?;
    let bad = mirror_counts_ok(&mut admin_c, tables, db).await?;
    admin_c.close().await?;
    if !bad.is_empty() || !first.failed.is_empty() {
        bail!("the first sync did not fill the mirror: counts {bad}; failed {:?}", first.failed);
    }
    eprintln!("bench: first sync {:.1} s, RSS {:.0} MiB", first.secs, crate::util::mib(first.hwm_kib));
    let mut x = restore_cases(a, db, tables, &c, pg_bin)?;
    x.first_sync_secs = Some(first.secs);
    res.restore = Some(x);
    Ok(())
}

fn restore_cases(
    a: &Args,
    db: &Path,
    tables: &[(TableInfo, MirrorTable)],
    c: &OwsyncServer,
    pg_bin: &Path,
) -> Result<RestoreCases> {
    let psql = pg_bin.join("psql");
    let r = Restore {
        src: db,
        tables,
        url: c.pg.admin_url(&c.db),
        psql: if psql.exists() { psql } else { PathBuf::from("psql") },
        dir: a.work.join("run").join("restore"),
        baseline: std::env::var_os("OWSYNC_BENCH_RESTORE_BASELINE").map(PathBuf::from),
    };
    restore::cases(&r, a.restore_runs.max(1))
}

/// Prints and writes the report (the regions this run measured) and, in the smoke run,
/// fails on any failed verification.
fn finish(a: &Args, res: &mut Results, total_secs: f64) -> Result<()> {
    res.env.load_end = loadavg();
    let msgs = (a.msgs != DEFAULT_MSGS).then_some(a.msgs);
    if let Some(x) = &res.followed {
        let report = report_followed::render(a, res, x, total_secs);
        println!("\n{report}");
        if let Some(out) = &a.out {
            write_region(out, "followed", a.chats, msgs, &report)?;
        }
    } else if !a.restore_only {
        let report = render(a, res, total_secs);
        println!("\n{report}");
        if let Some(out) = &a.out {
            write_region(out, "results", a.chats, msgs, &report)?;
        }
    }
    if let Some(x) = &res.restore {
        let report = render_restore(a, res, x, total_secs);
        println!("\n{report}");
        if let Some(out) = &a.out {
            write_region(out, "restore", a.chats, msgs, &report)?;
        }
    }
    let name = if a.restore_only {
        format!("restore-{}", a.chats)
    } else if a.followed {
        report_followed::json_name(a.chats, a.msgs)
    } else {
        a.chats.to_string()
    };
    let json_path = a.work.join(format!("results-{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&res)?)?;
    eprintln!("bench: raw results in {}", json_path.display());
    if let Some(out) = &a.out {
        eprintln!("bench: updated {}", out.display());
    }
    if a.strict {
        strict_checks(res)?;
    }
    Ok(())
}

fn strict_checks(res: &Results) -> Result<()> {
    if let Some(x) = &res.followed {
        return strict_followed(x);
    }
    let mut bad: Vec<String> = res
        .first
        .iter()
        .filter(|c| !c.name.starts_with("pgloader") && !c.ok)
        .map(|c| format!("{}: {}", c.name, c.note))
        .collect();
    bad.extend(res.incremental.iter().filter(|x| !x.ok).map(|x| format!("incremental: {}", x.note)));
    if res.unchanged.as_ref().is_some_and(|u| !u.all_skipped) {
        bad.push("unchanged: a cycle was not skipped".into());
    }
    match &res.restore {
        None => bad.push("restore: not run".into()),
        Some(x) => bad.extend(x.owsync.iter().filter(|r| !r.ok).map(|r| format!("restore: {}", r.note))),
    }
    // The report's cost tables: statements attributed to their tables (two at once)
    // and the incremental's own kinds of statement counted.
    let attributed = |c: &crate::results::StatementCosts| {
        c.categories.keys().any(|k| k.starts_with("COPY")) && c.unattributed_copies == 0
    };
    if !res.owsync_first_costs.as_ref().is_some_and(attributed) {
        bad.push("costs: the first sync's COPYs were not attributed to their tables".into());
    }
    if !res.owsync_inc_costs.as_ref().is_some_and(|c| c.categories.contains_key("COPY into the stage (temp table)")) {
        bad.push("costs: the incremental's COPY into the stage was not counted".into());
    }
    if !bad.is_empty() {
        bail!("smoke run: verification failed: {}", bad.join("; "));
    }
    println!("smoke: 1 passed, 0 failed");
    Ok(())
}

/// The smoke run's checks of the followed mode: every sync's mirror equals the source,
/// the followed syncs were captured through the follower, unchanged cycles are skipped.
fn strict_followed(x: &crate::results::FollowedCases) -> Result<()> {
    let runs: Vec<_> = x.rounds.iter().chain(&x.single).collect();
    let mut bad: Vec<String> = runs.iter().filter(|r| !r.ok).map(|r| format!("followed: {}", r.note)).collect();
    let followed = runs.iter().filter(|r| r.followed);
    if !followed.clone().any(|r| r.captures.values().any(|(c, _)| c == "followed")) {
        bad.push("followed: no table of a followed sync was captured through the follower".into());
    }
    if followed.count() == 0 {
        bad.push("followed: no followed sync ran".into());
    }
    if !x.unchanged.as_ref().is_some_and(|u| u.all_skipped) {
        bad.push("followed: an unchanged cycle was not skipped".into());
    }
    if !bad.is_empty() {
        bail!("smoke run (followed): verification failed: {}", bad.join("; "));
    }
    println!("smoke (followed): 1 passed, 0 failed");
    Ok(())
}
