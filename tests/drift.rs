//! SchemaDrift: the source changes in ways the mirror cannot follow (a column dropped, a
//! table re-created with another column type, a table dropped, a primary key changed);
//! the real daemon keeps syncing the rest, sets `SchemaDrift=True` with a message naming
//! table, column and what to do (seen through `owsyncctl get -o json`), records an event,
//! and sets it back to False once an operator has fixed the mirror.

mod common;

use std::time::Duration;

use common::daemon::{Daemon, eventually};
use common::{TestEnv, ok, small_db};

fn drift_condition(env: &TestEnv) -> Option<serde_json::Value> {
    let out = env.ctl(&["get", "clients", "tenant", "-o", "json"]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let conds = v["status"]["conditions"].as_array()?.clone();
    conds.into_iter().find(|c| c["type"] == "SchemaDrift")
}

async fn wait_drift(env: &TestEnv, status: &str, d: &Daemon) -> serde_json::Value {
    let what = format!("SchemaDrift={status}");
    let c = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if let Some(c) = drift_condition(env).filter(|c| c["status"] == status) {
                return c;
            }
            ok(&env.ctl(&["trigger", "tenant"]));
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    })
    .await;
    c.unwrap_or_else(|_| panic!("timed out waiting for {what}; log:\n{}", d.log_text()))
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_drift_is_reported_with_what_to_do_and_clears_once_fixed() {
    let env = TestEnv::new("drift").await;
    let db = env.path("webui.db");
    small_db(&db, 5);
    let m = env.manifest("tenant", &db, "");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    let d = Daemon::start(&env, "node-a", &[]);
    d.wait_up(Duration::from_secs(20)).await;
    ok(&env.ctl(&["wait", "client/tenant", "--for", "condition=Synced", "--timeout", "60s"]));
    let c = eventually(Duration::from_secs(10), "a SchemaDrift condition", || async { drift_condition(&env) }).await;
    assert_eq!(c["status"], "False", "{c}");

    // The source changes in four ways the mirror cannot follow.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "ALTER TABLE chat DROP COLUMN summary;
             DROP TABLE document;
             ALTER TABLE memory RENAME TO memory_old;
             CREATE TABLE memory (id VARCHAR NOT NULL, user_id VARCHAR, content TEXT, updated_at TEXT,
                 created_at BIGINT, type VARCHAR DEFAULT 'context' NOT NULL, path TEXT, meta JSON, PRIMARY KEY (id));
             INSERT INTO memory SELECT id, user_id, content, updated_at, created_at, type, path, meta FROM memory_old;
             DROP TABLE memory_old;
             ALTER TABLE config_old RENAME TO config_prev;
             CREATE TABLE config_old (id INTEGER NOT NULL, data JSON NOT NULL, version INTEGER NOT NULL,
                 created_at DATETIME, updated_at DATETIME, PRIMARY KEY (id, version));
             INSERT INTO config_old SELECT * FROM config_prev;
             DROP TABLE config_prev;
             INSERT INTO tag (id, name, user_id, meta) VALUES ('drift-tag', 'x', 'u', '{}');",
        )
        .unwrap();
    }
    let c = wait_drift(&env, "True", &d).await;
    assert_eq!(c["reason"], "SchemaChanged", "{c}");
    let msg = c["message"].as_str().unwrap();
    for needle in [
        "table chat, column summary: dropped at the source",
        "DROP COLUMN \"summary\"",
        "table memory, column updated_at: the source now declares \"TEXT\" (text) but the mirror column is bigint",
        "table document: gone at the source",
        "table config_old: the source's primary key is (id, version) but the mirror's is (id)",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    // The sync went on with the rest: the new tag row is in the mirror.
    let admin = env.admin_pool().await;
    let tag: i64 = sqlx::query_scalar("SELECT count(*) FROM client_tenant.tag WHERE id = 'drift-tag'")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(tag, 1);
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM sync_metadata.events WHERE client_name = 'tenant' AND reason LIKE 'SchemaDrift%' ORDER BY id",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(events, ["SchemaDrift"]);
    let described = ok(&env.ctl(&["describe", "client", "tenant"]));
    assert!(described.contains("SchemaDrift"), "{described}");

    // The operator fixes the mirror (as admin): the condition clears without a source change.
    for s in [
        "ALTER TABLE client_tenant.chat DROP COLUMN summary",
        "ALTER TABLE client_tenant.memory ALTER COLUMN updated_at TYPE text USING updated_at::text",
        "DROP TABLE client_tenant.document",
        "DROP TABLE client_tenant.config_old",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s)).execute(&admin).await.unwrap();
    }
    let c = wait_drift(&env, "False", &d).await;
    assert_eq!(c["reason"], "InSync", "{c}");
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM sync_metadata.events WHERE client_name = 'tenant' AND reason LIKE 'SchemaDrift%' ORDER BY id",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(events, ["SchemaDrift", "SchemaDriftResolved"]);
    // config_old comes back with the new key and every row: the condition may clear on a
    // re-check before the next sync re-creates the table, so wait for that sync.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let back: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('client_tenant.config_old')::text").fetch_one(&admin).await.unwrap();
        if back.is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "client_tenant.config_old was not re-created within 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let key: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         WHERE c.oid = 'client_tenant.config_old'::regclass AND i.indisprimary AND i.indnatts = 2",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(key, 1);
}
