//! `owsyncctl restore NAME --to FILE` rebuilds the tenant's SQLite database from the
//! mirror; Debian's `sqldiff` finds no difference with the source (rows matched by
//! primary key: rowids are not identities in Open WebUI, a VACUUM renumbers them).

mod common;

use std::process::Command;

use common::{TestEnv, gen_db, ok};
use owsync::fixtures::{JournalMode, SchemaFlavor};

fn sqldiff(a: &std::path::Path, b: &std::path::Path) -> String {
    let out = Command::new("sqldiff")
        .args(["--primarykey", a.to_str().unwrap(), b.to_str().unwrap()])
        .output()
        .expect("sqldiff (Debian package sqlite3-tools; scripts/test.sh installs it)");
    assert!(out.status.success(), "sqldiff failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn round_trip(flavor: SchemaFlavor, journal: JournalMode, prefix: &str) {
    let env = TestEnv::new(prefix).await;
    let db = env.path("webui.db");
    gen_db(&db, 6, 4, 21, flavor, journal);
    // A trigger of the source's comes back, and does not fire on the restored rows
    // (if it did, every restored chat's title would read 'fired' and sqldiff would say so).
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER restore_test_marks AFTER INSERT ON chat BEGIN \
             UPDATE chat SET title = 'fired' WHERE id = NEW.id; END",
        )
        .unwrap();
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    // Deletes in the source become tombstones in the mirror, and stay out of a restore.
    let opts = owsync::fixtures::MutateOptions { ops: 80, seed: 3, ..Default::default() };
    owsync::fixtures::mutate(&db, &opts).unwrap();
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let restored = env.path("restored.db");
    let out = ok(&env.ctl(&["restore", "acme", "--to", restored.to_str().unwrap()]));
    assert!(out.contains("clientsync/acme restored to"), "{out}");
    let diff = sqldiff(&db, &restored);
    assert!(diff.is_empty(), "sqldiff found differences:\n{}", &diff[..diff.len().min(3000)]);
    // Same schema, indexes included.
    let schema = |p: &std::path::Path| -> Vec<String> {
        let c = rusqlite::Connection::open(p).unwrap();
        let mut st =
            c.prepare("SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_schema ORDER BY 1").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(schema(&db), schema(&restored));
    // Refuses to overwrite.
    let out = env.ctl(&["restore", "acme", "--to", restored.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::stderr(&out).contains("already exists"), "{}", common::stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_of_a_fresh_database_equals_the_source() {
    round_trip(SchemaFlavor::Fresh, JournalMode::Wal, "restore_fresh").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_of_a_legacy_database_equals_the_source() {
    round_trip(SchemaFlavor::Legacy, JournalMode::Delete, "restore_legacy").await;
}
