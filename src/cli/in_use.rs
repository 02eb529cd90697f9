//! Whether a SQLite database is in use by a process on this machine: open file
//! descriptors (`/proc/PID/fd`) and POSIX locks (`/proc/locks`) on the file, its -wal or
//! its -shm. Used before a restore replaces a tenant's database in place.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::common::CliError;

/// A process that has the database open or locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// 0 when only a lock is seen, held from another PID namespace (a container).
    pub pid: u32,
    pub command: String,
    pub container: Option<String>,
}

/// The processes that have `db`, its -wal or its -shm open or locked (not this one).
pub fn holders(db: &Path) -> Vec<Holder> {
    let files: Vec<PathBuf> = ["", "-wal", "-shm"].iter().map(|s| crate::source::companion(db, s)).collect();
    let canon: Vec<PathBuf> = files.iter().filter_map(|f| std::fs::canonicalize(f).ok()).collect();
    let inodes: Vec<(u64, u64)> =
        files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| (m.dev(), m.ino())).collect();
    let me = std::process::id();
    let mut out: Vec<Holder> = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for pid in procs.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())) {
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        if fds.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|l| canon.contains(&l)) {
            out.push(describe(pid));
        }
    }
    for pid in locked_by(&inodes) {
        if pid != me && !out.iter().any(|h| h.pid == pid) {
            out.push(if pid == 0 { Holder { pid, command: "?".into(), container: None } } else { describe(pid) });
        }
    }
    out
}

/// PIDs holding a lock on one of `inodes` (`/proc/locks`: "1: POSIX ADVISORY READ 1234 08:01:5678 ...").
fn locked_by(inodes: &[(u64, u64)]) -> Vec<u32> {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let mut pids = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(i) = f.iter().position(|w| w.matches(':').count() == 2) else { continue };
        let (Some(pid), Some(ino)) =
            (f.get(i.wrapping_sub(1)).and_then(|p| p.parse::<u32>().ok()), f[i].rsplit(':').next())
        else {
            continue;
        };
        if let Ok(ino) = ino.parse::<u64>()
            && inodes.iter().any(|(_, i)| *i == ino)
            && !pids.contains(&pid)
        {
            pids.push(pid);
        }
    }
    pids
}

fn describe(pid: u32) -> Holder {
    let command = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let container = cgroup
        .split(['/', '-', '.'])
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|id| id[..12].to_string());
    Holder { pid, command, container }
}

/// An error naming every process that has `db` open, and how to stop Open WebUI.
pub fn refuse_if_open(db: &Path) -> Result<(), CliError> {
    // owsyncd's own short reads come and go: only a holder seen three times in a row counts.
    let mut seen = holders(db);
    for _ in 0..2 {
        if seen.is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = holders(db);
        seen.retain(|h| now.contains(h));
    }
    if seen.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = seen
        .iter()
        .map(|h| match (&h.container, h.pid) {
            (_, 0) => "a process outside this PID namespace (holds a lock)".to_string(),
            (Some(c), pid) => format!("pid {pid} ({}, container {c})", h.command),
            (None, pid) => format!("pid {pid} ({})", h.command),
        })
        .collect();
    let hint = match seen.iter().find_map(|h| h.container.clone()) {
        Some(c) => format!("stop Open WebUI first (`docker stop {c}`)"),
        None => "stop Open WebUI first (e.g. `docker stop openwebui-<tenant>` or `systemctl stop open-webui`)".into(),
    };
    Err(CliError::msg(format!(
        "{} is in use by {}: {hint}, then run the restore again; nothing was changed",
        db.display(),
        list.join(", ")
    )))
}
