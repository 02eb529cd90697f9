//! owsyncd: the controller daemon. A thin main over `owsync::controller` and `owsync::api`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use owsync::cli::read_secret;
use owsync::controller::{Shared, budget, run_election};
use owsync::daemon_args::Args;
use owsync::sql::redact_url;
use owsync::store;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

fn database_url(a: &Args) -> anyhow::Result<String> {
    if let Some(f) = &a.database_url_file {
        return read_secret(f).context("--database-url-file");
    }
    for var in ["OWSYNC_DATABASE_URL", "DATABASE_URL"] {
        if let Ok(u) = std::env::var(var) {
            return Ok(u);
        }
    }
    bail!("no database: set --database-url-file FILE (or OWSYNC_DATABASE_URL_FILE / OWSYNC_DATABASE_URL)")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "owsyncd".into(), |h| h.trim().to_string())
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    init_logging(&a.log_format);
    a.validate()?;
    let url = database_url(&a)?;
    if let Some(why) = store::transaction_pooler_hint(&url) {
        bail!("refusing to start: {why}. {}", store::POOLER_FIX);
    }
    let node_id = a.node_id.clone().unwrap_or_else(hostname);
    // Every session carries this process's instance tag, so a replica that takes the lease
    // over can end the sessions of a frozen former leader.
    let instance = uuid::Uuid::new_v4();
    let app_name = store::lease::application_name(&node_id, instance);
    let connect = store::connect_options(&url, &app_name)?;
    info!(cluster = %a.cluster, node = %node_id, database = %redact_url(&url), "owsyncd starting");
    let budget = a.budget()?;
    info!(
        max_connections = budget.max_connections,
        pool = budget.pool,
        sync_connections = budget.sync_connections,
        max_concurrency = budget.max_concurrency,
        table_connections = budget.table_connections,
        "connection budget"
    );
    let pool = open_pool(&url, &app_name, &budget).await?;
    let shared = Shared::with_instance(a.controller_config(node_id, &budget), instance, pool, connect);
    serve(&a, shared).await
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OWSYNC_LOG").unwrap_or_else(|_| "info,sqlx=warn".into());
    if format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        // Colour codes only for a terminal: a log file or journald gets plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).init();
    }
}

/// The pool, once the database is ready for owsyncd: retried every 2 s while it is not,
/// an error when it never will be.
async fn open_pool(url: &str, app_name: &str, budget: &budget::Budget) -> anyhow::Result<PgPool> {
    let connect = || store::connect_idle(url, app_name, budget.pool, Some(budget::POOL_IDLE_TIMEOUT));
    loop {
        match connect().await {
            Ok(p) if database_ready(&p).await? => {
                // The checks' sessions end now; the pool opens sessions on demand.
                p.close().await;
                match connect().await {
                    Ok(p) => return Ok(p),
                    Err(e) => warn!(error = %e, "cannot connect; retrying in 2s"),
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot connect; retrying in 2s"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Whether the database is ready: reached through session pooling, and migrated (false:
/// not yet, retry). An error when it never will be: a transaction-mode pooler, or a
/// schema that `owsyncctl migrate` has to bring up to date.
async fn database_ready(p: &PgPool) -> anyhow::Result<bool> {
    // Before anything else: through a transaction-mode pooler even the migration check
    // can fail in confusing ways.
    match store::check_session_pooling(p).await {
        Err(e @ store::StoreError::TransactionPooler(_)) => bail!("refusing to start: {e}"),
        Err(e) => {
            warn!(error = %e, "database not ready; retrying in 2s");
            return Ok(false);
        }
        Ok(()) => {}
    }
    match store::migrate::require_current(p).await {
        Ok(()) => Ok(true),
        Err(e @ store::StoreError::NotMigrated { .. }) => Err(e.into()),
        Err(e) => {
            warn!(error = %e, "database not ready; retrying in 2s");
            Ok(false)
        }
    }
}

/// Serves the HTTP API and runs the election until SIGTERM (or Ctrl-C), then drains.
async fn serve(a: &Args, shared: Arc<Shared>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listen on {}", a.listen))?;
    info!(listen = %a.listen, "HTTP API up");
    let token = if let Some(f) = &a.api_token_file {
        Some(read_secret(f).context("--api-token-file")?)
    } else {
        warn!(
            "no --api-token-file: mutating API endpoints (PUT /api/v1/state, POST /api/v1/sync/trigger) are disabled"
        );
        None
    };
    let (app, api_state) =
        owsync::api::router(shared.clone(), owsync::api::ApiConfig { token, cache_ttl: a.state_cache_ttl });
    let cache_task = tokio::spawn(owsync::api::run_cache_invalidation(api_state, shutdown.clone()));
    let http_stop = shutdown.clone();
    let http = tokio::spawn(async move {
        let r = axum::serve(listener, app).with_graceful_shutdown(async move { http_stop.cancelled().await }).await;
        if let Err(e) = r {
            error!(error = %e, "HTTP server failed");
        }
    });
    let election = tokio::spawn(run_election(shared, shutdown.clone()));

    shutdown_signal().await;
    info!("signal received: draining");
    shutdown.cancel();
    let _ = election.await;
    let _ = http.await;
    let _ = cache_task.await;
    info!("owsyncd stopped");
    Ok(())
}
