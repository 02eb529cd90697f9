//! `owsyncctl trigger NAME` files a durable request that the leader runs at once.

mod common;

use std::time::{Duration, Instant};

use common::compare::mirror_diff;
use common::daemon::{Daemon, eventually};
use common::{TestEnv, ok, small_db};

async fn jobs(env: &TestEnv, pool: &sqlx::PgPool) -> i64 {
    let _ = env;
    sqlx::query_scalar("SELECT count(*) FROM sync_metadata.sync_jobs WHERE status = 'succeeded'")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_runs_a_sync_now() {
    let env = TestEnv::new("trigger").await;
    let db = env.path("webui.db");
    small_db(&db, 3);
    let m = env.manifest("tenant", &db, "");
    let text = std::fs::read_to_string(&m).unwrap().replace("interval: 10s", "interval: 60m");
    std::fs::write(&m, text).unwrap();
    ok(&env.ctl(&["apply", "-f", env.path("tenant.yaml").to_str().unwrap()]));
    let d = Daemon::start(&env, "node-a", &[]);
    d.wait_up(Duration::from_secs(20)).await;
    let admin = env.admin_pool().await;
    let out = ok(&env.ctl(&["wait", "client/tenant", "--for", "condition=Synced", "--timeout", "30s"]));
    assert!(out.contains("condition met"), "{out}");
    assert!(jobs(&env, &admin).await >= 1);
    let out = ok(&env.ctl(&["wait", "client/tenant", "--for", "condition=Ready=True", "--timeout", "5s"]));
    assert!(out.contains("condition met"), "{out}");
    let out = env.ctl(&["wait", "client/tenant", "--for", "condition=Stalled=True", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    let status = ok(&env.ctl(&["cluster", "status"]));
    assert!(status.contains("Leader:  node-a (epoch 1"), "{status}");
    assert!(status.lines().any(|l| l.contains("node-a") && l.contains("leader")), "{status}");

    let opts = owsync::fixtures::MutateOptions { ops: 40, seed: 9, ..Default::default() };
    owsync::fixtures::mutate(&db, &opts).unwrap();
    let t = Instant::now();
    let out = ok(&env.ctl(&["trigger", "tenant"]));
    assert!(out.contains("clientsync/tenant sync requested"), "{out}");
    eventually(Duration::from_secs(10), "the triggered sync", || async {
        (jobs(&env, &admin).await >= 2).then_some(())
    })
    .await;
    println!("trigger -> sync finished in {:.2}s", t.elapsed().as_secs_f64());
    assert!(t.elapsed() < Duration::from_secs(5), "trigger took {:?}; log:\n{}", t.elapsed(), d.log_text());
    let claimed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_metadata.sync_requests WHERE claimed_at IS NOT NULL")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(claimed, 1);
    let (diffs, _) = mirror_diff(&env.sync_pool().await, "client_tenant", &db).await;
    assert!(diffs.is_empty(), "{diffs:#?}");

    let out = env.ctl(&["trigger", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::stderr(&out).contains("clientsync/nope not found"), "{}", common::stderr(&out));
}
