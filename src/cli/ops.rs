//! `migrate`, `sync --once` and `schema`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::common::{CliError, Global, read_secret};
use crate::controller::record::{DEFAULT_STALL_AFTER, Finished, Recorder};
use crate::controller::schedule::Schedule;
use crate::spec;
use crate::spec::interval_of;
use crate::sql::redact_url;
use crate::store::{self, lease, migrate as mig, specs, status};
use crate::sync::{SyncError, SyncJob, SyncOptions, SyncReport, sync_tenant};

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Admin connection URL (a role that can create schemas and roles).
    #[arg(long, env = "OWSYNC_ADMIN_URL", hide_env_values = true, required_unless_present = "admin_url_file")]
    pub admin_url: Option<String>,
    /// File holding the admin URL.
    #[arg(long, env = "OWSYNC_ADMIN_URL_FILE")]
    pub admin_url_file: Option<PathBuf>,
    /// File holding the password to set for sync_service.
    #[arg(long, env = "OWSYNC_SYNC_PASSWORD_FILE")]
    pub sync_password_file: Option<PathBuf>,
}

pub async fn migrate(_g: &Global, a: MigrateArgs) -> Result<ExitCode, CliError> {
    let url = match (&a.admin_url, &a.admin_url_file) {
        (Some(u), _) => u.clone(),
        (None, Some(f)) => read_secret(f)?,
        (None, None) => return Err(CliError::msg("pass --admin-url or --admin-url-file")),
    };
    let password = a.sync_password_file.as_deref().map(read_secret).transpose()?;
    let pool = store::connect(&url, "owsyncctl-migrate", 2).await?;
    let before = mig::current_version(&pool).await?;
    let r = mig::run(&pool, password.as_deref()).await?;
    if r.role_created {
        println!("role/sync_service created");
    }
    if r.password_set {
        println!("role/sync_service password set");
    }
    for (v, name) in &r.applied {
        println!("migration/{v:04}_{name} applied");
    }
    if r.applied.is_empty() {
        println!("sync_metadata is up to date at version {} ({})", r.version, redact_url(&url));
    } else {
        println!("sync_metadata migrated from version {before} to {} ({})", r.version, redact_url(&url));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    pub name: String,
    /// Run exactly one reconcile and exit (the only mode for now; required for clarity).
    #[arg(long, required = true)]
    pub once: bool,
    /// Sync even while an owsyncd leader holds the cluster's lease (two writers!).
    #[arg(long)]
    pub force: bool,
    /// Read every table even if the source file has not changed since the last sync.
    #[arg(long)]
    pub full: bool,
    /// No progress (by default a bar on a terminal, a line per table otherwise, on stderr).
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn sync(g: &Global, a: SyncArgs) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    let s = specs::get(&pool, &g.cluster, &a.name).await?;
    refuse_while_led(&pool, g, &a).await?;
    let options = SyncOptions { full: a.full, ..SyncOptions::default() };
    let job = SyncJob { pool: &pool, cluster: &g.cluster, client: &a.name, spec: &s.spec, fence: None, options };
    // Recorded as a leader's reconcile records its runs (status, sync_jobs, events), so
    // `get clients` shows the result; unfenced, as this process holds no lease.
    let node = format!("owsyncctl@{}", hostname());
    let rec = Recorder { pool: &pool, spec: &s, fence: None, node: &node, lease_valid: &|| true };
    let mut st = status::get(&pool, &g.cluster, &a.name).await?.unwrap_or_default();
    let mut schedule = Schedule::new(interval_of(&s.spec), st.consecutive_failures.max(0) as u32);
    let job_id = rec.start(&mut st, "once").await.unwrap_or(None);
    let started = std::time::Instant::now();
    let result = run_sync(job, &s.spec, &a).await?;
    let run = Finished {
        job_id,
        result: &result,
        elapsed: started.elapsed(),
        now: chrono::Utc::now(),
        stall_after: DEFAULT_STALL_AFTER,
    };
    if let (_, Err(e)) = rec.finish(&mut st, &mut schedule, &run).await {
        eprintln!("warning: cannot record the outcome of the sync of {}: {e}", a.name);
    }
    let report = result?;
    if let Some(drift) = report.drift.as_deref().filter(|d| !d.is_empty()) {
        let schema = s.spec.mirror_schema(&a.name);
        for d in drift {
            eprintln!("schema drift: {}", d.message(&schema));
        }
    }
    if report.unchanged {
        println!(
            "clientsync/{}: source unchanged since the last complete sync; nothing to do (--full reads every table anyway)",
            a.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    print_report(&a.name, &report);
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Refuses (unless `--force`) while an owsyncd leader holds the cluster's lease: two
/// writers of one tenant.
async fn refuse_while_led(pool: &sqlx::PgPool, g: &Global, a: &SyncArgs) -> Result<(), CliError> {
    if let Some(l) = lease::current(pool, &g.cluster).await?
        && !l.expired
        && !a.force
    {
        return Err(CliError::msg(format!(
            "owsyncd {} leads cluster {} (epoch {}); it syncs {} on its own. Pass --force to sync from here anyway",
            l.leader_id, g.cluster, l.epoch, a.name
        )));
    }
    Ok(())
}

/// Prints a sync's tables (rows, how each was captured, pages read), failed tables,
/// conflicts and the summary line.
fn print_report(name: &str, report: &SyncReport) {
    let rows: Vec<Vec<String>> = report
        .tables
        .iter()
        .map(|(t, r)| {
            let pass = match (r.capture, r.incremental) {
                ("", true) => "changed-pages",
                ("", false) => "full",
                (c, _) => c,
            };
            vec![
                t.clone(),
                r.rows.to_string(),
                r.upserted.to_string(),
                r.tombstoned.to_string(),
                r.rows_read.to_string(),
                pass.to_string(),
                r.pages_read.to_string(),
            ]
        })
        .collect();
    print!("{}", super::get::table(&["TABLE", "ROWS", "UPSERTED", "TOMBSTONED", "READ", "PASS", "PAGES"], &rows));
    for (t, e) in &report.failed {
        eprintln!("table {t} failed: {e}");
    }
    let conflicts: u64 = report.tables.values().map(|t| t.conflicts).sum();
    let pending: u64 = report.tables.values().map(|t| t.pending_conflicts).sum();
    let kept: u64 = report.tables.values().map(|t| t.kept_target).sum();
    if conflicts > 0 || kept > 0 {
        println!(
            "{conflicts} conflicts resolved by the tables' strategies ({pending} left for review: owsyncctl conflicts list {name}); \
             {kept} rows changed only in PostgreSQL kept"
        );
    }
    println!(
        "clientsync/{name} synced: {} tables, {} rows written in {}",
        report.tables.len(),
        report.rows_written,
        humantime::format_duration(std::time::Duration::from_millis(report.duration.as_millis() as u64))
    );
}

/// Runs the sync, with progress unless quiet. `Err` only when the progress display failed.
async fn run_sync(
    mut job: SyncJob<'_>,
    spec: &spec::ClientSyncSpec,
    a: &SyncArgs,
) -> Result<Result<SyncReport, SyncError>, CliError> {
    Ok(match super::progress::Mode::detect(a.quiet) {
        None => sync_tenant(&job).await,
        Some(mode) => {
            let spec = spec.clone();
            let shown = tokio::task::spawn_blocking(move || super::progress::CliProgress::new(mode, &spec))
                .await
                .map_err(|e| CliError::msg(format!("progress: {e}")))?;
            let shown = std::sync::Arc::new(shown);
            job.options.progress = Some(shown.clone() as std::sync::Arc<dyn crate::sync::progress::Progress>);
            let r = sync_tenant(&job).await;
            shown.finish();
            r
        }
    })
}

/// This host's name, for the runs this process records.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "unknown".into(), |h| h.trim().to_string())
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Kind (default ClientSync).
    #[arg(default_value = "ClientSync")]
    pub kind: String,
}

pub fn schema(a: SchemaArgs) -> Result<ExitCode, CliError> {
    let s = spec::json_schema(&a.kind)
        .ok_or_else(|| CliError::msg(format!("unknown kind {:?} (known: ClientSync)", a.kind)))?;
    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    pub name: String,
}

/// Files a durable request; whichever replica leads runs it.
pub async fn trigger(g: &Global, a: TriggerArgs) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    let s = specs::get(&pool, &g.cluster, &a.name).await?;
    if !s.spec.enabled {
        return Err(CliError::msg(format!("clientsync/{} is disabled (spec.enabled: false); enable it first", a.name)));
    }
    let id = store::requests::file(&pool, &g.cluster, &a.name, "owsyncctl").await?;
    println!("clientsync/{} sync requested ({id})", a.name);
    Ok(ExitCode::SUCCESS)
}
