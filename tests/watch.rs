//! `spec.watch: true`: a change to `webui.db` reaches PostgreSQL within seconds even
//! with a 60-minute interval (debounced: 500 ms quiet, at most one sync per second), and
//! an unchanged source causes no syncs. Run with `--nocapture` for the lag figures.

mod common;

use std::time::{Duration, Instant};

use common::compare::mirror_diff;
use common::daemon::{Daemon, eventually};
use common::{TestEnv, ok, small_db};
use owsync::fixtures::{MutateOptions, mutate};
use sqlx::PgPool;

async fn runs(admin: &PgPool, trigger: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sync_metadata.sync_jobs WHERE client_name = 'watched' AND trigger = $1")
        .bind(trigger)
        .fetch_one(admin)
        .await
        .unwrap()
}

async fn all_runs(admin: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sync_metadata.sync_jobs WHERE client_name = 'watched'")
        .fetch_one(admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_source_reaches_postgres_within_seconds() {
    let env = TestEnv::new("watch").await;
    let admin = env.admin_pool().await;
    let pool = env.sync_pool().await;
    let db = env.path("webui.db");
    small_db(&db, 91);
    let m = env.manifest("watched", &db, "  watch: true\n");
    std::fs::write(&m, std::fs::read_to_string(&m).unwrap().replace("interval: 10s", "interval: 60m")).unwrap();
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    let d = Daemon::start(&env, "node-a", &[]);
    d.wait_up(Duration::from_secs(20)).await;
    ok(&env.ctl(&["wait", "client/watched", "--for", "condition=Synced", "--timeout", "30s"]));

    let (mut lags, mut detect) = (Vec::new(), Vec::new());
    for round in 0..8u64 {
        mutate(&db, &MutateOptions { ops: 15, seed: 100 + round, ..Default::default() }).unwrap();
        let t = Instant::now();
        let changed_at = chrono::Utc::now();
        let (p, src) = (&pool, &db);
        eventually(Duration::from_secs(10), &format!("round {round}: the mirror converges"), || async move {
            mirror_diff(p, "client_watched", src).await.0.is_empty().then_some(())
        })
        .await;
        lags.push(t.elapsed());
        // When the watch noticed: the start of the first run it started after the change.
        let started: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT min(started_at) FROM sync_metadata.sync_jobs
             WHERE client_name = 'watched' AND trigger = 'watch' AND started_at > $1",
        )
        .bind(changed_at)
        .fetch_one(&admin)
        .await
        .unwrap();
        let noticed = started.expect("no run started by the watch after the change") - changed_at;
        detect.push(noticed.to_std().unwrap_or_default());
    }
    let watch_runs = runs(&admin, "watch").await;
    assert!(watch_runs >= 8, "{watch_runs} runs started by the watch for 8 changes; log:\n{}", d.log_text());
    lags.sort();
    detect.sort();
    let pct = |v: &[Duration], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "FIGURE watch, 8 changes, interval 60m: change -> sync started p50 {:?}, p99 {:?}; change -> mirror equal p50 {:?}, p99 {:?} (p99 of 8 = max)",
        pct(&detect, 0.5),
        pct(&detect, 0.99),
        pct(&lags, 0.5),
        pct(&lags, 0.99),
    );
    assert!(pct(&detect, 0.99) < Duration::from_millis(2500), "change -> sync started: {detect:?}");
    assert!(pct(&lags, 0.99) < Duration::from_secs(8), "change -> mirror equal: {lags:?}");

    // Nothing changes: no syncs, for a good while (the sync's own reads never look like a
    // change: it opens read-only and never checkpoints).
    // (First let a trailing sync end: the last change may have been seen mid-sync.)
    let t = Instant::now();
    let (mut n, mut since) = (all_runs(&admin).await, Instant::now());
    while since.elapsed() < Duration::from_secs(2) {
        assert!(t.elapsed() < Duration::from_secs(15), "runs keep coming without changes; log:\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = all_runs(&admin).await;
        if now != n {
            (n, since) = (now, Instant::now());
        }
    }
    let quiet_from = Instant::now();
    while quiet_from.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = all_runs(&admin).await;
        assert_eq!(now, n, "a sync ran although the source did not change; log:\n{}", d.log_text());
    }
}
