//! Conflicts: a mirror row written by someone other than owsync and changed in SQLite too
//! is resolved by the tenant's strategy for the table and logged in conflict_log; a row
//! changed only in PostgreSQL is left alone by every later sync; `manual` conflicts wait
//! in `owsyncctl conflicts list`, set ConflictsPending, and `conflicts resolve` ends them.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{Daemon, eventually};
use common::{TestEnv, ok, small_db, stderr, stdout};
use serde_json::{Value, json};
use sqlx::{PgPool, Row};

const STRATEGIES: &str = "  conflicts:
    default: newest_wins
    tables:
      t_newest: {strategy: newest_wins, compareField: updated_at}
      t_source: {strategy: source_wins}
      t_target: {strategy: target_wins}
      t_manual: {strategy: manual, notify: true}
      chat:
        strategy: merge
        mergeRules:
          chat: append
          title: target_wins
";

fn sqlite(db: &Path, sql: &str) {
    rusqlite::Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

fn first_chat(db: &Path) -> (String, Value) {
    let c = rusqlite::Connection::open(db).unwrap();
    let (id, chat): (String, String) =
        c.query_row("SELECT id, chat FROM chat ORDER BY id LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    (id, serde_json::from_str(&chat).unwrap())
}

/// Continues a chat with a new message after its current one, as Open WebUI does.
fn add_message(chat: &mut Value, id: &str, content: &str) {
    let parent = chat["history"]["currentId"].as_str().unwrap().to_string();
    let msg = json!({"id": id, "parentId": parent, "childrenIds": [], "role": "user", "content": content,
                     "timestamp": 1_700_000_000});
    chat["history"]["messages"][parent.as_str()]["childrenIds"].as_array_mut().unwrap().push(json!(id));
    chat["history"]["messages"][id] = msg.clone();
    chat["history"]["currentId"] = json!(id);
    chat["messages"].as_array_mut().unwrap().push(msg);
}

/// A mirror row's value; it must not be tombstoned (the source has every row).
async fn value(pool: &PgPool, table: &str, id: &str) -> String {
    let (v, deleted): (String, bool) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT v, _owsync_deleted FROM client_acme.{table} WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(!deleted, "{table} row {id} is tombstoned but the source has it");
    v
}

/// (strategy, resolution, source v, target v) of a table's conflict_log entries, by key.
async fn log(pool: &PgPool, table: &str) -> Vec<(String, String, String, String, String)> {
    sqlx::query(
        "SELECT row_key->>'id', strategy, resolution, coalesce(source_row->>'v', ''), coalesce(target_row->>'v', '')
         FROM sync_metadata.conflict_log WHERE client_name = 'acme' AND table_name = $1 ORDER BY id",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

fn e(k: &str, s: &str, r: &str, sv: &str, tv: &str) -> (String, String, String, String, String) {
    (k.into(), s.into(), r.into(), sv.into(), tv.into())
}

fn message_ids(chat: &Value) -> Vec<String> {
    let mut ids: Vec<String> = chat["history"]["messages"].as_object().unwrap().keys().cloned().collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn each_strategy_resolves_rows_changed_on_both_sides() {
    let env = TestEnv::new("conflicts").await;
    let db = env.path("webui.db");
    small_db(&db, 11);
    let mut extra = String::new();
    for t in ["t_newest", "t_source", "t_target", "t_manual"] {
        extra.push_str(&format!(
            "CREATE TABLE {t} (id TEXT PRIMARY KEY, v TEXT, updated_at INTEGER);
             INSERT INTO {t} VALUES ('a', 'orig', 100), ('b', 'orig', 100), ('c', 'orig', 100);"
        ));
    }
    sqlite(&db, &extra);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, STRATEGIES).to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let admin = env.admin_pool().await;
    let (chat_id, chat0) = first_chat(&db);

    // PostgreSQL side, written by a role other than owsync.
    let pg = "UPDATE client_acme.t_newest SET v = 'pg', updated_at = 200 WHERE id = 'a';
         UPDATE client_acme.t_newest SET v = 'pg', updated_at = 120 WHERE id = 'b';
         UPDATE client_acme.t_source SET v = 'pg' WHERE id IN ('a', 'c');
         UPDATE client_acme.t_target SET v = 'pg' WHERE id = 'a';
         UPDATE client_acme.t_manual SET v = 'pg' WHERE id = 'a';";
    sqlx::raw_sql(pg).execute(&admin).await.unwrap();
    let mut pg_chat = chat0.clone();
    add_message(&mut pg_chat, "from-postgres", "typed into the mirror");
    sqlx::query("UPDATE client_acme.chat SET chat = $1::json, title = 'pg title' WHERE id = $2")
        .bind(pg_chat.to_string())
        .bind(&chat_id)
        .execute(&admin)
        .await
        .unwrap();
    // The same rows in SQLite (t_source 'c' changes only in PostgreSQL).
    let mut sq_chat = chat0.clone();
    add_message(&mut sq_chat, "from-sqlite", "typed into Open WebUI");
    sqlite(
        &db,
        "UPDATE t_newest SET v = 'sq', updated_at = 150 WHERE id IN ('a', 'b');
         UPDATE t_source SET v = 'sq' WHERE id = 'a';
         UPDATE t_target SET v = 'sq' WHERE id = 'a';
         UPDATE t_manual SET v = 'sq' WHERE id = 'a';",
    );
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE chat SET chat = ?1, title = 'sq title' WHERE id = ?2", (sq_chat.to_string(), &chat_id))
        .unwrap();

    let out = ok(&env.ctl(&["sync", "acme", "--once"]));
    assert!(out.contains("conflicts"), "the sync reports its conflicts: {out}");

    assert_eq!(value(&admin, "t_newest", "a").await, "pg", "newest_wins: PostgreSQL's 200 > 150");
    assert_eq!(value(&admin, "t_newest", "b").await, "sq", "newest_wins: SQLite's 150 > 120");
    assert_eq!(value(&admin, "t_source", "a").await, "sq");
    assert_eq!(value(&admin, "t_source", "c").await, "pg", "changed only in PostgreSQL: kept");
    assert_eq!(value(&admin, "t_target", "a").await, "pg");
    assert_eq!(value(&admin, "t_manual", "a").await, "pg", "manual: left as it is");
    assert_eq!(
        log(&admin, "t_newest").await,
        [e("a", "newest_wins", "target", "sq", "pg"), e("b", "newest_wins", "source", "sq", "pg")]
    );
    assert_eq!(log(&admin, "t_source").await, [e("a", "source_wins", "source", "sq", "pg")]);
    assert_eq!(log(&admin, "t_target").await, [e("a", "target_wins", "target", "sq", "pg")]);
    assert_eq!(log(&admin, "t_manual").await, [e("a", "manual", "pending", "sq", "pg")]);
    let resolved: Vec<(Option<String>, bool)> = sqlx::query(
        "SELECT resolved_by, resolved_at IS NOT NULL FROM sync_metadata.conflict_log
         WHERE table_name IN ('t_source', 't_manual') ORDER BY table_name",
    )
    .fetch_all(&admin)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(resolved, [(None, false), (Some("owsync (source_wins)".into()), true)]);
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_metadata.events WHERE reason = 'Conflict' AND message LIKE '%t_manual%'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(events, 1, "notify: true records an event");

    // merge: the two histories are unioned by message id, nothing lost; title follows its rule.
    let (title, merged): (String, String) =
        sqlx::query_as("SELECT title, chat::text FROM client_acme.chat WHERE id = $1 AND NOT _owsync_deleted")
            .bind(&chat_id)
            .fetch_one(&admin)
            .await
            .unwrap();
    let merged: Value = serde_json::from_str(&merged).unwrap();
    assert_eq!(title, "pg title", "mergeRules.title: target_wins");
    let mut want = message_ids(&chat0);
    want.extend(["from-postgres".to_string(), "from-sqlite".to_string()]);
    want.sort();
    assert_eq!(message_ids(&merged), want);
    let list: Vec<&str> = merged["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(list.len(), chat0["messages"].as_array().unwrap().len() + 2, "{list:?}");
    assert!(list.contains(&"from-postgres") && list.contains(&"from-sqlite"));
    let parent = chat0["history"]["currentId"].as_str().unwrap();
    let children = &merged["history"]["messages"][parent]["childrenIds"];
    assert_eq!(children, &json!(["from-sqlite", "from-postgres"]), "both branches hang off the old current message");
    let chat_log: Vec<String> = sqlx::query_scalar(
        "SELECT resolution FROM sync_metadata.conflict_log WHERE client_name = 'acme' AND table_name = 'chat'",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(chat_log, ["merged"]);

    // A later, unrelated sync (every table re-read) overwrites none of PostgreSQL's
    // versions and logs nothing new.
    sqlite(&db, "UPDATE t_newest SET v = 'unrelated' WHERE id = 'c';");
    ok(&env.ctl(&["sync", "acme", "--once", "--full"]));
    assert_eq!(value(&admin, "t_newest", "c").await, "unrelated");
    assert_eq!(value(&admin, "t_source", "c").await, "pg");
    assert_eq!(value(&admin, "t_target", "a").await, "pg");
    assert_eq!(value(&admin, "t_newest", "a").await, "pg");
    assert_eq!(value(&admin, "t_manual", "a").await, "pg");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_metadata.conflict_log").fetch_one(&admin).await.unwrap();
    assert_eq!(n, 6, "no new conflicts");
    let again: String =
        sqlx::query_scalar("SELECT chat::text FROM client_acme.chat WHERE id = $1 AND NOT _owsync_deleted")
            .bind(&chat_id)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(message_ids(&serde_json::from_str(&again).unwrap()), want, "the merged chat stays merged");

    // The source changes a kept row again: a new conflict, resolved the same way; a
    // pending row changed again updates its one pending entry.
    sqlite(&db, "UPDATE t_target SET v = 'sq2' WHERE id = 'a'; UPDATE t_manual SET v = 'sq2' WHERE id = 'a';");
    ok(&env.ctl(&["sync", "acme", "--once"]));
    assert_eq!(value(&admin, "t_target", "a").await, "pg");
    assert_eq!(log(&admin, "t_target").await.len(), 2);
    assert_eq!(log(&admin, "t_manual").await, [e("a", "manual", "pending", "sq2", "pg")]);

    // conflicts list / resolve --use target, and the errors.
    let out = ok(&env.ctl(&["conflicts", "list", "acme"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "pending only by default: {out}");
    assert!(lines[0].starts_with("ID") && lines[1].contains("t_manual") && lines[1].contains("pending"), "{out}");
    let all = ok(&env.ctl(&["conflicts", "list", "acme", "--all", "-o", "json"]));
    let all: Value = serde_json::from_str(&all).unwrap();
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 7);
    assert_eq!(items[0]["resolution"], "pending", "pending first");
    assert_eq!(items[0]["sourceRow"]["v"], "sq2");
    let id = items[0]["id"].as_i64().unwrap().to_string();
    let out = ok(&env.ctl(&["conflicts", "resolve", &id, "--use", "target"]));
    assert!(out.contains("resolved"), "{out}");
    assert_eq!(value(&admin, "t_manual", "a").await, "pg");
    let out = env.ctl(&["conflicts", "resolve", &id, "--use", "source"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("already resolved"), "{}", stderr(&out));
    let out = env.ctl(&["conflicts", "resolve", "999999", "--use", "source"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("conflict 999999 not found"), "{}", stderr(&out));
    let by: String = sqlx::query_scalar("SELECT resolved_by FROM sync_metadata.conflict_log WHERE id = $1::bigint")
        .bind(&id)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(by.contains("owsyncctl"), "{by}");
    // Kept: a later sync with the source unchanged leaves PostgreSQL's version.
    ok(&env.ctl(&["sync", "acme", "--once", "--full"]));
    assert_eq!(value(&admin, "t_manual", "a").await, "pg");
    let out = env.ctl(&["conflicts", "list", "acme"]);
    assert!(out.status.success() && stderr(&out).contains("no pending conflicts"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn manual_conflicts_set_conflicts_pending_until_resolved() {
    let env = TestEnv::new("conflicts_manual").await;
    let db = env.path("webui.db");
    small_db(&db, 12);
    let spec = "  conflicts:\n    default: source_wins\n    tables:\n      chat: {strategy: manual}\n";
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, spec).to_str().unwrap()]));
    let d = Daemon::start(&env, "node-a", &[]);
    d.wait_up(Duration::from_secs(20)).await;
    ok(&env.ctl(&["wait", "client/acme", "--for", "condition=Ready=True", "--timeout", "30s"]));
    let admin = env.admin_pool().await;
    let (chat_id, _) = first_chat(&db);
    sqlx::query("UPDATE client_acme.chat SET title = 'pg title' WHERE id = $1")
        .bind(&chat_id)
        .execute(&admin)
        .await
        .unwrap();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE chat SET title = 'sq title' WHERE id = ?1", [&chat_id])
        .unwrap();
    ok(&env.ctl(&["trigger", "acme"]));
    let out = ok(&env.ctl(&["wait", "client/acme", "--for", "condition=ConflictsPending=True", "--timeout", "30s"]));
    assert!(out.contains("condition met"), "{out}");
    let title = || async {
        sqlx::query_scalar::<_, String>("SELECT title FROM client_acme.chat WHERE id = $1 AND NOT _owsync_deleted")
            .bind(&chat_id)
            .fetch_one(&admin)
            .await
            .unwrap()
    };
    assert_eq!(title().await, "pg title", "manual: the mirror row is left as it is");
    let described = ok(&env.ctl(&["get", "clients", "acme", "-o", "json"]));
    assert!(
        described.contains("1 conflict waits for review") && described.contains("conflicts list acme"),
        "{described}"
    );
    let resource: Value = serde_json::from_str(&described).unwrap();
    assert_eq!(resource["status"]["tables"]["chat"]["conflicts"], 1, "{resource}");
    let table = ok(&env.ctl(&["get", "clients"]));
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[5], "1", "the CONFLICTS column counts pending ones: {table}");
    let described = ok(&env.ctl(&["describe", "client", "acme"]));
    assert!(described.contains("Open Conflicts: 1") && described.contains(&chat_id), "{described}");
    let metrics = d.get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains(
            r#"conflicts_detected_total{cluster="test-host",client="acme",table="chat",strategy="manual"} 1"#
        ),
        "{metrics}"
    );

    let list: Value = serde_json::from_str(&ok(&env.ctl(&["conflicts", "list", "-o", "json"]))).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!((items[0]["table"].as_str(), items[0]["rowKey"]["id"].as_str()), (Some("chat"), Some(chat_id.as_str())));
    assert_eq!(items[0]["targetRow"]["title"], "pg title");
    let id = items[0]["id"].as_i64().unwrap().to_string();
    let out = ok(&env.ctl(&["conflicts", "resolve", &id, "--use", "source"]));
    assert!(out.contains("0 pending"), "{out}");
    assert_eq!(title().await, "sq title", "the source's version");
    ok(&env.ctl(&["wait", "client/acme", "--for", "condition=ConflictsPending=False", "--timeout", "10s"]));

    // The row is owsync's again: a later source change syncs as usual, with no conflict.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("UPDATE chat SET title = 'sq title 2' WHERE id = ?1", [&chat_id])
        .unwrap();
    ok(&env.ctl(&["trigger", "acme"]));
    eventually(Duration::from_secs(20), "the source change to reach the mirror", || async {
        (title().await == "sq title 2").then_some(())
    })
    .await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_metadata.conflict_log").fetch_one(&admin).await.unwrap();
    assert_eq!(n, 1);
    ok(&env.ctl(&["wait", "client/acme", "--for", "condition=ConflictsPending=False", "--timeout", "5s"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn tracking_is_provisioned_narrowly_and_its_stamp_cannot_be_forged() {
    let env = TestEnv::new("conflicts_narrow").await;
    let db = env.path("webui.db");
    small_db(&db, 13);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let pool = env.sync_pool().await;
    for (schema, table) in [("public", "x"), ("client_other", "chat"), ("sync_metadata", "client_specs")] {
        let mut tx = owsync::store::begin(&pool, &env.cluster).await.unwrap();
        let r = sqlx::query("SELECT sync_metadata.provision_conflict_tracking($1, $2)")
            .bind(schema)
            .bind(table)
            .execute(&mut *tx)
            .await;
        let err = r.expect_err("refused").to_string();
        assert!(err.contains("not a tenant schema") || err.contains("no ClientSync"), "{schema}.{table}: {err}");
    }
    // sync_service itself, outside a sync transaction, is "PostgreSQL": stamped, and the
    // hash of owsync's version cannot be overwritten.
    let (chat_id, _) = first_chat(&db);
    let before: Option<String> = sqlx::query_scalar("SELECT _owsync_source_hash FROM client_acme.chat WHERE id = $1")
        .bind(&chat_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, None, "a row owsync wrote carries no stamp");
    sqlx::query("UPDATE client_acme.chat SET title = 'x', _owsync_source_hash = 'forged', _owsync_target_changed_at = NULL WHERE id = $1")
        .bind(&chat_id)
        .execute(&pool)
        .await
        .unwrap();
    let (hash, stamped): (Option<String>, bool) = sqlx::query_as(
        "SELECT _owsync_source_hash, _owsync_target_changed_at IS NOT NULL FROM client_acme.chat WHERE id = $1",
    )
    .bind(&chat_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(stamped);
    assert_ne!(hash.as_deref(), Some("forged"));
    assert_eq!(hash.map(|h| h.len()), Some(32), "md5 of owsync's version");
    // The source did not change that row: the next sync keeps the edit, with no conflict.
    let out = ok(&env.ctl(&["sync", "acme", "--once", "--full"]));
    assert!(out.contains("0 conflicts") && out.contains("1 rows changed only in PostgreSQL kept"), "{out}");
    let title: String = sqlx::query_scalar("SELECT title FROM client_acme.chat WHERE id = $1 AND NOT _owsync_deleted")
        .bind(&chat_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(title, "x");
}

/// Issue 16: with neither `$USER` nor `$LOGNAME` (cron, a container), `conflicts resolve`
/// records the database role and the host name as `resolvedBy`, never "unknown".
#[tokio::test(flavor = "multi_thread")]
async fn resolved_by_names_the_database_role_without_user_or_logname() {
    let env = TestEnv::new("conflicts_no_user").await;
    let db = env.path("webui.db");
    small_db(&db, 4);
    let spec = "  conflicts:\n    default: source_wins\n    tables:\n      chat: {strategy: manual}\n";
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, spec).to_str().expect("utf-8 path")]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let admin = env.admin_pool().await;
    let (chat_id, _) = first_chat(&db);
    sqlx::query("UPDATE client_acme.chat SET title = 'pg title' WHERE id = $1")
        .bind(&chat_id)
        .execute(&admin)
        .await
        .expect("change the mirror row");
    sqlite(&db, &format!("UPDATE chat SET title = 'sq title' WHERE id = '{chat_id}';"));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let list: Value = serde_json::from_str(&ok(&env.ctl(&["conflicts", "list", "-o", "json"]))).expect("json");
    let id = list["items"][0]["id"].as_i64().expect("a pending conflict").to_string();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_owsyncctl"))
        .args(["conflicts", "resolve", &id, "--use", "source"])
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("OWSYNC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("OWSYNC_DATABASE_URL_FILE", &env.url_file)
        .env("OWSYNC_CLUSTER", &env.cluster)
        .output()
        .expect("spawn owsyncctl");
    assert!(ok(&out).contains("0 pending"), "{}", stdout(&out));
    let role: String =
        sqlx::query_scalar("SELECT current_user::text").fetch_one(&env.sync_pool().await).await.expect("the sync role");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname").trim().to_string();
    let by: String = sqlx::query_scalar("SELECT resolved_by FROM sync_metadata.conflict_log WHERE id = $1::bigint")
        .bind(&id)
        .fetch_one(&admin)
        .await
        .expect("the resolved entry");
    assert_eq!(by, format!("role {role}@{host} (owsyncctl)"));
}
