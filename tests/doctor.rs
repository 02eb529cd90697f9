//! `owsyncctl doctor` against real servers: a healthy cluster role (and the shared sync_service, warned about), a superuser,
//! a role lacking grants, an unmigrated database, a closed port, a wrong password, a
//! session-mode and a transaction-mode PgBouncer (the latter on port 6543, Supabase's
//! transaction pooler port). The password never appears in any output.

mod common;

use std::time::{Duration, Instant};

use common::bouncer::Bouncer;
use common::{SYNC_PASSWORD, TestEnv, free_port, pg};

/// Runs doctor with the URL in a file; exit code and stdout + stderr. Asserts that no
/// known password is printed.
fn doctor(env: &TestEnv, url: &str, extra: &[&str]) -> (i32, String) {
    let f = env.path(&format!("doctor-url-{}", free_port()));
    std::fs::write(&f, url).unwrap();
    let mut args = vec!["doctor", "--database-url-file", f.to_str().unwrap(), "--timeout", "5s"];
    args.extend_from_slice(extra);
    let o = env.ctl(&args);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    for secret in [SYNC_PASSWORD, pg().admin_password(), "lack-pw-7c2e91", "wrong-pw-e4d1aa"] {
        assert!(!text.contains(secret), "doctor printed a password:\n{text}");
    }
    println!("$ owsyncctl {}\n{text}", args.join(" "));
    (o.status.code().unwrap_or(-1), text)
}

fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?}:\n{text}"))
}

/// A cluster role (`owsyncctl cluster add-role`) of the test's cluster; its URL.
fn cluster_role_url(env: &TestEnv, cluster: &str) -> String {
    let pw = env.path(&format!("role-pw-{cluster}"));
    std::fs::write(&pw, "role-pw-3c81aa").unwrap();
    let o = env.ctl(&[
        "cluster",
        "add-role",
        cluster,
        "--password-file",
        pw.to_str().unwrap(),
        "--admin-url-file",
        env.admin_url_file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "add-role: {}", String::from_utf8_lossy(&o.stderr));
    let role = String::from_utf8_lossy(&o.stdout).trim().to_string();
    format!("postgres://{role}:role-pw-3c81aa@127.0.0.1:{}/{}", pg().port(), env.db)
}

const EVERY_CHECK: [&str; 14] = [
    "url",
    "endpoint",
    "dns",
    "tcp",
    "connect",
    "server",
    "tls",
    "session",
    "schema",
    "role",
    "schema usage",
    "tables",
    "provision",
    "rls",
];

#[tokio::test(flavor = "multi_thread")]
async fn healthy_cluster_role_url_passes_every_check() {
    let mut env = TestEnv::new("doctor_ok").await;
    env.cluster = "doctor-ok-host".into();
    let url = cluster_role_url(&env, "doctor-ok-host");
    let (code, text) = doctor(&env, &url, &[]);
    assert_eq!(code, 0, "{text}");
    for check in EVERY_CHECK.iter().chain(&["cluster role"]) {
        line(&text, &format!("✓ {check}: "));
    }
    assert!(!text.lines().any(|l| l.starts_with("✗ ") || l.starts_with("! ")), "{text}");
    assert!(line(&text, "✓ tcp: ").contains("IPv4"), "{text}");
    assert!(line(&text, "✓ dns: ").contains("IPv6 none; IPv4 127.0.0.1"), "{text}");
    assert!(line(&text, "✓ server: ").contains("PostgreSQL 15"), "{text}");
    assert!(line(&text, "✓ rls: ").contains("doctor-ok-host"), "{text}");
    assert!(line(&text, "✓ cluster role: ").contains("bound to cluster doctor-ok-host"), "{text}");
    assert!(text.contains("postgres://owsync_doctor_ok_host:***@127.0.0.1:"), "the URL is shown redacted: {text}");
    assert!(!text.contains("role-pw-3c81aa"), "{text}");
    assert_eq!(text.lines().last().unwrap(), "✓ verdict: usable by owsyncd", "{text}");

    // The same for machines.
    let f = env.path("url-json");
    std::fs::write(&f, &url).unwrap();
    let o = env.ctl(&["doctor", "--database-url-file", f.to_str().unwrap(), "-o", "json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("doctor -o json prints JSON");
    assert_eq!(v["usable"], true);
    assert!(v["url"].as_str().unwrap().contains(":***@"), "{v}");
    let checks = v["checks"].as_array().unwrap();
    assert!(checks.len() >= 15 && checks.iter().all(|c| c["status"] == "ok"), "{v:#}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("role-pw-3c81aa"));

    // The role of another cluster sees none of this one's rows: that fails.
    let (code, text) = doctor(&env, &url, &["--cluster", "another-host"]);
    assert_eq!(code, 1, "{text}");
    assert!(line(&text, "✗ cluster role: ").contains("bound to cluster doctor-ok-host, not another-host"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_sync_service_url_is_usable_but_warned_about() {
    let env = TestEnv::new("doctor_shared").await;
    let (code, text) = doctor(&env, &env.sync_url, &[]);
    assert_eq!(code, 0, "{text}");
    for check in EVERY_CHECK {
        line(&text, &format!("✓ {check}: "));
    }
    let warnings: Vec<&str> = text.lines().filter(|l| l.starts_with("! ")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    let w = line(&text, "! cluster role: ");
    assert!(w.contains("shared sync_service") && w.contains("owsyncctl cluster add-role test-host"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("✗ ")), "{text}");
    assert!(line(&text, "✓ rls: ").contains("test-host"), "{text}");
    assert!(text.contains("postgres://sync_service:***@127.0.0.1:"), "the URL is shown redacted: {text}");
    assert_eq!(text.lines().last().unwrap(), "✓ verdict: usable by owsyncd, with 1 warning(s)", "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn superuser_is_usable_but_warned_about_excess_privileges() {
    let env = TestEnv::new("doctor_super").await;
    let (code, text) = doctor(&env, &env.admin_url, &[]);
    assert_eq!(code, 0, "a superuser works, with warnings: {text}");
    assert!(line(&text, "! role: ").contains("SUPERUSER, BYPASSRLS, CREATEROLE, CREATEDB"), "{text}");
    let excess: Vec<&str> = text.lines().filter(|l| l.starts_with("! excess: ")).collect();
    assert!(excess.iter().any(|l| l.contains("may DELETE from") && l.contains("client_specs")), "{text}");
    assert!(excess.iter().any(|l| l.contains("may TRUNCATE")), "{text}");
    assert!(excess.iter().any(|l| l.contains("owns") && l.contains("bypasses row-level security")), "{text}");
    assert!(line(&text, "! rls: ").contains("bypasses row-level security"), "{text}");
    assert!(line(&text, "✓ verdict: ").contains("with"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_lacking_grants_fails_naming_what_is_missing() {
    let env = TestEnv::new("doctor_lacking").await;
    let admin = env.admin_pool().await;
    for sql in [
        "DO $$ BEGIN CREATE ROLE doctor_lacking LOGIN PASSWORD 'lack-pw-7c2e91';
           EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "GRANT USAGE ON SCHEMA sync_metadata TO doctor_lacking",
        "GRANT SELECT ON ALL TABLES IN SCHEMA sync_metadata TO doctor_lacking",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&admin).await.unwrap();
    }
    let url = format!("postgres://doctor_lacking:lack-pw-7c2e91@127.0.0.1:{}/{}", pg().port(), env.db);
    let (code, text) = doctor(&env, &url, &[]);
    assert_eq!(code, 1, "{text}");
    let tables = line(&text, "✗ tables: ");
    let want = "INSERT/UPDATE on sync_metadata.{client_specs, client_status, conflict_log, deletion_guard, events, hosts, inventories, leader_election";
    assert!(tables.contains(want), "{want}: {text}");
    assert!(!tables.contains("schema_migrations"), "schema_migrations needs SELECT only: {text}");
    assert!(!tables.contains("retired_clusters"), "retired_clusters needs SELECT only: {text}");
    assert!(line(&text, "✗ provision: ").contains("lacks EXECUTE on sync_metadata.provision_table"), "{text}");
    line(&text, "✓ schema: ");
    assert!(line(&text, "✗ verdict: ").contains("NOT usable"), "{text}");

    // Without USAGE on the schema it says so first.
    sqlx::raw_sql("REVOKE USAGE ON SCHEMA sync_metadata FROM doctor_lacking").execute(&admin).await.unwrap();
    let (code, text) = doctor(&env, &url, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(line(&text, "✗ schema usage: ").contains("GRANT USAGE ON SCHEMA sync_metadata TO doctor_lacking"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unmigrated_database_says_to_run_migrate() {
    let env = TestEnv::new_with("doctor_unmigrated", false).await;
    let (code, text) = doctor(&env, &env.admin_url, &[]);
    assert_eq!(code, 1, "{text}");
    let schema = line(&text, "✗ schema: ");
    assert!(schema.contains("sync_metadata is missing") && schema.contains("owsyncctl migrate"), "{text}");
    line(&text, "- privileges: ");
    assert!(line(&text, "✗ verdict: ").contains("owsyncctl migrate"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_port_and_wrong_password_fail_fast_with_the_cause() {
    let env = TestEnv::new("doctor_connect").await;
    let port = free_port();
    let t = Instant::now();
    let (code, text) = doctor(&env, &format!("postgres://sync_service:{SYNC_PASSWORD}@127.0.0.1:{port}/x"), &[]);
    let took = t.elapsed();
    assert_eq!(code, 1, "{text}");
    assert!(line(&text, "✗ tcp: ").contains("refused"), "{text}");
    assert!(line(&text, "✗ connect: ").contains(&format!("connection refused by 127.0.0.1:{port}")), "{text}");
    println!("FIGURE doctor against a closed port: exit 1 in {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");

    let url = format!("postgres://sync_service:wrong-pw-e4d1aa@127.0.0.1:{}/{}", pg().port(), env.db);
    let (code, text) = doctor(&env, &url, &[]);
    assert_eq!(code, 1, "{text}");
    assert!(line(&text, "✗ connect: ").contains("authentication failed for user sync_service"), "{text}");
    assert!(text.contains("sync_service:***@"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn poolers_session_mode_passes_transaction_mode_on_6543_fails_with_the_fix() {
    let env = TestEnv::new("doctor_pooler").await;
    let session = Bouncer::start("session");
    let (code, text) = doctor(&env, &session.url(&env.db), &[]);
    assert_eq!(code, 0, "{text}");
    line(&text, "✓ session: ");
    line(&text, "✓ rls: ");

    let transaction = Bouncer::start_on("transaction", 6543);
    let url = transaction.url(&env.db);
    assert!(url.contains(":6543/"), "{url}");
    let (code, text) = doctor(&env, &url, &[]);
    assert_eq!(code, 1, "{text}");
    let pooler = line(&text, "✗ pooler: ");
    assert!(pooler.contains("port 6543") && pooler.contains("5432"), "{text}");
    line(&text, "✓ connect: ");
    let session_line = line(&text, "✗ session: ");
    assert!(session_line.contains("transaction-mode pooler") && session_line.contains("session pooler"), "{text}");
    assert!(line(&text, "✗ verdict: ").contains("5432"), "{text}");
    assert!(transaction.log().contains("login attempt"), "doctor did not go through pgbouncer:\n{}", transaction.log());
}

/// Forwards TCP from `[::1]:PORT` to the test's PostgreSQL on 127.0.0.1: an IPv6 path.
async fn ipv6_forwarder() -> u16 {
    let l = tokio::net::TcpListener::bind("[::1]:0").await.expect("bind [::1] (no IPv6 loopback?)");
    let port = l.local_addr().unwrap().port();
    let target = format!("127.0.0.1:{}", pg().port());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn ipv6_literal_is_resolved_reported_and_used() {
    let env = TestEnv::new("doctor_ipv6").await;
    let port = ipv6_forwarder().await;
    let url = format!("postgres://sync_service:{SYNC_PASSWORD}@[::1]:{port}/{}", env.db);
    let (code, text) = tokio::task::block_in_place(|| doctor(&env, &url, &[]));
    assert_eq!(code, 0, "{text}");
    assert!(line(&text, "✓ dns: ").contains("IPv6 ::1; IPv4 none"), "{text}");
    assert!(line(&text, "✓ tcp: ").contains("connections use IPv6"), "{text}");
    line(&text, "✓ connect: ");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_answers_times_out() {
    let env = TestEnv::new("doctor_timeout").await;
    // Accepts TCP (the kernel's backlog) but never speaks PostgreSQL.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let t = Instant::now();
    let url = format!("postgres://sync_service:{SYNC_PASSWORD}@127.0.0.1:{port}/x");
    let f = env.path("silent-url");
    std::fs::write(&f, &url).unwrap();
    let o = env.ctl(&["doctor", "--database-url-file", f.to_str().unwrap(), "--timeout", "1s"]);
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    println!("{text}FIGURE doctor against a silent server with --timeout 1s: {took:?}");
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(line(&text, "✓ tcp: ").contains("answers"), "{text}");
    assert!(line(&text, "✗ connect: ").contains("no PostgreSQL answer from 127.0.0.1"), "{text}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_urls_fail_without_printing_the_password() {
    let env = TestEnv::new("doctor_malformed").await;
    for (url, want) in [
        (format!("postgres://sync_service:{SYNC_PASSWORD}@127.0.0.1:notaport/db"), "invalid port number"),
        (format!("postgres://sync_service:{SYNC_PASSWORD}@127.0.0.1/db?sslmode=bogus"), "bogus"),
        (format!("mysql://sync_service:{SYNC_PASSWORD}@127.0.0.1/db"), "postgres://"),
    ] {
        let (code, text) = doctor(&env, &url, &[]);
        assert_eq!(code, 1, "{text}");
        assert!(line(&text, "✗ url: ").contains(want), "{want}: {text}");
    }
}

/// The connection budget: doctor prints the server's max_connections, the sessions in
/// use (a running owsyncd's control session among them, counted apart) and how many
/// host pairs of the default budget fit.
#[tokio::test(flavor = "multi_thread")]
async fn prints_max_connections_sessions_in_use_and_the_pairs_that_fit() {
    let env = TestEnv::new("doctor_budget").await;
    let admin = env.admin_pool().await;
    let d = common::daemon::Daemon::start(&env, "node-a", &[]);
    d.wait_up(std::time::Duration::from_secs(20)).await;
    let (_, text) = doctor(&env, &env.sync_url, &[]);
    let l = line(&text, "✓ connections: ");
    let nums: Vec<i64> =
        l.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect();
    // max_connections N (R reserved); S sessions in use, O of them owsyncd's; ...
    // (--max-connections 4: 5 sessions a pair at peak, 2 idle): F fit ..., M more fit now
    let [max, reserved, in_use, owsyncd, budget, peak, idle, fit, more] = nums[..] else { panic!("{l}") };
    let shown: String = sqlx::query_scalar("SHOW max_connections").fetch_one(&admin).await.unwrap();
    assert_eq!(max.to_string(), shown, "{l}");
    assert!(owsyncd >= 1 && in_use > owsyncd, "the daemon's control session and the doctor's own: {l}");
    assert_eq!((budget, peak, idle), (4, 5, 2), "{l}");
    assert_eq!(fit, (max - reserved - (in_use - owsyncd - 1) - 1) / 5, "{l}");
    assert_eq!(more, (max - reserved - (in_use - 1) - 1) / 5, "{l}");
    drop(d);
}
