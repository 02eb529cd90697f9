//! Throwaway local PostgreSQL servers built from the system's binaries.
//!
//! Used by the integration tests (one server per test binary, a fresh database
//! per test) and by `owsyncctl demo` (an "embedded default" PostgreSQL).
//!
//! [`TempPostgres::start`] runs `initdb` into a fresh temporary directory and
//! starts `postgres` on a free port of 127.0.0.1 with durability turned off.
//! The superuser is `postgres` with a random password (see
//! [`TempPostgres::admin_url`]); the password never appears in any process's
//! argv. When the current process is root, the server binaries run as the
//! `postgres` user (or `nobody`), because PostgreSQL refuses to run as root.
//!
//! Cleanup happens twice over: `Drop` stops the server (`-m immediate`) and
//! removes the directory, and a watchdog child (`sh`, stdio on `/dev/null`,
//! its own process group) polls our pid once per second and does the same
//! once we are gone, whether we exited, panicked or were killed.
//!
//! One server per test binary: keep it in a static, which is never dropped;
//! the watchdog then cleans up within about a second of the process exiting.
//!
//! ```no_run
//! use std::sync::OnceLock;
//! use owsync::devpg::{Options, TempPostgres};
//!
//! fn pg() -> &'static TempPostgres {
//!     static PG: OnceLock<TempPostgres> = OnceLock::new();
//!     PG.get_or_init(|| TempPostgres::start(Options::default()).expect("start PostgreSQL"))
//! }
//!
//! // In each test (blocking; ~50 ms, fine inside #[tokio::test]):
//! let db = pg().create_database("my_test").unwrap();
//! let url = pg().admin_url(&db); // hand this to sqlx
//! ```

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::unix::fs::lchown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use rand::distr::Alphanumeric;

const INSTALL_HINT: &str = "install them with `apt-get install -y postgresql` (Debian/Ubuntu), \
     or set OWSYNC_PG_BIN to a directory containing initdb and pg_ctl";
const START_ATTEMPTS: usize = 5;
const DEFAULT_SETTINGS: [(&str, &str); 6] = [
    ("listen_addresses", "127.0.0.1"),
    ("unix_socket_directories", ""),
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "200"),
];
/// Environment that would redirect our server binaries or psql elsewhere.
const PG_ENV: &str = "PGDATA PGPORT PGHOST PGUSER PGOPTIONS PGCTLTIMEOUT PGSERVICE PGSSLMODE PGPASSFILE";
const LOG_TAIL_LINES: usize = 40;

/// Everything that can go wrong while managing a throwaway server.
#[derive(Debug, thiserror::Error)]
pub enum DevPgError {
    #[error("PostgreSQL server binaries not found: {detail}; {INSTALL_HINT}")]
    BinariesNotFound { detail: String },
    #[error(
        "PostgreSQL 17's server binaries not found: {detail}; run `scripts/ensure-deps.sh pg17` (scripts/test.sh \
         does), or set OWSYNC_PG17_BIN to a directory holding PostgreSQL 17's initdb, pg_ctl and postgres"
    )]
    Pg17NotFound { detail: String },
    #[error("running as root, but neither a `postgres` nor a `nobody` user exists to run PostgreSQL as")]
    NoUnprivilegedUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    Command { what: String, status: ExitStatus, output: String },
    #[error("PostgreSQL failed to start on 127.0.0.1:{port}: {reason}\n--- end of the server log ---\n{log_tail}")]
    StartFailed {
        port: u16,
        reason: String,
        /// The server log file (deleted along with the temp dir).
        log: PathBuf,
        log_tail: String,
    },
}

type Result<T, E = DevPgError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevPgError {
    let what = what.into();
    move |source| DevPgError::Io { what, source }
}

/// How to start a [`TempPostgres`]. `Options::default()` suits tests.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Directory holding initdb/pg_ctl/postgres; default: [`find_bin_dir`].
    pub bin_dir: Option<PathBuf>,
    /// Where the temporary directory is created; default `/tmp` when root
    /// (must be traversable by the unprivileged user), else `$TMPDIR`.
    pub parent_dir: Option<PathBuf>,
    /// Fixed port; default: a free port chosen at random (retried if taken).
    pub port: Option<u16>,
    /// Server settings (`-c key=value`), added to or overriding the defaults
    /// (`listen_addresses=127.0.0.1`, `unix_socket_directories=''`,
    /// `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`,
    /// `max_connections=200`).
    pub settings: Vec<(String, String)>,
    /// How long `pg_ctl` waits for the server to be ready; default 60 s.
    pub start_timeout: Option<Duration>,
    /// Name of the bootstrap superuser; default `postgres`.
    pub superuser: Option<String>,
    /// Files written into the data directory after `initdb` (mode 0600, owned by the
    /// server's user), before the server starts: a TLS key and certificate, or a
    /// `pg_hba.conf` replacing initdb's. Names are relative to the data directory.
    pub data_files: Vec<(String, Vec<u8>)>,
}

impl Options {
    /// Adds or overrides one server setting.
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }
}

/// Finds the PostgreSQL server binaries: `$OWSYNC_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` with `initdb`, else `initdb`/`pg_ctl` on PATH.
pub fn find_bin_dir() -> Result<PathBuf> {
    let has_bins = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("OWSYNC_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if has_bins(&dir) {
            Ok(dir)
        } else {
            Err(DevPgError::BinariesNotFound {
                detail: format!("OWSYNC_PG_BIN={} has no initdb and pg_ctl", dir.display()),
            })
        };
    }
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for entry in fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(version) = name.split('.').map(str::parse).collect::<Result<Vec<u64>, _>>() else {
            continue;
        };
        let bin = entry.path().join("bin");
        if has_bins(&bin) && best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if has_bins(&dir) {
            // Resolve symlinks so that pg_ctl finds `postgres` next to itself.
            let initdb = fs::canonicalize(dir.join("initdb")).map_err(io_err("resolve initdb"))?;
            return Ok(initdb.parent().map_or(dir, Path::to_path_buf));
        }
    }
    Err(DevPgError::BinariesNotFound {
        detail: "no OWSYNC_PG_BIN, no /usr/lib/postgresql/*/bin, no initdb and pg_ctl on PATH".into(),
    })
}

/// A running throwaway PostgreSQL server; stopped and deleted on drop.
pub struct TempPostgres {
    bin_dir: PathBuf,
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    superuser: String,
    password: String,
    run_as: Option<(u32, u32)>,
    settings: Vec<(String, String)>,
    start_timeout: Duration,
    watchdog: Option<Child>,
    db_counter: AtomicU64,
}

impl fmt::Debug for TempPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TempPostgres")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("bin_dir", &self.bin_dir)
            .field("run_as", &self.run_as)
            .finish_non_exhaustive()
    }
}

impl TempPostgres {
    /// Creates a cluster in a fresh temporary directory and starts it.
    pub fn start(opts: Options) -> Result<TempPostgres> {
        let bin_dir = match opts.bin_dir {
            Some(dir) => dir,
            None => find_bin_dir()?,
        };
        if !bin_dir.join("initdb").is_file() || !bin_dir.join("pg_ctl").is_file() {
            let detail = format!("no initdb and pg_ctl in {}", bin_dir.display());
            return Err(DevPgError::BinariesNotFound { detail });
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            let user = lookup_user("postgres").or_else(|| lookup_user("nobody"));
            Some(user.ok_or(DevPgError::NoUnprivilegedUser)?)
        } else {
            None
        };
        let parent = match (opts.parent_dir, run_as) {
            (Some(dir), _) => dir,
            (None, Some(_)) => PathBuf::from("/tmp"),
            (None, None) => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("owsync-pg-")
            .tempdir_in(&parent)
            .map_err(io_err(format!("create temp dir in {}", parent.display())))?;
        let root = dir.path().to_path_buf();
        let password: String = rand::rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect();
        let mut settings: Vec<(String, String)> =
            DEFAULT_SETTINGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for (key, value) in opts.settings {
            match settings.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => settings.push((key, value)),
            }
        }
        let mut pg = TempPostgres {
            data_dir: root.join("data"),
            log_file: root.join("server.log"),
            dir: Some(dir),
            bin_dir,
            port: 0,
            superuser: opts.superuser.unwrap_or_else(|| "postgres".into()),
            password,
            run_as,
            settings,
            start_timeout: opts.start_timeout.unwrap_or(Duration::from_secs(60)),
            watchdog: None,
            db_counter: AtomicU64::new(0),
        };
        // From here on, dropping `pg` (on error) cleans up.
        pg.watchdog = Some(pg.spawn_watchdog(std::process::id())?);
        pg.initdb(&root)?;
        pg.write_data_files(&opts.data_files)?;
        for attempt in 1.. {
            pg.port = match opts.port {
                Some(port) => port,
                None => free_port()?,
            };
            match pg.try_start() {
                Ok(()) => break,
                Err((_, true)) if opts.port.is_none() && attempt < START_ATTEMPTS => {}
                Err((err, _)) => return Err(err),
            }
        }
        tracing::debug!(port = pg.port, data_dir = %pg.data_dir.display(), "temporary PostgreSQL started");
        Ok(pg)
    }

    fn initdb(&self, root: &Path) -> Result<()> {
        let pwfile = root.join("pwfile");
        // Only we can enter the 0700 temp dir, so nobody else can read this.
        fs::write(&pwfile, format!("{}\n", self.password)).map_err(io_err("write pwfile"))?;
        if let Some((uid, gid)) = self.run_as {
            chown_tree(root, uid, gid)?;
        }
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D").arg(&self.data_dir);
        cmd.args(["--no-sync", "-E", "UTF8", "--locale=C", "-U", &self.superuser]);
        cmd.args(["--auth-host=scram-sha-256", "--auth-local=trust"]);
        cmd.arg(format!("--pwfile={}", pwfile.display()));
        let result = run("initdb", cmd);
        let _ = fs::remove_file(&pwfile);
        result.map(drop)
    }

    fn write_data_files(&self, files: &[(String, Vec<u8>)]) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        for (name, bytes) in files {
            let path = self.data_dir.join(name);
            let what = format!("write {}", path.display());
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(what.clone()))?;
            file.write_all(bytes).map_err(io_err(what))?;
            if let Some((uid, gid)) = self.run_as {
                lchown(&path, Some(uid), Some(gid)).map_err(io_err(format!("chown {}", path.display())))?;
            }
        }
        Ok(())
    }

    /// Starts the server on `self.port`; on failure also says whether the
    /// port was already in use.
    fn try_start(&self) -> Result<(), (DevPgError, bool)> {
        let log_start = fs::metadata(&self.log_file).map_or(0, |m| m.len() as usize);
        let mut server_opts = format!("-p {}", self.port);
        for (key, value) in &self.settings {
            server_opts.push_str(&format!(" -c {key}='{}'", value.replace('\'', r"'\''")));
        }
        let mut cmd = self.pg_command("pg_ctl");
        cmd.args(["-w", "-t", &self.start_timeout.as_secs().max(1).to_string()]);
        cmd.arg("-D").arg(&self.data_dir).arg("-l");
        cmd.arg(&self.log_file);
        cmd.arg("-o").arg(server_opts).arg("start");
        // Own process group: a terminal's Ctrl-C must not kill the server
        // before the watchdog can clean up.
        cmd.process_group(0);
        let Err(err) = run("pg_ctl start", cmd) else {
            return Ok(());
        };
        let _ = self.pg_ctl_stop("immediate");
        let log = fs::read(&self.log_file).unwrap_or_default();
        let new_log = String::from_utf8_lossy(log.get(log_start..).unwrap_or_default());
        let in_use = new_log.contains("already in use");
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        let log_tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        let (port, reason, log) = (self.port, err.to_string(), self.log_file.clone());
        let err = DevPgError::StartFailed { port, reason, log, log_tail };
        Err((err, in_use))
    }

    /// The watchdog: once `pid` is gone, stops the server and removes the
    /// directory. pg_ctl refuses to run as root, so it falls back to SIGQUIT
    /// (what `pg_ctl stop -m immediate` sends) to the postmaster.
    fn spawn_watchdog(&self, pid: u32) -> Result<Child> {
        const SCRIPT: &str = r#"trap '' INT HUP
while kill -0 "$1" 2>/dev/null && ! grep -q '^State:.Z' "/proc/$1/status" 2>/dev/null; do
  sleep 1
done
if ! "$4" -D "$2" -m immediate -w stop >/dev/null 2>&1; then
  pm=$(head -n 1 "$2/postmaster.pid" 2>/dev/null)
  if [ -n "$pm" ] && kill -QUIT "$pm" 2>/dev/null; then
    i=0; while [ -f "$2/postmaster.pid" ] && kill -0 "$pm" 2>/dev/null && [ $i -lt 100 ]; do
      sleep 0.1; i=$((i+1))
    done
  fi
fi
rm -rf "$3""#;
        let root = self.dir.as_ref().map_or(&self.data_dir as &Path, |d| d.path());
        Command::new("sh")
            .args(["-c", SCRIPT, "owsync-pg-watchdog", &pid.to_string()])
            .arg(&self.data_dir)
            .arg(root)
            .arg(self.bin_dir.join("pg_ctl"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io_err("spawn watchdog (sh)"))
    }

    /// A command for a server binary, as the unprivileged user if needed.
    fn pg_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir.path());
        }
        PG_ENV.split(' ').for_each(|var| {
            cmd.env_remove(var);
        });
        cmd
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<()> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir);
        cmd.args(["-m", mode, "-w", "stop"]);
        run(&format!("pg_ctl stop -m {mode}"), cmd).map(drop)
    }

    /// Whether the server is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).arg("status");
        run("pg_ctl status", cmd).is_ok()
    }

    /// Fast shutdown (disconnects clients, clean checkpoint). No-op if stopped.
    pub fn stop(&self) -> Result<()> {
        match self.pg_ctl_stop("fast") {
            Err(_) if !self.is_running() => Ok(()),
            other => other,
        }
    }

    /// Immediate shutdown, as if the server crashed (recovery on next start).
    pub fn kill_immediately(&self) -> Result<()> {
        match self.pg_ctl_stop("immediate") {
            Err(_) if !self.is_running() => Ok(()),
            other => other,
        }
    }

    /// Starts a stopped server again, same port and data dir. No-op if running.
    pub fn start_again(&self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.try_start().map_err(|(err, _)| err)
    }

    /// Fast shutdown, then start again on the same port and data dir.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://SUPERUSER:PASSWORD@127.0.0.1:PORT/db` (the superuser is `postgres`
    /// unless [`Options::superuser`] named another).
    pub fn admin_url(&self, db: &str) -> String {
        format!("postgres://{}:{}@127.0.0.1:{}/{db}", self.superuser, self.password, self.port)
    }

    /// The bootstrap superuser's name.
    pub fn superuser(&self) -> &str {
        &self.superuser
    }

    pub fn admin_password(&self) -> &str {
        &self.password
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server's log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Runs SQL as the superuser with `psql` (password via PGPASSWORD),
    /// returning psql's output. Blocking.
    pub fn execute(&self, db: &str, sql: &str) -> Result<String> {
        let psql = Some(self.bin_dir.join("psql")).filter(|p| p.is_file());
        let mut cmd = Command::new(psql.unwrap_or_else(|| "psql".into()));
        cmd.args("-X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1".split(' '));
        cmd.args(["-U", &self.superuser, "-p", &self.port.to_string(), "-d", db, "-c", sql]);
        PG_ENV.split(' ').for_each(|var| {
            cmd.env_remove(var);
        });
        cmd.env("PGPASSWORD", &self.password).env("PGCONNECT_TIMEOUT", "10");
        run("psql", cmd)
    }

    /// Creates a fresh, uniquely named database (`<prefix>_<n>_<random>`,
    /// prefix sanitized to `[a-z0-9_]`) and returns its name. Blocking.
    pub fn create_database(&self, name_prefix: &str) -> Result<String> {
        let mut prefix: String = name_prefix
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect();
        if !prefix.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
            prefix.insert(0, 'd');
        }
        let n = self.db_counter.fetch_add(1, Ordering::Relaxed);
        let suffix: String =
            rand::rng().sample_iter(&Alphanumeric).take(6).map(|b| char::from(b).to_ascii_lowercase()).collect();
        let name = format!("{prefix}_{n}_{suffix}");
        self.execute("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(name)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if self.data_dir.join("postmaster.pid").exists() {
            let _ = self.pg_ctl_stop("immediate");
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Runs a command to completion; error if it fails, with its output.
fn run(what: &str, mut cmd: Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("run {what} ({})", cmd.get_program().to_string_lossy())))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(DevPgError::Command { what: what.to_string(), status: out.status, output: text.trim().to_string() })
    }
}

fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io_err("bind 127.0.0.1:0 to find a free port"))?;
    let addr = listener.local_addr().map_err(io_err("read local address"))?;
    Ok(addr.port())
}

/// `(uid, gid)` of a user, via the reentrant getpwnam_r.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    // SAFETY: `passwd` is plain data; all-zero is a valid (null pointers) value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf.len()` is its size;
    // we only read the integer fields, which do not point into `buf`.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &raw mut pwd, buf.as_mut_ptr(), buf.len(), &raw mut result) };
    (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    lchown(path, Some(uid), Some(gid)).map_err(io_err(format!("chown {}", path.display())))?;
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        for entry in fs::read_dir(path).map_err(io_err(format!("read {}", path.display())))? {
            chown_tree(&entry.map_err(io_err("read dir entry"))?.path(), uid, gid)?;
        }
    }
    Ok(())
}

mod pg17;
pub use pg17::{PG17_ENV, find_pg17_bin_dir};

#[cfg(test)]
mod tests;
