//! The connection budget (`owsyncd --max-connections`), measured in `pg_stat_activity`:
//! a leader and standby pair with the default budget never holds more than 6 sessions
//! while several tenants sync at once, and 2 once idle; a budget smaller than the
//! requested concurrency makes tenants wait for a connection, and every one of them
//! still reaches Synced without a failed run. Run with `--nocapture` for the figures.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::daemon::{Daemon, eventually};
use common::{TestEnv, gen_db, ok};
use owsync::fixtures::{JournalMode, SchemaFlavor};
use sqlx::PgPool;

const UP: Duration = Duration::from_secs(20);

/// owsyncd sessions on this test's database: (all, those of `node`).
async fn sessions(admin: &PgPool, node: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE application_name LIKE '%/' || $1)
         FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'owsyncd/%'",
    )
    .bind(node)
    .fetch_one(admin)
    .await
    .expect("count sessions")
}

/// Samples the sessions every 20 ms until `stop`; the highest counts seen (all, `node`'s).
fn sample(admin: PgPool, node: &'static str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(i64, i64, usize)> {
    tokio::spawn(async move {
        let (mut peak, mut peak_node, mut n) = (0, 0, 0);
        while !stop.load(Ordering::Relaxed) {
            let (all, of_node) = sessions(&admin, node).await;
            (peak, peak_node, n) = (peak.max(all), peak_node.max(of_node), n + 1);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (peak, peak_node, n)
    })
}

/// Applies `n` tenants (interval 60m: after their first sync they stay idle).
fn tenants(env: &TestEnv, n: usize, users: u32) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let db = env.path(&format!("{name}.db"));
        gen_db(&db, users, 20, 900 + i as u64, SchemaFlavor::Fresh, JournalMode::Wal);
        let m = env.manifest(name, &db, "");
        std::fs::write(&m, std::fs::read_to_string(&m).unwrap().replace("interval: 10s", "interval: 60m")).unwrap();
        ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    }
    names
}

fn wait_synced(env: &TestEnv, names: &[String]) {
    for name in names {
        let target = format!("client/{name}");
        ok(&env.ctl(&["wait", &target, "--for", "condition=Synced", "--timeout", "180s"]));
    }
}

async fn failed_runs(admin: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM sync_metadata.sync_jobs WHERE status <> 'succeeded' AND status <> 'running'",
    )
    .fetch_one(admin)
    .await
    .expect("count failed runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pair_with_the_default_budget_stays_within_six_sessions_and_two_when_idle() {
    let env = TestEnv::new("budget_pair").await;
    let admin = env.admin_pool().await;
    let a = Daemon::start(&env, "node-a", &[]);
    a.wait_up(UP).await;
    let ar = &a;
    eventually(UP, "node-a leads", || async move { ar.is_leader().await.then_some(()) }).await;
    let b = Daemon::start(&env, "node-b", &[]);
    b.wait_up(UP).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(admin.clone(), "node-a", stop.clone());
    let names = tenants(&env, 6, 60);
    wait_synced(&env, &names);
    stop.store(true, Ordering::Relaxed);
    let (peak, leader_peak, samples) = sampler.await.unwrap();
    println!("FIGURE budget: pair peak {peak} sessions (leader {leader_peak}) over {samples} samples, 6 tenants");
    assert!(peak <= 6, "the pair held {peak} sessions at once (budget: 6)");
    assert!(leader_peak <= 4, "the leader held {leader_peak} sessions at once (--max-connections 4)");
    assert!(leader_peak >= 3, "the leader never used its pool ({leader_peak} sessions at most): nothing was measured");
    assert_eq!(failed_runs(&admin).await, 0, "a sync failed");

    // Idle: the pool's connections close after 5 s unused; each replica keeps its control
    // session only.
    let admin_r = &admin;
    eventually(Duration::from_secs(30), "the pair back to 2 sessions", || async move {
        (sessions(admin_r, "node-a").await.0 <= 2).then_some(())
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(admin.clone(), "node-a", stop.clone());
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    let (idle, leader_idle, samples) = sampler.await.unwrap();
    println!("FIGURE budget: pair idle {idle} sessions (leader {leader_idle}) over {samples} samples");
    assert!(idle <= 2, "an idle pair held {idle} sessions");
    assert_eq!(sessions(&admin, "node-b").await.1, 1, "the standby's sessions");
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_smaller_than_the_concurrency_makes_tenants_wait_not_fail() {
    let env = TestEnv::new("budget_small").await;
    let admin = env.admin_pool().await;
    let flags = ["--max-connections", "3", "--max-concurrency", "8", "--table-connections", "2"];
    let a = Daemon::start(&env, "node-a", &flags);
    a.wait_up(UP).await;
    let ar = &a;
    eventually(UP, "node-a leads", || async move { ar.is_leader().await.then_some(()) }).await;
    assert!(a.log_text().contains("sync_connections=1 max_concurrency=1 table_connections=1"), "{}", a.log_text());

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(admin.clone(), "node-a", stop.clone());
    let names = tenants(&env, 8, 40);
    wait_synced(&env, &names);
    stop.store(true, Ordering::Relaxed);
    let (peak, _, samples) = sampler.await.unwrap();
    println!("FIGURE budget: --max-connections 3 peak {peak} sessions over {samples} samples, 8 tenants");
    assert!(peak <= 3, "a budget of 3 held {peak} sessions at once");
    assert_eq!(failed_runs(&admin).await, 0, "a tenant failed instead of waiting for a connection");
}
