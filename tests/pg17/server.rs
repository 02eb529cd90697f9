//! The PostgreSQL 17 server of the Supabase compatibility set, shared by its tests: built
//! from `scripts/ensure-deps.sh pg17`'s binaries (a missing install fails, naming that
//! script), bootstrapped by `supabase_admin` like a Supabase project, with an admin
//! role `postgres` shaped like Supabase's (`NOSUPERUSER CREATEDB CREATEROLE LOGIN
//! REPLICATION BYPASSRLS`) owning every test database, and TLS required: a throwaway CA
//! and server certificate (rcgen) made at start, `hostssl` only in `pg_hba.conf`, and
//! every client URL `sslmode=verify-full` with the CA file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use owsync::devpg::{Options, TempPostgres, find_pg17_bin_dir};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::common::bouncer::{Bouncer, BouncerSpec, BouncerTls};
use crate::common::{SYNC_PASSWORD, TestEnv, ok};

/// Supabase's admin role: not a superuser.
pub const ADMIN: &str = "postgres";
pub const ADMIN_ATTRS: &str = "NOSUPERUSER CREATEDB CREATEROLE LOGIN REPLICATION BYPASSRLS";
const ADMIN_PASSWORD: &str = "supa-admin-pw-7c41e2";
const PG_HBA: &str = "hostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n";

pub struct Supa {
    pub pg: TempPostgres,
    pub tls: BouncerTls,
    /// A CA that did not sign the server's certificate.
    pub other_ca: PathBuf,
    _files: tempfile::TempDir,
}

/// A throwaway CA, and a server certificate for 127.0.0.1 signed by it: (CA, cert, key) PEM.
fn certificates(ca_name: &str) -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.distinguished_name.push(DnType::CommonName, ca_name);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("server params");
    params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn start() -> Supa {
    let bin = find_pg17_bin_dir().unwrap_or_else(|e| panic!("the PostgreSQL 17 compatibility set cannot run: {e}"));
    let (ca, cert, key) = certificates("owsync test CA");
    let files = tempfile::Builder::new().prefix("owsync-pg17-tls-").tempdir().expect("tls dir");
    let write = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).expect("write TLS file");
        p
    };
    let tls = BouncerTls { ca: write("ca.pem", &ca), cert: write("server.crt", &cert), key: write("server.key", &key) };
    let other_ca = write("other-ca.pem", &certificates("another CA").0);
    let opts = Options {
        bin_dir: Some(bin),
        superuser: Some("supabase_admin".into()),
        data_files: vec![
            ("server.crt".into(), cert.into_bytes()),
            ("server.key".into(), key.into_bytes()),
            ("pg_hba.conf".into(), PG_HBA.as_bytes().to_vec()),
        ],
        ..Options::default()
    }
    .setting("ssl", "on")
    .setting("ssl_cert_file", "server.crt")
    .setting("ssl_key_file", "server.key");
    let pg = TempPostgres::start(opts).expect("start PostgreSQL 17");
    let verifier = owsync::store::migrate::scram_verifier(ADMIN_PASSWORD);
    pg.execute("postgres", &format!("CREATE ROLE {ADMIN} {ADMIN_ATTRS} PASSWORD '{verifier}'"))
        .expect("create the Supabase-shaped admin");
    Supa { pg, tls, other_ca, _files: files }
}

/// The shared server (started on first use; its watchdog stops it when the binary exits).
pub fn supa() -> &'static Supa {
    static SUPA: OnceLock<Supa> = OnceLock::new();
    SUPA.get_or_init(start)
}

/// How a test reaches the server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Route {
    Direct,
    SessionPooler,
}

/// Serialises migrations (they create and alter the server-wide sync_service role).
static MIGRATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Supa {
    /// `user:password@127.0.0.1:port/db?sslmode=verify-full&sslrootcert=ca`.
    #[allow(clippy::unused_self)] // a method, so that URLs are asked of the server they name
    pub fn url(&self, user: &str, password: &str, port: u16, db: &str, ca: &Path) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{port}/{db}?sslmode=verify-full&sslrootcert={}", ca.display())
    }

    /// A session-mode PgBouncer with TLS on both sides, for the admin and sync_service.
    pub fn bouncer(&self) -> Bouncer {
        let users = [(ADMIN, ADMIN_PASSWORD), ("sync_service", SYNC_PASSWORD)];
        Bouncer::start_with(&BouncerSpec {
            pool_mode: "session",
            port: crate::common::free_port(),
            server_port: self.pg.port(),
            users: users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect(),
            tls: Some(&self.tls),
        })
    }

    /// A fresh database owned by the admin, and URL files for admin and sync_service
    /// through `route` (the bouncer, when there is one, is returned to keep it alive).
    pub fn env(&self, prefix: &str, route: Route) -> (TestEnv, Option<Bouncer>) {
        let db = self.pg.create_database(prefix).expect("create database");
        self.pg.execute("postgres", &format!("ALTER DATABASE \"{db}\" OWNER TO {ADMIN}")).expect("chown database");
        let bouncer = (route == Route::SessionPooler).then(|| self.bouncer());
        let port = bouncer.as_ref().map_or(self.pg.port(), |b| b.port);
        let admin_url = self.url(ADMIN, ADMIN_PASSWORD, port, &db, &self.tls.ca);
        let sync_url = self.url("sync_service", SYNC_PASSWORD, port, &db, &self.tls.ca);
        let dir = tempfile::tempdir().expect("tempdir");
        let url_file = dir.path().join("database-url");
        std::fs::write(&url_file, &sync_url).expect("write url file");
        let admin_url_file = dir.path().join("admin-url");
        std::fs::write(&admin_url_file, &admin_url).expect("write admin url file");
        std::fs::write(dir.path().join("sync-password"), SYNC_PASSWORD).expect("write password file");
        let cluster = "test-host".to_string();
        (TestEnv { db, admin_url, sync_url, url_file, admin_url_file, dir, cluster }, bouncer)
    }

    /// `owsyncctl migrate` as the admin; its output.
    pub async fn migrate(&self, env: &TestEnv) -> String {
        let _g = MIGRATE.lock().await;
        let (admin, password) = (env.admin_url_file.to_str(), env.path("sync-password"));
        let admin = admin.expect("utf-8 path");
        ok(&env.ctl(&["migrate", "--admin-url-file", admin, "--sync-password-file", password.to_str().expect("utf-8")]))
    }
}
