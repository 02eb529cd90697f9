//! `owsyncctl demo`: the embedded default. A throwaway local PostgreSQL, a generated
//! Open WebUI tenant, its ClientSync applied, a real owsyncd syncing it, then the API
//! kept up on 127.0.0.1:9443 until Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::common::{CliError, Global, Output};
use crate::devpg::{Options, TempPostgres};
use crate::fixtures::{self, CreateOptions};
use crate::spec::Phase;
use crate::sql::qualified;
use crate::store::{self, migrate, specs, status};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit after the first successful sync instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit_after_sync: bool,
    /// Where owsyncd serves its API.
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub listen: String,
    /// Size of the demo tenant.
    #[arg(long, default_value_t = 20)]
    pub users: u32,
    #[arg(long, default_value_t = 10)]
    pub chats_per_user: u32,
}

const CLUSTER: &str = "demo";
const TENANT: &str = "acme-corp";

fn step(t0: Instant, msg: &str) {
    println!("[{:>5.1}s] {msg}", t0.elapsed().as_secs_f64());
}

fn write_private(path: &Path, contents: &str) -> Result<(), CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CliError::Io { path: path.display().to_string(), source };
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)
}

pub async fn demo(a: DemoArgs) -> Result<ExitCode, CliError> {
    let t0 = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("owsync-demo-")
        .tempdir()
        .map_err(|source| CliError::Io { path: "tempdir".into(), source })?;
    let (pg, url_file) = start_postgres(t0, work.path()).await?;
    let db_path = generate_tenant(t0, work.path(), &a).await?;
    let global = Global {
        database_url: None,
        database_url_file: Some(url_file.clone()),
        cluster: CLUSTER.into(),
        output: Output::Table,
    };
    let pool = global.pool().await?;
    apply_manifest(t0, work.path(), &db_path, &pool).await?;
    let log_path = work.path().join("owsyncd.log");
    let (mut child, daemon) = start_daemon(t0, &a.listen, &url_file, &log_path)?;
    wait_synced(t0, &mut child, &daemon, &log_path, &pool).await?;
    step(t0, "synced. `owsyncctl get clients`:");
    super::get::get(&global, super::get::GetArgs { resource: super::get::Resource::Clients, name: None }).await?;
    print_counts(&pool, &db_path).await?;
    if a.exit_after_sync {
        stop_daemon(&mut child).await;
        step(t0, "done (--exit-after-sync)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "\nowsyncd keeps syncing every 10s. Try, in another shell:\n  curl -s http://{0}/health\n  curl -s http://{0}/metrics | grep sync_\n  OWSYNC_DATABASE_URL_FILE={1} target/debug/owsyncctl --cluster {CLUSTER} describe client {TENANT}\n  target/debug/owsyncctl dev mutate-db {2} --ops 50\nPress Ctrl-C to stop (the throwaway PostgreSQL and files are removed).",
        a.listen,
        url_file.display(),
        db_path.display()
    );
    let _ = tokio::signal::ctrl_c().await;
    println!();
    stop_daemon(&mut child).await;
    step(t0, "stopped owsyncd; removing the throwaway PostgreSQL");
    drop(pg);
    Ok(ExitCode::SUCCESS)
}

/// Starts the throwaway PostgreSQL, migrates it with a random `sync_service` password
/// and writes owsyncd's URL to a private file in `work`: the server and that file.
async fn start_postgres(t0: Instant, work: &Path) -> Result<(TempPostgres, PathBuf), CliError> {
    step(t0, "starting a throwaway PostgreSQL from the system's binaries ...");
    let pg = tokio::task::spawn_blocking(|| TempPostgres::start(Options::default()))
        .await
        .map_err(|e| CliError::msg(e.to_string()))??;
    step(t0, &format!("PostgreSQL listening on 127.0.0.1:{} (data in {})", pg.port(), pg.data_dir().display()));
    let admin = store::connect(&pg.admin_url("postgres"), "owsyncctl-demo", 2).await?;
    let password = uuid::Uuid::new_v4().simple().to_string();
    let r = migrate::run(&admin, Some(&password)).await?;
    step(t0, &format!("migrated sync_metadata to version {} and created role sync_service", r.version));
    let sync_url = format!("postgres://sync_service:{password}@127.0.0.1:{}/postgres", pg.port());
    let url_file = work.join("database-url");
    write_private(&url_file, &sync_url)?;
    Ok((pg, url_file))
}

/// Generates the demo tenant's Open WebUI database in `work`; its path.
async fn generate_tenant(t0: Instant, work: &Path, a: &DemoArgs) -> Result<PathBuf, CliError> {
    let db_path = work.join("openwebui-acme-corp").join("webui.db");
    std::fs::create_dir_all(db_path.parent().unwrap_or(work))
        .map_err(|source| CliError::Io { path: db_path.display().to_string(), source })?;
    let opts =
        CreateOptions { users: a.users, chats_per_user: a.chats_per_user, messages_per_chat: 6, ..Default::default() };
    let path2 = db_path.clone();
    let created = tokio::task::spawn_blocking(move || fixtures::create(&path2, &opts))
        .await
        .map_err(|e| CliError::msg(e.to_string()))??;
    let total_rows: u64 = created.rows.values().sum();
    step(
        t0,
        &format!(
            "generated tenant {TENANT}: {} ({} tables, {total_rows} rows, {:.1} MB)",
            db_path.display(),
            created.rows.len(),
            created.bytes as f64 / 1e6
        ),
    );
    Ok(db_path)
}

/// Writes the tenant's ClientSync manifest to `work` and applies it, as `owsyncctl apply`.
async fn apply_manifest(t0: Instant, work: &Path, db_path: &Path, pool: &sqlx::PgPool) -> Result<(), CliError> {
    let manifest = work.join("acme-corp.yaml");
    let yaml = format!(
        "apiVersion: owsync.io/v1alpha1\nkind: ClientSync\nmetadata:\n  name: {TENANT}\n  cluster: {CLUSTER}\n  labels: {{tier: demo}}\nspec:\n  enabled: true\n  source:\n    path: {}\n  interval: 10s\n",
        db_path.display()
    );
    std::fs::write(&manifest, &yaml).map_err(|source| CliError::Io { path: manifest.display().to_string(), source })?;
    let docs = super::apply::load_all(std::slice::from_ref(&manifest), false, CLUSTER)?;
    let mut tx = store::begin(pool, CLUSTER).await?;
    for (_, n) in &docs {
        let o = specs::apply(&mut tx, n).await?;
        step(t0, &format!("clientsync/{} {}", n.metadata.name, o.as_str()));
    }
    tx.commit().await.map_err(|e| CliError::msg(e.to_string()))
}

/// Starts the `owsyncd` beside this binary, its output to `log_path`: the child and the
/// daemon's path.
fn start_daemon(
    t0: Instant,
    listen: &str,
    url_file: &Path,
    log_path: &Path,
) -> Result<(tokio::process::Child, PathBuf), CliError> {
    let exe = std::env::current_exe().map_err(|source| CliError::Io { path: "current_exe".into(), source })?;
    let daemon = exe.with_file_name("owsyncd");
    if !daemon.exists() {
        return Err(CliError::msg(format!("{} not found: build both binaries (cargo build)", daemon.display())));
    }
    let log = std::fs::File::create(log_path)
        .map_err(|source| CliError::Io { path: log_path.display().to_string(), source })?;
    let child = tokio::process::Command::new(&daemon)
        .args(["--cluster", CLUSTER, "--node-id", "demo-primary", "--listen", listen])
        .env("OWSYNC_DATABASE_URL_FILE", url_file)
        .stdout(log.try_clone().map_err(|source| CliError::Io { path: log_path.display().to_string(), source })?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CliError::Io { path: daemon.display().to_string(), source })?;
    step(
        t0,
        &format!(
            "started owsyncd (pid {}), API on http://{listen}, logs in {}",
            child.id().unwrap_or(0),
            log_path.display()
        ),
    );
    Ok((child, daemon))
}

/// Waits (at most 180 s) for the tenant's phase to reach `Synced`, printing each phase;
/// an error when the daemon exits, the sync fails, or time runs out.
async fn wait_synced(
    t0: Instant,
    child: &mut tokio::process::Child,
    daemon: &Path,
    log_path: &Path,
    pool: &sqlx::PgPool,
) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last_phase = None;
    loop {
        if let Some(code) =
            child.try_wait().map_err(|source| CliError::Io { path: daemon.display().to_string(), source })?
        {
            let tail = std::fs::read_to_string(log_path).unwrap_or_default();
            return Err(CliError::msg(format!("owsyncd exited ({code}) before syncing; its log:\n{tail}")));
        }
        let st = status::get(pool, CLUSTER, TENANT).await?;
        let phase = st.as_ref().map(|s| s.phase);
        if phase != last_phase {
            step(t0, &format!("clientsync/{TENANT} phase {}", phase.map_or("<none>", |p| p.as_str())));
            last_phase = phase;
        }
        if phase == Some(Phase::Synced) {
            return Ok(());
        }
        if matches!(phase, Some(Phase::Failed | Phase::Degraded)) {
            let err = st.and_then(|s| s.last_error).unwrap_or_default();
            return Err(CliError::msg(format!("the demo sync failed: {err}")));
        }
        if Instant::now() > deadline {
            return Err(CliError::msg(format!("not Synced after 180 s; see {}", log_path.display())));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stop_daemon(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SIGTERM: owsyncd drains, releases its lease and exits.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

async fn print_counts(pool: &sqlx::PgPool, db: &Path) -> Result<(), CliError> {
    let path = db.to_path_buf();
    let source = tokio::task::spawn_blocking(move || fixtures::table_counts(&path))
        .await
        .map_err(|e| CliError::msg(e.to_string()))??;
    let schema = crate::spec::default_schema(TENANT);
    let mut rows = Vec::new();
    let (mut total_src, mut total_pg) = (0u64, 0i64);
    for (table, n) in &source {
        let sql = format!("SELECT count(*) FROM {} WHERE NOT _owsync_deleted", qualified(&schema, table));
        let pg: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.unwrap_or(-1);
        total_src += n;
        total_pg += pg;
        if *n > 0 || pg != 0 {
            rows.push(vec![table.clone(), n.to_string(), pg.to_string()]);
        }
    }
    rows.push(vec!["TOTAL".into(), total_src.to_string(), total_pg.to_string()]);
    println!("\nMirrored rows (schema {schema}; empty tables not shown):");
    print!("{}", super::get::table(&["TABLE", "SQLITE", "POSTGRES"], &rows));
    Ok(())
}
