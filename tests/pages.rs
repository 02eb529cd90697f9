//! Page-level change capture: after each kind of change the mirror equals the source AND
//! the sync re-read only the rows of the pages that changed (the `READ` and `PASS`
//! columns of `sync --once`), in WAL and rollback-journal modes.

mod common;

use std::path::Path;

use common::compare::mirror_diff;
use common::{TestEnv, gen_db, ok};
use owsync::fixtures::{JournalMode, MutateOptions, SchemaFlavor, mutate};
use sqlx::PgPool;

async fn assert_equal(pool: &PgPool, schema: &str, db: &Path, what: &str) {
    let (diffs, _) = mirror_diff(pool, schema, db).await;
    assert!(diffs.is_empty(), "after {what}: {} differences, first: {:#?}", diffs.len(), &diffs[..diffs.len().min(10)]);
}

/// One table's line of `sync --once`: (rows, upserted, tombstoned, read, pass).
#[derive(Debug)]
struct Line {
    rows: u64,
    tombstoned: u64,
    read: u64,
    pass: String,
}

fn line(out: &str, table: &str) -> Line {
    let l = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(table))
        .unwrap_or_else(|| panic!("no line for {table} in:\n{out}"));
    let f: Vec<&str> = l.split_whitespace().collect();
    Line {
        rows: f[1].parse().unwrap(),
        tombstoned: f[3].parse().unwrap(),
        read: f[4].parse().unwrap(),
        pass: f[5].into(),
    }
}

fn sync(env: &TestEnv, name: &str) -> String {
    let out = ok(&env.ctl(&["sync", name, "--once"]));
    assert!(out.contains(&format!("clientsync/{name} synced")), "{out}");
    out
}

fn sql(db: &Path, batch: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(batch).unwrap_or_else(|e| panic!("{batch}: {e}"));
}

/// An incremental pass of `table` that read at most `max_read` rows.
fn incremental(out: &str, table: &str, max_read: u64) -> Line {
    let l = line(out, table);
    assert_eq!(l.pass, "changed-pages", "{table}: {out}");
    assert!(l.read <= max_read, "{table}: read {} rows (at most {max_read} expected) of {}:\n{out}", l.read, l.rows);
    l
}

async fn every_kind_of_change(prefix: &str, journal: JournalMode) {
    let env = TestEnv::new(prefix).await;
    let db = env.path("webui.db");
    gen_db(&db, 40, 12, 3, SchemaFlavor::Fresh, journal);
    // A text-keyed table, a keyless one (Open WebUI before 0.9.6), and one big chat whose
    // JSON runs over many overflow pages.
    sql(
        &db,
        "CREATE TABLE xnote (id TEXT PRIMARY KEY, body TEXT);
         CREATE TABLE xlegacy (a INTEGER, b TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600)
         INSERT INTO xnote SELECT 'n' || i, printf('%.*c', 100 + i % 50, 'b') FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600)
         INSERT INTO xlegacy SELECT i, printf('%.*c', 120, 'l') FROM n;
         UPDATE chat SET chat = json_set(chat, '$.pad', printf('%.*c', 30000, 'e'))
             WHERE rowid = (SELECT min(rowid) FROM chat);",
    );
    // This test deletes most of xnote on purpose: the deletion guard (tests/deletion_guard.rs)
    // would hold that sync.
    let m = env.manifest("pg", &db, "  deletionGuard:\n    enabled: false\n");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    let out = sync(&env, "pg");
    assert_eq!(line(&out, "chat").pass, "full", "a first sync reads everything: {out}");
    let pool = env.sync_pool().await;
    assert_equal(&pool, "client_pg", &db, "the first sync").await;
    let chats = line(&out, "chat").rows;
    assert!(chats >= 480, "{out}");

    // 5 chats renamed in place (same size): a few leaves.
    let admin = env.admin_pool().await;

    // A page state recorded by an older owsync (magic `OWP2`: no big-row hashes) is not
    // trusted: that table takes one full pass, converges, and is incremental again after.
    let n = sqlx::query(
        "UPDATE sync_metadata.table_state SET pages = overlay(pages PLACING 'OWP2'::bytea FROM 1 FOR 4)
         WHERE client_name = 'pg' AND table_name = 'chat' AND substr(pages, 1, 4) = 'OWP3'::bytea",
    )
    .execute(&admin)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(n, 1, "the first sync recorded chat's page state in the current encoding");
    sql(&db, "UPDATE chat SET title = title || '!' WHERE rowid IN (SELECT rowid FROM chat LIMIT 2 OFFSET 7)");
    let out = sync(&env, "pg");
    assert_eq!(line(&out, "chat").pass, "full", "an old-format state means a full pass: {out}");
    assert_eq!(line(&out, "xnote").read, 0, "other tables keep their state: {out}");
    assert_equal(&pool, "client_pg", &db, "after an old-format page state").await;
    let state_at = |t: &'static str| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT updated_at FROM sync_metadata.table_state WHERE client_name = 'pg' AND table_name = $1",
            )
            .bind(t)
            .fetch_one(&admin)
            .await
            .unwrap()
        }
    };
    let (xnote_at, chat_at) = (state_at("xnote").await, state_at("chat").await);
    sql(&db, "UPDATE chat SET title = upper(title) WHERE rowid IN (SELECT rowid FROM chat LIMIT 5 OFFSET 100)");
    let out = sync(&env, "pg");
    incremental(&out, "chat", chats / 10);
    assert_eq!(line(&out, "xnote").read, 0, "an unchanged table reads nothing: {out}");
    assert_equal(&pool, "client_pg", &db, "5 renames").await;
    assert_eq!(
        state_at("xnote").await,
        xnote_at,
        "an unchanged table costs no transaction (its state is not rewritten)"
    );
    assert!(state_at("chat").await > chat_at, "the changed table's state is rewritten with its rows");
    // ... as what changed: a delta against the state recorded before, a fraction of it
    // (the syncs below then start from base + delta).
    let (base, delta): (i32, Option<i32>) = sqlx::query_as(
        "SELECT length(pages), length(pages_delta) FROM sync_metadata.table_state
         WHERE client_name = 'pg' AND table_name = 'chat'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    let delta = delta.expect("5 renames are recorded as a delta");
    assert!(delta * 4 <= base, "delta {delta} bytes against a base of {base}");

    // A mirror table dropped in PostgreSQL (an operator, a botched restore) while its
    // source table did not change: the recorded page state belongs to the old mirror
    // table, so the next sync (here, after a change to another table) re-creates it with a
    // full pass instead of trusting the state.
    sqlx::raw_sql("DROP TABLE client_pg.xlegacy").execute(&admin).await.unwrap();
    sql(&db, "UPDATE xnote SET body = 'touched' WHERE id = 'n3'");
    let out = sync(&env, "pg");
    assert_eq!(line(&out, "xlegacy").pass, "full", "{out}");
    assert_equal(&pool, "client_pg", &db, "a dropped mirror table").await;

    // Deep inside the big chat's overflow chain only.
    sql(
        &db,
        "UPDATE chat SET chat = substr(chat, 1, 12000) || replace(substr(chat, 12001), 'e', 'E')
             WHERE rowid = (SELECT min(rowid) FROM chat)",
    );
    let out = sync(&env, "pg");
    incremental(&out, "chat", chats / 10);
    assert_equal(&pool, "client_pg", &db, "an overflow-only edit").await;

    // Many deletes, freeing whole leaves.
    sql(&db, "DELETE FROM xnote WHERE rowid BETWEEN 200 AND 320; DELETE FROM xlegacy WHERE a % 3 = 0;");
    let out = sync(&env, "pg");
    let l = incremental(&out, "xnote", 300);
    assert_eq!(l.tombstoned, 121, "{out}");
    assert_eq!(line(&out, "xlegacy").tombstoned, 200, "{out}");
    assert_equal(&pool, "client_pg", &db, "deletes").await;

    // INSERT OR REPLACE: same key, a new rowid (the mirror follows it, nothing is tombstoned).
    sql(&db, "INSERT OR REPLACE INTO xnote VALUES ('n7', 'replaced'); UPDATE xlegacy SET b = 'x' WHERE a = 10;");
    let out = sync(&env, "pg");
    let l = incremental(&out, "xnote", 100);
    assert_eq!(l.tombstoned, 0, "{out}");
    incremental(&out, "xlegacy", 100);
    assert_equal(&pool, "client_pg", &db, "INSERT OR REPLACE").await;
    let rowid: i64 =
        sqlx::query_scalar("SELECT _owsync_rowid FROM client_pg.xnote WHERE id = 'n7'").fetch_one(&pool).await.unwrap();
    assert!(rowid > 600, "the mirror keeps the source's new rowid, got {rowid}");

    // Open WebUI-shaped changes of every kind.
    mutate(&db, &MutateOptions { ops: 40, seed: 9, ..Default::default() }).expect("mutate");
    let out = sync(&env, "pg");
    assert_equal(&pool, "client_pg", &db, "40 mutations").await;
    assert!(line(&out, "chat").read < chats / 2, "{out}");

    // A table dropped and recreated with the same DDL and other rows.
    sql(
        &db,
        "DROP TABLE xnote; CREATE TABLE xnote (id TEXT PRIMARY KEY, body TEXT);
         INSERT INTO xnote VALUES ('n1', 'again'), ('z', 'new');",
    );
    sync(&env, "pg");
    assert_equal(&pool, "client_pg", &db, "drop and recreate").await;

    // VACUUM renumbers pages: a full pass.
    sql(&db, "DELETE FROM chat WHERE rowid % 4 = 0; VACUUM;");
    let out = sync(&env, "pg");
    assert_eq!(line(&out, "chat").pass, "full", "{out}");
    assert_equal(&pool, "client_pg", &db, "VACUUM").await;

    // And back to incremental passes.
    sql(&db, "UPDATE chat SET title = lower(title) WHERE rowid IN (SELECT rowid FROM chat LIMIT 3 OFFSET 50)");
    let out = sync(&env, "pg");
    incremental(&out, "chat", chats / 10);
    assert_equal(&pool, "client_pg", &db, "renames after VACUUM").await;

    // --full reads everything.
    let out = ok(&env.ctl(&["sync", "pg", "--once", "--full"]));
    assert_eq!(line(&out, "chat").pass, "full", "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_incremental_passes_read_what_changed() {
    every_kind_of_change("pages_wal", JournalMode::Wal).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_journal_incremental_passes_read_what_changed() {
    every_kind_of_change("pages_del", JournalMode::Delete).await;
}
