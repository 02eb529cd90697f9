//! The deletion guard (`sync::guard`): a sync never turns a large share of the mirror
//! into tombstones on its own. A fresh Open WebUI database at the tenant's path (a volume
//! not mounted) is held until the real one comes back; a genuine bulk delete is held
//! until approved, and an approval covers the deletions it saw, no more.

mod common;

use std::path::Path;

use common::{TestEnv, gen_db, ok, stderr};
use owsync::fixtures::{JournalMode, SchemaFlavor};
use sqlx::PgPool;

/// `(live, tombstoned)` rows of a mirror table.
async fn mirror(pool: &PgPool, table: &str) -> (i64, i64) {
    let sql = format!(
        "SELECT count(*) FILTER (WHERE NOT _owsync_deleted), count(*) FILTER (WHERE _owsync_deleted) FROM client_acme.{}",
        owsync::sql::quote_ident(table)
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(pool).await.expect("count mirror")
}

async fn held(pool: &PgPool) -> Option<serde_json::Value> {
    sqlx::query_scalar("SELECT held FROM sync_metadata.deletion_guard WHERE client_name = 'acme'")
        .fetch_optional(pool)
        .await
        .expect("read deletion_guard")
        .flatten()
}

/// `(phase, DeletionsHeld status, its reason)` and the number of DeletionsHeld events.
async fn status(pool: &PgPool) -> (String, String, String, i64) {
    let (phase, cond): (String, Option<serde_json::Value>) = sqlx::query_as(
        "SELECT phase, (SELECT c FROM jsonb_array_elements(conditions) c WHERE c->>'type' = 'DeletionsHeld')
         FROM sync_metadata.client_status WHERE name = 'acme'",
    )
    .fetch_optional(pool)
    .await
    .expect("read status")
    .unwrap_or_default();
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_metadata.events WHERE client_name = 'acme' AND reason = 'DeletionsHeld' AND type = 'Warning'",
    )
    .fetch_one(pool)
    .await
    .expect("count events");
    let field = |k: &str| cond.as_ref().and_then(|c| c[k].as_str()).unwrap_or_default().to_string();
    (phase, field("status"), field("reason"), events)
}

fn move_db(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let (a, b) = (format!("{}{suffix}", from.display()), format!("{}{suffix}", to.display()));
        if Path::new(&a).exists() {
            std::fs::rename(&a, &b).expect("move database file");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_database_at_the_path_is_held_until_the_volume_comes_back() {
    let env = TestEnv::new("guard_fresh").await;
    let db = env.path("webui.db");
    gen_db(&db, 5, 10, 21, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let admin = env.admin_pool().await;
    let (chats, users) = (mirror(&admin, "chat").await, mirror(&admin, "user").await);
    assert_eq!(chats, (50, 0));
    // The volume is not mounted: Open WebUI starts on a fresh database at the same path.
    let real = env.path("real.db");
    move_db(&db, &real);
    gen_db(&db, 1, 0, 99, SchemaFlavor::Fresh, JournalMode::Wal);
    let out = env.ctl(&["sync", "acme", "--once"]);
    assert_eq!(out.status.code(), Some(1), "a held sync exits 1: {}", stderr(&out));
    let err = stderr(&out);
    for part in [
        "deletions held",
        "looks like another database",
        "chat 50 of 50 rows",
        "nothing was written",
        "owsyncctl deletions approve acme",
        "owsyncctl restore acme --in-place",
    ] {
        assert!(err.contains(part), "missing {part:?} in: {err}");
    }
    assert_eq!(mirror(&admin, "chat").await, chats, "nothing was tombstoned");
    assert_eq!(mirror(&admin, "user").await, users, "the fresh admin was not written either");
    let plan = held(&admin).await.expect("hold recorded");
    assert_eq!(plan["reason"], "SourceReplaced", "{plan}");
    let st = status(&admin).await;
    assert_eq!(st, ("Held".into(), "True".into(), "SourceReplaced".into(), 1), "phase, condition, one event");
    let get = ok(&env.ctl(&["get", "clients"]));
    assert!(get.lines().any(|l| l.starts_with("acme") && l.contains("Held")), "get clients shows it: {get}");
    // Still held at the next sync: the hold does not wear off (and is not a new event).
    assert_eq!(env.ctl(&["sync", "acme", "--once"]).status.code(), Some(1));
    assert_eq!(status(&admin).await.3, 1, "one event per hold, not one per sync");
    // The volume is mounted again: the hold clears by itself and nothing was lost.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    move_db(&real, &db);
    ok(&env.ctl(&["sync", "acme", "--once"]));
    assert_eq!(mirror(&admin, "chat").await, chats);
    assert!(held(&admin).await.is_none(), "hold cleared");
    let st = status(&admin).await;
    assert_eq!((st.0.as_str(), st.1.as_str()), ("Synced", "False"), "{st:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_delete_is_held_until_approved_and_only_what_was_approved_is_applied() {
    let env = TestEnv::new("guard_bulk").await;
    let db = env.path("webui.db");
    gen_db(&db, 4, 10, 5, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let out = env.ctl(&["deletions", "approve", "acme"]);
    assert_eq!(out.status.code(), Some(1), "nothing held: {}", stderr(&out));
    assert!(stderr(&out).contains("no deletions are held"), "{}", stderr(&out));
    let admin = env.admin_pool().await;
    let source = rusqlite::Connection::open(&db).expect("open source");
    // An admin deletes 30 of 40 chats.
    source.execute_batch("DELETE FROM chat WHERE rowid IN (SELECT rowid FROM chat ORDER BY rowid LIMIT 30)").unwrap();
    let out = env.ctl(&["sync", "acme", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("chat 30 of 40 rows"), "{}", stderr(&out));
    assert_eq!(mirror(&admin, "chat").await, (40, 0));
    assert_eq!(held(&admin).await.expect("held")["reason"], "MassDeletion");
    let out = ok(&env.ctl(&["deletions", "approve", "acme"]));
    assert!(out.contains("approved (MassDeletion): chat 30 of 40 rows"), "{out}");
    // One more chat deleted after the approval: more than was approved, held again.
    source.execute_batch("DELETE FROM chat WHERE rowid = (SELECT min(rowid) FROM chat)").unwrap();
    let out = env.ctl(&["sync", "acme", "--once"]);
    assert_eq!(out.status.code(), Some(1), "an approval is not a blanket pass: {}", stderr(&out));
    assert!(stderr(&out).contains("chat 31 of 40 rows"), "{}", stderr(&out));
    assert_eq!(mirror(&admin, "chat").await, (40, 0));
    ok(&env.ctl(&["deletions", "approve", "acme"]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    assert_eq!(mirror(&admin, "chat").await, (9, 31), "the approved deletions were applied");
    assert!(held(&admin).await.is_none());
    // The approval was used up: emptying the table is held again.
    source.execute_batch("DELETE FROM chat").unwrap();
    let out = env.ctl(&["sync", "acme", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("chat 9 of 9 rows"), "{}", stderr(&out));
    assert_eq!(mirror(&admin, "chat").await, (9, 31));
}

#[tokio::test(flavor = "multi_thread")]
async fn small_deletions_and_a_disabled_guard_pass() {
    let env = TestEnv::new("guard_small").await;
    let db = env.path("webui.db");
    gen_db(&db, 4, 10, 6, SchemaFlavor::Fresh, JournalMode::Wal);
    let extra = "  deletionGuard:\n    maxShare: 0.25\n";
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, extra).to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let admin = env.admin_pool().await;
    let source = rusqlite::Connection::open(&db).expect("open source");
    source.execute_batch("DELETE FROM chat WHERE rowid IN (SELECT rowid FROM chat ORDER BY rowid LIMIT 10)").unwrap();
    ok(&env.ctl(&["sync", "acme", "--once"]));
    assert_eq!(mirror(&admin, "chat").await, (30, 10), "a quarter is within maxShare 0.25");
    source.execute_batch("DELETE FROM chat WHERE rowid IN (SELECT rowid FROM chat ORDER BY rowid LIMIT 20)").unwrap();
    assert_eq!(env.ctl(&["sync", "acme", "--once"]).status.code(), Some(1), "two thirds is not");
    let extra = "  deletionGuard:\n    enabled: false\n";
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, extra).to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    assert_eq!(mirror(&admin, "chat").await, (10, 30));
}

/// The leader holds too: phase Held, a DeletionsHeld event, `deletions_held` 1 on
/// /metrics; the volume coming back clears all of it.
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_holds_exports_the_gauge_and_clears_when_the_volume_returns() {
    use common::daemon::{Daemon, eventually};
    use std::time::Duration;
    let env = TestEnv::new("guard_daemon").await;
    let db = env.path("webui.db");
    gen_db(&db, 3, 8, 23, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "  watch: true\n").to_str().unwrap()]));
    let d =
        Daemon::start(&env, "node-a", &["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"]);
    let admin = env.admin_pool().await;
    let gauge = |v: &'static str| {
        let d = &d;
        move || async move {
            let text = d.get_text("/metrics").await.unwrap_or_default();
            text.lines()
                .any(|l| l.starts_with("deletions_held{") && l.contains("client=\"acme\"") && l.ends_with(v))
                .then_some(())
        }
    };
    eventually(Duration::from_secs(30), "first sync", || async { (status(&admin).await.0 == "Synced").then_some(()) })
        .await;
    eventually(Duration::from_secs(10), "deletions_held 0", gauge(" 0")).await;
    let real = env.path("real.db");
    move_db(&db, &real);
    gen_db(&db, 1, 0, 98, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["trigger", "acme"]));
    eventually(Duration::from_secs(30), "phase Held", || async {
        let st = status(&admin).await;
        (st.0 == "Held" && st.2 == "SourceReplaced" && st.3 == 1).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "deletions_held 1", gauge(" 1")).await;
    assert_eq!(mirror(&admin, "chat").await, (24, 0));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    move_db(&real, &db);
    ok(&env.ctl(&["trigger", "acme"]));
    eventually(Duration::from_secs(30), "hold cleared", || async {
        let st = status(&admin).await;
        (st.0 == "Synced" && st.1 == "False").then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "deletions_held 0 again", gauge(" 0")).await;
    assert_eq!(mirror(&admin, "chat").await, (24, 0));
}

/// Rows deleted and as many inserted keep the counts, so only the table's own transaction
/// sees how many it would tombstone: beyond the share it rolls back and the sync holds.
#[tokio::test(flavor = "multi_thread")]
async fn churn_that_counts_cannot_see_is_held_by_the_table_transaction() {
    let env = TestEnv::new("guard_churn").await;
    let db = env.path("webui.db");
    gen_db(&db, 4, 10, 8, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let admin = env.admin_pool().await;
    let source = rusqlite::Connection::open(&db).expect("open source");
    source
        .execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TEMP TABLE gone AS SELECT * FROM chat ORDER BY rowid LIMIT 30;
             DELETE FROM chat WHERE id IN (SELECT id FROM gone);
             UPDATE gone SET id = id || '-new', title = 'new ' || title;
             INSERT INTO chat SELECT * FROM gone;",
        )
        .unwrap();
    assert_eq!(source.query_row("SELECT count(*) FROM chat", [], |r| r.get::<_, i64>(0)).unwrap(), 40);
    let out = env.ctl(&["sync", "acme", "--once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("chat 30 of 40 rows"), "{}", stderr(&out));
    assert_eq!(mirror(&admin, "chat").await, (40, 0), "the table's transaction rolled back");
    assert_eq!(held(&admin).await.expect("held")["reason"], "MassDeletion");
    ok(&env.ctl(&["deletions", "approve", "acme"]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    assert_eq!(mirror(&admin, "chat").await, (40, 30), "approved: applied");
    ok(&env.ctl(&["verify", "acme"]));
}
