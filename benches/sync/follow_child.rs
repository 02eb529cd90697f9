//! The long-lived child of the followed rounds (`--follow-child`): it follows the tenant's
//! WAL as owsyncd does (a follower registered for the source and read every 200 ms), and
//! also when told (`poll`, between the writer's bursts), and runs a timed `sync_tenant`
//! when told (`sync`). One command per stdin line, one JSON line per answer on stdout.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use owsync::source::follow;
use owsync::sync::{SyncJob, sync_tenant};
use serde_json::{Value as J, json};

use crate::child::{ChildRun, parse_report, vm_kib};
use crate::{CLIENT, CLUSTER};

/// As owsyncd's follower task (`controller::follow::POLL`).
const POLL: Duration = Duration::from_millis(200);

/// This process's CPU time (user + system), in seconds.
pub fn cpu_secs() -> f64 {
    // SAFETY: getrusage only fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Resets this process's peak RSS (VmHWM) to its current RSS, so that a sync's peak is its own.
fn reset_hwm() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub fn follow_child(argv: &[String]) -> Result<()> {
    // `OWSYNC_LOG=owsync=debug,sqlx=debug` shows where a sync's time goes (stderr, with
    // each table span's time on close).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("OWSYNC_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_writer(std::io::stderr)
            .init();
    }
    let url = std::env::var("OWSYNC_BENCH_URL").context("OWSYNC_BENCH_URL")?;
    let [cluster, client] = argv else { bail!("usage: --follow-child CLUSTER CLIENT") };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let pool = owsync::store::connect(&url, "owsync-bench", 4).await?;
        let spec = owsync::store::specs::get(&pool, cluster, client).await?.spec;
        sqlx::query("SELECT 1").execute(&pool).await?;
        let handle = follow::register(&PathBuf::from(&spec.source.path));
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (h, stop) = (handle.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(POLL);
                    let _ = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner).follower.poll();
                }
            })
        };
        let job = SyncJob { pool: &pool, cluster, client, spec: &spec, fence: None, options: Default::default() };
        let mut out = std::io::stdout().lock();
        for line in std::io::stdin().lock().lines() {
            let answer = match line?.trim() {
                "poll" => {
                    let mut f = handle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let polled = f.follower.poll();
                    json!({"ok": polled.is_ok(), "losses": f.follower.losses})
                }
                "sync" => {
                    reset_hwm();
                    let (t0, c0) = (Instant::now(), cpu_secs());
                    let r = sync_tenant(&job).await?;
                    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_secs() - c0);
                    let losses = handle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).follower.losses;
                    json!({"secs": secs, "cpu_secs": cpu, "hwm_kib": vm_kib("VmHWM:"), "losses": losses, "report": r})
                }
                _ => break,
            };
            writeln!(out, "{answer}")?;
            out.flush()?;
        }
        stop.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        pool.close().await;
        anyhow::Ok(())
    })
}

/// The bench's side of a follow child.
pub struct FollowChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl FollowChild {
    pub fn start(sync_url: &str) -> Result<FollowChild> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--follow-child", CLUSTER, CLIENT])
            .env("OWSYNC_BENCH_URL", sync_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn the follow child")?;
        let stdin = child.stdin.take().context("the follow child's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the follow child's stdout")?);
        Ok(FollowChild { child, stdin, stdout })
    }

    fn ask(&mut self, cmd: &str) -> Result<J> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the follow child ended (on {cmd})");
        }
        serde_json::from_str(&line).context("the follow child's answer")
    }

    /// Has the follower read what was written so far; how many times it lost track so far.
    pub fn poll(&mut self) -> Result<u64> {
        Ok(self.ask("poll")?["losses"].as_u64().unwrap_or(0))
    }

    /// One timed sync; how many times the follower lost track so far.
    pub fn sync(&mut self) -> Result<(ChildRun, u64)> {
        let v = self.ask("sync")?;
        Ok((parse_report(&v), v["losses"].as_u64().unwrap_or(0)))
    }
}

impl Drop for FollowChild {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}
