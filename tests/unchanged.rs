//! An unchanged source costs about nothing: the file's fingerprint matches the one the
//! last complete sync recorded, so no table is read; any commit makes it sync again.

mod common;

use std::time::Instant;

use common::compare::mirror_diff;
use common::{TestEnv, ok, small_db};
use owsync::sync::{SyncJob, sync_tenant};

#[tokio::test(flavor = "multi_thread")]
async fn unchanged_source_is_skipped_and_any_change_is_not() {
    let env = TestEnv::new("unchanged").await;
    let db = env.path("webui.db");
    small_db(&db, 8);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    let first = ok(&env.ctl(&["sync", "acme", "--once"]));
    assert!(first.contains("clientsync/acme synced"), "{first}");
    let again = ok(&env.ctl(&["sync", "acme", "--once"]));
    assert!(again.contains("source unchanged"), "{again}");
    let full = ok(&env.ctl(&["sync", "acme", "--once", "--full"]));
    assert!(full.contains("clientsync/acme synced"), "{full}");

    // In-process, as the daemon runs it: time the unchanged cycle.
    let pool = env.sync_pool().await;
    let spec = owsync::store::specs::get(&pool, &env.cluster, "acme").await.unwrap().spec;
    let job = SyncJob {
        pool: &pool,
        cluster: &env.cluster,
        client: "acme",
        spec: &spec,
        fence: None,
        options: Default::default(),
    };
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let r = sync_tenant(&job).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(r.unchanged);
        assert!(r.tables.get("chat").is_some_and(|t| t.rows > 0), "row counts come from table_state");
    }
    times.sort_by(f64::total_cmp);
    println!("unchanged cycle: median {:.2} ms, max {:.2} ms", times[10], times[19]);

    // A one-row update in place (same size) is seen.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute("UPDATE chat SET pinned = 1 - pinned WHERE id = (SELECT min(id) FROM chat)", []).unwrap();
    drop(c);
    let r = sync_tenant(&job).await.unwrap();
    assert!(!r.unchanged);
    assert_eq!(r.tables["chat"].upserted, 1, "{r:?}");
    let (diffs, _) = mirror_diff(&pool, "client_acme", &db).await;
    assert!(diffs.is_empty(), "{diffs:#?}");
}
