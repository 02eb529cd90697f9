//! The recovery drill (issue #12): host A's daemon pair syncs N tenants (`watch: true`)
//! while a writer changes them; both daemons are killed with SIGKILL and the source files
//! deleted; `owsyncctl cluster evacuate` restores every tenant for host B, adopts and
//! moves it; B's pair takes over; the writer goes on with the restored files. Every
//! mirror must equal its source, no row A had synced may be lost, and B must need no full
//! pass and write no tombstone. Prints the drill's figures (`DRILL ...`) for
//! BENCHMARKS.md; `OWSYNC_DRILL_TENANTS=100` runs it with 100 tenants.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, eventually};
use common::{TestEnv, gen_db, ok, stderr};
use owsync::fixtures::{JournalMode, MutateOptions, OpKind, SchemaFlavor};
use sqlx::PgPool;

const FLAGS: [&str; 6] = ["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"];
const HOST_B: &str = "host-b";

fn tenants() -> usize {
    std::env::var("OWSYNC_DRILL_TENANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

fn name(i: usize) -> String {
    format!("t{i:03}")
}

/// Changes a tenant's database as Open WebUI users would (no deletes: a tiny tenant's
/// deletes would empty tables, which the deletion guard holds, tests/deletion_guard.rs).
fn write_once(db: &Path, seed: u64) {
    let only = vec![OpKind::AppendTurn, OpKind::NewChat, OpKind::RenameChat, OpKind::EditMessage, OpKind::AddMemory];
    let opts = MutateOptions { ops: 3, seed, only: Some(only), ..Default::default() };
    owsync::fixtures::mutate(db, &opts).expect("mutate tenant database");
}

/// A writer over `dbs` until `stop`; counts its rounds.
fn writer(dbs: Vec<PathBuf>, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut seed = 1000;
        while !stop.load(Ordering::Relaxed) {
            for db in &dbs {
                seed += 1;
                write_once(db, seed);
            }
            rounds.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

/// Tenants whose latest run by one of `nodes` succeeded after `since`.
async fn synced_by(pool: &PgPool, cluster: &str, nodes: &[&str], since: chrono::DateTime<chrono::Utc>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(DISTINCT client_name) FROM sync_metadata.sync_jobs
         WHERE cluster_name = $1 AND leader_id = ANY($2) AND status = 'succeeded' AND finished_at > $3",
    )
    .bind(cluster)
    .bind(nodes.iter().map(std::string::ToString::to_string).collect::<Vec<_>>())
    .bind(since)
    .fetch_one(pool)
    .await
    .expect("count synced tenants")
}

/// Rows that differ between each tenant's source and mirror (`verify`'s count), summed.
fn differences(env: &TestEnv, cluster: &str, n: usize) -> (usize, u64) {
    let (mut tenants, mut rows) = (0, 0u64);
    for i in 0..n {
        let out = env.ctl(&["--cluster", cluster, "verify", &name(i), "-o", "json"]);
        if out.status.code() == Some(0) {
            continue;
        }
        tenants += 1;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for t in v["tables"].as_array().cloned().unwrap_or_default() {
            for k in ["missing", "extra", "differing"] {
                rows += t[k].as_array().map_or(0, |a| a.len() as u64);
            }
        }
    }
    (tenants, rows)
}

/// The reports of host B's successful runs.
async fn b_runs(admin: &PgPool) -> Vec<serde_json::Value> {
    sqlx::query_scalar(
        "SELECT tables FROM sync_metadata.sync_jobs
         WHERE cluster_name = $1 AND leader_id IN ('b1', 'b2') AND status = 'succeeded'",
    )
    .bind(HOST_B)
    .fetch_all(admin)
    .await
    .expect("read host B's runs")
}

/// Asserts `field` is 0 for every table of every run.
fn every_table(runs: &[serde_json::Value], field: &str, what: &str) {
    for r in runs {
        for (t, tr) in r["tables"].as_object().cloned().unwrap_or_default() {
            assert_eq!(tr[field], 0, "{what}: {t} in {r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_host_comes_back_on_another_with_every_synced_row() {
    let n = tenants();
    let env = TestEnv::new("drill").await;
    let (dir_a, dir_b) = (env.path("host-a"), env.path("host-b"));
    let mut dbs = Vec::new();
    for i in 0..n {
        let db = dir_a.join(name(i)).join("webui.db");
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        gen_db(&db, 2, 4, i as u64 + 1, SchemaFlavor::Fresh, JournalMode::Wal);
        ok(&env.ctl(&["apply", "-f", env.manifest(&name(i), &db, "  watch: true\n").to_str().unwrap()]));
        dbs.push(db);
    }
    let admin = env.admin_pool().await;
    let started = chrono::Utc::now();
    let mut a1 = Daemon::start(&env, "a1", &FLAGS);
    let mut a2 = Daemon::start(&env, "a2", &FLAGS);
    let (stop, rounds) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let w = writer(dbs.clone(), stop.clone(), rounds.clone());
    eventually(Duration::from_secs(120), "host A synced every tenant", || async {
        (synced_by(&admin, &env.cluster, &["a1", "a2"], started).await == n as i64).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Host A is lost: both replicas die, the writer's last changes never reach PostgreSQL.
    a1.kill9();
    a2.kill9();
    let after_kill = rounds.load(Ordering::Relaxed);
    eventually(Duration::from_secs(10), "the writer's round after the kill", || async {
        (rounds.load(Ordering::Relaxed) > after_kill).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    let (rpo_tenants, rpo_rows) = differences(&env, &env.cluster, n);
    std::fs::remove_dir_all(&dir_a).expect("delete host A's sources");

    // Evacuation to host B.
    let t0 = Instant::now();
    let evac_start = chrono::Utc::now();
    let out = env.ctl(&[
        "cluster",
        "evacuate",
        &env.cluster,
        "--to",
        HOST_B,
        "--restore-root",
        dir_b.to_str().unwrap(),
        "--parallel",
        "4",
        "--admin-url-file",
        env.admin_url_file.to_str().unwrap(),
    ]);
    let evacuated = t0.elapsed();
    assert!(out.status.success(), "evacuate failed:\n{}\n{}", common::stdout(&out), stderr(&out));
    let summary = common::stdout(&out);
    assert_eq!(summary.lines().filter(|l| l.contains(" moved ")).count(), n, "{summary}");
    let restored_bytes: u64 =
        (0..n).map(|i| std::fs::metadata(dir_b.join(name(i)).join("webui.db")).map_or(0, |m| m.len())).sum();
    // No row A had synced is lost: every restored file equals its mirror.
    assert_eq!(differences(&env, HOST_B, n), (0, 0), "restored files differ from the mirrors");
    let b1 = Daemon::start_in(&env, HOST_B, "b1", &FLAGS);
    let b2 = Daemon::start_in(&env, HOST_B, "b2", &FLAGS);
    eventually(Duration::from_secs(120), "host B synced every tenant", || async {
        (synced_by(&admin, HOST_B, &["b1", "b2"], evac_start).await == n as i64).then_some(())
    })
    .await;
    let recovered = t0.elapsed();

    // B continued from the adopted state: its first runs read nothing (no full pass).
    every_table(&b_runs(&admin).await, "rows_read", "host B read a table again after the evacuation");
    // The writer goes on with the restored files; B follows it.
    let restored: Vec<PathBuf> = (0..n).map(|i| dir_b.join(name(i)).join("webui.db")).collect();
    let (stop, rounds) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let w = writer(restored, stop.clone(), rounds.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    w.join().expect("writer");
    eventually(Duration::from_secs(60), "every mirror equals its source on host B", || async {
        (differences(&env, HOST_B, n).0 == 0).then_some(())
    })
    .await;
    assert!(b1.log_text().contains("leader") || b2.log_text().contains("leader"), "B's pair leads");
    // And it wrote no tombstone.
    let reports = b_runs(&admin).await;
    every_table(&reports, "tombstoned", "spurious tombstones");
    println!(
        "DRILL tenants={n} evacuate_s={:.2} recover_s={:.2} restored_mb={:.1} restore_mb_per_s={:.1} \
         rpo_tenants={rpo_tenants} rpo_rows={rpo_rows} b_runs={}",
        evacuated.as_secs_f64(),
        recovered.as_secs_f64(),
        restored_bytes as f64 / 1e6,
        restored_bytes as f64 / 1e6 / evacuated.as_secs_f64(),
        reports.len()
    );
    assert!(rpo_rows > 0, "the drill must lose the writer's last round (changes after A's last sync)");
}
