//! The real `owsyncd` as processes: health, metrics, status, picking up spec changes
//! without a restart, exactly one leader, failover after kill -9 and after SIGTERM,
//! and a resetting backoff. Run with `--nocapture` to see the measured figures.
//! Tests whose doc says BUG show a defect of src/ and fail until it is fixed.

mod common;

use common::jobs::{Job, jobs};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::compare::mirror_diff;
use common::daemon::{Daemon, eventually};
use common::{TestEnv, ok, small_db, stderr};
use owsync::fixtures::{JournalMode, MutateOptions, SchemaFlavor, mutate, table_counts};
use serde_json::Value;
use sqlx::{PgPool, Row};

const UP: Duration = Duration::from_secs(20);
const FIRST_SYNC: Duration = Duration::from_secs(30);
/// Spec changes are picked up within 5 s; a small tenant syncs in well under 3 s.
const PICKUP: Duration = Duration::from_secs(8);

/// Writes (or rewrites) a ClientSync manifest.
fn manifest(env: &TestEnv, name: &str, src: &Path, interval: &str, on: bool, labels: &str) -> PathBuf {
    let p = env.path(&format!("{name}.yaml"));
    let labels = match labels {
        "" => String::new(),
        l => format!("  labels: {{{l}}}\n"),
    };
    let text = format!(
        "apiVersion: owsync.io/v1alpha1\nkind: ClientSync\nmetadata:\n  name: {name}\n{labels}spec:\n  enabled: {on}\n  source:\n    path: {}\n  interval: {interval}\n",
        src.display()
    );
    std::fs::write(&p, text).expect("write manifest");
    p
}

fn apply(env: &TestEnv, name: &str, src: &Path, interval: &str, on: bool, labels: &str) -> String {
    let m = manifest(env, name, src, interval, on, labels);
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]))
}

/// `owsyncctl get clients NAME -o json`, or `None` when it fails.
fn client(env: &TestEnv, name: &str) -> Option<Value> {
    let o = env.ctl(&["get", "clients", name, "-o", "json"]);
    o.status.success().then(|| serde_json::from_slice(&o.stdout).ok()).flatten()
}

fn phase(v: &Value) -> &str {
    v["status"]["phase"].as_str().unwrap_or("")
}

fn condition<'v>(v: &'v Value, ty: &str) -> &'v Value {
    v["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == ty)).unwrap_or(&Value::Null)
}

/// The status has acted on the current generation.
fn observed(v: &Value) -> bool {
    v["status"]["observedGeneration"].as_i64().is_some()
        && v["status"]["observedGeneration"] == v["metadata"]["generation"]
}

fn ts(v: &Value) -> DateTime<Utc> {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a timestamp: {v}"))
}

/// Polls the tenant's status until `pred` holds.
async fn wait_client(env: &TestEnv, name: &str, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let pred = &pred;
    eventually(timeout, &format!("clientsync/{name}: {what}"), move || {
        let v = client(env, name).filter(|v| pred(v));
        async move { v }
    })
    .await
}

async fn lease(admin: &PgPool, cluster: &str) -> (String, i64) {
    let r = sqlx::query("SELECT leader_id, epoch FROM sync_metadata.leader_election WHERE cluster_name = $1")
        .bind(cluster)
        .fetch_one(admin)
        .await
        .expect("read the lease row");
    (r.get(0), r.get(1))
}

async fn db_now(admin: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()").fetch_one(admin).await.unwrap()
}

async fn assert_mirror_equal(env: &TestEnv, schema: &str, src: &Path) {
    let pool = env.sync_pool().await;
    let (diffs, n) = mirror_diff(&pool, schema, src).await;
    assert!(diffs.is_empty(), "{} differences, first: {:#?}", diffs.len(), &diffs[..diffs.len().min(10)]);
    assert!(n > 50, "compared only {n} rows");
}

/// Waits until the mirror equals the source.
async fn converges(env: &TestEnv, schema: &str, src: &Path, timeout: Duration, what: &str) -> Duration {
    let pool = env.sync_pool().await;
    let t = Instant::now();
    let (pool, src) = (&pool, src);
    eventually(timeout, what, move || async move {
        let (diffs, _) = mirror_diff(pool, schema, src).await;
        diffs.is_empty().then_some(())
    })
    .await;
    t.elapsed()
}

async fn http_status(d: &Daemon, path: &str) -> u16 {
    reqwest::get(d.url(path)).await.map_or(0, |r| r.status().as_u16())
}

/// Starts `node` and waits until it leads (with its tenant's first sync done by it
/// when `client` is given).
async fn start_leader(env: &TestEnv, node: &str, flags: &[&str], client: Option<&str>) -> Daemon {
    let d = Daemon::start(env, node, flags);
    d.wait_up(UP).await;
    let dr = &d;
    eventually(UP, &format!("{node} leads"), move || async move { dr.is_leader().await.then_some(()) }).await;
    if let Some(c) = client {
        let admin = env.admin_pool().await;
        let admin = &admin;
        eventually(FIRST_SYNC, "the leader's first successful sync", move || async move {
            let js = jobs(admin, c).await;
            js.iter().any(|j| j.leader == node && j.status == "succeeded").then_some(())
        })
        .await;
    }
    d
}

/// A standby that is up and sees `leader` as the leader.
async fn start_standby(env: &TestEnv, node: &str, flags: &[&str], leader: &str) -> Daemon {
    let d = Daemon::start(env, node, flags);
    d.wait_up(UP).await;
    let dr = &d;
    eventually(UP, &format!("{node} sees {leader} as leader"), move || async move {
        let h = dr.get_json("/health").await?;
        (h["is_leader"] == false && h["leader_id"] == leader).then_some(())
    })
    .await;
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenant_health_metrics_status_jobs_and_mirror() {
    let env = TestEnv::new("daemon_one").await;
    let db = env.path("acme.db");
    small_db(&db, 11);
    let out = apply(&env, "acme", &db, "10s", true, "");
    assert!(out.contains("clientsync/acme created"), "{out}");
    let d = Daemon::start(&env, "node-a", &[]);
    d.wait_up(UP).await;

    let v = wait_client(&env, "acme", FIRST_SYNC, "phase Synced", |v| phase(v) == "Synced").await;
    let st = &v["status"];
    assert!(observed(&v), "observedGeneration != generation: {v:#}");
    let ready = condition(&v, "Ready");
    assert_eq!(ready["status"], "True", "{v:#}");
    assert_eq!(ready["reason"], "SyncSucceeded", "{v:#}");
    let last = ts(&st["lastSyncTime"]);
    assert!((Utc::now() - last).num_seconds().abs() < 60, "lastSyncTime {last}");
    assert_eq!(st["consecutiveFailures"], 0, "{v:#}");
    let counts = table_counts(&db).unwrap();
    assert!(counts.len() > 5, "{counts:?}");
    for (t, n) in &counts {
        assert_eq!(st["tables"][t]["rows"].as_u64(), Some(*n), "status.tables.{t}.rows: {v:#}");
    }

    let h = d.get_json("/health").await.expect("/health");
    assert_eq!(h["status"], "healthy", "{h}");
    assert_eq!(h["is_leader"], true, "{h}");
    assert_eq!(h["leader_id"], "node-a", "{h}");
    assert_eq!(h["cluster_name"], "test-host", "{h}");
    assert!(h["uptime_seconds"].is_u64(), "{h}");
    assert!(h["version"].as_str().is_some_and(|s| !s.is_empty()), "{h}");
    ts(&h["last_sync"]);
    assert_eq!(http_status(&d, "/healthz").await, 200);
    assert_eq!(http_status(&d, "/readyz").await, 200);
    let m = d.get_text("/metrics").await.expect("/metrics");
    for want in [
        "sync_operations_total{cluster=\"test-host\",client=\"acme\",status=\"success\"}",
        "sync_duration_seconds_bucket",
        "is_leader{cluster=\"test-host\"} 1",
        "rows_synced_total{cluster=\"test-host\",client=\"acme\"",
    ] {
        assert!(m.contains(want), "/metrics lacks {want}:\n{m}");
    }

    let admin = env.admin_pool().await;
    let js = jobs(&admin, "acme").await;
    let j = js.iter().find(|j| j.status == "succeeded").unwrap_or_else(|| panic!("no succeeded job: {js:?}"));
    assert_eq!(j.leader, "node-a");
    assert!(j.finished.is_some() && j.error.is_none(), "{j:?}");
    assert_eq!(j.epoch, lease(&admin, "test-host").await.1);
    assert_mirror_equal(&env, "client_acme", &db).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spec_changes_are_picked_up_without_restart() {
    let env = TestEnv::new("daemon_changes").await;
    let admin = env.admin_pool().await;
    let (alpha, beta) = (env.path("alpha.db"), env.path("beta.db"));
    small_db(&alpha, 21);
    small_db(&beta, 22);
    apply(&env, "alpha", &alpha, "5m", true, "");
    let d = Daemon::start(&env, "node-a", &[]);
    d.wait_up(UP).await;
    wait_client(&env, "alpha", FIRST_SYNC, "Synced", |v| phase(v) == "Synced").await;

    // A new tenant.
    let t = Instant::now();
    apply(&env, "beta", &beta, "10s", true, "");
    wait_client(&env, "beta", PICKUP, "Synced after apply", |v| phase(v) == "Synced" && observed(v)).await;
    println!("FIGURE new tenant applied -> Synced: {:?}", t.elapsed());

    // A changed spec (a label and the interval): observedGeneration follows, and the
    // restarted reconciler picks up what changed in the source meanwhile.
    mutate(&alpha, &MutateOptions { ops: 60, seed: 5, ..Default::default() }).unwrap();
    let t = Instant::now();
    let out = apply(&env, "alpha", &alpha, "10s", true, "tier: gold");
    assert!(out.contains("clientsync/alpha configured"), "{out}");
    let v = wait_client(&env, "alpha", PICKUP, "observedGeneration 2", |v| {
        observed(v) && v["metadata"]["generation"] == 2 && phase(v) == "Synced"
    })
    .await;
    println!("FIGURE changed spec -> observedGeneration: {:?}", t.elapsed());
    assert_eq!(v["metadata"]["labels"]["tier"], "gold", "{v:#}");
    assert_eq!(v["spec"]["interval"], "10s", "{v:#}");
    converges(&env, "client_alpha", &alpha, PICKUP, "alpha's mirror after the spec change").await;

    // Unchanged spec, changed source: the 10 s interval brings it over.
    mutate(&alpha, &MutateOptions { ops: 60, seed: 6, ..Default::default() }).unwrap();
    let took =
        converges(&env, "client_alpha", &alpha, Duration::from_secs(10) + PICKUP, "alpha's mirror by interval").await;
    println!("FIGURE source mutated -> mirror equal (interval 10s): {took:?}");

    // Disabled: Suspended. Re-enabled: Synced again at the new generation.
    let t = Instant::now();
    apply(&env, "beta", &beta, "10s", false, "");
    let v = wait_client(&env, "beta", PICKUP, "Suspended", |v| phase(v) == "Suspended" && observed(v)).await;
    println!("FIGURE enabled: false -> Suspended: {:?}", t.elapsed());
    assert_eq!(condition(&v, "Ready")["status"], "False", "{v:#}");
    apply(&env, "beta", &beta, "10s", true, "");
    wait_client(&env, "beta", PICKUP, "Synced after re-enable", |v| {
        phase(v) == "Synced" && observed(v) && v["metadata"]["generation"] == 3
    })
    .await;

    // Deleted while enabled: refused without --force; with it, the reconciler stops.
    let o = env.ctl(&["delete", "client", "beta"]);
    assert!(!o.status.success(), "delete of an enabled tenant without --force succeeded");
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    ok(&env.ctl(&["delete", "client", "beta", "--force"]));
    let deleted_at = db_now(&admin).await;
    // Grace: beta's interval (10 s) plus margin; any new beta job fails the test at once.
    let grace = deleted_at + chrono::Duration::seconds(13);
    let cutoff = deleted_at + chrono::Duration::seconds(1);
    let admin_r = &admin;
    eventually(Duration::from_secs(30), "the grace period after delete", move || async move {
        let late: Vec<Job> = jobs(admin_r, "beta").await.into_iter().filter(|j| j.started > cutoff).collect();
        assert!(late.is_empty(), "deleted tenant still synced: {late:?}");
        (db_now(admin_r).await > grace).then_some(())
    })
    .await;
    let alive = jobs(&admin, "alpha").await.iter().filter(|j| j.started > deleted_at).count();
    assert!(alive >= 1, "the leader stopped reconciling alpha as well");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_exactly_one_leader() {
    let env = TestEnv::new("daemon_one_leader").await;
    let a = Daemon::start(&env, "node-a", &[]);
    let b = Daemon::start(&env, "node-b", &[]);
    a.wait_up(UP).await;
    b.wait_up(UP).await;
    let t = Instant::now();
    let mut settled = None;
    while t.elapsed() < Duration::from_secs(5) || settled.is_none() {
        assert!(t.elapsed() < UP, "no single leader after {UP:?}");
        let (ha, hb) = tokio::join!(a.get_json("/health"), b.get_json("/health"));
        let (ha, hb) = (ha.expect("a /health"), hb.expect("b /health"));
        let (la, lb) = (ha["is_leader"] == true, hb["is_leader"] == true);
        assert!(!(la && lb), "both lead:\n{ha}\n{hb}");
        if (la || lb) && ha["leader_id"] == hb["leader_id"] {
            settled = Some((ha, hb));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ha, hb) = settled.unwrap();
    let leader = if ha["is_leader"] == true { "node-a" } else { "node-b" };
    assert_eq!(ha["leader_id"], leader, "{ha}");
    assert_eq!(hb["leader_id"], leader, "{hb}");
    let admin = env.admin_pool().await;
    assert_eq!(lease(&admin, "test-host").await.0, leader);
    let (ma, mb) = (a.get_text("/metrics").await.unwrap(), b.get_text("/metrics").await.unwrap());
    let (ma1, mb1) =
        (ma.contains("\nis_leader{cluster=\"test-host\"} 1"), mb.contains("\nis_leader{cluster=\"test-host\"} 1"));
    assert!(ma1 != mb1, "is_leader gauge: a {ma1}, b {mb1}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_of_the_leader_standby_takes_over_and_syncs() {
    let env = TestEnv::new("daemon_kill9").await;
    let db = env.path("acme.db");
    small_db(&db, 31);
    apply(&env, "acme", &db, "10s", true, "");
    let flags = ["--lease-duration", "15s", "--renew-deadline", "10s", "--retry-period", "2s"];
    let mut a = start_leader(&env, "node-a", &flags, Some("acme")).await;
    let b = start_standby(&env, "node-b", &flags, "node-a").await;
    let admin = env.admin_pool().await;
    let (_, epoch_before) = lease(&admin, "test-host").await;
    let killed_at = db_now(&admin).await;

    let t = Instant::now();
    a.kill9();
    let br = &b;
    eventually(Duration::from_secs(15), "node-b leads after kill -9", move || async move {
        br.is_leader().await.then_some(())
    })
    .await;
    let to_leader = t.elapsed();
    let admin_r = &admin;
    let job = eventually(Duration::from_secs(20), "node-b's first successful sync", move || async move {
        let js = jobs(admin_r, "acme").await;
        js.into_iter().find(|j| j.leader == "node-b" && j.status == "succeeded" && j.started > killed_at)
    })
    .await;
    let to_sync = t.elapsed();
    let started = (job.started - killed_at).to_std().unwrap_or_default();
    println!(
        "FIGURE kill -9 -> standby leader: {to_leader:?}; -> its sync starts (DB clock): {started:?}; \
         -> first successful sync seen: {to_sync:?}"
    );
    assert!(to_leader < Duration::from_secs(10), "takeover took {to_leader:?} (lease 15s)");
    let (leader, epoch_after) = lease(&admin, "test-host").await;
    assert_eq!(leader, "node-b");
    assert!(epoch_after > epoch_before, "epoch {epoch_before} -> {epoch_after}");
    assert_eq!(job.epoch, epoch_after, "{job:?}");
    assert_mirror_equal(&env, "client_acme", &db).await;
}

/// BUG (reported): the run a leader was doing when it was killed stays `running` for
/// ever; the new leader should close it. (The mirror itself must still be exact.)
#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_sync_leaves_no_run_marked_running() {
    let env = TestEnv::new("daemon_kill9_mid_sync").await;
    let admin = env.admin_pool().await;
    let db = env.path("big.db");
    common::gen_db(&db, 150, 20, 71, SchemaFlavor::Fresh, JournalMode::Wal);
    apply(&env, "big", &db, "10s", true, "");
    let mut a = start_leader(&env, "node-a", &[], None).await;
    let _b = start_standby(&env, "node-b", &[], "node-a").await;
    let admin_r = &admin;
    eventually(FIRST_SYNC, "node-a syncing big", move || async move {
        let js = jobs(admin_r, "big").await;
        js.iter().any(|j| j.leader == "node-a" && j.status == "running").then_some(())
    })
    .await;
    a.kill9();
    eventually(Duration::from_secs(60), "node-b's successful sync", move || async move {
        let js = jobs(admin_r, "big").await;
        js.iter().any(|j| j.leader == "node-b" && j.status == "succeeded").then_some(())
    })
    .await;
    assert_mirror_equal(&env, "client_big", &db).await;
    let stuck: Vec<Job> = jobs(&admin, "big").await.into_iter().filter(|j| j.status == "running").collect();
    assert!(stuck.is_empty(), "runs still `running` after the failover: {stuck:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_releases_the_lease_to_the_standby() {
    let env = TestEnv::new("daemon_sigterm").await;
    let db = env.path("acme.db");
    small_db(&db, 41);
    apply(&env, "acme", &db, "10s", true, "");
    let flags = ["--lease-duration", "15s", "--retry-period", "2s"];
    let mut a = start_leader(&env, "node-a", &flags, Some("acme")).await;
    let b = start_standby(&env, "node-b", &flags, "node-a").await;

    let t = Instant::now();
    a.signal(libc::SIGTERM);
    let br = &b;
    eventually(Duration::from_secs(15), "node-b leads after SIGTERM", move || async move {
        br.is_leader().await.then_some(())
    })
    .await;
    let to_leader = t.elapsed();
    let status = a.child.wait().expect("wait node-a");
    let to_exit = t.elapsed();
    println!("FIGURE SIGTERM -> standby leader: {to_leader:?} (leader had exited by {to_exit:?})");
    assert!(status.success(), "owsyncd exited with {status:?}; log:\n{}", a.log_text());
    assert!(a.log_text().contains("lease released"), "log:\n{}", a.log_text());
    assert!(to_leader < Duration::from_secs(3), "takeover after SIGTERM took {to_leader:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_source_backs_off_and_recovers() {
    let env = TestEnv::new("daemon_backoff").await;
    let admin = env.admin_pool().await;
    let db = env.path("late.db");
    let path = db.display().to_string();
    apply(&env, "late", &db, "10s", true, "");
    let d = Daemon::start(&env, "node-a", &[]);
    d.wait_up(UP).await;

    let v1 = wait_client(&env, "late", FIRST_SYNC, "Failed once", |v| {
        phase(v) == "Failed" && v["status"]["consecutiveFailures"] == 1
    })
    .await;
    let ready = condition(&v1, "Ready");
    assert_eq!(ready["status"], "False", "{v1:#}");
    assert!(ready["message"].as_str().unwrap_or("").contains(&path), "Ready message does not name {path}: {v1:#}");
    assert!(v1["status"]["lastError"].as_str().unwrap_or("").contains(&path), "{v1:#}");
    let v2 =
        wait_client(&env, "late", Duration::from_secs(15), "Failed twice", |v| v["status"]["consecutiveFailures"] == 2)
            .await;
    assert_eq!(phase(&v2), "Failed");
    let js = jobs(&admin, "late").await;
    assert!(js.len() >= 2 && js[..2].iter().all(|j| j.status == "failed"), "{js:?}");
    let next1 = ts(&v1["status"]["nextSyncTime"]) - js[0].finished.unwrap();
    let next2 = ts(&v2["status"]["nextSyncTime"]) - js[1].finished.unwrap();
    let gap = js[1].started - js[0].finished.unwrap();
    println!("FIGURE backoff: nextSyncTime +{next1}, then +{next2}; actual retry gap {gap}");
    let secs = |d: chrono::Duration| d.num_milliseconds() as f64 / 1000.0;
    assert!((3.5..=6.5).contains(&secs(next1)), "first backoff {next1}");
    assert!((7.5..=12.5).contains(&secs(next2)), "second backoff {next2}");
    assert!((3.5..=7.0).contains(&secs(gap)), "retry came after {gap}");
    let m = d.get_text("/metrics").await.unwrap();
    assert!(m.contains("sync_operations_total{cluster=\"test-host\",client=\"late\",status=\"failed\"} 2"), "{m}");

    // The fix: the file appears; the next retry succeeds and the count resets.
    small_db(&db, 51);
    let v = wait_client(&env, "late", Duration::from_secs(25), "Synced after the fix", |v| phase(v) == "Synced").await;
    assert_eq!(v["status"]["consecutiveFailures"], 0, "{v:#}");
    assert_eq!(condition(&v, "Ready")["status"], "True", "{v:#}");
    assert!(v["status"].get("lastError").is_none_or(Value::is_null), "{v:#}");
    assert_mirror_equal(&env, "client_late", &db).await;
}

/// BUG (reported): disabling a tenant while its sync runs leaves phase Synced at the old
/// generation for good: the leader writes Suspended at once, then the stopped
/// reconciler's in-flight sync records its own outcome over it.
#[tokio::test(flavor = "multi_thread")]
async fn disabled_during_a_running_sync_ends_suspended() {
    let env = TestEnv::new("daemon_disable_race").await;
    let admin = env.admin_pool().await;
    let db = env.path("big.db");
    // Large enough that a sync takes seconds (~45 MB).
    common::gen_db(&db, 150, 20, 61, SchemaFlavor::Fresh, JournalMode::Wal);
    apply(&env, "big", &db, "10s", true, "");
    let _d = Daemon::start(&env, "node-a", &[]);
    let admin_r = &admin;
    eventually(FIRST_SYNC, "a running sync of big", move || async move {
        let js = jobs(admin_r, "big").await;
        js.iter().any(|j| j.status == "running").then_some(())
    })
    .await;
    apply(&env, "big", &db, "10s", false, "");
    eventually(Duration::from_secs(60), "the in-flight sync to end", move || async move {
        let js = jobs(admin_r, "big").await;
        js.iter().all(|j| j.status != "running").then_some(())
    })
    .await;
    // The leader has had every chance to record Suspended (spec changes: <= 5 s).
    let t = Instant::now();
    let mut v = client(&env, "big").unwrap();
    while !(phase(&v) == "Suspended" && observed(&v)) && t.elapsed() < PICKUP {
        tokio::time::sleep(Duration::from_millis(200)).await;
        v = client(&env, "big").unwrap();
    }
    assert!(
        phase(&v) == "Suspended" && observed(&v),
        "disabled tenant is not Suspended at its generation {PICKUP:?} after its last sync ended: {}",
        serde_json::json!({"generation": v["metadata"]["generation"], "phase": phase(&v),
            "observedGeneration": v["status"]["observedGeneration"], "Ready": condition(&v, "Ready")})
    );
}

/// DESIGN 6: a standby leads within 1 s of a clean shutdown (drain, release, NOTIFY),
/// whatever the retry period: it must not wait for its next poll (retry-period / 2).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_handover_does_not_wait_for_the_standbys_poll() {
    let env = TestEnv::new("daemon_sigterm_notify").await;
    let flags = ["--lease-duration", "30s", "--renew-deadline", "20s", "--retry-period", "6s"];
    let mut a = start_leader(&env, "node-a", &flags, None).await;
    let b = start_standby(&env, "node-b", &flags, "node-a").await;
    let admin = env.admin_pool().await;
    let admin_r = &admin;
    let beat = move || async move {
        let t: DateTime<Utc> =
            sqlx::query_scalar("SELECT last_heartbeat FROM sync_metadata.hosts WHERE node_id = 'node-b'")
                .fetch_one(admin_r)
                .await
                .expect("node-b's heartbeat");
        t
    };
    // SIGTERM just after a standby round, so only a notification can wake it early.
    let before = beat().await;
    eventually(
        Duration::from_secs(10),
        "a standby round",
        move || async move { (beat().await > before).then_some(()) },
    )
    .await;
    let t = Instant::now();
    a.signal(libc::SIGTERM);
    let br = &b;
    eventually(Duration::from_secs(15), "node-b leads after SIGTERM", move || async move {
        br.is_leader().await.then_some(())
    })
    .await;
    let took = t.elapsed();
    println!("FIGURE SIGTERM right after a standby poll (retry 6s) -> standby leader: {took:?}");
    assert!(a.child.wait().unwrap().success(), "log:\n{}", a.log_text());
    assert!(took < Duration::from_secs(1), "handover after SIGTERM took {took:?}");
}
