//! `owsyncctl restore NAME --to FILE | --in-place [--adopt] [--include-deleted-since T]`:
//! rebuilds a tenant's SQLite file from its mirror, checks it, and optionally records it
//! as the tenant's synced state (adopt) or puts it in place of `spec.source.path`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::common::{CliError, Global, Output};
use crate::restore::{RestoreOptions, RestoreReport};
use crate::store::specs;
use crate::sync::{SyncJob, sync_tenant};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    pub name: String,
    /// The SQLite file to write (must not exist unless --force).
    #[arg(long, required_unless_present = "in_place", conflicts_with = "in_place")]
    pub to: Option<PathBuf>,
    /// Restore into spec.source.path itself (refused while any process has it open); the
    /// replaced file and its -wal/-shm are kept as <path>.replaced-<UTC time>. Implies --adopt.
    #[arg(long)]
    pub in_place: bool,
    /// Record the restored file as the tenant's synced state: a sync of that file reads
    /// and writes nothing, and later changes are incremental.
    #[arg(long)]
    pub adopt: bool,
    /// Overwrite an existing --to file.
    #[arg(long)]
    pub force: bool,
    /// Also bring back rows deleted (tombstoned) at or after TIME: RFC 3339
    /// (2026-12-07T10:00:00Z) or a duration ago (2h, 3days).
    #[arg(long, value_name = "TIME")]
    pub include_deleted_since: Option<String>,
}

/// `TIME` as RFC 3339, or as a humantime duration before now.
pub fn parse_since(s: &str) -> Result<chrono::DateTime<chrono::Utc>, CliError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = humantime::parse_duration(s).map_err(|_| {
        CliError::msg(format!(
            "--include-deleted-since {s:?}: give an RFC 3339 time (2026-12-07T10:00:00Z) or a duration ago (2h)"
        ))
    })?;
    let d = chrono::Duration::from_std(d).map_err(|e| CliError::msg(format!("--include-deleted-since {s:?}: {e}")))?;
    Ok(chrono::Utc::now() - d)
}

pub async fn restore(g: &Global, a: RestoreArgs) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    let s = specs::get(&pool, &g.cluster, &a.name).await?;
    let since = a.include_deleted_since.as_deref().map(parse_since).transpose()?;
    let schema = s.spec.mirror_schema(&a.name);
    let started = std::time::Instant::now();
    let source = PathBuf::from(&s.spec.source.path);
    let to = if let Some(p) = &a.to {
        p.clone()
    } else {
        super::in_use::refuse_if_open(&source)?;
        aside_name(&source, "restored")
    };
    let opts = RestoreOptions { force: a.force, include_deleted_since: since };
    let r = crate::restore::restore(&pool, &g.cluster, &a.name, &schema, &to, &opts)
        .await
        .map_err(|e| CliError::msg(e.to_string()))?;
    print_report(g, &a.name, &to, &r, started.elapsed());
    let path = if a.in_place { replace(&source, &to)? } else { to };
    if a.adopt || a.in_place {
        let t = std::time::Instant::now();
        let report = adopt(&pool, &g.cluster, &a.name, &s.spec, &path).await?;
        let tombstoned: u64 = report.tables.values().map(|t| t.tombstoned).sum();
        println!(
            "clientsync/{} adopted {} as its synced state in {:.1}s ({} rows written, {tombstoned} tombstoned{})",
            a.name,
            path.display(),
            t.elapsed().as_secs_f64(),
            report.rows_written,
            if since.is_some() { ": rows brought back are live again in the mirror" } else { "" }
        );
    }
    if a.in_place {
        println!("clientsync/{}: {} restored in place; start Open WebUI again", a.name, path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Records the file at `path` as `name`'s synced state: a full sync of it, which writes
/// nothing when the file was restored from the mirror (and makes rows brought back live
/// again), and records its page states and fingerprint, so the next sync of that file
/// reads nothing.
pub(super) async fn adopt(
    pool: &sqlx::PgPool,
    cluster: &str,
    name: &str,
    spec: &crate::spec::ClientSyncSpec,
    path: &Path,
) -> Result<crate::sync::SyncReport, CliError> {
    let mut spec = spec.clone();
    spec.source.path = path.display().to_string();
    let report = sync_tenant(&SyncJob::unfenced(pool, cluster, name, &spec).full()).await?;
    if !report.failed.is_empty() {
        let failed: Vec<String> = report.failed.iter().map(|(t, e)| format!("{t}: {e}")).collect();
        return Err(CliError::msg(format!(
            "clientsync/{name}: adopting {} failed for {}",
            path.display(),
            failed.join("; ")
        )));
    }
    Ok(report)
}

fn print_report(g: &Global, name: &str, to: &Path, r: &RestoreReport, took: std::time::Duration) {
    if g.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
    } else {
        let rows: Vec<Vec<String>> = r
            .tables
            .iter()
            .map(|t| vec![t.table.clone(), t.rows.to_string(), t.revived.to_string(), t.skipped.to_string()])
            .collect();
        print!("{}", super::get::table(&["TABLE", "ROWS", "BROUGHT BACK", "KEPT OUT"], &rows));
    }
    let secs = took.as_secs_f64().max(1e-6);
    println!(
        "clientsync/{name} restored to {}: {} tables, {} rows{} in {secs:.1}s ({:.1} MB/s); integrity_check: {}",
        to.display(),
        r.tables.len(),
        r.rows,
        if r.revived > 0 { format!(" + {} deleted rows brought back", r.revived) } else { String::new() },
        r.bytes as f64 / 1e6 / secs,
        r.integrity
    );
}

/// `<path>.<what>-<UTC time>`, beside `path`.
fn aside_name(path: &Path, what: &str) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    crate::source::companion(path, &format!(".{what}-{stamp}"))
}

/// Puts `restored` at `source`: the file there (and its -wal, -shm) moves aside to
/// `<source>.replaced-<UTC time>`, never deleted; the restored file takes its owner and
/// mode. Refused (nothing moved) while a process has the database open.
fn replace(source: &Path, restored: &Path) -> Result<PathBuf, CliError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |what: String| move |e: std::io::Error| CliError::msg(format!("{what}: {e}"));
    super::in_use::refuse_if_open(source)?;
    if let Ok(old) = std::fs::metadata(source) {
        std::os::unix::fs::chown(restored, Some(old.uid()), Some(old.gid())).map_err(io(format!(
            "give {} the owner of {} (run as root or as that user)",
            restored.display(),
            source.display()
        )))?;
        std::fs::set_permissions(restored, std::fs::Permissions::from_mode(old.mode() & 0o7777))
            .map_err(io(format!("give {} the mode of {}", restored.display(), source.display())))?;
    }
    let aside = aside_name(source, "replaced");
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let (from, to) = (crate::source::companion(source, suffix), crate::source::companion(&aside, suffix));
        if from.exists() {
            std::fs::rename(&from, &to).map_err(io(format!("move {} aside to {}", from.display(), to.display())))?;
            eprintln!("{} kept as {}", from.display(), to.display());
        }
    }
    std::fs::rename(restored, source).map_err(io(format!("move {} to {}", restored.display(), source.display())))?;
    Ok(source.to_path_buf())
}
