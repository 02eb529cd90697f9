//! Sync-request claims are fenced: only the replica holding the lease at its epoch
//! claims requests; a deposed leader (expired lease, or another holder at a greater
//! epoch) claims nothing, and the requests stay open for the current leader.

mod common;

use std::time::Duration;

use common::TestEnv;
use owsync::store::lease::{Candidate, try_acquire};
use owsync::store::requests;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

fn candidate(env: &TestEnv, node: &str) -> Candidate {
    Candidate { cluster: env.cluster.clone(), node_id: node.into(), instance: uuid::Uuid::new_v4() }
}

async fn open_requests(env: &TestEnv) -> i64 {
    let admin = env.admin_pool().await;
    sqlx::query_scalar("SELECT count(*) FROM sync_metadata.sync_requests WHERE claimed_at IS NULL")
        .fetch_one(&admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_current_leader_at_its_epoch_claims_requests() {
    let env = TestEnv::new("claims").await;
    let pool = env.sync_pool().await;
    let a = candidate(&env, "node-a");
    let b = candidate(&env, "node-b");

    // A leads with a short lease and claims while it holds it.
    let mut a_conn = PgConnection::connect(&env.sync_url).await.unwrap();
    let a_epoch = try_acquire(&mut a_conn, &a, Duration::from_secs(1), None).await.unwrap().expect("A leads").epoch;
    let first = requests::file(&pool, &env.cluster, "t1", "test").await.unwrap();
    let got = requests::claim(&pool, &a, a_epoch).await.unwrap();
    assert_eq!(got, vec![(first, "t1".to_string())]);

    // B is no leader: it claims nothing, not even with A's epoch.
    requests::file(&pool, &env.cluster, "t2", "test").await.unwrap();
    assert!(requests::claim(&pool, &b, a_epoch).await.unwrap().is_empty());
    assert!(requests::claim(&pool, &b, a_epoch + 1).await.unwrap().is_empty());
    // A with a wrong epoch claims nothing either.
    assert!(requests::claim(&pool, &a, a_epoch + 1).await.unwrap().is_empty());
    assert_eq!(open_requests(&env).await, 1);

    // A's lease expires without renewal: A (frozen, deposed) claims nothing.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(requests::claim(&pool, &a, a_epoch).await.unwrap().is_empty(), "an expired lease must not claim");
    assert_eq!(open_requests(&env).await, 1);

    // B takes over at a greater epoch and claims what A left open.
    let mut b_conn = PgConnection::connect(&env.sync_url).await.unwrap();
    let b_epoch = try_acquire(&mut b_conn, &b, Duration::from_secs(30), None).await.unwrap().expect("B leads").epoch;
    assert!(b_epoch > a_epoch);
    let got = requests::claim(&pool, &b, b_epoch).await.unwrap();
    assert_eq!(got.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["t2"]);

    // A comes back (as after SIGCONT) and tries again with its old epoch: nothing.
    requests::file(&pool, &env.cluster, "t3", "test").await.unwrap();
    assert!(requests::claim(&pool, &a, a_epoch).await.unwrap().is_empty());
    assert_eq!(open_requests(&env).await, 1, "the deposed leader left the request open");
    assert_eq!(requests::claim(&pool, &b, b_epoch).await.unwrap().len(), 1);
    assert_eq!(open_requests(&env).await, 0);
    drop(a_conn);
    drop(b_conn);
}

/// A takeover that comes while the leader's claim is in flight waits for it (the claim
/// holds the lease row's share lock until it commits), so the claim and the takeover
/// never interleave: either the claim committed under the old term, or it claims nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_racing_a_takeover_is_all_or_nothing() {
    let env = TestEnv::new("claims_race").await;
    let pool = env.sync_pool().await;
    let a = candidate(&env, "node-a");
    let b = candidate(&env, "node-b");
    let mut a_conn = PgConnection::connect(&env.sync_url).await.unwrap();
    let a_epoch = try_acquire(&mut a_conn, &a, Duration::from_secs(30), None).await.unwrap().expect("A leads").epoch;
    for i in 0..20 {
        requests::file(&pool, &env.cluster, &format!("t{i}"), "test").await.unwrap();
    }
    // A's lease session goes away (a crashed leader): B may take over at once.
    a_conn.close().await.unwrap();
    let mut b_conn = PgConnection::connect(&env.sync_url).await.unwrap();
    let (a_claim, b_take) =
        tokio::join!(requests::claim(&pool, &a, a_epoch), try_acquire(&mut b_conn, &b, Duration::from_secs(30), None));
    let a_claimed = a_claim.unwrap();
    let b_epoch = b_take.unwrap().expect("B takes over").epoch;
    assert!(a_claimed.is_empty() || a_claimed.len() == 20, "all or nothing: {}", a_claimed.len());
    let b_claimed = requests::claim(&pool, &b, b_epoch).await.unwrap();
    assert_eq!(a_claimed.len() + b_claimed.len(), 20, "every request claimed exactly once");
    assert!(requests::claim(&pool, &a, a_epoch).await.unwrap().is_empty());
}
