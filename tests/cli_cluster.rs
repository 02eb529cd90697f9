//! A host's lifecycle with the real `owsyncctl` (and `owsyncd`) against a real PostgreSQL:
//! `cluster deregister` refuses while tenants sync and names the ways out, asks for
//! confirmation, removes every row of the cluster (checked here with our own queries over
//! every `sync_metadata` table), leaves other clusters and the mirrors alone, and fences
//! out a replica that is still running; `cluster prune-stale` marks dead hosts offline;
//! `move` moves a tenant's rows to another cluster and refuses collisions.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::daemon::{Daemon, eventually};
use common::{TestEnv, ok, small_db, stderr, stdout};
use sqlx::PgPool;

const OTHER: &str = "other-host";
const FLAGS: [&str; 6] = ["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[track_caller]
fn fails(o: &Output) -> (String, String) {
    assert_eq!(o.status.code(), Some(1), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    (stdout(o), stderr(o))
}

fn admin_args<'a>(env: &'a TestEnv, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["--admin-url-file", s(&env.admin_url_file)]);
    v
}

/// Rows per sync_metadata table (those with a cluster_name column) for `cluster`,
/// counted independently of owsync's own census.
async fn rows_of(admin: &PgPool, cluster: &str) -> BTreeMap<String, i64> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.columns
         WHERE table_schema = 'sync_metadata' AND column_name = 'cluster_name' AND table_name <> 'retired_clusters'",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    assert!(tables.len() >= 12, "{tables:?}");
    let mut out = BTreeMap::new();
    for t in tables {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM sync_metadata.\"{t}\" WHERE cluster_name = $1"
        )))
        .bind(cluster)
        .fetch_one(admin)
        .await
        .unwrap();
        out.insert(t, n);
    }
    out
}

fn total(m: &BTreeMap<String, i64>) -> i64 {
    m.values().sum()
}

/// Applies a tenant whose source is a small generated database.
fn tenant(env: &TestEnv, cluster: &str, name: &str, enabled: bool) -> std::path::PathBuf {
    let db = env.path(&format!("{name}.db"));
    small_db(&db, name.len() as u64);
    let m = env.manifest(name, &db, &format!("  enabled: {enabled}\n"));
    ok(&env.ctl(&["apply", "-f", s(&m), "--cluster", cluster]));
    m
}

/// Fills the cluster's other tables the way a running cluster does.
async fn activity(env: &TestEnv, cluster: &str, name: &str) {
    ok(&env.ctl(&["sync", name, "--once", "--cluster", cluster]));
    ok(&env.ctl(&["trigger", name, "--cluster", cluster]));
    let pool = env.sync_pool().await;
    let who = owsync::store::lease::Candidate {
        cluster: cluster.into(),
        node_id: "node-x".into(),
        instance: uuid::Uuid::new_v4(),
    };
    owsync::store::lease::heartbeat(&pool, &who, false, "test").await.unwrap();
    // What the controller records: status and an event (as sync_service, under RLS);
    // `sync --once` above has recorded the status already.
    let mut tx = owsync::store::begin(&pool, cluster).await.unwrap();
    sqlx::query(
        "INSERT INTO sync_metadata.client_status (cluster_name, name, phase) VALUES ($1, $2, 'Synced')
         ON CONFLICT DO NOTHING",
    )
    .bind(cluster)
    .bind(name)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sync_metadata.events (cluster_name, client_name, reason, message) VALUES ($1, $2, 'Test', 'x')",
    )
    .bind(cluster)
    .bind(name)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn deregister_refuses_while_tenants_sync_then_removes_everything() {
    let env = TestEnv::new("dereg").await;
    let admin = env.admin_pool().await;
    let cl = env.cluster.clone();
    let live = tenant(&env, &cl, "live", true);
    tenant(&env, &cl, "paused", false);
    tenant(&env, OTHER, "elsewhere", true);
    activity(&env, &cl, "live").await;
    activity(&env, OTHER, "elsewhere").await;
    let before = rows_of(&admin, &cl).await;
    let other_before = rows_of(&admin, OTHER).await;
    assert!(before["client_specs"] == 2 && before["hosts"] == 1 && before["table_state"] > 5, "{before:?}");
    assert!(total(&other_before) > 10, "{other_before:?}");

    // Refused while `live` syncs: lists it and the three ways out; nothing changes.
    let (out, err) = fails(&env.ctl(&admin_args(&env, &["cluster", "deregister", &cl, "--yes"])));
    assert!(out.contains("Cluster test-host: metadata in sync_metadata") && out.contains("node-x"), "{out}");
    assert!(err.contains("refusing to deregister cluster test-host: 1 tenant(s)"), "{err}");
    assert!(err.contains("clientsync/live (phase Synced, mirror schema client_live)"), "{err}");
    assert!(!err.contains("clientsync/paused"), "{err}");
    for way in ["spec.enabled: false", "owsyncctl move NAME --to-cluster OTHER", "owsyncctl delete client NAME"] {
        assert!(err.contains(way), "missing {way:?} in: {err}");
    }
    assert_eq!(rows_of(&admin, &cl).await, before);
    // Without the admin URL it refuses before touching anything.
    let (_, err) = fails(&env.ctl(&["cluster", "deregister", &cl, "--yes"]));
    assert!(err.contains("--admin-url-file"), "{err}");

    // Disable it; without a terminal and without --yes, still refused.
    let text = std::fs::read_to_string(&live).unwrap().replace("enabled: true", "enabled: false");
    std::fs::write(&live, text).unwrap();
    ok(&env.ctl(&["apply", "-f", s(&live)]));
    let (out, err) = fails(&env.ctl(&admin_args(&env, &["cluster", "deregister", &cl])));
    assert!(err.contains("not a terminal") && err.contains("--yes"), "{err}");
    assert!(out.contains("warning: 2 tenant(s) without sync will be removed"), "{out}");
    assert_eq!(rows_of(&admin, &cl).await, before);

    let out = ok(&env.ctl(&admin_args(&env, &["cluster", "deregister", &cl, "--yes"])));
    assert!(out.contains("sync_metadata.client_specs: 2 row(s) deleted"), "{out}");
    assert!(out.contains("sync_metadata.hosts: 1 row(s) deleted"), "{out}");
    assert!(out.contains("Mirror data is NOT dropped: client_live, client_paused"), "{out}");
    assert!(out.contains("cluster/test-host deregistered: nothing of it is left"), "{out}");
    assert!(out.contains("sync_metadata.table_state: 0 row(s) of cluster test-host"), "{out}");
    let after = rows_of(&admin, &cl).await;
    assert_eq!(total(&after), 0, "{after:?}");
    assert_eq!(rows_of(&admin, OTHER).await, other_before, "another cluster's rows changed");
    let mirrored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM client_live.\"user\"").fetch_one(&admin).await.unwrap();
    assert!(mirrored > 0, "the mirror was dropped");

    // The name is retired until reinstated.
    let status = ok(&env.ctl(&["cluster", "status"]));
    assert!(status.contains("Retired: deregistered at"), "{status}");
    let (_, err) = fails(&env.ctl(&["apply", "-f", s(&live)]));
    assert!(err.contains("cluster test-host was deregistered"), "{err}");
    let (_, err) = fails(&env.ctl(&admin_args(&env, &["cluster", "deregister", &cl, "--yes"])));
    assert!(err.contains("no rows in sync_metadata"), "{err}");
    ok(&env.ctl(&admin_args(&env, &["cluster", "reinstate", &cl])));
    assert!(!ok(&env.ctl(&["cluster", "status"])).contains("Retired"));
    assert!(ok(&env.ctl(&["apply", "-f", s(&live)])).contains("clientsync/live created"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_replica_is_fenced_out_by_deregistration() {
    let env = TestEnv::new("dereg_fence").await;
    let admin = env.admin_pool().await;
    let m = tenant(&env, &env.cluster, "acme", true);
    let d = Daemon::start(&env, "node-a", &FLAGS);
    d.wait_up(Duration::from_secs(20)).await;
    let dr = &d;
    eventually(Duration::from_secs(30), "node-a leads and synced", || async move {
        let h = dr.get_json("/api/v1/clients/acme").await?;
        (dr.is_leader().await && h["status"]["phase"] == "Synced").then_some(())
    })
    .await;
    let (instance, epoch): (uuid::Uuid, i64) =
        sqlx::query_as("SELECT holder_instance, epoch FROM sync_metadata.leader_election WHERE cluster_name = $1")
            .bind(&env.cluster)
            .fetch_one(&admin)
            .await
            .unwrap();

    let text = std::fs::read_to_string(&m).unwrap().replace("enabled: true", "enabled: false");
    std::fs::write(&m, text).unwrap();
    ok(&env.ctl(&["apply", "-f", s(&m)]));
    let out = ok(&env.ctl(&admin_args(&env, &["cluster", "deregister", &env.cluster, "--yes"])));
    assert!(out.contains("warning: replica node-a heartbeat"), "{out}");
    assert!(out.contains(&format!("released: epoch {epoch} -> {}", epoch + 1)), "{out}");

    // The old leader's fence no longer passes, and it cannot take the lease back.
    let sync_pool = env.sync_pool().await;
    let who = owsync::store::lease::Candidate { cluster: env.cluster.clone(), node_id: "node-a".into(), instance };
    let mut conn = sync_pool.acquire().await.unwrap();
    let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
    owsync::store::specs::set_cluster(&mut tx, &env.cluster).await.unwrap();
    assert!(!owsync::store::lease::holds(&mut tx, &who, epoch).await.unwrap(), "the old epoch still passes");
    drop(tx);
    let e = owsync::store::lease::try_acquire(&mut conn, &who, Duration::from_secs(3), Some(epoch)).await;
    assert!(format!("{:?}", e.unwrap_err()).contains("was deregistered"));

    // The running daemon stops leading and re-creates nothing (heartbeats and lease rounds refused).
    eventually(Duration::from_secs(10), "node-a steps down", || async move { (!dr.is_leader().await).then_some(()) })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left = rows_of(&admin, &env.cluster).await;
    assert_eq!(total(&left), 0, "{left:?}\nlog:\n{}", d.log_text());
    assert!(d.log_text().contains("was deregistered"), "{}", d.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_stale_marks_only_old_heartbeats_offline() {
    let env = TestEnv::new("prune_stale").await;
    let admin = env.admin_pool().await;
    for (cluster, node, age) in
        [(env.cluster.as_str(), "dead", 600), (env.cluster.as_str(), "alive", 5), (OTHER, "gone", 900)]
    {
        sqlx::query(
            "INSERT INTO sync_metadata.hosts (cluster_name, node_id, hostname, status, is_leader, last_heartbeat)
             VALUES ($1, $2, 'h-' || $2, 'active', $2 = 'dead', now() - make_interval(secs => $3))",
        )
        .bind(cluster)
        .bind(node)
        .bind(f64::from(age))
        .execute(&admin)
        .await
        .unwrap();
    }
    let statuses = || async {
        sqlx::query_as::<_, (String, String, bool)>(
            "SELECT node_id, status, is_leader FROM sync_metadata.hosts ORDER BY node_id",
        )
        .fetch_all(&admin)
        .await
        .unwrap()
    };
    let before = statuses().await;
    let out = ok(&env.ctl(&["cluster", "prune-stale", "--older-than", "5m", "--dry-run"]));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("host/test-host/dead marked offline (dry run) (last heartbeat 60"), "{out}");
    assert!(out.trim_end().ends_with("s ago, hostname h-dead, was leader)"), "{out}");
    assert_eq!(statuses().await, before);

    // As sync_service: only its own cluster.
    let out = ok(&env.ctl(&["cluster", "prune-stale", "--older-than", "5m"]));
    assert!(out.starts_with("host/test-host/dead marked offline (last heartbeat"), "{out}");
    let after = statuses().await;
    assert_eq!(
        after,
        vec![
            ("alive".into(), "active".into(), false),
            ("dead".into(), "offline".into(), false),
            ("gone".into(), "active".into(), false)
        ]
    );
    assert!(ok(&env.ctl(&["cluster", "status"])).contains("offline"));
    let out = ok(&env.ctl(&["cluster", "prune-stale", "--older-than", "5m"]));
    assert!(out.contains("no host of cluster test-host has a heartbeat older than 5m"), "{out}");

    let (_, err) = fails(&env.ctl(&["cluster", "prune-stale", "--all-clusters"]));
    assert!(err.contains("--admin-url-file"), "{err}");
    let out = ok(&env.ctl(&admin_args(&env, &["cluster", "prune-stale", "--all-clusters", "--older-than", "1m"])));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("host/other-host/gone marked offline"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn move_carries_spec_status_and_watermarks_and_refuses_collisions() {
    let env = TestEnv::new("move").await;
    let admin = env.admin_pool().await;
    let cl = env.cluster.clone();
    tenant(&env, &cl, "mover", true);
    tenant(&env, &cl, "stayer", true);
    activity(&env, &cl, "mover").await;
    let count = |cluster: &'static str, table: &'static str| {
        let admin = admin.clone();
        async move {
            let col = if table.starts_with("client_") { "name" } else { "client_name" };
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM sync_metadata.{table} WHERE cluster_name = $1 AND {col} = 'mover'"
            )))
            .bind(cluster)
            .fetch_one(&admin)
            .await
            .unwrap()
        }
    };
    let watermarks = count("test-host", "table_state").await;
    assert!(watermarks > 5 && count("test-host", "client_status").await == 1);
    let stayer_before = rows_of(&admin, &cl).await["client_specs"];

    let out = ok(&env.ctl(&admin_args(&env, &["move", "mover", "--to-cluster", OTHER])));
    assert!(out.contains("clientsync/mover moved from cluster test-host to other-host"), "{out}");
    assert!(out.contains(&format!("table_state {watermarks}")), "{out}");
    for t in ["client_specs", "client_status", "table_state", "sync_jobs", "sync_requests"] {
        assert_eq!(count("test-host", t).await, 0, "{t} left behind");
    }
    assert_eq!(count("other-host", "client_specs").await, 1);
    assert_eq!(count("other-host", "client_status").await, 1);
    assert_eq!(count("other-host", "table_state").await, watermarks);
    assert_eq!(rows_of(&admin, &cl).await["client_specs"], stayer_before - 1);
    // The new cluster's sync_service sees it, with its status, and syncs it from its watermarks.
    let got = ok(&env.ctl(&["get", "clients", "mover", "--cluster", OTHER, "-o", "json"]));
    assert!(got.contains("\"phase\""), "{got}");
    let (_, err) = fails(&env.ctl(&["get", "clients", "mover"]));
    assert!(err.contains("not found"), "{err}");
    ok(&env.ctl(&["sync", "mover", "--once", "--cluster", OTHER]));

    // Collisions: a tenant of the same name there; a missing tenant; the same cluster.
    tenant(&env, OTHER, "twin", true);
    let db = env.path("twin2.db");
    small_db(&db, 3);
    let m = env.manifest("twin", &db, "  target:\n    schema: client_twin_here\n");
    ok(&env.ctl(&["apply", "-f", s(&m)]));
    let before = (rows_of(&admin, &cl).await, rows_of(&admin, OTHER).await);
    let (_, err) = fails(&env.ctl(&admin_args(&env, &["move", "twin", "--to-cluster", OTHER])));
    assert!(err.contains("cluster other-host already has a tenant of that name"), "{err}");
    let (_, err) = fails(&env.ctl(&admin_args(&env, &["move", "nobody", "--to-cluster", OTHER])));
    assert!(err.contains("clientsync/nobody not found in cluster test-host"), "{err}");
    let (_, err) = fails(&env.ctl(&admin_args(&env, &["move", "twin", "--to-cluster", "test-host"])));
    assert!(err.contains("already in cluster test-host"), "{err}");
    sqlx::query("INSERT INTO sync_metadata.retired_clusters (cluster_name) VALUES ('gone-host')")
        .execute(&admin)
        .await
        .unwrap();
    let o = env.ctl(&admin_args(&env, &["move", "twin", "--to-cluster", "gone-host"]));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("cluster gone-host was deregistered"), "{}", stderr(&o));
    let after = (rows_of(&admin, &cl).await, rows_of(&admin, OTHER).await);
    assert_eq!(before.0["client_specs"], after.0["client_specs"]);
    assert_eq!(before.1["client_specs"], after.1["client_specs"]);
}

/// Runs `owsyncctl ARGS` on a pseudo-terminal (util-linux `script`), typing `answer`.
fn on_terminal(env: &TestEnv, args: &[&str], answer: &str) -> Output {
    use std::io::Write;
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_owsyncctl"))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let mut child = std::process::Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .env_remove("OWSYNC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("OWSYNC_DATABASE_URL_FILE", &env.url_file)
        .env("OWSYNC_CLUSTER", &env.cluster)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux script");
    std::thread::sleep(Duration::from_secs(2)); // let it reach the prompt
    child.stdin.take().unwrap().write_all(format!("{answer}\n").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn deregister_asks_for_the_cluster_name_on_a_terminal() {
    let env = TestEnv::new("dereg_tty").await;
    let admin = env.admin_pool().await;
    tenant(&env, &env.cluster, "idle", false);
    let before = rows_of(&admin, &env.cluster).await;
    let args = admin_args(&env, &["cluster", "deregister", "test-host"]);
    let o = on_terminal(&env, &args, "yes");
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("Type the cluster name to confirm") && stdout(&o).contains("not confirmed"));
    assert_eq!(rows_of(&admin, &env.cluster).await, before);
    let o = on_terminal(&env, &args, "test-host");
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("cluster/test-host deregistered"), "{}", stdout(&o));
    assert_eq!(total(&rows_of(&admin, &env.cluster).await), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_tenant_is_synced_by_the_other_clusters_leader_only() {
    let mut env = TestEnv::new("move_live").await;
    let admin = env.admin_pool().await;
    tenant(&env, &env.cluster, "mover", true);
    let a = Daemon::start(&env, "node-a", &FLAGS);
    env.cluster = OTHER.into();
    let b = Daemon::start(&env, "node-b", &FLAGS);
    env.cluster = "test-host".into();
    a.wait_up(Duration::from_secs(20)).await;
    b.wait_up(Duration::from_secs(20)).await;
    let jobs = |cluster: &'static str| {
        let admin = admin.clone();
        async move {
            sqlx::query_as::<_, (String, String)>(
                "SELECT leader_id, status FROM sync_metadata.sync_jobs
                 WHERE cluster_name = $1 AND client_name = 'mover' ORDER BY started_at",
            )
            .bind(cluster)
            .fetch_all(&admin)
            .await
            .unwrap()
        }
    };
    eventually(Duration::from_secs(30), "node-a syncs mover", || async {
        jobs("test-host").await.iter().any(|j| j.0 == "node-a" && j.1 == "succeeded").then_some(())
    })
    .await;

    let out = ok(&env.ctl(&admin_args(&env, &["move", "mover", "--to-cluster", OTHER])));
    assert!(out.contains("moved from cluster test-host to other-host") && out.contains("sync enabled"), "{out}");
    let moved_jobs = jobs("other-host").await.len();
    assert!(moved_jobs >= 1, "the job history did not move");
    eventually(Duration::from_secs(30), "node-b syncs mover", || async {
        let js = jobs("other-host").await;
        js.iter().skip(moved_jobs).any(|j| j.0 == "node-b" && j.1 == "succeeded").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for table in ["client_specs", "client_status"] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM sync_metadata.{table} WHERE cluster_name = 'test-host' AND name = 'mover'"
        )))
        .fetch_one(&admin)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table}: node-a wrote mover's rows after the move\n{}", a.log_text());
    }
    for table in ["table_state", "sync_jobs", "events"] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM sync_metadata.{table} WHERE cluster_name = 'test-host' AND client_name = 'mover'"
        )))
        .fetch_one(&admin)
        .await
        .unwrap();
        assert_eq!(n, 0, "{table}: node-a wrote mover's rows after the move\n{}", a.log_text());
    }
    let v = b.get_json("/api/v1/clients/mover").await.expect("node-b serves mover");
    assert_eq!(v["status"]["phase"], "Synced", "{v:#}");
}

/// Issue 16: the preview of `cluster deregister` takes each replica's ROLE from the lease,
/// like `cluster status`: after a `kill -9` every `hosts.is_leader` may still say true,
/// but only the lease holder is shown leading, and a replica without a recent heartbeat
/// is `unknown`.
#[tokio::test(flavor = "multi_thread")]
async fn deregister_preview_takes_the_role_from_the_lease() {
    let env = TestEnv::new("dereg_roles").await;
    let admin = env.admin_pool().await;
    tenant(&env, &env.cluster, "idle", false);
    for (node, age) in [("node-a", 1), ("node-b", 1), ("node-c", 600)] {
        sqlx::query(
            "INSERT INTO sync_metadata.hosts (cluster_name, node_id, hostname, status, is_leader, last_heartbeat)
             VALUES ($1, $2, 'h-' || $2, 'active', true, now() - make_interval(secs => $3))",
        )
        .bind(&env.cluster)
        .bind(node)
        .bind(f64::from(age))
        .execute(&admin)
        .await
        .expect("insert a host");
    }
    sqlx::query(
        "INSERT INTO sync_metadata.leader_election (cluster_name, leader_id, holder_instance, epoch, expires_at)
         VALUES ($1, 'node-b', gen_random_uuid(), 3, now() + interval '1 minute')",
    )
    .bind(&env.cluster)
    .execute(&admin)
    .await
    .expect("insert the lease");
    // Not on a terminal and without --yes: the preview, then a refusal; nothing changes.
    let (out, _) = fails(&env.ctl(&admin_args(&env, &["cluster", "deregister", &env.cluster])));
    assert!(out.contains("Leader:   node-b (epoch 3, lease valid)"), "{out}");
    let role = |node: &str| {
        let row = out.lines().find(|l| l.trim_start().starts_with(&format!("{node} "))).expect("a host row");
        row.split_whitespace().nth(2).unwrap_or_default().to_string()
    };
    assert_eq!((role("node-a"), role("node-b"), role("node-c")), ("standby".into(), "leader".into(), "unknown".into()));
    assert_eq!(out.matches(" leader ").count(), 1, "one leader: {out}");
}
