//! Tables of every key shape and awkward name, made by hand: each is mirrored exactly;
//! views, virtual tables and their shadow tables, and excluded tables are not.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::compare::mirror_diff;
use common::{TestEnv, ok};
use rusqlite::{Connection, params};
use sqlx::PgPool;

const SHAPES: &str = r#"
CREATE TABLE no_pk (a TEXT, b INTEGER);
CREATE TABLE composite (a TEXT, b INTEGER, c TEXT, PRIMARY KEY (b, a));
CREATE TABLE wr (a TEXT, b INTEGER, v BLOB, PRIMARY KEY (a, b)) WITHOUT ROWID;
CREATE TABLE wr_one (k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID;
CREATE TABLE ipk (id INTEGER PRIMARY KEY, v TEXT);
CREATE TABLE gen (id INTEGER PRIMARY KEY, a INTEGER,
    b INTEGER GENERATED ALWAYS AS (a * 2) VIRTUAL,
    c TEXT GENERATED ALWAYS AS ('x' || a) STORED);
CREATE TABLE "user" (id TEXT PRIMARY KEY, name TEXT);
CREATE TABLE "group" (id TEXT PRIMARY KEY, "order" INTEGER);
CREATE TABLE "select" ("from" TEXT, "where" INTEGER);
CREATE TABLE "we""ird name" ("col""q" TEXT PRIMARY KEY, "it's" INTEGER, "sp ace" TEXT);
CREATE TABLE MixedCase (Id TEXT PRIMARY KEY, Val TEXT);
CREATE TABLE rowid_col (rowid TEXT, v INTEGER);
CREATE VIEW v_user AS SELECT * FROM "user";
CREATE VIRTUAL TABLE docs USING fts5(body);
CREATE VIRTUAL TABLE old_docs USING fts4(body);
CREATE VIRTUAL TABLE geo USING rtree(id, x0, x1);
CREATE TABLE tmp_a (id INTEGER PRIMARY KEY);
CREATE TABLE tmp_b (x TEXT);
CREATE TABLE page_cache (k TEXT PRIMARY KEY);
"#;

/// Tables the sync must skip: virtual tables, their shadow tables, excluded ones.
const SKIPPED: &[&str] = &[
    "docs",
    "docs_config",
    "docs_content",
    "docs_data",
    "docs_docsize",
    "docs_idx",
    "old_docs",
    "old_docs_content",
    "old_docs_docsize",
    "old_docs_segdir",
    "old_docs_segments",
    "old_docs_stat",
    "geo",
    "geo_node",
    "geo_parent",
    "geo_rowid",
    "tmp_a",
    "tmp_b",
    "page_cache",
];

fn fill(c: &Connection) {
    c.execute_batch(SHAPES).unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..2500i64 {
        // duplicates on purpose: a rowid table may hold equal rows
        tx.execute("INSERT INTO no_pk VALUES (?1, ?2)", params![format!("n{}", i % 700), i % 3]).unwrap();
        tx.execute("INSERT INTO composite VALUES (?1, ?2, ?3)", params![format!("a{}", i % 50), i / 50, "c"]).unwrap();
        tx.execute("INSERT INTO gen (a) VALUES (?1)", [i - 1000]).unwrap();
    }
    // Enough bytes that slices end on the byte budget in the middle of a key prefix.
    let blob = vec![0xA5u8; 3000];
    for i in 0..4500i64 {
        tx.execute("INSERT INTO wr VALUES (?1, ?2, ?3)", params![format!("k{}", i % 7), i, &blob]).unwrap();
    }
    for (id, v) in [(i64::MIN, "min"), (-5, "neg"), (0, "zero"), (7, "seven"), (i64::MAX, "max")] {
        tx.execute("INSERT INTO ipk VALUES (?1, ?2)", params![id, v]).unwrap();
    }
    tx.execute_batch(
        r#"
        INSERT INTO wr_one VALUES ('a', 1), ('B', 2), ('é', 3), ('', 4);
        INSERT INTO "user" VALUES ('u1', 'Ann'), ('u2', NULL);
        INSERT INTO "group" VALUES ('g1', 1), ('g"2', 2);
        INSERT INTO "select" VALUES ('x', 1), ('x', 1), (NULL, NULL);
        INSERT INTO "we""ird name" VALUES ('k"1', 1, 'a b'), ('k''2', 2, NULL);
        INSERT INTO MixedCase VALUES ('One', 'v');
        INSERT INTO rowid_col VALUES ('not the rowid', 1), ('neither', 2);
        INSERT INTO docs (body) VALUES ('full text one'), ('full text two');
        INSERT INTO old_docs (body) VALUES ('old text');
        INSERT INTO geo VALUES (1, 0.5, 2.5);
        INSERT INTO tmp_a VALUES (1); INSERT INTO tmp_b VALUES ('t');
        INSERT INTO page_cache VALUES ('p');
        DELETE FROM no_pk WHERE rowid % 10 = 3;
        "#,
    )
    .unwrap();
    tx.commit().unwrap();
}

async fn mirrored_tables(pool: &PgPool, schema: &str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1")
        .bind(schema)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// mirror_diff reads every SQLite table, virtual and shadow ones too: the only
/// differences allowed are "cannot read mirror" for exactly the `skipped` tables.
/// (`rowid_col` is left out: mirror_diff's `SELECT rowid` reads its column named
/// rowid, not the rowid; [`check_rowid_col`] compares it.)
async fn assert_equal_except(pool: &PgPool, schema: &str, db: &Path, skipped: &[&str]) -> usize {
    let (mut diffs, n) = mirror_diff(pool, schema, db).await;
    diffs.retain(|d| !d.starts_with("rowid_col: "));
    let missing: BTreeSet<&str> = diffs
        .iter()
        .filter(|d| d.contains(": cannot read mirror: ") && d.contains("does not exist"))
        .map(|d| d.split(": cannot read mirror").next().unwrap())
        .collect();
    let other: Vec<&String> = diffs.iter().filter(|d| !d.contains(": cannot read mirror: ")).collect();
    assert!(other.is_empty(), "{} differences: {other:#?}", other.len());
    let want: BTreeSet<&str> = skipped.iter().copied().collect();
    assert_eq!(missing, want, "tables missing from the mirror");
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_shape_and_name_is_mirrored() {
    let env = TestEnv::new("keys_shapes").await;
    let db = env.path("shapes.db");
    let c = Connection::open(&db).unwrap();
    fill(&c);
    let spec = "  tables:\n    include: [\"*\"]\n    exclude: [\"tmp_*\", \"*_cache\"]\n";
    let m = env.manifest("shapes", &db, spec);
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    let out = ok(&env.ctl(&["sync", "shapes", "--once"]));
    let pool = env.sync_pool().await;
    let n = assert_equal_except(&pool, "client_shapes", &db, SKIPPED).await;
    assert!(n > 9000, "compared {n} rows\n{out}");

    let want: BTreeSet<String> = [
        "no_pk",
        "composite",
        "wr",
        "wr_one",
        "ipk",
        "gen",
        "user",
        "group",
        "select",
        "we\"ird name",
        "MixedCase",
        "rowid_col",
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .collect();
    assert_eq!(mirrored_tables(&pool, "client_shapes").await, want);

    // mirror_diff leaves generated columns out (table_info hides them): check them here.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM client_shapes.gen WHERE b IS DISTINCT FROM a * 2 OR c IS DISTINCT FROM 'x' || a",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(bad, 0, "generated column values differ");
    // The mirror keys rowid tables by the real rowid, not a column named rowid.
    let rid: Vec<i64> = sqlx::query_scalar("SELECT _owsync_rowid FROM client_shapes.rowid_col ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rid, vec![1, 2]);

    // A second round of changes on every shape: updates, deletes, inserts.
    c.execute_batch(
        r#"
        UPDATE no_pk SET b = b + 10 WHERE rowid % 7 = 0;
        DELETE FROM no_pk WHERE rowid % 11 = 0;
        INSERT INTO no_pk VALUES ('late', 99);
        DELETE FROM composite WHERE b = 3;
        UPDATE composite SET c = 'changed' WHERE a = 'a7';
        DELETE FROM wr WHERE a = 'k3' AND b > 2000;
        UPDATE wr SET v = x'00ff' WHERE b % 97 = 0;
        DELETE FROM ipk WHERE id = 0;
        UPDATE gen SET a = a + 1 WHERE id % 5 = 0;
        UPDATE "we""ird name" SET "sp ace" = 'set' WHERE "col""q" = 'k''2';
        DELETE FROM "select" WHERE "from" IS NULL;
        "#,
    )
    .unwrap();
    drop(c);
    ok(&env.ctl(&["sync", "shapes", "--once"]));
    assert_equal_except(&pool, "client_shapes", &db, SKIPPED).await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM client_shapes.wr WHERE _owsync_deleted")
        .fetch_one(&pool)
        .await
        .unwrap();
    let conn = Connection::open(&db).unwrap();
    let live: i64 = conn.query_row("SELECT count(*) FROM wr", [], |r| r.get(0)).unwrap();
    assert_eq!(dead, 4500 - live);
    check_rowid_col(&pool, &db).await;
}

/// A PK-less table with a column named `rowid`: the mirror is keyed by the real rowid
/// (`_rowid_`) and keeps the column's own values.
async fn check_rowid_col(pool: &PgPool, db: &Path) {
    let conn = Connection::open(db).unwrap();
    let mut st = conn.prepare("SELECT _rowid_, rowid, v FROM rowid_col ORDER BY 1").unwrap();
    let src: Vec<(i64, String, i64)> =
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
    let pg: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT _owsync_rowid, rowid, v FROM client_shapes.rowid_col WHERE NOT _owsync_deleted ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(pg, src);
}

/// A real table whose name merely ends like a shadow table (`_data`, `_node`, ...)
/// next to a virtual table of that prefix is user data and must be mirrored.
#[tokio::test(flavor = "multi_thread")]
async fn table_named_like_a_shadow_table_is_mirrored() {
    let env = TestEnv::new("keys_shadowlike").await;
    let db = env.path("shadowlike.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE VIRTUAL TABLE geo USING rtree(id, x0, x1);
         INSERT INTO geo VALUES (1, 0.0, 1.0);
         CREATE TABLE geo_data (id INTEGER PRIMARY KEY, label TEXT);
         INSERT INTO geo_data VALUES (1, 'kept');
         CREATE TABLE geo_stat (k TEXT PRIMARY KEY, n INTEGER);
         INSERT INTO geo_stat VALUES ('a', 1);",
    )
    .unwrap();
    drop(c);
    let m = env.manifest("shadowlike", &db, "");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    ok(&env.ctl(&["sync", "shadowlike", "--once"]));
    let pool = env.sync_pool().await;
    assert_equal_except(&pool, "client_shadowlike", &db, &["geo", "geo_node", "geo_parent", "geo_rowid"]).await;
}

/// SQLite lets the primary key of a rowid table hold NULL, even twice; a PostgreSQL key
/// cannot. Like any key value the mirror cannot hold, the row is left out and its key
/// quarantined, named by its rowid (the NULL names nothing); the other rows sync.
#[tokio::test(flavor = "multi_thread")]
async fn null_in_a_rowid_tables_primary_key_is_quarantined_by_rowid() {
    let env = TestEnv::new("keys_nullpk").await;
    let db = env.path("nullpk.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE nullpk (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b));
         INSERT INTO nullpk VALUES ('k', 1, 'fine'), (NULL, 2, 'x'), (NULL, 2, 'y');
         CREATE TABLE fine (id TEXT PRIMARY KEY);
         INSERT INTO fine VALUES ('f');",
    )
    .unwrap();
    drop(c);
    let m = env.manifest("nullpk", &db, "");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    ok(&env.ctl(&["sync", "nullpk", "--once"]));
    let pool = env.sync_pool().await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.current_host_id', 'test-host', true)").execute(&mut *tx).await.unwrap();
    let open: Vec<(String, String)> = sqlx::query_as(
        "SELECT row_key, column_name FROM sync_metadata.quarantine
         WHERE client_name = 'nullpk' AND table_name = 'nullpk' AND resolved_at IS NULL ORDER BY row_key",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(open.len(), 2, "{open:?}");
    assert!(open[0].0.contains("rowid 2") && open[1].0.contains("rowid 3"), "{open:?}");
    assert!(open.iter().all(|o| o.1 == "a"), "{open:?}");
    // (mirror_diff keys source rows by their key, so the two NULL-key rows count as one.)
    let (diffs, _) = mirror_diff(&pool, "client_nullpk", &db).await;
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    assert!(diffs[0].starts_with("nullpk: ") && diffs[0].ends_with(", 1 live rows in mirror"), "{diffs:#?}");
}

/// Changing `tables` in the spec takes effect on the next sync even when the source file
/// has not changed since the last one.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_table_selection_applies_to_an_unchanged_source() {
    let env = TestEnv::new("keys_reselect").await;
    let db = env.path("reselect.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE keep (id TEXT PRIMARY KEY); INSERT INTO keep VALUES ('k');
         CREATE TABLE tmp_x (id TEXT PRIMARY KEY); INSERT INTO tmp_x VALUES ('t');",
    )
    .unwrap();
    drop(c);
    let m = env.manifest("reselect", &db, "  tables:\n    exclude: [\"tmp_*\"]\n");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    ok(&env.ctl(&["sync", "reselect", "--once"]));
    let pool = env.sync_pool().await;
    assert_equal_except(&pool, "client_reselect", &db, &["tmp_x"]).await;
    let m = env.manifest("reselect", &db, "");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    ok(&env.ctl(&["sync", "reselect", "--once"]));
    assert_equal_except(&pool, "client_reselect", &db, &[]).await;
}
