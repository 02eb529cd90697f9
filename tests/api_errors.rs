//! The HTTP API's refusals, in process: the axum router answered with tower's `oneshot`
//! (no daemon, no socket) over a real PostgreSQL. A missing or wrong bearer token is a
//! 401 (before the body is read), no configured token a 403, a malformed body a 400, a
//! body of the wrong shape a 422, an unknown tenant or key a 404, a wrong method a 405,
//! an unreachable database a 503; every one a JSON `{"error", "code"}`. (These were
//! tests/api.rs's `bad_input_gets_json_4xx`, which needed a daemon.)

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{TestEnv, free_port, ok};
use owsync::api::{ApiConfig, router};
use owsync::controller::{ControllerConfig, Shared};
use serde_json::{Value, json};
use sqlx::PgPool;
use tower::ServiceExt;

const TOKEN: &str = "api-token-in-process";

/// The API of a replica of `cluster` on `pool` (no election runs: it is a standby).
fn api(url: &str, pool: PgPool, cluster: &str, token: Option<&str>) -> Router {
    let config = ControllerConfig::minimal(cluster, "node-a");
    let connect = owsync::store::connect_options(url, "test-api").expect("connect options");
    let shared = Shared::new(config, pool, connect);
    router(shared, ApiConfig { token: token.map(str::to_string), cache_ttl: Duration::from_secs(300) }).0
}

/// One request: (status, `WWW-Authenticate`, JSON body).
async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req.body(Body::from(body.unwrap_or_default().to_string())).expect("a request");
    let resp = app.clone().oneshot(req).await.expect("the router answers");
    let status = resp.status();
    let challenge = resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("the body");
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{method} {uri}: not JSON ({status}): {}", String::from_utf8_lossy(&bytes)));
    (status, challenge, v)
}

/// Asserts an error answer: the status, and the JSON body's code and message.
#[track_caller]
fn refused(answer: &(StatusCode, Option<String>, Value), want: u16, what: &str) {
    let (status, _, v) = answer;
    assert_eq!(status.as_u16(), want, "{what}: {v}");
    assert_eq!(v["code"], want, "{what}: {v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_is_checked_before_the_body() {
    let env = TestEnv::new("api_errors_auth").await;
    let app = api(&env.sync_url, env.sync_pool().await, &env.cluster, Some(TOKEN));
    let put = r#"{"key": "k", "value": 1}"#;
    let bearer = format!("Bearer {TOKEN}");
    for (uri, body) in [("/api/v1/state", put), ("/api/v1/sync/trigger", r#"{"client_name": "acme"}"#)] {
        let method = if uri.ends_with("state") { "PUT" } else { "POST" };
        for auth in [None, Some("Bearer wrong"), Some(TOKEN), Some("Basic YTpi"), Some("Bearer ")] {
            let answer = call(&app, method, uri, auth, Some(body)).await;
            refused(&answer, 401, &format!("{method} {uri} with {auth:?}"));
            assert_eq!(answer.1.as_deref(), Some("Bearer"), "a 401 names the scheme");
        }
        // A malformed body without a token is still a 401: the token is checked first.
        refused(&call(&app, method, uri, None, Some("{not json")).await, 401, "no token, bad body");
    }
    let (status, _, v) = call(&app, "PUT", "/api/v1/state", Some(&bearer), Some(put)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((v["success"].as_bool(), v["key"].as_str()), (Some(true), Some("k")));
    // Reads need no token.
    let (status, _, v) = call(&app, "GET", "/api/v1/state?key=k", None, None).await;
    assert_eq!((status, v["value"].as_i64()), (StatusCode::OK, Some(1)), "{v}");

    // Without a configured token, mutating endpoints are disabled for everyone.
    let closed = api(&env.sync_url, env.sync_pool().await, &env.cluster, None);
    refused(&call(&closed, "PUT", "/api/v1/state", Some(&bearer), Some(put)).await, 403, "no token configured");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_unknown_tenants_and_wrong_methods_are_json_4xx() {
    let env = TestEnv::new("api_errors_4xx").await;
    let db = env.path("webui.db");
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().expect("utf-8")]));
    ok(&env.ctl(&["apply", "-f", env.manifest("paused", &db, "  enabled: false\n").to_str().expect("utf-8")]));
    let app = api(&env.sync_url, env.sync_pool().await, &env.cluster, Some(TOKEN));
    let bearer = format!("Bearer {TOKEN}");
    let big = format!(r#"{{"key": "k", "value": "{}"}}"#, "x".repeat(100_000));
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("PUT", "/api/v1/state", Some("{not json"), 400),
        ("PUT", "/api/v1/state", Some(r#"{"key": 5, "value": 1}"#), 422),
        ("PUT", "/api/v1/state", Some(r#"{"value": 1}"#), 422),
        ("PUT", "/api/v1/state", Some(r#"{"key": "k", "value": 1, "extra": 2}"#), 422),
        ("PUT", "/api/v1/state", Some(r#"{"key": "", "value": 1}"#), 400),
        ("PUT", "/api/v1/state", Some(r#"{"key": "k", "value": "nul \u0000"}"#), 422),
        ("PUT", "/api/v1/state", Some(&big), 413),
        ("POST", "/api/v1/sync/trigger", Some(r#"{"client_name": "nope"}"#), 404),
        ("POST", "/api/v1/sync/trigger", Some(r#"{"client_name": "paused"}"#), 409),
        ("POST", "/api/v1/sync/trigger", Some(r#"{"client_name": "Bad Name"}"#), 400),
        ("POST", "/api/v1/sync/trigger", Some(r#"{"client": "x"}"#), 422),
        ("POST", "/api/v1/sync/trigger", Some("[]"), 422),
        ("GET", "/api/v1/state", None, 400),
        ("GET", "/api/v1/state?key=k&other=1", None, 400),
        ("GET", "/api/v1/state?key=never-written", None, 404),
        ("GET", "/api/v1/clients/nope", None, 404),
        ("GET", "/api/v1/clients/Bad_Name", None, 400),
        ("GET", "/api/v1/nothing", None, 404),
        ("DELETE", "/api/v1/state", None, 405),
        ("GET", "/api/v1/sync/trigger", None, 405),
        ("POST", "/api/v1/clients", None, 405),
    ];
    for (method, uri, body, want) in cases {
        refused(&call(&app, method, uri, Some(&bearer), body).await, want, &format!("{method} {uri} {body:?}"));
    }
    // A body without `Content-Type: application/json` is refused as such (415).
    let req = Request::builder()
        .method("PUT")
        .uri("/api/v1/state")
        .header(header::AUTHORIZATION, &bearer)
        .body(Body::from(r#"{"key": "k", "value": 1}"#))
        .expect("a request");
    let resp = app.clone().oneshot(req).await.expect("the router answers");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // The known tenant: 202 and a queued request; its resource by name.
    let (status, _, v) =
        call(&app, "POST", "/api/v1/sync/trigger", Some(&bearer), Some(r#"{"client_name": "acme"}"#)).await;
    assert_eq!((status, v["status"].as_str()), (StatusCode::ACCEPTED, Some("queued")), "{v}");
    let (status, _, v) = call(&app, "GET", "/api/v1/clients/acme", None, None).await;
    assert_eq!((status, v["metadata"]["name"].as_str()), (StatusCode::OK, Some("acme")), "{v}");
    let (status, _, v) = call(&app, "GET", "/api/v1/clients", None, None).await;
    assert_eq!((status, v["items"].as_array().map(Vec::len)), (StatusCode::OK, Some(2)), "{v}");
    let (status, _, doc) = call(&app, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/v1/sync/trigger"]["post"].is_object(), "{doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_a_json_503() {
    let url = format!("postgres://sync_service:x@127.0.0.1:{}/nothing", free_port());
    let opts = owsync::store::connect_options(&url, "test-api").expect("connect options");
    let pool = sqlx::postgres::PgPoolOptions::new().acquire_timeout(Duration::from_secs(2)).connect_lazy_with(opts);
    let app = api(&url, pool, "test-host", Some(TOKEN));
    let bearer = format!("Bearer {TOKEN}");
    let started = std::time::Instant::now();
    for (method, uri, body) in [
        ("GET", "/readyz", None),
        ("GET", "/api/v1/clients", None),
        ("GET", "/api/v1/clients/acme", None),
        ("GET", "/api/v1/state?key=k", None),
        ("PUT", "/api/v1/state", Some(r#"{"key": "k", "value": 1}"#)),
        ("POST", "/api/v1/sync/trigger", Some(r#"{"client_name": "acme"}"#)),
    ] {
        refused(&call(&app, method, uri, Some(&bearer), body).await, 503, &format!("{method} {uri}"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "each answer within the pool's timeout (2 s) or the API's deadline (1 s)"
    );
    // The probe and the health document need no database.
    let (status, _, v) = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!((status, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (_, _, v) = call(&app, "GET", "/health", None, None).await;
    assert_eq!((v["is_leader"].as_bool(), v["epoch"].clone()), (Some(false), json!(null)), "{v}");
}
