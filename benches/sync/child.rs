//! The child: one sync_tenant, timed, with its own peak RSS.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use owsync::sync::{SyncJob, SyncOptions, sync_tenant};
use serde::Serialize;
use serde_json::{Value as J, json};
use sqlx::{AssertSqlSafe, PgConnection};

use crate::follow_child::cpu_secs;
use crate::util::exec;
use crate::{CLIENT, CLUSTER, MIRROR_SCHEMA};

pub fn vm_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn child(argv: &[String]) -> Result<()> {
    let url = std::env::var("OWSYNC_BENCH_URL").context("OWSYNC_BENCH_URL")?;
    let [cluster, client] = argv else { bail!("usage: --child CLUSTER CLIENT") };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let out = rt.block_on(async {
        // owsync::store::connect sets TCP_NODELAY and lz4 on each connection (store::session).
        let pool = owsync::store::connect(&url, "owsync-bench", 4).await?;
        // As owsyncd --table-connections: OWSYNC_TABLE_CONNECTIONS, when set, to compare.
        let mut options = SyncOptions::default();
        if let Some(n) = std::env::var("OWSYNC_TABLE_CONNECTIONS").ok().and_then(|v| v.parse().ok()) {
            options.table_connections = n;
        }
        let spec = owsync::store::specs::get(&pool, cluster, client).await?.spec;
        // A warm connection, as the daemon's pool has.
        sqlx::query("SELECT 1").execute(&pool).await?;
        let hwm_before = vm_kib("VmHWM:");
        let job = SyncJob { pool: &pool, cluster, client, spec: &spec, fence: None, options };
        let (t0, c0) = (Instant::now(), cpu_secs());
        let r = sync_tenant(&job).await?;
        let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
        let hwm = vm_kib("VmHWM:");
        pool.close().await;
        anyhow::Ok(json!({"secs": secs, "cpu_secs": cpu, "hwm_kib": hwm, "hwm_before_kib": hwm_before, "report": r}))
    })?;
    println!("{out}");
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct ChildRun {
    pub secs: f64,
    /// The child's CPU time (user + system) over the sync.
    pub cpu_secs: f64,
    pub hwm_kib: u64,
    pub hwm_before_kib: u64,
    pub rows_written: u64,
    pub unchanged: bool,
    pub failed: BTreeMap<String, String>,
    /// table -> (rows read, rows upserted, rows tombstoned)
    pub tables: BTreeMap<String, (i64, u64, u64)>,
    /// table -> (how its changes were captured, pages its walk read)
    pub captures: BTreeMap<String, (String, u64)>,
}

pub fn child_command(sync_url: &str) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["--child", CLUSTER, CLIENT])
        .env("OWSYNC_BENCH_URL", sync_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Ok(cmd)
}

pub fn run_child(sync_url: &str) -> Result<ChildRun> {
    let out = child_command(sync_url)?.output().context("spawn the owsync child")?;
    parse_child(&out)
}

/// Runs the child while reading the mirror's `chat` every 20 ms from `reader`: the
/// longest of those reads (ms) and how many there were.
pub async fn run_child_probed(sync_url: &str, reader: &mut PgConnection) -> Result<(ChildRun, f64, usize)> {
    exec(reader, "SET statement_timeout = '600s'".into()).await?;
    let probe = format!("SELECT 1 /* bench-probe */ FROM {MIRROR_SCHEMA}.chat LIMIT 1");
    let mut child = child_command(sync_url)?.spawn().context("spawn the owsync child")?;
    let (mut worst, mut n) = (0.0f64, 0);
    while child.try_wait()?.is_none() {
        let t0 = Instant::now();
        sqlx::query(AssertSqlSafe(probe.clone())).execute(&mut *reader).await?;
        worst = worst.max(t0.elapsed().as_secs_f64() * 1000.0);
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output()?;
    Ok((parse_child(&out)?, worst, n))
}

pub fn parse_child(out: &std::process::Output) -> Result<ChildRun> {
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the owsync child failed ({}): {text}", out.status);
    }
    let v: J = serde_json::from_str(text.lines().last().unwrap_or_default()).context("child output")?;
    Ok(parse_report(&v))
}

/// A child's answer: the timed sync and its report.
pub fn parse_report(v: &J) -> ChildRun {
    let r = &v["report"];
    let (mut tables, mut captures) = (BTreeMap::new(), BTreeMap::new());
    for (k, t) in r["tables"].as_object().into_iter().flatten() {
        let g = |f: &str| t[f].as_i64().unwrap_or(0);
        // Rows the sync read (all of them in a full pass, those of changed pages in an
        // incremental one); older reports only have `rows`.
        let read = t["rows_read"].as_i64().unwrap_or_else(|| g("rows"));
        tables.insert(k.clone(), (read, g("upserted") as u64, g("tombstoned") as u64));
        let capture = t["capture"].as_str().unwrap_or("").to_string();
        captures.insert(k.clone(), (capture, g("pages_read") as u64));
    }
    ChildRun {
        secs: v["secs"].as_f64().unwrap_or(f64::NAN),
        cpu_secs: v["cpu_secs"].as_f64().unwrap_or(f64::NAN),
        hwm_kib: v["hwm_kib"].as_u64().unwrap_or(0),
        hwm_before_kib: v["hwm_before_kib"].as_u64().unwrap_or(0),
        rows_written: r["rows_written"].as_u64().unwrap_or(0),
        unchanged: r["unchanged"].as_bool().unwrap_or(false),
        failed: serde_json::from_value(r["failed"].clone()).unwrap_or_default(),
        tables,
        captures,
    }
}
