//! The HTTP API with real daemons: auth on mutating endpoints, cache-aside state coherent
//! across replicas, and triggers the leader runs. The 4xx answers to bad input are tested
//! in process, without daemons, in tests/api_errors.rs.

mod common;

use std::time::Duration;

use common::daemon::{Daemon, eventually};
use common::{TestEnv, ok, small_db};
use serde_json::{Value, json};

const TOKEN: &str = "api-token-7d1c";

async fn send(method: reqwest::Method, url: String, token: Option<&str>, body: Option<String>) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, url).timeout(Duration::from_secs(5));
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        r = r.header("Content-Type", "application/json").body(b);
    }
    let resp = r.send().await.expect("request");
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON answer ({code}): {text:?}")))
}

fn start(env: &TestEnv, node: &str) -> Daemon {
    let tf = env.path("api-token");
    std::fs::write(&tf, format!("{TOKEN}\n")).unwrap();
    Daemon::start(env, node, &["--api-token-file", tf.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread")]
async fn state_is_cache_aside_and_coherent_across_replicas() {
    let env = TestEnv::new("api_state").await;
    let (a, b) = (start(&env, "node-a"), start(&env, "node-b"));
    a.wait_up(Duration::from_secs(20)).await;
    b.wait_up(Duration::from_secs(20)).await;
    let put = |d: &Daemon, v: Value, tok: Option<&'static str>| {
        send(
            reqwest::Method::PUT,
            d.url("/api/v1/state"),
            tok,
            Some(json!({"key": "deployment.acme", "value": v}).to_string()),
        )
    };
    // No token, wrong token: 401 and nothing written.
    assert_eq!(put(&a, json!(1), None).await.0, 401);
    assert_eq!(put(&a, json!(1), Some("wrong")).await.0, 401);
    let (code, _) = send(reqwest::Method::GET, a.url("/api/v1/state?key=deployment.acme"), None, None).await;
    assert_eq!(code, 404);

    let (code, body) = put(&a, json!({"status": "active", "sync_interval": 300}), Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["success"], true);
    let get = |d: &Daemon| send(reqwest::Method::GET, d.url("/api/v1/state?key=deployment.acme"), None, None);
    let (_, first) = get(&b).await;
    assert_eq!(first["cached"], false);
    assert_eq!(first["value"]["sync_interval"], 300);
    let (_, second) = get(&b).await;
    assert_eq!(second["cached"], true, "{second}");

    // A write on replica a invalidates replica b's cache (NOTIFY; polling fallback).
    put(&a, json!({"status": "active", "sync_interval": 600}), Some(TOKEN)).await;
    let v = eventually(Duration::from_secs(6), "replica b sees the new value", || async {
        let (_, body) = get(&b).await;
        (body["value"]["sync_interval"] == 600).then_some(body)
    })
    .await;
    assert_eq!(v["cached"], false, "{v}");
    let metrics = b.get_text("/metrics").await.unwrap();
    let hits: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("state_cache_hits_total{cluster=\"test-host\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(hits >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_endpoint_queues_a_sync_the_leader_runs() {
    let env = TestEnv::new("api_trigger").await;
    let db = env.path("webui.db");
    small_db(&db, 5);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    let (a, b) = (start(&env, "node-a"), start(&env, "node-b"));
    a.wait_up(Duration::from_secs(20)).await;
    b.wait_up(Duration::from_secs(20)).await;
    ok(&env.ctl(&["wait", "client/acme", "--for", "condition=Synced", "--timeout", "60s"]));
    let admin = env.admin_pool().await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sync_metadata.sync_jobs WHERE status = 'succeeded'")
            .fetch_one(&admin)
            .await
            .unwrap()
    };
    let before = count().await;
    // Whichever replica is the standby accepts it too.
    let standby = if a.is_leader().await { &b } else { &a };
    let (code, v) = send(
        reqwest::Method::POST,
        standby.url("/api/v1/sync/trigger"),
        Some(TOKEN),
        Some(json!({"client_name": "acme"}).to_string()),
    )
    .await;
    assert_eq!(code, 202, "{v}");
    assert_eq!(v["success"], true);
    assert!(v["sync_id"].as_str().is_some_and(|s| s.len() == 36), "{v}");
    eventually(Duration::from_secs(10), "the triggered sync", || async { (count().await > before).then_some(()) })
        .await;
}
