//! `owsyncctl cluster evacuate OLD --to NEW --restore-root DIR [--parallel N]`: every
//! tenant of a lost host is restored into `DIR/<name>/webui.db`, adopted, and moved to
//! NEW with that path. Resumable: a tenant already in NEW is done; a restored file that
//! exists is adopted again, never restored over (and never touched while in use).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use sqlx::PgPool;

use super::cluster::AdminUrl;
use super::common::{CliError, Global};
use crate::restore::RestoreOptions;
use crate::store::{cluster as cl, specs};

#[derive(Debug, Args)]
pub struct EvacuateArgs {
    /// The lost host's cluster.
    pub old: String,
    /// The cluster that takes its tenants over.
    #[arg(long)]
    pub to: String,
    /// Where the tenants' databases are restored: DIR/<name>/webui.db, as the new hosts see it.
    #[arg(long)]
    pub restore_root: PathBuf,
    /// Tenants restored at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Evacuate even though OLD's leader is alive (its syncs are fenced off by the move).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub admin: AdminUrl,
}

/// How one tenant's evacuation ended.
struct Done {
    name: String,
    result: Result<&'static str, String>,
    rows: u64,
    bytes: u64,
    took: Duration,
}

struct Ctx {
    /// The admin pool (every step runs as admin).
    admin: PgPool,
    old: String,
    new: String,
    root: PathBuf,
}

pub async fn evacuate(_g: &Global, a: EvacuateArgs) -> Result<ExitCode, CliError> {
    let admin = a.admin.pool().await?;
    if !a.force && leader_alive(&admin, &a.old).await? {
        return Err(CliError::msg(format!(
            "cluster {} still has a live leader: evacuate is for a lost host. Stop its owsyncd replicas first, \
             move tenants one at a time with `owsyncctl move NAME --to-cluster {}`, or pass --force",
            a.old, a.to
        )));
    }
    // Everything as admin: with one login role per cluster (`cluster add-role`), neither
    // host's role may read the other cluster's mirrors and state.
    let ctx = Arc::new(Ctx { admin, old: a.old.clone(), new: a.to.clone(), root: a.restore_root });
    // A rerun finds only what an earlier run did not move: moved tenants are in NEW.
    let mut names: Vec<String> = specs::list(&ctx.admin, &a.old).await?.into_iter().map(|s| s.name).collect();
    if names.is_empty() {
        eprintln!("cluster {} has no tenants left: nothing to evacuate", a.old);
        return Ok(ExitCode::SUCCESS);
    }
    let total = names.len();
    let bar = super::progress::evacuation_bar(total as u64);
    let mut done: Vec<Done> = Vec::new();
    names.sort();
    let slots = Arc::new(tokio::sync::Semaphore::new(usize::from(a.parallel)));
    let mut set = tokio::task::JoinSet::new();
    for name in names {
        let (ctx, slots) = (ctx.clone(), slots.clone());
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            one(&ctx, name).await
        });
    }
    let (mut bytes, started) = (0u64, Instant::now());
    while let Some(r) = set.join_next().await {
        let d = r.map_err(|e| CliError::msg(format!("evacuation task: {e}")))?;
        bytes += d.bytes;
        bar.inc(1);
        let rate = bytes as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!("{:.1} MB restored ({rate:.1} MB/s)", bytes as f64 / 1e6));
        let line = format!(
            "[{}/{total}] clientsync/{}: {} ({:.1} MB, {rate:.1} MB/s so far)",
            done.len() + 1,
            d.name,
            match &d.result {
                Ok(what) => what.to_string(),
                Err(e) => format!("FAILED: {e}"),
            },
            d.bytes as f64 / 1e6
        );
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
        done.push(d);
    }
    bar.finish_and_clear();
    summary(&done, &a.old, &a.to, started.elapsed());
    Ok(if done.iter().all(|d| d.result.is_ok()) { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Whether `cluster`'s lease is held by a session that still exists.
async fn leader_alive(admin: &PgPool, cluster: &str) -> Result<bool, CliError> {
    let alive: Option<bool> = sqlx::query_scalar(
        "SELECT expires_at > now() AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = le.holder_pid)
         FROM sync_metadata.leader_election le WHERE cluster_name = $1",
    )
    .bind(cluster)
    .fetch_optional(admin)
    .await
    .map_err(|e| CliError::msg(format!("read the lease of cluster {cluster}: {e}")))?;
    Ok(alive.unwrap_or(false))
}

/// Restores (unless already restored), adopts and moves one tenant.
async fn one(ctx: &Ctx, name: String) -> Done {
    let started = Instant::now();
    let mut d = Done { name: name.clone(), result: Ok(""), rows: 0, bytes: 0, took: Duration::ZERO };
    d.result = steps(ctx, &name, &mut d).await.map_err(|e| e.to_string());
    d.took = started.elapsed();
    d
}

async fn steps(ctx: &Ctx, name: &str, d: &mut Done) -> Result<&'static str, CliError> {
    let s = specs::get(&ctx.admin, &ctx.old, name).await?;
    let dir = ctx.root.join(name);
    let path = dir.join("webui.db");
    let restored = if path.exists() {
        // Resumed: restored by an earlier run. Never restored over, never touched in use.
        super::in_use::refuse_if_open(&path)?;
        false
    } else {
        std::fs::create_dir_all(&dir).map_err(|e| CliError::msg(format!("create {}: {e}", dir.display())))?;
        let schema = s.spec.mirror_schema(name);
        let r = crate::restore::restore(&ctx.admin, &ctx.old, name, &schema, &path, &RestoreOptions::default())
            .await
            .map_err(|e| CliError::msg(e.to_string()))?;
        (d.rows, d.bytes) = (r.rows, r.bytes);
        true
    };
    super::restore::adopt(&ctx.admin, &ctx.old, name, &s.spec, &path).await?;
    let to = path.display().to_string();
    cl::move_tenant(&ctx.admin, &ctx.old, name, &ctx.new, Some(&to)).await.map_err(|e| CliError::msg(e.to_string()))?;
    Ok(if restored { "restored, adopted, moved" } else { "adopted (restored by an earlier run), moved" })
}

fn summary(done: &[Done], old: &str, new: &str, took: Duration) {
    let mut rows: Vec<Vec<String>> = done
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                match &d.result {
                    Ok(_) => "moved".into(),
                    Err(_) => "FAILED".into(),
                },
                d.rows.to_string(),
                format!("{:.1}", d.bytes as f64 / 1e6),
                format!("{:.1}", d.took.as_secs_f64()),
                d.result.as_ref().err().cloned().unwrap_or_default(),
            ]
        })
        .collect();
    rows.sort();
    print!("{}", super::get::table(&["NAME", "RESULT", "ROWS", "MB", "SECONDS", "ERROR"], &rows));
    let failed = done.iter().filter(|d| d.result.is_err()).count();
    eprintln!(
        "cluster {old} -> {new}: {} moved, {failed} failed in {:.1}s{}",
        done.len() - failed,
        took.as_secs_f64(),
        if failed > 0 { "; run the same command again to retry the failed ones" } else { "" }
    );
}
