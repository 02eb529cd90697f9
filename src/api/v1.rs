//! `/api/v1`: tenants, cache-aside state and sync triggers.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::cache::Lookup;
use super::{ApiError, ApiJson, ApiQuery, App, Authorized};
use crate::spec::{ClientSync, is_dns_label};
use crate::store::{requests, specs, state, status};

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

/// An answer of the API: a JSON value, or an [`ApiError`].
type Answer = Result<Json<Value>, ApiError>;

pub async fn list_clients(State(app): State<App>) -> Answer {
    super::within_deadline(list_clients_now(app)).await
}

async fn list_clients_now(app: App) -> Answer {
    let sh = &app.shared;
    let cluster = &sh.config.cluster;
    let (list, statuses) = tokio::try_join!(specs::list(&sh.pool, cluster), status::list(&sh.pool, cluster))?;
    let items: Vec<_> = list.iter().map(|s| s.to_resource(statuses.get(&s.name))).collect();
    Ok(Json(json!({"items": items})))
}

pub async fn get_client(State(app): State<App>, Path(name): Path<String>) -> Result<Json<ClientSync>, ApiError> {
    super::within_deadline(get_client_now(app, name)).await
}

async fn get_client_now(app: App, name: String) -> Result<Json<ClientSync>, ApiError> {
    if !is_dns_label(&name) {
        return Err(ApiError::bad_request(format!("{name:?} is not a valid client name")));
    }
    let sh = &app.shared;
    let cluster = &sh.config.cluster;
    let spec = specs::get(&sh.pool, cluster, &name).await?;
    let st = status::get(&sh.pool, cluster, &name).await.ok().flatten();
    Ok(Json(spec.to_resource(st.as_ref())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    key: String,
}

/// Refuses an unusable key.
fn check_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
        return Err(ApiError::bad_request("key must be 1 to 256 characters without control characters"));
    }
    Ok(())
}

pub async fn get_state(State(app): State<App>, ApiQuery(q): ApiQuery<StateQuery>) -> Answer {
    check_key(&q.key)?;
    let sh = &app.shared;
    let stale = match app.cache.lookup(&q.key) {
        Lookup::Fresh(c) => {
            sh.metrics.cache_hits.inc();
            return Ok(Json(
                json!({"key": q.key, "value": c.value, "updated_at": c.updated_at, "cached": true, "stale": false}),
            ));
        }
        Lookup::Stale(c) => Some(c),
        Lookup::Missing => None,
    };
    sh.metrics.cache_misses.inc();
    match state::get(&sh.pool, &sh.config.cluster, &q.key).await {
        Ok(Some(e)) => {
            app.cache.insert(&q.key, e.value.clone(), e.updated_at);
            Ok(Json(
                json!({"key": q.key, "value": e.value, "updated_at": e.updated_at, "cached": false, "stale": false}),
            ))
        }
        Ok(None) => Err(ApiError::not_found(format!("no state for key {:?}", q.key))),
        // stale-if-error: PostgreSQL is unreachable, serve what we had.
        Err(e) => match stale {
            Some(c) => Ok(Json(
                json!({"key": q.key, "value": c.value, "updated_at": c.updated_at, "cached": true, "stale": true}),
            )),
            None => Err(e.into()),
        },
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutState {
    key: String,
    value: serde_json::Value,
}

/// The bearer check ([`Authorized`]) runs before the body is read.
pub async fn put_state(State(app): State<App>, _: Authorized, ApiJson(b): ApiJson<PutState>) -> Answer {
    check_key(&b.key)?;
    if let Some(why) = unstorable(&b.value) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("value contains {why}, which PostgreSQL cannot store exactly"),
        ));
    }
    let sh = &app.shared;
    // PostgreSQL first, then the cache (every replica's, through NOTIFY).
    let at = state::put(&sh.pool, &sh.config.cluster, &b.key, &b.value, &sh.config.node_id).await?;
    app.cache.invalidate(&b.key);
    Ok(Json(json!({"success": true, "key": b.key, "updated_at": at})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    client_name: String,
}

pub async fn trigger(
    State(app): State<App>,
    _: Authorized,
    ApiJson(b): ApiJson<TriggerBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !is_dns_label(&b.client_name) {
        return Err(ApiError::bad_request(format!("{:?} is not a valid client name", b.client_name)));
    }
    let sh = &app.shared;
    let cluster = &sh.config.cluster;
    if !specs::get(&sh.pool, cluster, &b.client_name).await?.spec.enabled {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("clientsync/{} is disabled", b.client_name)));
    }
    let id = requests::file(&sh.pool, cluster, &b.client_name, &format!("api@{}", sh.config.node_id)).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"success": true, "sync_id": id, "status": "queued"}))))
}
