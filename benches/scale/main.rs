//! The scale benchmark of issue 4, item 8: many small Open WebUI tenants on one cluster,
//! one real `owsyncd` leader, a throwaway PostgreSQL, on this machine.
//!
//! ```text
//! cargo bench --bench scale                        # 1,000 tenants
//! cargo bench --bench scale -- --tenants 200 --steady 30
//! cargo bench --bench scale -- --help
//! ```
//!
//! Measures: the time from `owsyncctl apply` of every tenant until all are `Synced`;
//! the daemon's steady-state CPU (utime+stime from /proc/PID/stat) and RSS over a window
//! with no change, PostgreSQL's CPU over the same window, and the per-tenant cost of an
//! unchanged cycle (CPU / cycles run, `sync_jobs` rows in the window); then the
//! change-to-PostgreSQL lag with the per-tenant file watch (`spec.watch: true`): a row is
//! inserted into N random tenants' `webui.db`, and the mirror is polled until it is there
//! (p50, p99). Also what grows with the tenants: file descriptors, threads, PostgreSQL
//! sessions. The figures go to stdout and into BENCHMARKS.md between the `bench:scale`
//! markers.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it runs a smoke pass (20
//! tenants, short windows, nothing written) that fails unless every tenant syncs and
//! every change arrives.

mod measure;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use owsync::devpg::{Options, TempPostgres};
use owsync::fixtures::{CreateOptions, JournalMode, SchemaFlavor};

use crate::measure::{Lag, Proc, Steady, lag_round, postmaster_pid, steady_window, wait_all_synced};

const CLUSTER: &str = "scale-host";
const SYNC_PASSWORD: &str = "scale-sync-pw-3e9a";

const USAGE: &str = "\
cargo bench --bench scale -- [options]
  --tenants N       tenants (default 1000)
  --chats N         chats per tenant (default 3; one user)
  --interval D      spec.interval of every tenant (default 10s)
  --steady SECS     steady-state window (default 60)
  --changes N       tenants changed for the lag figures (default 100)
  --concurrency N   owsyncd --max-concurrency (default: owsyncd's own, 8)
  --bin-dir DIR     run owsyncd and owsyncctl from DIR (e.g. target/release when this driver
                    itself was built without optimisation; default: the ones cargo built with it)
  --work DIR        scratch directory (default target/owsync-scale)
  --out FILE        report file (default BENCHMARKS.md)
  --no-write        do not touch the report file";

#[derive(Debug, Clone)]
pub struct Args {
    tenants: usize,
    chats: u32,
    interval: String,
    steady: u64,
    changes: usize,
    concurrency: Option<usize>,
    bin_dir: Option<PathBuf>,
    work: PathBuf,
    out: Option<PathBuf>,
    strict: bool,
}

fn parse_args(argv: &[String]) -> Result<Args> {
    let mut a = Args {
        tenants: 1000,
        chats: 3,
        interval: "10s".into(),
        steady: 60,
        changes: 100,
        concurrency: None,
        bin_dir: None,
        work: PathBuf::from("target/owsync-scale"),
        out: Some(PathBuf::from("BENCHMARKS.md")),
        strict: false,
    };
    let mut it = argv.iter().filter(|x| *x != "--bench");
    while let Some(x) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| anyhow!("{x} needs a value\n{USAGE}"));
        match x.as_str() {
            "--tenants" => a.tenants = val()?.parse()?,
            "--chats" => a.chats = val()?.parse()?,
            "--interval" => a.interval = val()?,
            "--steady" => a.steady = val()?.parse()?,
            "--changes" => a.changes = val()?.parse()?,
            "--concurrency" => a.concurrency = Some(val()?.parse()?),
            "--bin-dir" => a.bin_dir = Some(val()?.into()),
            "--work" => a.work = val()?.into(),
            "--out" => a.out = Some(val()?.into()),
            "--no-write" => a.out = None,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if a.tenants == 0 || a.chats == 0 {
        bail!("--tenants and --chats must be positive");
    }
    a.changes = a.changes.min(a.tenants);
    Ok(a)
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let smoke_dir;
    let args = if argv.iter().any(|x| x == "--bench") {
        parse_args(&argv)?
    } else {
        if argv.iter().any(|x| x == "--list") {
            return Ok(());
        }
        smoke_dir = tempfile::tempdir()?;
        // A window longer than the 10 s interval, so it sees cycles however late the first
        // syncs ended.
        let smoke = ["--tenants", "20", "--steady", "12", "--changes", "10", "--no-write"];
        let mut a = parse_args(&smoke.map(String::from))?;
        a.work = smoke_dir.path().to_path_buf();
        a.strict = true;
        eprintln!("scale: no --bench flag (cargo test): smoke run; `cargo bench --bench scale` measures");
        a
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

/// The tenants' names, `t0001`...
fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("t{i:04}")).collect()
}

/// One generated database, copied for every tenant (generation is the slow part).
fn make_sources(a: &Args, dir: &Path, names: &[String]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let template = dir.join("template.db");
    let opts = CreateOptions {
        users: 1,
        chats_per_user: a.chats,
        messages_per_chat: 4,
        seed: 7,
        schema: SchemaFlavor::Fresh,
        journal: JournalMode::Wal,
        force: true,
        ..Default::default()
    };
    owsync::fixtures::create(&template, &opts)?;
    let mut paths = Vec::new();
    for n in names {
        let d = dir.join(n);
        std::fs::create_dir_all(&d)?;
        let p = d.join("webui.db");
        std::fs::copy(&template, &p)?;
        paths.push(p);
    }
    Ok(paths)
}

fn manifests(a: &Args, names: &[String], paths: &[PathBuf]) -> String {
    let mut s = String::new();
    for (n, p) in names.iter().zip(paths) {
        s.push_str(&format!(
            "---\napiVersion: owsync.io/v1alpha1\nkind: ClientSync\nmetadata:\n  name: {n}\nspec:\n  source:\n    \
             path: {}\n  interval: {}\n  watch: true\n",
            p.display(),
            a.interval
        ));
    }
    s
}

/// The path of binary `name`: from `--bin-dir`, or the one cargo built with this bench.
fn bin(a: &Args, name: &str, built: &str) -> PathBuf {
    a.bin_dir.as_ref().map_or_else(|| PathBuf::from(built), |d| d.join(name))
}

fn ctl(a: &Args, url_file: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin(a, "owsyncctl", env!("CARGO_BIN_EXE_owsyncctl")))
        .args(args)
        .env_remove("OWSYNC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("OWSYNC_DATABASE_URL_FILE", url_file)
        .env("OWSYNC_CLUSTER", CLUSTER)
        .output()?;
    if !out.status.success() {
        bail!("owsyncctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM (a clean shutdown), then wait.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    let work = std::path::absolute(&a.work)?;
    let _ = std::fs::remove_dir_all(work.join("tenants"));
    std::fs::create_dir_all(&work)?;
    let names = names(a.tenants);
    let t = Instant::now();
    let paths = make_sources(&a, &work.join("tenants"), &names)?;
    let source_bytes = std::fs::metadata(&paths[0])?.len();
    eprintln!("scale: {} sources of {} KiB in {:.1}s", paths.len(), source_bytes / 1024, t.elapsed().as_secs_f64());

    let pg = TempPostgres::start(Options::default().setting("max_connections", "100"))?;
    let db = pg.create_database("scale")?;
    let admin_url = pg.admin_url(&db);
    let admin = owsync::store::connect(&admin_url, "scale-admin", 4).await?;
    owsync::store::migrate::run(&admin, Some(SYNC_PASSWORD)).await?;
    let sync_url = format!("postgres://sync_service:{SYNC_PASSWORD}@127.0.0.1:{}/{db}", pg.port());
    let url_file = work.join("database-url");
    std::fs::write(&url_file, &sync_url)?;

    // -- the leader --
    let port = free_port()?;
    let log = std::fs::File::create(work.join("owsyncd.log"))?;
    let listen = format!("127.0.0.1:{port}");
    let owsyncd = bin(&a, "owsyncd", env!("CARGO_BIN_EXE_owsyncd"));
    let optimised = a.bin_dir.as_ref().is_some_and(|d| d.ends_with("release")) || !cfg!(debug_assertions);
    let mut cmd = Command::new(&owsyncd);
    cmd.args(["--cluster", CLUSTER, "--node-id", "scale-a", "--listen", &listen])
        .env_remove("OWSYNC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("OWSYNC_DATABASE_URL_FILE", &url_file)
        .env("OWSYNC_LOG", "info,sqlx=warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null());
    let concurrency = a.concurrency.map(|c| c.to_string());
    if let Some(c) = &concurrency {
        cmd.args(["--max-concurrency", c]);
    }
    let daemon = Daemon(cmd.spawn().context("spawn owsyncd")?);
    let proc = Proc::new(daemon.0.id());
    let health = format!("http://{listen}/health");
    let t = Instant::now();
    loop {
        let h = reqwest::get(&health).await.ok().map(reqwest::Response::json::<serde_json::Value>);
        let leader = match h {
            Some(f) => f.await.ok().and_then(|v| v["is_leader"].as_bool()).unwrap_or(false),
            None => false,
        };
        if leader {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("owsyncd did not lead within 60 s (log: {})", work.join("owsyncd.log").display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let idle = proc.sample()?;

    // -- apply every tenant at once; time until all are Synced --
    let fleet = work.join("fleet.yaml");
    std::fs::write(&fleet, manifests(&a, &names, &paths))?;
    let t = Instant::now();
    ctl(&a, &url_file, &["apply", "-f", fleet.to_str().unwrap_or_default()])?;
    let apply_secs = t.elapsed().as_secs_f64();
    let timeout = Duration::from_secs(120 + 3 * a.tenants as u64);
    let synced = wait_all_synced(&admin, a.tenants, timeout).await?;
    let all_synced_secs = t.elapsed().as_secs_f64();
    eprintln!("scale: apply {apply_secs:.1}s, all {} Synced after {all_synced_secs:.1}s", a.tenants);
    if synced < a.tenants {
        bail!("only {synced} of {} tenants reached Synced in {timeout:?}", a.tenants);
    }
    let after_sync = proc.sample()?;

    // -- steady state: nothing changes for a window --
    let pgs = postmaster_pid(pg.data_dir())?;
    let steady = steady_window(&admin, &proc, pgs, Duration::from_secs(a.steady)).await?;
    eprintln!("scale: steady {steady:?}");

    // -- change-to-PostgreSQL lag with the file watch --
    let lag = lag_round(&admin, &names, &paths, a.changes).await?;
    eprintln!("scale: lag {lag:?}");
    let end = proc.sample()?;
    drop(daemon);
    let build = if optimised { "optimised owsyncd" } else { "debug-build owsyncd (not for figures)" };
    let report = render(&a, build, source_bytes, apply_secs, all_synced_secs, &idle, &after_sync, &end, &steady, &lag);
    println!("\n{report}");
    if let Some(out) = &a.out {
        write_region(out, &report)?;
        eprintln!("scale: updated {}", out.display());
    }
    eprintln!("scale: done in {:.0}s", started.elapsed().as_secs_f64());
    if a.strict {
        if lag.arrived < lag.sent {
            bail!("smoke run: {} of {} changes did not reach PostgreSQL", lag.sent - lag.arrived, lag.sent);
        }
        if steady.cycles == 0 {
            bail!("smoke run: no cycle ran in the steady window");
        }
        println!("smoke: 1 passed, 0 failed");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render(
    a: &Args,
    build: &str,
    source_bytes: u64,
    apply: f64,
    all_synced: f64,
    idle: &measure::Sample,
    after_sync: &measure::Sample,
    end: &measure::Sample,
    s: &Steady,
    lag: &Lag,
) -> String {
    let mut r = String::new();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    r.push_str(&format!(
        "Run: `cargo bench --bench scale -- --tenants {} --chats {} --interval {} --steady {} --changes {}{}` on {cpus} \
         cores, {} ({build}, one leader{}, throwaway PostgreSQL with fsync off).\n\n",
        a.tenants,
        a.chats,
        a.interval,
        a.steady,
        a.changes,
        a.bin_dir.as_ref().map(|d| format!(" --bin-dir {}", d.display())).unwrap_or_default(),
        measure::load_note(),
        a.concurrency.map(|c| format!(", --max-concurrency {c}")).unwrap_or_default()
    ));
    r.push_str("| figure | value |\n|---|---|\n");
    let mut row = |k: &str, v: String| r.push_str(&format!("| {k} | {v} |\n"));
    row(
        "tenants (48 tables, 1 user, chats each)",
        format!("{} x {} chats, {} KiB each", a.tenants, a.chats, source_bytes / 1024),
    );
    row("apply of all tenants (one transaction)", format!("{apply:.1} s"));
    row("apply until all Synced", format!("{all_synced:.1} s ({:.1} tenants/s)", a.tenants as f64 / all_synced));
    row(
        "steady state: owsyncd CPU",
        format!(
            "{:.1}% of one core ({} cycles in {:.0} s: {:.1}/s)",
            s.cpu_pct,
            s.cycles,
            s.secs,
            s.cycles as f64 / s.secs
        ),
    );
    row("steady state: PostgreSQL CPU (all its processes)", format!("{:.1}% of one core", s.pg_cpu_pct));
    row(
        "unchanged cycle, per tenant",
        format!("{:.2} ms owsyncd CPU + {:.2} ms PostgreSQL CPU", s.ms_per_cycle, s.pg_ms_per_cycle),
    );
    row(
        "owsyncd RSS: idle / after all synced / steady max / end",
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1} MiB",
            idle.rss_kib as f64 / 1024.0,
            after_sync.rss_kib as f64 / 1024.0,
            s.rss_max_kib as f64 / 1024.0,
            end.rss_kib as f64 / 1024.0
        ),
    );
    row("owsyncd file descriptors / threads (end)", format!("{} / {}", end.fds, end.threads));
    row("PostgreSQL sessions of owsyncd (steady)", format!("{}", s.sessions));
    row(
        "change -> PostgreSQL lag with the file watch",
        format!(
            "p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} of {} changes arrived)",
            lag.p50, lag.p99, lag.max, lag.arrived, lag.sent
        ),
    );
    r
}

/// Replaces the scale region of the report file (or appends it).
fn write_region(path: &Path, body: &str) -> Result<()> {
    let begin = "<!-- bench:scale begin (written by `cargo bench --bench scale`) -->";
    let end = "<!-- bench:scale end -->";
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n{body}{end}");
    let new = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{}\n\n## Scale: many tenants on one leader\n\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, new)?;
    Ok(())
}
