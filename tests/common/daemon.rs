//! Running the real `owsyncd` as a process.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestEnv, free_port};

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub node_id: String,
    pub log: std::path::PathBuf,
}

impl Daemon {
    /// Starts owsyncd for the test's cluster with short election timings.
    pub fn start(env: &TestEnv, node_id: &str, extra: &[&str]) -> Daemon {
        Daemon::start_in(env, &env.cluster, node_id, extra)
    }

    /// Starts owsyncd for `cluster` (another host's cluster in the same database).
    pub fn start_in(env: &TestEnv, cluster: &str, node_id: &str, extra: &[&str]) -> Daemon {
        let port = free_port();
        let log = env.path(&format!("{node_id}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--cluster", cluster, "--node-id", node_id, "--listen", listen.as_str()];
        args.extend_from_slice(extra);
        let child = Command::new(env!("CARGO_BIN_EXE_owsyncd"))
            .args(&args)
            .env_remove("OWSYNC_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .env("OWSYNC_DATABASE_URL_FILE", &env.url_file)
            .env("OWSYNC_LOG", "info,sqlx=warn")
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn owsyncd");
        Daemon { child, port, node_id: node_id.to_string(), log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET a JSON endpoint; `None` while the daemon is not answering.
    pub async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let r = reqwest::Client::new().get(self.url(path)).timeout(Duration::from_secs(2)).send().await.ok()?;
        r.json().await.ok()
    }

    pub async fn get_text(&self, path: &str) -> Option<String> {
        let r = reqwest::Client::new().get(self.url(path)).timeout(Duration::from_secs(2)).send().await.ok()?;
        r.text().await.ok()
    }

    pub async fn is_leader(&self) -> bool {
        self.get_json("/health").await.and_then(|h| h["is_leader"].as_bool()).unwrap_or(false)
    }

    /// Waits until /health answers.
    pub async fn wait_up(&self, timeout: Duration) {
        let t = Instant::now();
        while self.get_json("/health").await.is_none() {
            assert!(
                t.elapsed() < timeout,
                "owsyncd {} not up after {timeout:?}; log:\n{}",
                self.node_id,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.wait().expect("wait owsyncd")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
