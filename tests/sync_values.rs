//! Nothing lost: every value SQLite can hold in a typed column arrives unchanged, and a
//! value PostgreSQL cannot hold goes to `sync_metadata.quarantine` under its table, row
//! key and column (NULL in the mirror, the row left out when the value is in its key),
//! while everything else, in its table and in the others, still syncs.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::compare::mirror_diff;
use common::{TestEnv, ok, stderr, stdout};
use rusqlite::Connection;
use rusqlite::types::Value as Sql;
use sqlx::PgPool;

/// `vals` has a NUMERIC column, so its rows go through COPY text; `vals_bin` has the same
/// columns but that one, so its rows go through COPY binary (`target::copy`).
const VALUES_DDL: &str = "CREATE TABLE vals (id INTEGER PRIMARY KEY, i INTEGER, r REAL,
    t TEXT, b BLOB, j JSON, f BOOLEAN, n NUMERIC);
    CREATE TABLE vals_bin (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, j JSON, f BOOLEAN)";

fn int(i: i64) -> Sql {
    Sql::Integer(i)
}
fn real(f: f64) -> Sql {
    Sql::Real(f)
}
fn text(s: &str) -> Sql {
    Sql::Text(s.to_string())
}

/// One row per line: `i, r, t, b, j, f, n`. SQLite's affinities decide what is kept:
/// a REAL column stores an integral double as an integer on disk, so `-0.0` reads back
/// as `0.0` (the mirror must then hold `0`); JSON and BOOLEAN have NUMERIC affinity, so
/// an integer bound to a JSON column stays an integer.
fn value_rows() -> Vec<[Sql; 7]> {
    use Sql::Null;
    let all_bytes: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 256) as u8).collect();
    let escapes = "tab\there\nnewline\rcr\r\nCRLF back\\slash \\N \\. \\\\ end\\";
    let long: String = escapes.repeat(20_000);
    vec![
        [int(i64::MIN), real(-0.0), text(""), Sql::Blob(vec![]), text(r#"{"b":1,  "a" : [1,2]}"#), int(0), int(0)],
        [int(i64::MAX), real(f64::INFINITY), Null, Null, Null, int(1), real(1.5)],
        [
            int(0),
            real(f64::NEG_INFINITY),
            text(escapes),
            Sql::Blob(vec![0]),
            text("  {\"z\":null,\n\t\"a\":\"ü😀𝄞\",\"a\":2}  "),
            Null,
            int(-12_345_678_901_234),
        ],
        [int(-1), real(1e308), text("\\N"), Sql::Blob(b"\\N".to_vec()), int(42), Null, real(1e308)],
        [Null, real(5e-324), text("\\."), Sql::Blob(all_bytes), real(3.25), int(0), real(5e-324)],
        [
            int(1),
            real(0.1),
            text(r#""double" 'single' "" '' `"#),
            Sql::Blob(b"\t\n\r\\".to_vec()),
            text(r#""a string""#),
            int(1),
            int(i64::MIN),
        ],
        [
            int(2),
            real(f64::MAX),
            text("emoji 😀 clef 𝄞 family 👩‍👩‍👧 ZWJ, BOM \u{feff}, DEL \u{7f}, ctl \u{1}"),
            Null,
            text("null"),
            Null,
            real(-1e-300),
        ],
        [
            int(3),
            real(-f64::MAX),
            text(&long),
            Null,
            text("[1e400, 12345678901234567890123, -0, 1E-7]"),
            Null,
            real(0.1),
        ],
        [int(4), real(f64::MIN_POSITIVE), text("\\"), Null, text("\"\\ud83d\\ude00 \\u0000 \\\"\""), Null, Null],
        [int(5), real(9007199254740993.0), text(" "), Null, text("[]"), Null, real(-2.5e-5)],
        [int(6), real(1.0 / 3.0), text("\u{10FFFF}"), Null, text("{}"), Null, Null],
    ]
}

fn assert_no_diffs(diffs: &[String]) {
    assert!(diffs.is_empty(), "{} differences, first: {:#?}", diffs.len(), &diffs[..diffs.len().min(10)]);
}

fn sync_new(env: &TestEnv, name: &str, db: &Path) -> std::process::Output {
    let m = env.manifest(name, db, "");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    env.ctl(&["sync", name, "--once"])
}

#[tokio::test(flavor = "multi_thread")]
async fn every_representable_value_round_trips() {
    let env = TestEnv::new("values_exact").await;
    let db = env.path("values.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(VALUES_DDL).unwrap();
    for row in value_rows() {
        c.execute(
            "INSERT INTO vals (i, r, t, b, j, f, n) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params_from_iter(row.iter()),
        )
        .unwrap();
        c.execute(
            "INSERT INTO vals_bin (i, r, t, b, j, f) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params_from_iter(row[..6].iter()),
        )
        .unwrap();
    }
    // What SQLite kept (its affinities decide), so the test sees what it tests.
    let classes: String = c
        .query_row("SELECT group_concat(typeof(r) || '/' || typeof(j) || '/' || typeof(n), ' ') FROM vals", [], |r| {
            r.get(0)
        })
        .unwrap();
    println!("r/j/n storage classes: {classes}");
    drop(c);
    let out = ok(&sync_new(&env, "vals", &db));
    let pool = env.sync_pool().await;
    let (diffs, n) = mirror_diff(&pool, "client_vals", &db).await;
    assert_no_diffs(&diffs);
    assert_eq!(n, 2 * value_rows().len(), "{out}");

    // The same again: an unchanged table is not rewritten (json has no `=`; -0 = 0).
    let out = ok(&env.ctl(&["sync", "vals", "--once"]));
    let skipped = out.contains(": source unchanged since the last complete sync");
    assert!(skipped || out.contains(" 0 rows written"), "{out}");
    let types: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = 'client_vals' AND table_name = 'vals' ORDER BY ordinal_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let want = [
        ("id", "bigint"),
        ("i", "bigint"),
        ("r", "double precision"),
        ("t", "text"),
        ("b", "bytea"),
        ("j", "json"),
        ("f", "boolean"),
        ("n", "numeric"),
    ];
    for (col, ty) in want {
        assert!(types.contains(&(col.into(), ty.into())), "{col} {ty}: {types:?}");
    }
}

/// Tables of rows PostgreSQL cannot hold as they are, one kind per table, each with
/// one good row first.
const UNFIT_DDL: &str = "
    CREATE TABLE good_one (id TEXT PRIMARY KEY, v TEXT);
    CREATE TABLE good_two (v TEXT, w INTEGER);
    CREATE TABLE bad_nul (id TEXT PRIMARY KEY, t TEXT);
    CREATE TABLE bad_utf8 (id TEXT PRIMARY KEY, t TEXT);
    CREATE TABLE bad_int (id TEXT PRIMARY KEY, n INTEGER);
    CREATE TABLE bad_json (id TEXT PRIMARY KEY, j JSON);
    CREATE TABLE bad_rowid (t TEXT);
    CREATE TABLE bad_composite (a TEXT, b INTEGER, j JSON, PRIMARY KEY (a, b));
    INSERT INTO good_one VALUES ('g1', 'one'), ('g2', 'two');
    INSERT INTO good_two VALUES ('x', 1), ('y', 2);
    INSERT INTO bad_nul VALUES ('ok', 'fine');
    INSERT INTO bad_utf8 VALUES ('ok', 'fine'), ('k-utf8', CAST(x'61ff62' AS TEXT));
    INSERT INTO bad_int VALUES ('ok', 1), ('k-int', 'not a number');
    INSERT INTO bad_json VALUES ('ok', '{}'), ('k-json', '{\"a\":');
    INSERT INTO bad_rowid VALUES ('fine'), (CAST(x'ff' AS TEXT));
    INSERT INTO bad_composite VALUES ('ka', 1, '[]'), ('ka', 2, 'nope');
";

/// Open quarantine entries of a tenant: `(table, row key, column, storage class)`.
async fn open_quarantine(pool: &PgPool, client: &str) -> BTreeSet<(String, String, String, String)> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.current_host_id', 'test-host', true)").execute(&mut *tx).await.unwrap();
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name, row_key, column_name, storage_class FROM sync_metadata.quarantine
         WHERE client_name = $1 AND resolved_at IS NULL",
    )
    .bind(client)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    rows.into_iter().collect()
}

fn q(table: &str, key: &str, column: &str, class: &str) -> (String, String, String, String) {
    (table.into(), key.into(), column.into(), class.into())
}

/// The mirror equals the source except for the quarantined cells, which are NULL there:
/// mirror_diff reports exactly one difference per open entry (`table[key].column`).
async fn equal_but_quarantined(
    pool: &PgPool,
    schema: &str,
    db: &Path,
    open: &BTreeSet<(String, String, String, String)>,
) {
    let (diffs, _) = mirror_diff(pool, schema, db).await;
    let cells: BTreeSet<(String, String)> = open.iter().map(|e| (e.0.clone(), e.2.clone())).collect();
    let unexpected: Vec<&String> = diffs
        .iter()
        .filter(|d| {
            !cells.iter().any(|(t, c)| d.starts_with(&format!("{t}[")) && d.contains(&format!("].{c}: source ")))
                || !d.contains("!= mirror None")
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    assert_eq!(diffs.len(), open.len(), "{diffs:#?}");
}

async fn live_rows(pool: &PgPool, table: &str) -> Vec<(String, Option<String>)> {
    let sql = format!("SELECT id, v FROM client_unfit.\"{table}\" WHERE NOT _owsync_deleted ORDER BY id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn unfit_values_are_quarantined_and_everything_else_syncs() {
    let env = TestEnv::new("values_unfit").await;
    let db = env.path("unfit.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(UNFIT_DDL).unwrap();
    c.execute("INSERT INTO bad_nul VALUES ('k-nul', ?1)", ["a\0b"]).unwrap();
    let o = sync_new(&env, "unfit", &db);
    assert!(o.status.success(), "stdout: {}\nstderr: {}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("clientsync/unfit synced: 8 tables"), "{}", stdout(&o));

    let pool = env.sync_pool().await;
    let mut want: BTreeSet<_> = [
        q("bad_nul", "k-nul", "t", "text"),
        q("bad_utf8", "k-utf8", "t", "text"),
        q("bad_int", "k-int", "n", "text"),
        q("bad_json", "k-json", "j", "text"),
        q("bad_rowid", "rowid 2", "t", "text"),
        // a composite key names each part by its value
        q("bad_composite", "ka, 2", "j", "text"),
    ]
    .into_iter()
    .collect();
    assert_eq!(open_quarantine(&pool, "unfit").await, want);
    equal_but_quarantined(&pool, "client_unfit", &db, &want).await;

    // Fixing the source resolves its entry on the next sync.
    c.execute("UPDATE bad_nul SET t = 'a b' WHERE id = 'k-nul'", []).unwrap();
    ok(&env.ctl(&["sync", "unfit", "--once"]));
    want.remove(&q("bad_nul", "k-nul", "t", "text"));
    assert_eq!(open_quarantine(&pool, "unfit").await, want);
    equal_but_quarantined(&pool, "client_unfit", &db, &want).await;

    // An unfit value arriving in a table that synced before holds back nothing else:
    // the insert, update and delete beside it reach the mirror.
    c.execute_batch("INSERT INTO good_one VALUES ('g3', 'three'); UPDATE good_one SET v = 'TWO' WHERE id = 'g2';")
        .unwrap();
    c.execute("INSERT INTO good_one VALUES ('g4', ?1)", ["nul\0"]).unwrap();
    c.execute("DELETE FROM good_one WHERE id = 'g1'", []).unwrap();
    ok(&env.ctl(&["sync", "unfit", "--once"]));
    want.insert(q("good_one", "g4", "v", "text"));
    assert_eq!(open_quarantine(&pool, "unfit").await, want);
    equal_but_quarantined(&pool, "client_unfit", &db, &want).await;
    let live = live_rows(&pool, "good_one").await;
    let rows = |v: &[(&str, Option<&str>)]| -> Vec<(String, Option<String>)> {
        v.iter().map(|(a, b)| (a.to_string(), b.map(str::to_string))).collect()
    };
    assert_eq!(live, rows(&[("g2", Some("TWO")), ("g3", Some("three")), ("g4", None)]));
}

/// Two rows whose keys differ only in bytes that are not UTF-8 are two quarantine
/// entries, not one overwriting the other; a key holding a NUL byte is quarantined too
/// (its name must not carry the NUL into PostgreSQL text).
#[tokio::test(flavor = "multi_thread")]
async fn distinct_unfit_keys_stay_distinct_in_the_quarantine() {
    let env = TestEnv::new("values_keys").await;
    let db = env.path("keys.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(
        "CREATE TABLE t (id TEXT PRIMARY KEY, v TEXT);
         INSERT INTO t VALUES (CAST(x'fe42' AS TEXT), 'one'), (CAST(x'ff42' AS TEXT), 'two'), ('fine', 'ok');",
    )
    .unwrap();
    c.execute("INSERT INTO t VALUES (?1, 'three')", ["nul\0key"]).unwrap();
    let o = sync_new(&env, "keys", &db);
    assert!(o.status.success(), "{}", stderr(&o));
    let pool = env.sync_pool().await;
    let open = open_quarantine(&pool, "keys").await;
    assert_eq!(open.len(), 3, "{open:?}");
    assert!(open.iter().all(|e| e.0 == "t" && e.2 == "id"), "{open:?}");
}
