//! Debian's PgBouncer in front of the test's PostgreSQL (`apt-get install -y pgbouncer`),
//! in session or transaction mode, as sync_service.

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
        let run_as = unprivileged();
        let dir = match run_as {
            Some(_) => tempfile::Builder::new().prefix("owsync-pgbouncer-").tempdir_in("/tmp").unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let ini = dir.path().join("pgbouncer.ini");
        let users = dir.path().join("userlist.txt");
        let log = dir.path().join("pgbouncer.log");
        std::fs::write(&users, format!("\"sync_service\" \"{SYNC_PASSWORD}\"\n")).unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={pg}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {users}\npool_mode = {pool_mode}\n\
                 max_client_conn = 500\ndefault_pool_size = 40\nlogfile = {log}\n\
                 ignore_startup_parameters = extra_float_digits,options\n",
                pg = pg().port(),
                users = users.display(),
                log = log.display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(pgbouncer_bin());
        cmd.arg(&ini).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = run_as {
            for p in [dir.path(), &ini, &users] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
            cmd.uid(uid).gid(gid);
        }
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
