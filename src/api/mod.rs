//! The HTTP API (axum): health in the seed's shape, liveness and readiness probes,
//! Prometheus metrics, tenants, cache-aside state and sync triggers. Mutating endpoints
//! need `Authorization: Bearer <token>` (the `Authorized` extractor); every error is an
//! `ApiError`, a JSON body `{"error", "code"}` with a 4xx/5xx code,
//! never a panic.

mod cache;
mod error;
mod openapi;
mod v1;

pub use cache::StateCache;
pub use error::{ApiError, ApiJson, ApiQuery, Authorized};

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::controller::Shared;
use crate::store::migrate;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

pub struct ApiConfig {
    /// Bearer token for mutating endpoints; `None` refuses them.
    pub token: Option<String>,
    /// How long a state entry is served from cache.
    pub cache_ttl: Duration,
}

pub struct AppState {
    pub shared: Arc<Shared>,
    pub token: Option<String>,
    pub cache: StateCache,
}

pub type App = Arc<AppState>;

pub fn router(shared: Arc<Shared>, cfg: ApiConfig) -> (Router, App) {
    let app = Arc::new(AppState { shared, token: cfg.token, cache: StateCache::new(cfg.cache_ttl) });
    let r = Router::new()
        .route("/health", get(health))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/api/v1/clients", get(v1::list_clients))
        .route("/api/v1/clients/{name}", get(v1::get_client))
        .route("/api/v1/state", get(v1::get_state).put(v1::put_state))
        .route("/api/v1/sync/trigger", post(v1::trigger))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app.clone());
    (r, app)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see /openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method not allowed (see /openapi.json)")
}

async fn health(State(app): State<App>) -> Json<serde_json::Value> {
    let sh = &app.shared;
    let n = sh.node();
    let status = if n.db_ok { "healthy" } else { "degraded" };
    Json(json!({
        "status": status,
        "is_leader": n.is_leader,
        "leader_id": n.leader_id,
        "node_id": sh.config.node_id,
        "cluster_name": sh.config.cluster,
        "epoch": n.epoch,
        "uptime_seconds": sh.started.elapsed().as_secs(),
        "last_sync": n.last_sync.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// How long an answer that needs the database may take before it is a 503: the pool's
/// own acquire timeout (10 s, for syncs) is far too long for a probe or a dashboard.
pub(crate) const DB_DEADLINE: Duration = Duration::from_secs(1);

/// Runs `answer` (which reads the database), or answers 503 after [`DB_DEADLINE`].
pub(crate) async fn within_deadline<T>(
    answer: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(DB_DEADLINE, answer).await.unwrap_or_else(|_| {
        Err(ApiError::unavailable(format!("the database did not answer within {}s", DB_DEADLINE.as_secs_f64())))
    })
}

async fn readyz(State(app): State<App>) -> Result<Json<serde_json::Value>, ApiError> {
    within_deadline(async {
        migrate::require_current(&app.shared.pool).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        Ok(Json(json!({"status": "ready"})))
    })
    .await
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        app.shared.metrics.render(app.shared.node().is_leader),
    )
        .into_response()
}

/// Keeps every replica's state cache coherent: drops versions older than the one a NOTIFY
/// owsync_state names (the control session LISTENs and hands them on), and polls for changes when notifications
/// may have been missed: every few seconds while the control session is down, after it
/// (re)opened, and every few minutes as a safety net.
pub async fn run_cache_invalidation(app: App, stop: CancellationToken) {
    use tokio::sync::broadcast::error::RecvError;
    let sh = app.shared.clone();
    let cluster = sh.config.cluster.clone();
    let mut since = chrono::Utc::now();
    let mut notes = sh.state_notes();
    let mut last_poll = tokio::time::Instant::now();
    loop {
        let every = if sh.listening() { Duration::from_secs(300) } else { Duration::from_secs(5) };
        let poll = tokio::time::sleep_until(last_poll + every);
        let catch_up = tokio::select! {
            n = notes.recv() => match n {
                Ok(Some(payload)) => match crate::store::state::StateNote::parse(&payload) {
                    Some(n) => {
                        if n.cluster == cluster { app.cache.invalidate_if_older(&n.key, n.updated_at) }
                        false
                    }
                    None => true,
                },
                Ok(None) | Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            },
            () = poll => true,
            () = stop.cancelled() => return,
        };
        if !catch_up {
            continue;
        }
        last_poll = tokio::time::Instant::now();
        if let Ok(changed) = crate::store::state::changed_since(&sh.pool, &cluster, since).await {
            for (key, at) in changed {
                app.cache.invalidate_if_older(&key, at);
                since = since.max(at);
            }
        }
    }
}
