//! Direct page reads for the page walk (`walk.rs`): SQLite's `sqlite_dbpage` hands out one
//! page per query (~4 us each, every leaf and overflow page of the database on each
//! incremental sync), so pages are read here straight from the database file, several at a
//! time, through the connection's own VFS file handle (`SQLITE_FCNTL_FILE_POINTER`, then
//! the handle's `xRead`): no second descriptor is opened, since closing one would drop the
//! POSIX locks SQLite holds on the file for every connection of the process.
//!
//! A page is read from the file only when the file is what SQLite itself would read for
//! the snapshot held:
//! * rollback journal: while the read lock is held (the caller's slice), no writer can
//!   touch the file;
//! * WAL: a page with a frame in the WAL is left to SQLite (`None`). Every other page is
//!   stable in the file while the read transaction lasts: a checkpoint only copies pages
//!   that have frames, and never frames newer than an open reader's snapshot; the WAL
//!   cannot restart under a reader that uses it. The frames are found by scanning the WAL's
//!   frame headers (<https://www.sqlite.org/fileformat2.html>, section 4): every page of a
//!   frame carrying the header's salts counts, a superset of the snapshot's frames, which
//!   costs only a page read through SQLite. Stale frames of an earlier WAL generation carry
//!   other salts; their pages were copied into the file before the WAL restarted.
//!
//! Anything unexpected (no file handle, an unreadable WAL header, a short read) turns
//! direct reads off for the snapshot: every page then goes through SQLite, as before.

use std::ffi::CStr;
use std::path::Path;

use rusqlite::{Connection, ffi};

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
/// Pages read at once while reads run forward through the file.
const MAX_AHEAD: usize = 64;
/// Pages read at once after a jump.
const MIN_AHEAD: usize = 1;

/// The direct reader of one connection. `begin` at the start of each read transaction
/// (slice) after SQLite has taken its read lock; `get` then serves pages.
pub(crate) struct PageFile {
    /// Off: every page through SQLite (tests compare both ways).
    pub(crate) allowed: bool,
    enabled: bool,
    page_size: usize,
    /// Pages in the database file.
    file_pages: u32,
    /// A window of consecutive pages read together: `count` pages from `first`.
    buf: Vec<u8>,
    first: u32,
    count: u32,
    ahead: usize,
    wal: WalPages,
    /// Pages served from the file, and pages left to SQLite (for the debug log).
    pub(crate) direct: u64,
    pub(crate) via_sqlite: u64,
    /// Reads of the file.
    pub(crate) reads: u64,
}

impl Default for PageFile {
    fn default() -> Self {
        PageFile {
            allowed: true,
            enabled: false,
            page_size: 0,
            file_pages: 0,
            buf: Vec::new(),
            first: 0,
            count: 0,
            ahead: 0,
            wal: WalPages::default(),
            direct: 0,
            via_sqlite: 0,
            reads: 0,
        }
    }
}

/// The pages of the current WAL generation's frames.
#[derive(Default)]
struct WalPages {
    salts: Option<[u8; 8]>,
    /// Frames of this generation already scanned.
    frames: u64,
    bits: Vec<u64>,
    /// The cumulative checksum each scanned frame's header carries (bytes 16..24): frames
    /// of a transaction that spilled and rolled back are overwritten in place by the next
    /// commit, which only these tell (`refresh`, `PageFile::begin`).
    cksums: Vec<[u8; 8]>,
}

impl WalPages {
    fn contains(&self, pgno: u32) -> bool {
        let i = pgno as usize;
        self.bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn insert(&mut self, pgno: u32) {
        let i = pgno as usize;
        if self.bits.len() <= i / 64 {
            self.bits.resize(i / 64 + 1, 0);
        }
        self.bits[i / 64] |= 1 << (i % 64);
    }

    fn reset(&mut self, salts: Option<[u8; 8]>) {
        self.salts = salts;
        self.frames = 0;
        self.bits.clear();
        self.cksums.clear();
    }

    /// Whether the scan agrees with the snapshot `pos` of the read transaction: its last
    /// frame was scanned with the checksum the snapshot has for it (else frames up to it
    /// were rewritten since they were scanned). A snapshot of another generation or of no
    /// frame reads nothing of these frames.
    fn agrees(&self, pos: &crate::source::wal::SnapshotPos) -> bool {
        if self.salts != Some(pos.salts) || pos.mx_frame == 0 {
            return true;
        }
        let (a, b) = pos.cksum;
        let mut want = [0u8; 8];
        want[..4].copy_from_slice(&a.to_be_bytes());
        want[4..].copy_from_slice(&b.to_be_bytes());
        self.cksums.get(pos.mx_frame as usize - 1) == Some(&want)
    }

    /// Scans the frames added to `wal` since the last call. `false`: not a WAL this code
    /// understands.
    fn refresh(&mut self, wal: VfsFile, page_size: usize) -> bool {
        let Some(size) = wal.size() else { return false };
        if size < WAL_HEADER as u64 {
            // Empty (just created or truncated): no frames.
            self.reset(None);
            return true;
        }
        let mut hdr = [0u8; WAL_HEADER];
        if !wal.read(&mut hdr, 0) {
            return false;
        }
        let magic = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let wal_page_size = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        if (magic & !1) != 0x377f_0682 || wal_page_size != page_size {
            return false;
        }
        let salts: [u8; 8] = [hdr[16], hdr[17], hdr[18], hdr[19], hdr[20], hdr[21], hdr[22], hdr[23]];
        if self.salts != Some(salts) {
            self.reset(Some(salts));
        }
        let frame = (FRAME_HEADER + page_size) as u64;
        let mut fh = [0u8; FRAME_HEADER];
        // The last frame scanned, rewritten since (a rollback, then a commit over it): scan
        // the generation again from its start.
        if self.frames > 0
            && (!wal.read(&mut fh, WAL_HEADER as u64 + (self.frames - 1) * frame)
                || fh[8..16] != salts
                || self.cksums.last().is_none_or(|c| fh[16..24] != c[..]))
        {
            self.reset(Some(salts));
        }
        while WAL_HEADER as u64 + (self.frames + 1) * frame <= size {
            if !wal.read(&mut fh, WAL_HEADER as u64 + self.frames * frame) || fh[8..16] != salts {
                // The end of this generation (what follows is older or being written).
                break;
            }
            self.insert(u32::from_be_bytes([fh[0], fh[1], fh[2], fh[3]]));
            let mut c = [0u8; 8];
            c.copy_from_slice(&fh[16..24]);
            self.cksums.push(c);
            self.frames += 1;
        }
        true
    }
}

impl PageFile {
    /// Starts a snapshot: call with SQLite's read lock held (after it read page 1).
    /// `path` is the database's, to tell whether a WAL exists when SQLite has none open.
    pub(crate) fn begin(&mut self, conn: &Connection, path: &Path, page_size: usize) {
        self.enabled = false;
        self.count = 0;
        self.page_size = page_size;
        if !self.allowed {
            return;
        }
        let Some(db) = VfsFile::of(conn, ffi::SQLITE_FCNTL_FILE_POINTER) else { return };
        let Some(size) = db.size() else { return };
        let Ok(file_pages) = u32::try_from(size / page_size as u64) else { return };
        self.file_pages = file_pages;
        if let Some(wal) = VfsFile::of(conn, ffi::SQLITE_FCNTL_JOURNAL_POINTER) {
            // A WAL is open: SQLite reads through it. The frames the snapshot sees must be
            // the ones scanned: else scan again, and failing that, trust nothing.
            let Some(pos) = crate::source::wal::snapshot_pos(conn) else { return };
            let mut scanned = self.wal.refresh(wal, page_size);
            if scanned && !self.wal.agrees(&pos) {
                self.wal.reset(None);
                scanned = self.wal.refresh(wal, page_size) && self.wal.agrees(&pos);
            }
            if !scanned {
                tracing::debug!(path = %path.display(), "WAL not understood; pages read through SQLite");
                return;
            }
        } else {
            // No journal open: rollback-journal mode (a reader never opens its journal),
            // unless a WAL file is there that SQLite did not open: then trust nothing.
            if std::fs::metadata(super::companion(path, "-wal")).is_ok_and(|m| m.len() > 0) {
                return;
            }
            self.wal.reset(None);
        }
        self.enabled = true;
    }

    /// Page `pgno` from the file, or `None`: read it through SQLite.
    pub(crate) fn get(&mut self, conn: &Connection, pgno: u32) -> Option<&[u8]> {
        if !self.enabled || pgno == 0 || pgno > self.file_pages || self.wal.contains(pgno) {
            self.via_sqlite += 1;
            return None;
        }
        let ps = self.page_size;
        if !(self.first <= pgno && pgno < self.first + self.count) {
            // Read ahead while reads run forward, a few pages after a jump.
            let forward = self.count > 0 && pgno >= self.first && pgno <= self.first + self.count + self.ahead as u32;
            self.ahead = if forward { (self.ahead * 2).clamp(MIN_AHEAD, MAX_AHEAD) } else { MIN_AHEAD };
            let n = self.ahead.min((self.file_pages - pgno + 1) as usize);
            self.buf.resize(n * ps, 0);
            let read = VfsFile::of(conn, ffi::SQLITE_FCNTL_FILE_POINTER)
                .is_some_and(|db| db.read(&mut self.buf, u64::from(pgno - 1) * ps as u64));
            if !read {
                self.enabled = false;
                self.count = 0;
                self.via_sqlite += 1;
                return None;
            }
            self.reads += 1;
            self.first = pgno;
            self.count = n as u32;
        }
        self.direct += 1;
        let at = (pgno - self.first) as usize * ps;
        self.buf.get(at..at + ps)
    }
}

/// A file SQLite has open for a connection, used through its VFS methods.
#[derive(Clone, Copy)]
struct VfsFile(*mut ffi::sqlite3_file);

impl VfsFile {
    /// The main database's file (`SQLITE_FCNTL_FILE_POINTER`) or its open journal or WAL
    /// (`SQLITE_FCNTL_JOURNAL_POINTER`); `None` if there is none open.
    fn of(conn: &Connection, op: i32) -> Option<VfsFile> {
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        let main: &CStr = c"main";
        // SAFETY: `handle()` is this open connection's; the op writes one `sqlite3_file*`
        // (owned by SQLite, valid while the connection and that file are open; the caller
        // uses it at once, on the connection's thread) into `file`.
        let rc = unsafe { ffi::sqlite3_file_control(conn.handle(), main.as_ptr(), op, (&raw mut file).cast()) };
        // SAFETY: a non-null file from SQLite; an unopened one has a null method table.
        (rc == ffi::SQLITE_OK && !file.is_null() && unsafe { !(*file).pMethods.is_null() }).then_some(VfsFile(file))
    }

    fn size(self) -> Option<u64> {
        let mut size: ffi::sqlite3_int64 = 0;
        // SAFETY: `self.0` is an open sqlite3_file with a method table (`of`).
        let rc = unsafe { (*(*self.0).pMethods).xFileSize.map(|f| f(self.0, &raw mut size)) };
        (rc == Some(ffi::SQLITE_OK)).then(|| u64::try_from(size).ok()).flatten()
    }

    /// Reads exactly `buf.len()` bytes at `offset`; `false` on any error or short read.
    fn read(self, buf: &mut [u8], offset: u64) -> bool {
        let (Ok(n), Ok(off)) = (i32::try_from(buf.len()), i64::try_from(offset)) else { return false };
        // SAFETY: as in `size`; `buf` is writable for `n` bytes.
        let rc = unsafe { (*(*self.0).pMethods).xRead.map(|f| f(self.0, buf.as_mut_ptr().cast(), n, off)) };
        rc == Some(ffi::SQLITE_OK)
    }
}

#[cfg(test)]
mod tests;
