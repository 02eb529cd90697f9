//! owsyncd: the controller daemon. A thin main over `owsync::controller` and `owsync::api`.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use owsync::cli::read_secret;
use owsync::controller::{ControllerConfig, ElectionConfig, Shared, budget, run_election};
use owsync::daemon_args::Args;
use owsync::sql::redact_url;
use owsync::store;
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
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "owsyncd".into())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("OWSYNC_LOG").unwrap_or_else(|_| "info,sqlx=warn".into());
    if a.log_format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        // Colour codes only for a terminal: a log file or journald gets plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).init();
    }
    if !owsync::spec::is_dns_label(&a.cluster) {
        bail!("--cluster {:?} is not a DNS-1123 label", a.cluster);
    }
    if a.renew_deadline >= a.lease_duration {
        bail!(
            "--renew-deadline ({}) must be shorter than --lease-duration ({}): a leader has to stop before its lease can pass to another replica",
            humantime::format_duration(a.renew_deadline),
            humantime::format_duration(a.lease_duration)
        );
    }
    if a.retry_period >= a.renew_deadline {
        bail!(
            "--retry-period ({}) must be shorter than --renew-deadline ({})",
            humantime::format_duration(a.retry_period),
            humantime::format_duration(a.renew_deadline)
        );
    }
    if !a.history_retention.is_zero() && a.history_retention < Duration::from_secs(3600) {
        bail!(
            "--history-retention ({}) must be at least 1h (or 0s to keep sync runs and events forever)",
            humantime::format_duration(a.history_retention)
        );
    }
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

    let budget = budget::Budget::derive(a.max_connections, a.max_concurrency, a.table_connections)?;
    info!(
        max_connections = budget.max_connections,
        pool = budget.pool,
        sync_connections = budget.sync_connections,
        max_concurrency = budget.max_concurrency,
        table_connections = budget.table_connections,
        "connection budget"
    );
    let pool = loop {
        match store::connect_idle(&url, &app_name, budget.pool, Some(budget::POOL_IDLE_TIMEOUT)).await {
            Ok(p) => {
                // Before anything else: through a transaction-mode pooler even the
                // migration check can fail in confusing ways.
                match store::check_session_pooling(&p).await {
                    Err(e @ store::StoreError::TransactionPooler(_)) => bail!("refusing to start: {e}"),
                    Err(e) => {
                        warn!(error = %e, "database not ready; retrying in 2s");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                    Ok(()) => {}
                }
                match store::migrate::require_current(&p).await {
                    Ok(()) => {
                        // The checks' sessions end now; the pool opens sessions on demand.
                        p.close().await;
                        match store::connect_idle(&url, &app_name, budget.pool, Some(budget::POOL_IDLE_TIMEOUT)).await {
                            Ok(p) => break p,
                            Err(e) => warn!(error = %e, "cannot connect; retrying in 2s"),
                        }
                    }
                    Err(e @ store::StoreError::NotMigrated { .. }) => return Err(e.into()),
                    Err(e) => warn!(error = %e, "database not ready; retrying in 2s"),
                }
            }
            Err(e) => warn!(error = %e, "cannot connect; retrying in 2s"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let config = ControllerConfig {
        cluster: a.cluster.clone(),
        node_id,
        election: ElectionConfig { lease: a.lease_duration, renew_deadline: a.renew_deadline, retry: a.retry_period },
        spec_poll: Duration::from_secs(2),
        max_concurrency: budget.max_concurrency,
        sync_connections: budget.sync_connections,
        table_connections: budget.table_connections,
        stall_after: 5,
        history_retention: (!a.history_retention.is_zero()).then_some(a.history_retention),
    };
    let shared = Shared::with_instance(config, instance, pool, connect);
    let shutdown = CancellationToken::new();

    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("listen on {}", a.listen))?;
    info!(listen = %a.listen, "HTTP API up");
    let token = match &a.api_token_file {
        Some(f) => Some(read_secret(f).context("--api-token-file")?),
        None => {
            warn!(
                "no --api-token-file: mutating API endpoints (PUT /api/v1/state, POST /api/v1/sync/trigger) are disabled"
            );
            None
        }
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
    let election = tokio::spawn(run_election(shared.clone(), shutdown.clone()));

    shutdown_signal().await;
    info!("signal received: draining");
    shutdown.cancel();
    let _ = election.await;
    let _ = http.await;
    let _ = cache_task.await;
    info!("owsyncd stopped");
    Ok(())
}
