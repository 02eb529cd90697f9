//! owsyncd through Debian's PgBouncer in front of the test's PostgreSQL: in session mode
//! it works (sync reaches Synced, the mirror equals the source, a standby takes over
//! after kill -9 within the lease); in transaction mode, and with a URL that names a
//! transaction pooler (port 6543, pgbouncer=true), it refuses to start with a message
//! that names the fix. Needs `pgbouncer` (`apt-get install -y pgbouncer`).

mod common;

use std::time::{Duration, Instant};

use common::bouncer::Bouncer;
use common::compare::mirror_diff;
use common::daemon::{Daemon, eventually};
use common::{TestEnv, ok, pg, small_db};
use owsync::fixtures::{MutateOptions, mutate};

/// Points the test's owsyncd (and owsyncctl) at `url`.
fn use_url(env: &mut TestEnv, name: &str, url: &str) {
    let f = env.path(name);
    std::fs::write(&f, url).unwrap();
    env.url_file = f;
}

/// Waits for the daemon to exit; its status and log.
async fn exits(d: &mut Daemon, within: Duration) -> (std::process::ExitStatus, String) {
    let t = Instant::now();
    loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            return (st, d.log_text());
        }
        assert!(t.elapsed() < within, "owsyncd still running after {within:?}; log:\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn session_pooler_works() {
    let mut env = TestEnv::new("pgbouncer_session").await;
    let db = env.path("webui.db");
    small_db(&db, 61);
    ok(&env.ctl(&["apply", "-f", env.manifest("pooled", &db, "").to_str().unwrap()]));
    let bouncer = Bouncer::start("session");
    let url = bouncer.url(&env.db);
    use_url(&mut env, "pooled-url", &url);
    let flags = ["--lease-duration", "4s", "--renew-deadline", "3s", "--retry-period", "500ms"];
    let mut a = Daemon::start(&env, "node-a", &flags);
    a.wait_up(Duration::from_secs(20)).await;
    let out = ok(&env.ctl(&["wait", "client/pooled", "--for", "condition=Synced", "--timeout", "60s"]));
    assert!(out.contains("condition met"), "{out}");
    let pool = env.sync_pool().await;
    let (diffs, n) = mirror_diff(&pool, "client_pooled", &db).await;
    assert!(diffs.is_empty() && n > 20, "{diffs:#?}");
    assert!(a.is_leader().await);
    assert!(!a.log_text().contains("transaction-mode"), "{}", a.log_text());
    let blog = bouncer.log();
    assert!(blog.contains("sync_service") && blog.contains("login attempt"), "nothing went through pgbouncer:\n{blog}");

    // A standby through the same pooler takes over after kill -9 within the lease (the
    // pooler keeps the dead leader's server session, so the lease has to lapse).
    let b = Daemon::start(&env, "node-b", &flags);
    b.wait_up(Duration::from_secs(20)).await;
    let br = &b;
    eventually(Duration::from_secs(10), "node-b's first heartbeat as standby", || async move {
        br.get_json("/health").await.filter(|h| h["leader_id"] == "node-a").map(|_| ())
    })
    .await;
    a.kill9();
    let t = Instant::now();
    eventually(Duration::from_secs(15), "node-b leads", || async move { br.is_leader().await.then_some(()) }).await;
    let took = t.elapsed();
    println!("FIGURE through PgBouncer (session): kill -9 -> standby leads in {took:?} (lease 4s)");
    assert!(took < Duration::from_secs(6), "takeover through the pooler took {took:?}");
    mutate(&db, &MutateOptions { ops: 30, seed: 3, ..Default::default() }).unwrap();
    ok(&env.ctl(&["trigger", "pooled"]));
    let (pool_r, db_r) = (&pool, &db);
    eventually(Duration::from_secs(20), "node-b syncs through the pooler", || async move {
        mirror_diff(pool_r, "client_pooled", db_r).await.0.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_pooler_is_refused_with_the_fix() {
    let mut env = TestEnv::new("pgbouncer_transaction").await;
    let bouncer = Bouncer::start("transaction");
    let url = bouncer.url(&env.db);
    use_url(&mut env, "pooled-url", &url);
    let mut d = Daemon::start(&env, "node-a", &[]);
    let (st, log) = exits(&mut d, Duration::from_secs(30)).await;
    assert!(!st.success(), "owsyncd accepted a transaction-mode pooler; log:\n{log}");
    for want in ["transaction-mode pooler", "session pooler", "5432", "direct connection"] {
        assert!(log.contains(want), "the refusal does not say {want:?}:\n{log}");
    }
    println!("refusal: {}", log.lines().find(|l| l.contains("transaction-mode")).unwrap_or(""));
}

#[tokio::test(flavor = "multi_thread")]
async fn urls_naming_a_transaction_pooler_are_refused() {
    let mut env = TestEnv::new_with("pgbouncer_url_hint", false).await;
    for (i, url) in [
        "postgres://sync_service:pw@127.0.0.1:6543/postgres".to_string(),
        format!("postgres://sync_service:pw@127.0.0.1:{}/{}?pgbouncer=true", pg().port(), env.db),
    ]
    .iter()
    .enumerate()
    {
        use_url(&mut env, &format!("url-{i}"), url);
        let mut d = Daemon::start(&env, &format!("node-{i}"), &[]);
        let (st, log) = exits(&mut d, Duration::from_secs(10)).await;
        assert!(!st.success(), "{url}: owsyncd started; log:\n{log}");
        assert!(log.contains("transaction-mode") && log.contains("5432"), "{url}:\n{log}");
    }
}
