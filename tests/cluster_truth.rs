//! What `owsyncctl cluster status` and `apply` tell an operator, against real servers and
//! processes: the role comes from the lease, so a replica killed with -9 is never shown
//! leading beside its successor and is shown stale once its heartbeat is; JSON output uses
//! one naming convention; an unknown cluster exits 1; a kept mirror of a deregistered
//! tenant cannot be taken over by another ClientSync by a plain apply; `describe` and
//! `status.tables.*.quarantined` count the quarantined values.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, eventually};
use common::{TestEnv, ok, small_db, stderr, stdout};
use serde_json::Value;

const FAST: [&str; 6] = ["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[track_caller]
fn fails(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stderr(o)
}

fn status_json(env: &TestEnv) -> Value {
    serde_json::from_str(&ok(&env.ctl(&["cluster", "status", "-o", "json"]))).expect("cluster status -o json")
}

/// Node ids shown leading, in JSON and in the table.
fn leaders(env: &TestEnv) -> (Vec<String>, Vec<String>) {
    let v = status_json(env);
    let json = v["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .filter(|r| r["isLeader"] == true || r["role"] == "leader")
        .map(|r| r["nodeId"].as_str().unwrap_or_default().to_string())
        .collect();
    let text = ok(&env.ctl(&["cluster", "status"]));
    let table = text
        .lines()
        .skip_while(|l| !l.starts_with("Replicas:"))
        .skip(2)
        .filter(|l| l.split_whitespace().nth(1) == Some("leader"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect();
    (json, table)
}

/// Every object key in `v` is camelCase (no `_`).
fn assert_camel_case(v: &Value, path: &str) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                assert!(!k.contains('_'), "{path}.{k}: not camelCase");
                assert_camel_case(v, &format!("{path}.{k}"));
            }
        }
        Value::Array(a) => a.iter().for_each(|v| assert_camel_case(v, path)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_kill9_exactly_one_leader_is_shown_and_the_dead_one_goes_stale() {
    let env = TestEnv::new("status_kill9").await;
    let a = Daemon::start(&env, "node-a", &FAST);
    a.wait_up(Duration::from_secs(20)).await;
    let ar = &a;
    eventually(Duration::from_secs(20), "node-a leads", || async move { ar.is_leader().await.then_some(()) }).await;
    let mut b = Daemon::start(&env, "node-b", &FAST);
    b.wait_up(Duration::from_secs(20)).await;
    let env_ref = &env;
    eventually(Duration::from_secs(20), "both replicas registered", || async move {
        (status_json(env_ref)["replicas"].as_array()?.len() == 2).then_some(())
    })
    .await;
    assert_eq!(leaders(&env), (vec!["node-a".to_string()], vec!["node-a".to_string()]));
    let v = status_json(&env);
    assert_camel_case(&v, "cluster status");
    assert_eq!(v["leader"], "node-a", "{v:#}");
    assert_eq!(v["lease"]["leaderId"], "node-a", "{v:#}");

    let mut a = a;
    a.kill9();
    // Sampled until the successor leads and the dead replica is stale: never two leaders.
    let t = Instant::now();
    let mut saw_b = false;
    loop {
        let (json, table) = leaders(&env);
        assert!(
            json.len() <= 1 && table.len() <= 1,
            "two leaders shown {:?} after kill -9: {json:?} {table:?}",
            t.elapsed()
        );
        // Two commands, two instants: they must agree whenever the state held still
        // across both (the JSON read again after the table says the same).
        if leaders(&env).0 == json {
            assert_eq!(json, table, "JSON and table disagree");
        }
        saw_b |= json == ["node-b"];
        let v = status_json(&env);
        let dead = v["replicas"].as_array().unwrap().iter().find(|r| r["nodeId"] == "node-a").cloned().unwrap();
        if saw_b && dead["stale"] == true {
            assert_eq!(dead["role"], "unknown", "{v:#}");
            assert_eq!(dead["isLeader"], false, "{v:#}");
            let text = ok(&env.ctl(&["cluster", "status"]));
            let row = text.lines().find(|l| l.trim_start().starts_with("node-a")).unwrap();
            assert!(row.contains("unknown") && row.contains("stale"), "{text}");
            assert!(text.contains("Leader:  node-b"), "{text}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "node-b never shown leading with node-a stale: {v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_cluster_exits_1() {
    let env = TestEnv::new("status_unknown").await;
    let err = fails(&env.ctl(&["cluster", "status", "--cluster", "no-such-host"]));
    assert!(err.contains("cluster no-such-host is unknown"), "{err}");
    let err = fails(&env.ctl(&["cluster", "status", "--cluster", "no-such-host", "-o", "json"]));
    assert!(err.contains("unknown"), "{err}");
    // A cluster with only a ClientSync (no replica started yet) is known.
    let db = env.path("acme.db");
    small_db(&db, 1);
    let m = env.manifest("acme", &db, "");
    ok(&env.ctl(&["apply", "-f", s(&m)]));
    let out = ok(&env.ctl(&["cluster", "status"]));
    assert!(out.contains("Leader:  none (no replica has ever led this cluster)"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_mirror_cannot_be_taken_over_by_another_clientsync() {
    let env = TestEnv::new("kept_mirror").await;
    let admin = env.admin_pool().await;
    let db = env.path("umbrella.db");
    small_db(&db, 4);
    let old = env.manifest("umbrella", &db, "  enabled: false\n  target:\n    schema: client_umbrella\n");
    ok(&env.ctl(&["apply", "-f", s(&old), "--cluster", "prod-host-2"]));
    let admin_file = s(&env.admin_url_file);
    ok(&env.ctl(&["cluster", "deregister", "prod-host-2", "--yes", "--admin-url-file", admin_file]));

    let newcomer = env.path("newcomer.db");
    small_db(&newcomer, 5);
    let m = env.manifest("newcomer", &newcomer, "  target:\n    schema: client_umbrella\n");
    let err = fails(&env.ctl(&["apply", "-f", s(&m)]));
    for want in ["client_umbrella", "clientsync/umbrella of cluster prod-host-2", "as admin", "mirror_owners"] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_metadata.client_specs WHERE name = 'newcomer'")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing applied");
    // sync_service cannot hand the mirror over itself.
    let sync = env.sync_pool().await;
    let denied = sqlx::query("UPDATE sync_metadata.mirror_owners SET owner_cluster = 'test-host'").execute(&sync).await;
    assert!(denied.is_err(), "sync_service changed mirror ownership");
    // The admin's explicit adoption, as the message says; then the apply goes through.
    sqlx::query(
        "UPDATE sync_metadata.mirror_owners SET owner_cluster = 'test-host', owner_name = 'newcomer'
         WHERE schema_name = 'client_umbrella'",
    )
    .execute(&admin)
    .await
    .unwrap();
    assert!(ok(&env.ctl(&["apply", "-f", s(&m)])).contains("clientsync/newcomer created"));
    // Re-applying a deleted tenant under its own name still gets its own mirror back.
    ok(&env.ctl(&["delete", "client", "newcomer", "--force"]));
    assert!(ok(&env.ctl(&["apply", "-f", s(&m)])).contains("clientsync/newcomer"));
}

#[tokio::test(flavor = "multi_thread")]
async fn describe_and_status_count_quarantined_values() {
    let env = TestEnv::new("quarantined_counts").await;
    let db = env.path("odd.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, s TEXT);
             INSERT INTO t VALUES (1, 1, 'fine'), (2, 'not a number', 'x'), (3, 'nor this', 'y');
             CREATE TABLE ok (id INTEGER PRIMARY KEY, v TEXT);
             INSERT INTO ok VALUES (1, 'fine');",
        )
        .unwrap();
    }
    let m = env.manifest("odd", &db, "");
    ok(&env.ctl(&["apply", "-f", s(&m)]));
    let d = Daemon::start(&env, "node-a", &FAST);
    d.wait_up(Duration::from_secs(20)).await;
    let dr = &d;
    let v = eventually(Duration::from_secs(60), "odd synced", || async move {
        let v = dr.get_json("/api/v1/clients/odd").await?;
        (v["status"]["phase"] == "Synced").then_some(v)
    })
    .await;
    let admin = env.admin_pool().await;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_metadata.quarantine WHERE client_name = 'odd' AND table_name = 't' AND resolved_at IS NULL",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(open, 2, "the fixture quarantines two values");
    assert_eq!(v["status"]["tables"]["t"]["quarantined"], 2, "{v:#}");
    assert_eq!(v["status"]["tables"]["ok"]["quarantined"], 0, "{v:#}");
    let described = ok(&env.ctl(&["describe", "client", "odd"]));
    let row = described
        .lines()
        .find(|l| l.split_whitespace().next() == Some("t"))
        .unwrap_or_else(|| panic!("no row for table t: {described}"));
    let header = described.lines().find(|l| l.contains("QUARANTINED")).expect("QUARANTINED column");
    let col = header.split_whitespace().position(|w| w == "QUARANTINED").unwrap();
    assert_eq!(row.split_whitespace().nth(col), Some("2"), "{described}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_pipe_ends_quietly_and_daemon_logs_have_no_colour_codes() {
    use std::process::{Command, Stdio};
    let env = TestEnv::new("closed_pipe").await;
    let d = Daemon::start(&env, "node-a", &FAST);
    d.wait_up(Duration::from_secs(20)).await;
    let dr = &d;
    eventually(Duration::from_secs(20), "node-a leads", || async move { dr.is_leader().await.then_some(()) }).await;
    // `owsyncctl cluster status | true`: the reader is gone before owsyncctl prints.
    let mut child = Command::new(env!("CARGO_BIN_EXE_owsyncctl"))
        .args(["cluster", "status"])
        .env("OWSYNC_DATABASE_URL_FILE", &env.url_file)
        .env("OWSYNC_CLUSTER", &env.cluster)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn owsyncctl");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(141), "stderr: {}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    // owsyncd's log goes to a file here: plain text.
    let log = d.log_text();
    assert!(log.contains("owsyncd starting"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a log file: {log:?}");
}
