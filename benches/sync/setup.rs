//! Setup: the environment, throwaway PostgreSQL servers (plain, and with the owsync
//! store and the bench's ClientSync applied) and the generated source database.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use owsync::devpg::{Options, TempPostgres};
use owsync::fixtures::{self, CreateOptions, JournalMode, SchemaFlavor};
use owsync::source::{Source, TableInfo};
use owsync::target::MirrorTable;
use rusqlite::Connection;

use crate::results::{Dataset, Env};
use crate::util::{loadavg, sh};
use crate::{Args, CLIENT, CLUSTER, SYNC_PASSWORD};

pub fn gather_env(a: &Args, pg_bin: &Path) -> Env {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let git = format!(
        "{}{}",
        sh("git", &["rev-parse", "--short", "HEAD"]),
        if dirty { " (+ uncommitted changes)" } else { "" }
    );
    let pgloader = if a.pgloader {
        sh("pgloader", &["--version"]).lines().next().unwrap_or("not installed").to_string()
    } else {
        "skipped".into()
    };
    let mut command = String::from("cargo bench --bench sync");
    if !a.given.is_empty() {
        command.push_str(" -- ");
        command.push_str(&a.given.join(" "));
    }
    Env {
        date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        git,
        nproc: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        cpu,
        mem_gib: mem_kib / 1024.0 / 1024.0,
        kernel: sh("uname", &["-r"]),
        load_start: loadavg(),
        load_end: String::new(),
        postgres: sh(&pg_bin.join("postgres").display().to_string(), &["--version"]),
        pgloader,
        sqlite: format!("{} (bundled with rusqlite; owsync and the CSV export)", rusqlite::version()),
        pg_settings: if a.durable {
            "stock durability: fsync=on, synchronous_commit=on, full_page_writes=on; shared_buffers=128MB, \
             max_wal_size=1GB (defaults); one fresh server per measurement"
                .into()
        } else {
            "--pg-unsafe: fsync=off, synchronous_commit=off, full_page_writes=off; one fresh server per measurement"
                .into()
        },
        command,
    }
}

pub fn start_pg(a: &Args, extra: &[(&str, &str)]) -> Result<TempPostgres> {
    let mut o = Options::default();
    if a.durable {
        o = o.setting("fsync", "on").setting("synchronous_commit", "on").setting("full_page_writes", "on");
    }
    for (k, v) in extra {
        o = o.setting(*k, *v);
    }
    TempPostgres::start(o).context("start a throwaway PostgreSQL")
}

pub fn checkpoint(pg: &TempPostgres) -> Result<()> {
    pg.execute("postgres", "CHECKPOINT")?;
    Ok(())
}

/// Generates (or reuses from the cache) the pristine database and copies it to a
/// fresh work file, which the incremental rounds then change.
pub fn prepare_source(a: &Args, ds: &mut Dataset) -> Result<PathBuf> {
    let cache = a.work.join("cache");
    std::fs::create_dir_all(&cache)?;
    let name = format!("webui-u{}-c{}-m{}-s{}.db", a.users, a.chats_per_user, a.msgs, a.seed);
    let pristine = cache.join(&name);
    if !pristine.exists() {
        let tmp = cache.join(format!("{name}.partial"));
        eprintln!(
            "bench: generating {} ({} users x {} chats x {} messages) ...",
            pristine.display(),
            a.users,
            a.chats_per_user,
            a.msgs
        );
        let opts = CreateOptions {
            users: a.users,
            chats_per_user: a.chats_per_user,
            messages_per_chat: a.msgs,
            seed: a.seed,
            schema: SchemaFlavor::Fresh,
            journal: JournalMode::Wal,
            force: true,
            ..Default::default()
        };
        let s = fixtures::create(&tmp, &opts)?;
        ds.generate_secs = Some(s.seconds);
        let c = Connection::open(&tmp)?;
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        c.close().map_err(|(_, e)| e)?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", tmp.display()));
        }
        std::fs::rename(&tmp, &pristine)?;
    }
    let run = a.work.join("run");
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run)?;
    // --restore-only never changes the source: no copy of it (2.25 GB at 100k chats).
    let db = if a.restore_only {
        std::path::absolute(&pristine)?
    } else {
        let db = std::path::absolute(run.join("webui.db"))?;
        std::fs::copy(&pristine, &db)?;
        db
    };
    ds.users = a.users;
    ds.chats = a.chats;
    ds.msgs = a.msgs;
    ds.file_bytes = std::fs::metadata(&db)?.len();
    ds.counts = fixtures::table_counts(&db)?.into_iter().collect();
    ds.rows = ds.counts.values().sum();
    ds.tables = ds.counts.len();
    ds.nonempty_tables = ds.counts.values().filter(|n| **n > 0).count();
    Ok(db)
}

pub fn tables_of(db: &Path) -> Result<Vec<(TableInfo, MirrorTable)>> {
    let src = Source::open(db)?;
    Ok(owsync::source::discover(&src)?
        .into_iter()
        .map(|t| {
            let m = MirrorTable::from_source("public", &t);
            (t, m)
        })
        .collect())
}

pub struct OwsyncServer {
    pub pg: TempPostgres,
    pub db: String,
    pub sync_url: String,
}

pub async fn owsync_server(a: &Args, db_path: &Path, extra: &[(&str, &str)]) -> Result<OwsyncServer> {
    // Every statement's duration is logged (the cost tables), but bind parameters only
    // trimmed: logged in full, the page state a sync records (megabytes of bytea, written
    // out in hex at bind and again at execute) cost the server 50-100 ms of each
    // incremental sync, a cost of the measurement and not of owsync. 200 bytes keep the
    // table names the cost tables attribute statements by.
    let mut settings = vec![("log_min_duration_statement", "0"), ("log_parameter_max_length", "200")];
    settings.extend_from_slice(extra);
    let pg = start_pg(a, &settings)?;
    let db = pg.create_database("owsync")?;
    let admin = owsync::store::connect(&pg.admin_url(&db), "bench-admin", 2).await?;
    owsync::store::migrate::run(&admin, Some(SYNC_PASSWORD)).await?;
    let yaml = format!(
        "apiVersion: owsync.io/v1alpha1\nkind: ClientSync\nmetadata:\n  name: {CLIENT}\nspec:\n  source:\n    path: {}\n  interval: 10s\n",
        db_path.display()
    );
    let docs = owsync::spec::parse_documents("bench.yaml", &yaml).map_err(|e| anyhow!("{e}"))?;
    let doc = owsync::spec::normalize(&docs[0].doc, CLUSTER).map_err(|e| anyhow!("{e:?}"))?;
    let mut tx = admin.begin().await?;
    owsync::store::specs::apply(&mut tx, &doc).await?;
    tx.commit().await?;
    admin.close().await;
    let sync_url = format!("postgres://sync_service:{SYNC_PASSWORD}@127.0.0.1:{}/{db}", pg.port());
    Ok(OwsyncServer { pg, db, sync_url })
}
