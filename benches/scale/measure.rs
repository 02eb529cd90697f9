//! What the scale benchmark measures: a process's CPU, RSS, descriptors and threads from
//! /proc; PostgreSQL's CPU (the postmaster and its children, exited ones included through
//! the postmaster's cutime/cstime); cycles from `sync_jobs`; change-to-mirror lag.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::PgPool;

/// Clock ticks per second of /proc/PID/stat (USER_HZ; 100 on Linux everywhere).
const HZ: f64 = 100.0;

#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// utime + stime, in ticks.
    pub ticks: u64,
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: usize,
}

/// Fields 14.. of /proc/PID/stat (after the parenthesised command name): index 0 is
/// field 3 (state), so utime (14) is 11, stime 12, cutime 13, cstime 14, ppid (4) is 1.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

pub struct Proc {
    pid: u32,
}

impl Proc {
    pub fn new(pid: u32) -> Proc {
        Proc { pid }
    }

    pub fn sample(&self) -> Result<Sample> {
        let f = stat_fields(self.pid).with_context(|| format!("read /proc/{}/stat", self.pid))?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let field = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Sample {
            ticks: f[11] + f[12],
            rss_kib: field("VmRSS:"),
            fds: std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, std::iter::Iterator::count),
            threads: field("Threads:") as usize,
        })
    }
}

/// The postmaster's pid (first line of postmaster.pid).
pub fn postmaster_pid(data_dir: &Path) -> Result<u32> {
    let p = data_dir.join("postmaster.pid");
    let s = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
    Ok(s.lines().next().unwrap_or_default().trim().parse()?)
}

/// CPU ticks of the postmaster and all its children, living and exited.
fn pg_ticks(postmaster: u32) -> u64 {
    let mut total = stat_fields(postmaster).map_or(0, |f| f[11] + f[12] + f[13] + f[14]);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if let Some(f) = stat_fields(pid)
                && f[1] == u64::from(postmaster)
            {
                total += f[11] + f[12];
            }
        }
    }
    total
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn load_note() -> String {
    format!("load average at the end {}", load())
}

pub async fn wait_all_synced(admin: &PgPool, n: usize, timeout: Duration) -> Result<usize> {
    let t = Instant::now();
    let mut last = 0;
    loop {
        let synced: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_metadata.client_status WHERE phase = 'Synced'")
            .fetch_one(admin)
            .await?;
        let synced = synced as usize;
        if synced != last && (synced / 100 != last / 100 || synced == n) {
            eprintln!("scale: {synced}/{n} Synced after {:.1}s", t.elapsed().as_secs_f64());
        }
        last = synced;
        if synced >= n || t.elapsed() > timeout {
            return Ok(synced);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[derive(Debug, Clone, Default)]
pub struct Steady {
    pub secs: f64,
    pub cycles: i64,
    pub cpu_pct: f64,
    pub pg_cpu_pct: f64,
    pub ms_per_cycle: f64,
    pub pg_ms_per_cycle: f64,
    pub rss_max_kib: u64,
    pub sessions: i64,
}

/// A window with no change: CPU of owsyncd and PostgreSQL, cycles run, RSS.
pub async fn steady_window(admin: &PgPool, p: &Proc, postmaster: u32, window: Duration) -> Result<Steady> {
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sync_metadata.sync_jobs").fetch_one(admin).await
    };
    let jobs0 = count().await?;
    let (s0, pg0, t0) = (p.sample()?, pg_ticks(postmaster), Instant::now());
    let mut rss_max = s0.rss_kib;
    while t0.elapsed() < window {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(p.sample()?.rss_kib);
    }
    let (s1, pg1, secs) = (p.sample()?, pg_ticks(postmaster), t0.elapsed().as_secs_f64());
    let cycles = count().await? - jobs0;
    let sessions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'owsyncd/%'")
            .fetch_one(admin)
            .await?;
    let cpu = (s1.ticks - s0.ticks) as f64 / HZ;
    let pg_cpu = pg1.saturating_sub(pg0) as f64 / HZ;
    let per = |c: f64| if cycles > 0 { c * 1000.0 / cycles as f64 } else { f64::NAN };
    Ok(Steady {
        secs,
        cycles,
        cpu_pct: cpu / secs * 100.0,
        pg_cpu_pct: pg_cpu / secs * 100.0,
        ms_per_cycle: per(cpu),
        pg_ms_per_cycle: per(pg_cpu),
        rss_max_kib: rss_max,
        sessions,
    })
}

#[derive(Debug, Clone, Default)]
pub struct Lag {
    pub sent: usize,
    pub arrived: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Inserts a tag row into `n` tenants' sources (spread over the fleet, one every 150 ms)
/// and measures, for each, the time until the row is in the mirror.
pub async fn lag_round(admin: &PgPool, names: &[String], paths: &[PathBuf], n: usize) -> Result<Lag> {
    let mut tasks = Vec::new();
    // A stride coprime with the fleet size picks tenants all over it.
    let stride = (1..names.len()).rev().find(|s| gcd(*s, names.len()) == 1 && *s < names.len() / 2 + 2).unwrap_or(1);
    for i in 0..n {
        let k = (i * stride + i / names.len()) % names.len();
        let (name, path, admin) = (names[k].clone(), paths[k].clone(), admin.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150 * i as u64)).await;
            let id = format!("lag-{i}");
            let ins = id.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
                let c = rusqlite::Connection::open(&path)?;
                c.busy_timeout(Duration::from_secs(5))?;
                c.execute("INSERT INTO tag (id, name, user_id, meta) VALUES (?1, 'lag', 'bench', '{}')", [&ins])?;
                Ok(())
            })
            .await??;
            let t0 = Instant::now();
            let sql = format!(
                "SELECT count(*) FROM {} WHERE id = $1",
                owsync::sql::qualified(&format!("client_{name}"), "tag")
            );
            while t0.elapsed() < Duration::from_secs(60) {
                let found: i64 =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone())).bind(&id).fetch_one(&admin).await?;
                if found > 0 {
                    return Ok::<_, anyhow::Error>(Some(t0.elapsed().as_secs_f64()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(None)
        }));
    }
    let mut lags = Vec::new();
    for t in tasks {
        if let Some(l) = t.await?? {
            lags.push(l);
        }
    }
    if lags.is_empty() && n > 0 {
        bail!("no change reached PostgreSQL within 60 s");
    }
    lags.sort_by(f64::total_cmp);
    Ok(Lag {
        sent: n,
        arrived: lags.len(),
        p50: percentile(&lags, 0.5),
        p99: percentile(&lags, 0.99),
        max: lags.last().copied().unwrap_or(f64::NAN),
    })
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}
