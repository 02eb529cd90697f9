//! `/api/v1`: tenants, cache-aside state and sync triggers.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::cache::Lookup;
use super::{App, authorize, error};
use crate::spec::is_dns_label;
use crate::store::{self, requests, specs, state, status};

fn store_error(e: store::StoreError) -> Response {
    match e {
        store::StoreError::NotFound { .. } => error(StatusCode::NOT_FOUND, e.to_string()),
        // SQLSTATE class 22 (data exception): the request's data, not the database, is at fault.
        store::StoreError::Db { source: sqlx::Error::Database(ref d), .. }
            if d.code().is_some_and(|c| c.starts_with("22")) =>
        {
            error(StatusCode::UNPROCESSABLE_ENTITY, format!("PostgreSQL cannot store this value: {e}"))
        }
        other => error(StatusCode::SERVICE_UNAVAILABLE, format!("database unavailable: {other}")),
    }
}

/// Why PostgreSQL's jsonb could not give a JSON value back as it is: a NUL character, or
/// a number so close to the double range's end that its decimal form reads back out of it.
fn unstorable(v: &serde_json::Value) -> Option<&'static str> {
    match v {
        serde_json::Value::String(s) if s.contains('\0') => Some("a NUL character (\\u0000)"),
        serde_json::Value::Number(n) if n.as_f64().is_some_and(|f| f.abs() >= 1e300) => {
            Some("a number of magnitude 1e300 or more")
        }
        serde_json::Value::Array(a) => a.iter().find_map(unstorable),
        serde_json::Value::Object(o) => {
            o.iter().find_map(|(k, v)| if k.contains('\0') { Some("a NUL character (\\u0000)") } else { unstorable(v) })
        }
        _ => None,
    }
}

/// The body of a mutating request, once its bearer token checks out.
fn authorized_body<T>(
    app: &App,
    headers: &HeaderMap,
    body: Result<Json<T>, JsonRejection>,
) -> Result<T, Box<Response>> {
    if let Some(r) = authorize(app, headers) {
        return Err(Box::new(r));
    }
    body.map(|Json(b)| b).map_err(|r| Box::new(error(r.status(), format!("invalid request body: {}", r.body_text()))))
}

pub async fn list_clients(State(app): State<App>) -> Response {
    super::within_deadline(list_clients_now(app)).await
}

async fn list_clients_now(app: App) -> Response {
    let sh = &app.shared;
    let cluster = &sh.config.cluster;
    let (list, statuses) = match tokio::try_join!(specs::list(&sh.pool, cluster), status::list(&sh.pool, cluster)) {
        Ok(v) => v,
        Err(e) => return store_error(e),
    };
    let items: Vec<_> = list.iter().map(|s| s.to_resource(statuses.get(&s.name))).collect();
    Json(json!({"items": items})).into_response()
}

pub async fn get_client(State(app): State<App>, Path(name): Path<String>) -> Response {
    super::within_deadline(get_client_now(app, name)).await
}

async fn get_client_now(app: App, name: String) -> Response {
    if !is_dns_label(&name) {
        return error(StatusCode::BAD_REQUEST, format!("{name:?} is not a valid client name"));
    }
    let sh = &app.shared;
    let cluster = &sh.config.cluster;
    let spec = match specs::get(&sh.pool, cluster, &name).await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    let st = status::get(&sh.pool, cluster, &name).await.ok().flatten();
    Json(spec.to_resource(st.as_ref())).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    key: String,
}

/// `Some(answer)` when the key is unusable.
fn check_key(key: &str) -> Option<Response> {
    (key.is_empty() || key.len() > 256 || key.chars().any(char::is_control))
        .then(|| error(StatusCode::BAD_REQUEST, "key must be 1 to 256 characters without control characters"))
}

pub async fn get_state(State(app): State<App>, q: Result<Query<StateQuery>, QueryRejection>) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(r) => return error(StatusCode::BAD_REQUEST, format!("invalid query: {}", r.body_text())),
    };
    if let Some(r) = check_key(&q.key) {
        return r;
    }
    let sh = &app.shared;
    let stale = match app.cache.lookup(&q.key) {
        Lookup::Fresh(c) => {
            sh.metrics.cache_hits.inc();
            return Json(
                json!({"key": q.key, "value": c.value, "updated_at": c.updated_at, "cached": true, "stale": false}),
            )
            .into_response();
        }
        Lookup::Stale(c) => Some(c),
        Lookup::Missing => None,
    };
    sh.metrics.cache_misses.inc();
    match state::get(&sh.pool, &sh.config.cluster, &q.key).await {
        Ok(Some(e)) => {
            app.cache.insert(&q.key, e.value.clone(), e.updated_at);
            Json(json!({"key": q.key, "value": e.value, "updated_at": e.updated_at, "cached": false, "stale": false}))
                .into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no state for key {:?}", q.key)),
        // stale-if-error: PostgreSQL is unreachable, serve what we had.
        Err(e) => match stale {
            Some(c) => {
                Json(json!({"key": q.key, "value": c.value, "updated_at": c.updated_at, "cached": true, "stale": true}))
                    .into_response()
            }
            None => store_error(e),
        },
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutState {
    key: String,
    value: serde_json::Value,
}

pub async fn put_state(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<PutState>, JsonRejection>,
) -> Response {
    let b = match authorized_body(&app, &headers, body) {
        Ok(b) => b,
        Err(answer) => return *answer,
    };
    if let Some(r) = check_key(&b.key) {
        return r;
    }
    if let Some(why) = unstorable(&b.value) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("value contains {why}, which PostgreSQL cannot store exactly"),
        );
    }
    let sh = &app.shared;
    // PostgreSQL first, then the cache (every replica's, through NOTIFY).
    match state::put(&sh.pool, &sh.config.cluster, &b.key, &b.value, &sh.config.node_id).await {
        Ok(at) => {
            app.cache.invalidate(&b.key);
            Json(json!({"success": true, "key": b.key, "updated_at": at})).into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    client_name: String,
}

pub async fn trigger(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<TriggerBody>, JsonRejection>,
) -> Response {
    let b = match authorized_body(&app, &headers, body) {
        Ok(b) => b,
        Err(answer) => return *answer,
    };
    if !is_dns_label(&b.client_name) {
        return error(StatusCode::BAD_REQUEST, format!("{:?} is not a valid client name", b.client_name));
    }
    let sh = &app.shared;
    let cluster = &sh.config.cluster;
    match specs::get(&sh.pool, cluster, &b.client_name).await {
        Ok(s) if !s.spec.enabled => {
            return error(StatusCode::CONFLICT, format!("clientsync/{} is disabled", b.client_name));
        }
        Ok(_) => {}
        Err(e) => return store_error(e),
    }
    match requests::file(&sh.pool, cluster, &b.client_name, &format!("api@{}", sh.config.node_id)).await {
        Ok(id) => {
            (StatusCode::ACCEPTED, Json(json!({"success": true, "sync_id": id, "status": "queued"}))).into_response()
        }
        Err(e) => store_error(e),
    }
}
