//! The HTTP API (axum): health in the seed's shape, liveness and readiness probes,
//! Prometheus metrics, and read-only tenant views.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::controller::Shared;
use crate::store::{self, migrate, specs, status};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/clients", get(list_clients))
        .route("/api/v1/clients/{name}", get(get_client))
        .fallback(not_found)
        .with_state(shared)
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({"error": message.into(), "code": code.as_u16()}))).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn health(State(sh): State<Arc<Shared>>) -> Json<serde_json::Value> {
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

async fn readyz(State(sh): State<Arc<Shared>>) -> Response {
    match migrate::require_current(&sh.pool).await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn metrics(State(sh): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], sh.metrics.render())
        .into_response()
}

fn store_error(e: store::StoreError) -> Response {
    match e {
        store::StoreError::NotFound { .. } => error(StatusCode::NOT_FOUND, e.to_string()),
        other => error(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

async fn list_clients(State(sh): State<Arc<Shared>>) -> Response {
    let cluster = &sh.config.cluster;
    let (list, statuses) = match tokio::try_join!(specs::list(&sh.pool, cluster), status::list(&sh.pool, cluster)) {
        Ok(v) => v,
        Err(e) => return store_error(e),
    };
    let items: Vec<_> = list.iter().map(|s| s.to_resource(statuses.get(&s.name))).collect();
    Json(json!({"items": items})).into_response()
}

async fn get_client(State(sh): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let cluster = &sh.config.cluster;
    let spec = match specs::get(&sh.pool, cluster, &name).await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    let st = status::get(&sh.pool, cluster, &name).await.ok().flatten();
    Json(spec.to_resource(st.as_ref())).into_response()
}
