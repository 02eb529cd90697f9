//! After a sync, every value of every table in the mirror equals the SQLite source.

mod common;

use common::compare::mirror_diff;
use common::{TestEnv, gen_db, ok};
use owsync::fixtures::{JournalMode, SchemaFlavor};

#[tokio::test(flavor = "multi_thread")]
async fn fresh_wal_database_mirrors_exactly() {
    let env = TestEnv::new("mirror_fresh").await;
    let db = env.path("webui.db");
    gen_db(&db, 8, 5, 7, SchemaFlavor::Fresh, JournalMode::Wal);
    let m = env.manifest("acme", &db, "");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    let out = ok(&env.ctl(&["sync", "acme", "--once"]));
    assert!(out.contains("clientsync/acme synced"), "{out}");
    let pool = env.sync_pool().await;
    let (diffs, n) = mirror_diff(&pool, "client_acme", &db).await;
    assert!(
        diffs.is_empty(),
        "{} differences, first: {:#?}",
        diffs.len(),
        &diffs[..diffs.len().min(10)]
    );
    assert!(n > 300, "compared only {n} rows");
}
