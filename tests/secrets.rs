//! Secrets never leak: a whole sync and a failover with the real owsyncd (two replicas,
//! kill -9 of the leader) and owsyncctl commands, with a known password and API token
//! read from `*_FILE` paths, at debug log level. Neither appears in any log line, error
//! message, `/proc/PID/cmdline` or `/proc/PID/environ`, any API answer, or the server's log.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::daemon::{Daemon, eventually};
use common::{SYNC_PASSWORD, TestEnv, free_port, pg, small_db};

const TOKEN: &str = "tok-SECRET-91c4e7b2d0";
const WRONG_PASSWORD: &str = "wrong-pw-SECRET-3fa8";

/// Every secret of this test: the sync_service and admin passwords, the API token and
/// a wrong password that a failing connection carries.
fn secrets() -> Vec<String> {
    vec![SYNC_PASSWORD.into(), pg().admin_password().into(), TOKEN.into(), WRONG_PASSWORD.into()]
}

/// Collects every text a process printed or served, with where it came from.
#[derive(Default)]
struct Seen {
    texts: Vec<(String, String)>,
}

impl Seen {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.texts.push((what.into(), text.into()));
    }

    fn assert_clean(&self) {
        let mut checked = 0;
        for (what, text) in &self.texts {
            for s in secrets() {
                assert!(!text.contains(&s), "{what} contains the secret {s:?}:\n{text}");
            }
            checked += text.len();
            println!("clean: {what} ({} bytes)", text.len());
        }
        println!("FIGURE {} texts, {checked} bytes, none contains a secret", self.texts.len());
    }
}

/// owsyncd at debug level, secrets only from files.
fn start(env: &TestEnv, node: &str, url_file: &Path, token_file: &Path) -> Daemon {
    let port = free_port();
    let log = env.path(&format!("{node}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_owsyncd"))
        .args(["--cluster", &env.cluster, "--node-id", node, "--listen", &listen])
        .args(["--lease-duration", "4s", "--renew-deadline", "3s", "--retry-period", "500ms"])
        .env_remove("OWSYNC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("OWSYNC_DATABASE_URL_FILE", url_file)
        .env("OWSYNC_API_TOKEN_FILE", token_file)
        .env("OWSYNC_LOG", "debug")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Daemon { child, port, node_id: node.into(), log }
}

/// owsyncctl at debug level with the URL from a file; stdout and stderr.
fn ctl(env: &TestEnv, url_file: &Path, args: &[&str], seen: &mut Seen) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_owsyncctl"))
        .args(args)
        .env_remove("OWSYNC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("OWSYNC_DATABASE_URL_FILE", url_file)
        .env("OWSYNC_CLUSTER", &env.cluster)
        .env("OWSYNC_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    seen.add(format!("owsyncctl {}", args.join(" ")), text.clone());
    (o.status.code().unwrap_or(-1), text)
}

/// Every endpoint of a replica, with and without (and with a wrong) token.
async fn api(d: &Daemon, seen: &mut Seen) {
    let c = reqwest::Client::new();
    for path in
        ["/health", "/healthz", "/readyz", "/metrics", "/openapi.json", "/api/v1/clients", "/api/v1/clients/acme"]
    {
        let body = c.get(d.url(path)).send().await.unwrap().text().await.unwrap();
        seen.add(format!("{} GET {path}", d.node_id), body);
    }
    let state = serde_json::json!({"key": "deploy.acme", "value": {"by": d.node_id}}).to_string();
    let trigger = serde_json::json!({"client_name": "acme"}).to_string();
    for (name, auth) in
        [("right", Some(TOKEN.to_string())), ("wrong", Some(format!("{TOKEN}-typo"))), ("no", None::<String>)]
    {
        for (method, path, body) in
            [(reqwest::Method::PUT, "/api/v1/state", &state), (reqwest::Method::POST, "/api/v1/sync/trigger", &trigger)]
        {
            let mut r = c.request(method.clone(), d.url(path)).header("content-type", "application/json");
            if let Some(a) = &auth {
                r = r.header("Authorization", format!("Bearer {a}"));
            }
            let resp = r.body(body.clone()).send().await.unwrap();
            let code = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert_eq!(code == 401, name != "right", "{method} {path} with {name} token: {code} {text}");
            seen.add(format!("{} {method} {path} ({name} token) -> {code}", d.node_id), text);
        }
    }
    let body = c.get(d.url("/api/v1/state?key=deploy.acme")).send().await.unwrap().text().await.unwrap();
    seen.add(format!("{} GET /api/v1/state", d.node_id), body);
}

/// A running daemon's argv and environment.
fn proc_files(d: &Daemon, seen: &mut Seen) {
    for f in ["cmdline", "environ"] {
        let raw = std::fs::read(format!("/proc/{}/{f}", d.child.id())).unwrap();
        let text = String::from_utf8_lossy(&raw).replace('\0', " ");
        assert!(text.contains("owsyncd") || text.contains("OWSYNC_"), "{f}: {text}");
        seen.add(format!("{} /proc/PID/{f}", d.node_id), text);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_logs_errors_argv_environ_or_api_answers() {
    let env = TestEnv::new("secrets").await;
    let mut seen = Seen::default();
    let token_file = env.path("api-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let url_file = env.url_file.clone();
    // The inputs do hold the secrets (so the searches below can find a leak).
    assert!(std::fs::read_to_string(&url_file).unwrap().contains(SYNC_PASSWORD));
    assert!(std::fs::read_to_string(&token_file).unwrap().contains(TOKEN));
    let db = env.path("webui.db");
    small_db(&db, 91);
    let manifest = env.manifest("acme", &db, "");

    let (code, out) = ctl(&env, &url_file, &["apply", "-f", manifest.to_str().unwrap()], &mut seen);
    assert_eq!(code, 0, "{out}");
    let mut a = start(&env, "node-a", &url_file, &token_file);
    a.wait_up(Duration::from_secs(20)).await;
    let (code, out) =
        ctl(&env, &url_file, &["wait", "client/acme", "--for", "condition=Synced", "--timeout", "60s"], &mut seen);
    assert_eq!(code, 0, "{out}");
    let b = start(&env, "node-b", &url_file, &token_file);
    b.wait_up(Duration::from_secs(20)).await;
    let br = &b;
    eventually(Duration::from_secs(10), "node-b sees node-a lead", || async move {
        br.get_json("/health").await.filter(|h| h["leader_id"] == "node-a").map(|_| ())
    })
    .await;

    for args in [
        vec!["get", "clients"],
        vec!["get", "clients", "-o", "json"],
        vec!["describe", "client", "acme"],
        vec!["trigger", "acme"],
        vec!["sync", "acme", "--once"],
        vec!["cluster", "status"],
        vec!["doctor"],
        vec!["doctor", "-o", "json"],
    ] {
        ctl(&env, &url_file, &args, &mut seen);
    }
    api(&a, &mut seen).await;
    api(&b, &mut seen).await;
    proc_files(&a, &mut seen);
    proc_files(&b, &mut seen);

    // Failover: kill -9 the leader; the standby takes over and syncs.
    a.kill9();
    eventually(Duration::from_secs(15), "node-b leads", || async move { br.is_leader().await.then_some(()) }).await;
    let (code, out) = ctl(&env, &url_file, &["trigger", "acme"], &mut seen);
    assert_eq!(code, 0, "{out}");
    api(&b, &mut seen).await;

    // A wrong password: owsyncctl's errors and a daemon that cannot connect.
    let wrong = env.path("wrong-url");
    std::fs::write(&wrong, format!("postgres://sync_service:{WRONG_PASSWORD}@127.0.0.1:{}/{}", pg().port(), env.db))
        .unwrap();
    for args in [vec!["get", "clients"], vec!["doctor"], vec!["sync", "acme", "--once", "--force"]] {
        let (code, out) = ctl(&env, &wrong, &args, &mut seen);
        assert_ne!(code, 0, "{args:?} worked with a wrong password: {out}");
        assert!(out.contains("password authentication failed") || out.contains("authentication failed"), "{out}");
    }
    let mut bad = start(&env, "node-bad", &wrong, &token_file);
    let badr = &bad;
    eventually(Duration::from_secs(15), "node-bad reports its failure", || async move {
        let log = badr.log_text();
        log.contains("authentication failed").then_some(())
    })
    .await;
    proc_files(&bad, &mut seen);
    bad.kill9();
    seen.add("node-bad log", bad.log_text());

    let mut b = b;
    b.terminate();
    for d in [&a, &b] {
        let log = d.log_text();
        assert!(log.contains("DEBUG"), "{} did not log at debug level:\n{log}", d.node_id);
        seen.add(format!("{} log", d.node_id), log);
    }
    // And PostgreSQL's own log (failed logins, errors with statements).
    let server_log = std::fs::read_to_string(pg().log_file()).unwrap_or_default();
    assert!(server_log.contains("password authentication failed"), "{server_log}");
    seen.add("PostgreSQL server log", server_log);
    seen.assert_clean();
}
