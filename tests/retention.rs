//! History retention: `sync_jobs` (a row per sync run) and `events` do not grow forever.
//! The leader deletes finished runs and events older than `--history-retention` through
//! `sync_metadata.expire_history` (sync_service has no DELETE), for its own cluster only,
//! never runs still in progress, never with a retention under one hour.

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::{TestEnv, small_db};
use sqlx::PgPool;

/// Old and new rows of this cluster and an old row of another, written as admin.
async fn seed_history(admin: &PgPool, cluster: &str) {
    let jobs = [
        (cluster, "done", "9 days"),
        (cluster, "done", "8 days"),
        (cluster, "failed", "8 days"),
        (cluster, "running", "8 days"),
        (cluster, "done", "1 minute"),
        ("other-cluster", "done", "9 days"),
    ];
    for (c, status, age) in jobs {
        sqlx::query(
            "INSERT INTO sync_metadata.sync_jobs (id, cluster_name, client_name, leader_id, epoch, status, started_at)
             VALUES (gen_random_uuid(), $1, 'acme', 'n1', $4, $2, now() - $3::interval)",
        )
        // A run still in progress belongs to the current epoch (a new leader closes
        // those of earlier epochs as abandoned).
        .bind(c)
        .bind(status)
        .bind(age)
        .bind(if status == "running" { i64::MAX / 2 } else { 1 })
        .execute(admin)
        .await
        .unwrap();
    }
    for (c, age) in [(cluster, "9 days"), (cluster, "8 days"), (cluster, "1 minute"), ("other-cluster", "9 days")] {
        sqlx::query(
            "INSERT INTO sync_metadata.events (cluster_name, client_name, reason, message, created_at)
             VALUES ($1, 'acme', 'Synced', 'wrote 1 rows', now() - $2::interval)",
        )
        .bind(c)
        .bind(age)
        .execute(admin)
        .await
        .unwrap();
    }
}

/// This cluster's recent runs, the statuses of its runs older than a day, its events older
/// than a day, and the other cluster's rows.
async fn history(admin: &PgPool, cluster: &str) -> (i64, Vec<String>, i64, i64) {
    let runs: Vec<String> = sqlx::query_scalar(
        "SELECT status FROM sync_metadata.sync_jobs WHERE cluster_name = $1 AND started_at < now() - interval '1 day'
         ORDER BY status",
    )
    .bind(cluster)
    .fetch_all(admin)
    .await
    .unwrap();
    let recent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_metadata.sync_jobs WHERE cluster_name = $1 AND started_at > now() - interval '1 day'",
    )
    .bind(cluster)
    .fetch_one(admin)
    .await
    .unwrap();
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_metadata.events WHERE cluster_name = $1 AND created_at < now() - interval '1 day'",
    )
    .bind(cluster)
    .fetch_one(admin)
    .await
    .unwrap();
    let other: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM sync_metadata.sync_jobs WHERE cluster_name = 'other-cluster')
              + (SELECT count(*) FROM sync_metadata.events WHERE cluster_name = 'other-cluster')",
    )
    .fetch_one(admin)
    .await
    .unwrap();
    (recent, runs, events, other)
}

#[tokio::test(flavor = "multi_thread")]
async fn expire_history_deletes_only_old_finished_rows_of_the_callers_cluster() {
    let env = TestEnv::new("retention-fn").await;
    let admin = env.admin_pool().await;
    seed_history(&admin, &env.cluster).await;
    let sync = env.sync_pool().await;

    // Refusals: no cluster set, a retention under an hour.
    let e = sqlx::query("SELECT * FROM sync_metadata.expire_history(interval '7 days', 100)")
        .execute(&sync)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("app.current_host_id is not set"), "{e}");
    let e = owsync::store::jobs::expire_history(&sync, &env.cluster, Duration::from_secs(1800), 100).await.unwrap_err();
    assert!(e.to_string().contains("under one hour"), "{e}");
    // sync_service itself still cannot delete.
    let e = sqlx::query("DELETE FROM sync_metadata.sync_jobs").execute(&sync).await.unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");

    // Batches of 2: three old finished runs and two old events go over several calls.
    let week = Duration::from_secs(7 * 86400);
    let (runs, events) = owsync::store::jobs::expire_history(&sync, &env.cluster, week, 2).await.unwrap();
    assert_eq!((runs, events), (3, 2));
    let (recent, old, events, other) = history(&admin, &env.cluster).await;
    assert_eq!(recent, 1, "the recent run stays");
    assert_eq!(old, vec!["running".to_string()], "an old run still marked running stays");
    assert_eq!(events, 0, "old events are gone");
    let recent_events: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_metadata.events WHERE cluster_name = $1")
        .bind(&env.cluster)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(recent_events, 1, "the recent event stays");
    assert_eq!(other, 2, "another cluster's history is not touched");
    let again = owsync::store::jobs::expire_history(&sync, &env.cluster, week, 2).await.unwrap();
    assert_eq!(again, (0, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_expires_history_and_refuses_a_too_short_retention() {
    let env = TestEnv::new("retention-daemon").await;
    let mut bad = Daemon::start(&env, "short", &["--history-retention", "10m"]);
    let status = bad.child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(env.path("short.log")).unwrap();
    assert!(log.contains("--history-retention (10m) must be at least 1h"), "{log}");

    let db = env.path("webui.db");
    small_db(&db, 3);
    let admin = env.admin_pool().await;
    seed_history(&admin, &env.cluster).await;
    let mut d = Daemon::start(&env, "n1", &["--history-retention", "2d"]);
    d.wait_up(Duration::from_secs(20)).await;
    let t = std::time::Instant::now();
    loop {
        let (_, old, events, _) = history(&admin, &env.cluster).await;
        if old == vec!["running".to_string()] && events == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "not expired: {old:?} {events}\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, _, _, other) = history(&admin, &env.cluster).await;
    assert_eq!(other, 2, "another cluster's history is not touched");
    assert!(d.log_text().contains("expired old sync runs and events"), "{}", d.log_text());
    d.terminate();
}
