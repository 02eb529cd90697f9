//! Debian's PgBouncer in front of the test's PostgreSQL (`apt-get install -y pgbouncer`),
//! in session or transaction mode, as sync_service; or, with [`Bouncer::start_with`], in
//! front of another server, for other users, with TLS on both sides.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{SYNC_PASSWORD, free_port, pg};

fn pgbouncer_bin() -> PathBuf {
    for p in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"] {
        if std::path::Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("pgbouncer not found: install it with `apt-get install -y pgbouncer` (Debian/Ubuntu)");
}

/// (uid, gid) of `postgres` (or `nobody`) when we are root: PgBouncer refuses root.
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    for name in ["postgres", "nobody"] {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: getpwnam with a valid C string; we copy the fields out at once.
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if !pw.is_null() {
            return Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) });
        }
    }
    panic!("running as root, but no `postgres` or `nobody` user to run pgbouncer as");
}

/// TLS on both of PgBouncer's sides: clients must use TLS (it presents `cert`, signed by
/// `ca`), and it checks the server's certificate against `ca` (`verify-full`).
pub struct BouncerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What [`Bouncer::start_with`] puts in front of what.
pub struct BouncerSpec<'a> {
    pub pool_mode: &'a str,
    pub port: u16,
    pub server_port: u16,
    /// (user, password) pairs PgBouncer accepts and logs in to the server with.
    pub users: Vec<(String, String)>,
    pub tls: Option<&'a BouncerTls>,
}

/// A PgBouncer process on a free port, configured in its own temp dir; killed on drop.
pub struct Bouncer {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Bouncer {
    pub fn start(pool_mode: &str) -> Bouncer {
        Self::start_on(pool_mode, free_port())
    }

    /// On a given port (e.g. 6543, Supabase's transaction pooler port).
    pub fn start_on(pool_mode: &str, port: u16) -> Bouncer {
        let users = vec![("sync_service".to_string(), SYNC_PASSWORD.to_string())];
        Self::start_with(&BouncerSpec { pool_mode, port, server_port: pg().port(), users, tls: None })
    }

    /// In front of the server on `spec.server_port`.
    pub fn start_with(spec: &BouncerSpec) -> Bouncer {
        let run_as = unprivileged();
        let dir = match run_as {
            Some(_) => tempfile::Builder::new().prefix("owsync-pgbouncer-").tempdir_in("/tmp").expect("bouncer dir"),
            None => tempfile::tempdir().expect("bouncer dir"),
        };
        let ini = dir.path().join("pgbouncer.ini");
        let users = dir.path().join("userlist.txt");
        let log = dir.path().join("pgbouncer.log");
        let userlist: String = spec.users.iter().map(|(u, p)| format!("\"{u}\" \"{p}\"\n")).collect();
        std::fs::write(&users, userlist).expect("write userlist");
        let mut owned = vec![dir.path().to_path_buf(), ini.clone(), users.clone()];
        let mut config = format!(
            "[databases]\n* = host=127.0.0.1 port={pg}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
             unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {users}\npool_mode = {pool_mode}\n\
             max_client_conn = 500\ndefault_pool_size = 40\nlogfile = {log}\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            pg = spec.server_port,
            port = spec.port,
            pool_mode = spec.pool_mode,
            users = users.display(),
            log = log.display(),
        );
        if let Some(tls) = spec.tls {
            // Copies it can read when it runs as another user.
            let copy = |name: &str, from: &PathBuf| {
                let to = dir.path().join(name);
                std::fs::copy(from, &to).expect("copy TLS file");
                to
            };
            let (ca, cert, key) =
                (copy("ca.pem", &tls.ca), copy("server.crt", &tls.cert), copy("server.key", &tls.key));
            config.push_str(&format!(
                "client_tls_sslmode = require\nclient_tls_cert_file = {}\nclient_tls_key_file = {}\n\
                 server_tls_sslmode = verify-full\nserver_tls_ca_file = {}\n",
                cert.display(),
                key.display(),
                ca.display(),
            ));
            owned.extend([ca, cert, key]);
        }
        std::fs::write(&ini, config).expect("write pgbouncer.ini");
        let mut cmd = Command::new(pgbouncer_bin());
        cmd.arg(&ini).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = run_as {
            for p in &owned {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown for pgbouncer");
            }
            cmd.uid(uid).gid(gid);
        }
        let port = spec.port;
        let child = cmd.spawn().expect("spawn pgbouncer");
        let mut b = Bouncer { child, port, dir };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = b.child.try_wait() {
                panic!("pgbouncer exited ({st}); log:\n{}", b.log());
            }
            assert!(t.elapsed() < Duration::from_secs(10), "pgbouncer not listening; log:\n{}", b.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://sync_service:{SYNC_PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
