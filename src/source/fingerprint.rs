//! A cheap fingerprint of a SQLite database file's state, so that a sync of an unchanged
//! source costs two `stat`s and two small reads instead of a pass over every table.
//!
//! It covers the main file (device, inode, size, mtime, and its 100-byte header, whose
//! change counter moves on every commit in rollback-journal mode) and the `-wal` file
//! (size, mtime and its 32-byte header, whose salts change when the WAL restarts after a
//! checkpoint), and the presence of a `-journal` (a write in progress). Any commit moves
//! at least one of them. It must be taken *before* the rows are read: a change that
//! lands during the sync then makes the next fingerprint differ, never the reverse.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Result, SourceError};

fn file_part(h: &mut Sha256, path: &Path, header: usize) -> std::io::Result<bool> {
    let meta = match std::fs::metadata(path) {
        // An empty file is no state at all: a reader of a WAL database creates an empty
        // `-wal` when there is none, which must not count as a change.
        Ok(m) if m.len() == 0 => {
            h.update(b"empty");
            return Ok(false);
        }
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            h.update(b"empty");
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    for v in [meta.dev(), meta.ino(), meta.size()] {
        h.update(v.to_le_bytes());
    }
    h.update(meta.mtime().to_le_bytes());
    h.update(meta.mtime_nsec().to_le_bytes());
    let mut buf = vec![0u8; header];
    let mut f = std::fs::File::open(path)?;
    let n = f.read(&mut buf)?;
    h.update(&buf[..n]);
    Ok(true)
}

/// The fingerprint of `path` and its `-wal` and `-journal` companions, as hex.
pub fn fingerprint(path: &Path) -> Result<String> {
    let err = |source: std::io::Error| SourceError::Fingerprint { path: path.to_path_buf(), source };
    let mut h = Sha256::new();
    if !file_part(&mut h, path, 100).map_err(err)? {
        return Err(SourceError::Missing { path: path.to_path_buf() });
    }
    file_part(&mut h, &super::companion(path, "-wal"), 32).map_err(err)?;
    h.update([u8::from(super::companion(path, "-journal").exists())]);
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_with_every_commit_in_both_journal_modes() {
        for mode in ["WAL", "DELETE"] {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.db");
            let c = rusqlite::Connection::open(&p).unwrap();
            c.execute_batch(&format!("PRAGMA journal_mode={mode}; CREATE TABLE t(a); INSERT INTO t VALUES (1);"))
                .unwrap();
            let a = fingerprint(&p).unwrap();
            assert_eq!(a, fingerprint(&p).unwrap(), "{mode}: stable while nothing changes");
            // Same-size in-place update: only the header or the WAL moves.
            c.execute("UPDATE t SET a = 2", []).unwrap();
            let b = fingerprint(&p).unwrap();
            assert_ne!(a, b, "{mode}: an update must change the fingerprint");
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
            c.execute("UPDATE t SET a = 3", []).unwrap();
            assert_ne!(b, fingerprint(&p).unwrap(), "{mode}: after a checkpoint too");
            drop(c);
            let before = fingerprint(&p).unwrap();
            let src = crate::source::Source::open(&p).unwrap();
            let tables = crate::source::discover(&src).unwrap();
            let mut r = crate::source::SliceReader::new(&src, &tables[0]);
            while r.next_slice().unwrap().is_some() {}
            drop(src);
            assert_eq!(before, fingerprint(&p).unwrap(), "{mode}: reading must not change it");
        }
    }
}
