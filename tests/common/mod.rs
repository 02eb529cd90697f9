//! Shared harness of the integration tests: one throwaway PostgreSQL per test binary
//! (stopped by its watchdog when the binary exits, even on panic or SIGKILL), a fresh
//! migrated database per test, the real binaries as processes, Open WebUI-shaped
//! SQLite inputs from the project's own generator, and an independent comparison of a
//! mirror with its source.
#![allow(dead_code)]

pub mod bouncer;
pub mod compare;
pub mod daemon;
pub mod jobs;
pub mod repo;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use owsync::devpg::{Options, TempPostgres};
use owsync::fixtures::{CreateOptions, JournalMode, SchemaFlavor};
use sqlx::PgPool;

/// The password of sync_service on every test server (roles are server-wide).
pub const SYNC_PASSWORD: &str = "test-sync-pw-5b1e0d";

pub fn pg() -> &'static TempPostgres {
    static PG: OnceLock<TempPostgres> = OnceLock::new();
    PG.get_or_init(|| TempPostgres::start(Options::default()).expect("start throwaway PostgreSQL"))
}

/// Serialises migrations inside one test binary (they touch the shared role).
static MIGRATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's world: its own database, migrated, with URL files for admin and
/// sync_service, and a scratch directory.
pub struct TestEnv {
    pub db: String,
    pub admin_url: String,
    pub sync_url: String,
    pub url_file: PathBuf,
    pub admin_url_file: PathBuf,
    pub dir: tempfile::TempDir,
    pub cluster: String,
}

impl TestEnv {
    /// A fresh database; migrated unless `migrate` is false.
    pub async fn new_with(prefix: &str, migrate: bool) -> TestEnv {
        let pg = pg();
        let db = tokio::task::block_in_place(|| pg.create_database(prefix)).expect("create database");
        let admin_url = pg.admin_url(&db);
        let sync_url = format!("postgres://sync_service:{SYNC_PASSWORD}@127.0.0.1:{}/{db}", pg.port());
        let dir = tempfile::tempdir().expect("tempdir");
        let url_file = dir.path().join("database-url");
        std::fs::write(&url_file, &sync_url).expect("write url file");
        let admin_url_file = dir.path().join("admin-url");
        std::fs::write(&admin_url_file, &admin_url).expect("write admin url file");
        let env = TestEnv { db, admin_url, sync_url, url_file, admin_url_file, dir, cluster: "test-host".into() };
        if migrate {
            env.migrate().await;
        }
        env
    }

    pub async fn new(prefix: &str) -> TestEnv {
        Self::new_with(prefix, true).await
    }

    pub async fn migrate(&self) {
        let _g = MIGRATE.lock().await;
        let pool = owsync::store::connect(&self.admin_url, "test-migrate", 2).await.expect("admin connect");
        owsync::store::migrate::run(&pool, Some(SYNC_PASSWORD)).await.expect("migrate");
        pool.close().await;
    }

    pub async fn admin_pool(&self) -> PgPool {
        owsync::store::connect(&self.admin_url, "test-admin", 4).await.expect("admin pool")
    }

    pub async fn sync_pool(&self) -> PgPool {
        owsync::store::connect(&self.sync_url, "test-sync", 4).await.expect("sync pool")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `owsyncctl` as sync_service against this test's database.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_stdin(args, None)
    }

    pub fn ctl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_owsyncctl"));
        cmd.args(args)
            .env_remove("OWSYNC_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .env("OWSYNC_DATABASE_URL_FILE", &self.url_file)
            .env("OWSYNC_CLUSTER", &self.cluster)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn owsyncctl");
        if let Some(input) = stdin {
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("owsyncctl output")
    }

    /// Writes a ClientSync manifest for a tenant whose database is `source`.
    pub fn manifest(&self, name: &str, source: &Path, extra_spec: &str) -> PathBuf {
        let p = self.path(&format!("{name}.yaml"));
        let text = format!(
            "apiVersion: owsync.io/v1alpha1\nkind: ClientSync\nmetadata:\n  name: {name}\nspec:\n  source:\n    path: {}\n  interval: 10s\n{extra_spec}",
            source.display()
        );
        std::fs::write(&p, text).expect("write manifest");
        p
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "command failed ({:?}):\nstdout: {}\nstderr: {}", o.status, stdout(o), stderr(o));
    stdout(o)
}

/// An Open WebUI-shaped database.
pub fn gen_db(path: &Path, users: u32, chats_per_user: u32, seed: u64, schema: SchemaFlavor, journal: JournalMode) {
    let opts = CreateOptions {
        users,
        chats_per_user,
        messages_per_chat: 4,
        seed,
        schema,
        journal,
        force: true,
        ..Default::default()
    };
    owsync::fixtures::create(path, &opts).expect("generate Open WebUI database");
}

/// A small fresh WAL database.
pub fn small_db(path: &Path, seed: u64) {
    gen_db(path, 4, 3, seed, SchemaFlavor::Fresh, JournalMode::Wal);
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}
