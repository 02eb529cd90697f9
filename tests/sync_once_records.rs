//! `owsyncctl sync NAME --once` records its run as a leader's reconcile does: the
//! tenant's status (so `get clients` shows the result, not `Pending`), a `sync_jobs` row
//! for every run (`--force` ones too) and its events (`Synced` for every successful run,
//! also one that wrote nothing; `SyncFailed` for a failed one).

mod common;

use std::time::Duration;

use common::{TestEnv, ok, small_db};
use owsync::store::lease::{Candidate, try_acquire};
use serde_json::Value;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, PgPool, Row};

/// `owsyncctl get clients NAME -o json`.
fn client(env: &TestEnv, name: &str) -> Value {
    let out = ok(&env.ctl(&["get", "clients", name, "-o", "json"]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("get clients -o json: {e}: {out}"))
}

/// The tenant's runs, oldest first: (leader, epoch, trigger, status, rows written, finished).
async fn runs(admin: &PgPool, client: &str) -> Vec<(String, i64, String, String, i64, bool)> {
    sqlx::query(
        "SELECT leader_id, epoch, trigger, status, coalesce(rows_written, 0), finished_at IS NOT NULL
         FROM sync_metadata.sync_jobs WHERE client_name = $1 ORDER BY started_at",
    )
    .bind(client)
    .fetch_all(admin)
    .await
    .expect("read sync_jobs")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
    .collect()
}

/// The tenant's event reasons, oldest first.
async fn events(admin: &PgPool, client: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT reason FROM sync_metadata.events WHERE client_name = $1 ORDER BY id")
        .bind(client)
        .fetch_all(admin)
        .await
        .expect("read events")
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_once_records_status_job_and_events() {
    let env = TestEnv::new("once_records").await;
    let admin = env.admin_pool().await;
    let db = env.path("webui.db");
    small_db(&db, 5);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    assert_ne!(client(&env, "acme")["status"]["phase"], "Synced", "synced before any sync");

    // A first sync: Synced at the applied generation, one finished run, one Synced event.
    let out = ok(&env.ctl(&["sync", "acme", "--once", "--quiet"]));
    assert!(out.contains("clientsync/acme synced"), "{out}");
    let v = client(&env, "acme");
    assert_eq!(v["status"]["phase"], "Synced", "get clients after sync --once: {v:#}");
    assert_eq!(v["status"]["observedGeneration"], v["metadata"]["generation"], "{v:#}");
    assert!(v["status"]["lastSyncTime"].is_string(), "{v:#}");
    assert!(v["status"]["tables"]["chat"]["rows"].as_i64().is_some_and(|n| n > 0), "{v:#}");
    let listed = ok(&env.ctl(&["get", "clients"]));
    let row = listed.lines().find(|l| l.starts_with("acme")).unwrap_or_default();
    assert!(row.contains("Synced"), "get clients: {listed}");
    let r = runs(&admin, "acme").await;
    assert_eq!(r.len(), 1, "{r:?}");
    let (leader, epoch, trigger, status, rows, finished) = &r[0];
    assert!(leader.starts_with("owsyncctl"), "{r:?}");
    assert_eq!((*epoch, trigger.as_str(), status.as_str(), *finished), (0, "once", "succeeded", true), "{r:?}");
    assert!(*rows > 0, "{r:?}");
    assert_eq!(events(&admin, "acme").await, ["Synced"]);

    // An unchanged source: still a run and a Synced event, though nothing was written.
    let out = ok(&env.ctl(&["sync", "acme", "--once", "--quiet"]));
    assert!(out.contains("source unchanged"), "{out}");
    let r = runs(&admin, "acme").await;
    assert_eq!(r.len(), 2, "every run is a row: {r:?}");
    assert_eq!((r[1].3.as_str(), r[1].4, r[1].5), ("succeeded", 0, true), "{r:?}");
    assert_eq!(events(&admin, "acme").await, ["Synced", "Synced"]);

    // While a leader holds the lease, --force runs anyway, and is recorded too.
    let who = Candidate { cluster: env.cluster.clone(), node_id: "node-a".into(), instance: uuid::Uuid::new_v4() };
    let mut lease_conn = PgConnection::connect(&env.sync_url).await.unwrap();
    try_acquire(&mut lease_conn, &who, Duration::from_secs(60), None).await.unwrap().expect("node-a leads");
    let refused = env.ctl(&["sync", "acme", "--once", "--quiet"]);
    assert!(!refused.status.success(), "sync --once while a leader holds the lease");
    ok(&env.ctl(&["sync", "acme", "--once", "--force", "--full", "--quiet"]));
    let r = runs(&admin, "acme").await;
    assert_eq!(r.len(), 3, "the refused run is none, the forced one is: {r:?}");
    assert_eq!((r[2].2.as_str(), r[2].3.as_str(), r[2].5), ("once", "succeeded", true), "{r:?}");
    assert_eq!(events(&admin, "acme").await, ["Synced", "Synced", "Synced"]);
    drop(lease_conn);

    // A failed run: Failed with the error, a failed run, a SyncFailed event.
    std::fs::remove_file(&db).unwrap();
    let failed = env.ctl(&["sync", "acme", "--once", "--force", "--quiet"]);
    assert!(!failed.status.success(), "sync --once of a missing source succeeded");
    let v = client(&env, "acme");
    assert_eq!(v["status"]["phase"], "Failed", "{v:#}");
    assert_eq!(v["status"]["consecutiveFailures"], 1, "{v:#}");
    assert!(v["status"]["lastError"].as_str().is_some_and(|e| !e.is_empty()), "{v:#}");
    let r = runs(&admin, "acme").await;
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!((r[3].3.as_str(), r[3].5), ("failed", true), "{r:?}");
    assert_eq!(events(&admin, "acme").await, ["Synced", "Synced", "Synced", "SyncFailed"]);
}
