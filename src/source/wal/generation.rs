//! One WAL generation (the frames written under one pair of salts): its header, and
//! reading its frames the way SQLite's recovery decides which are valid.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{FRAME_HEADER, WAL_HEADER};

/// A WAL header that SQLite would accept (magic, version, page size, checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    /// Checksums read big-endian (magic 0x377f0683) or little-endian (0x377f0682).
    pub big_endian: bool,
    pub page_size: u32,
    pub salts: [u8; 8],
    /// The header's own checksum: where the frames' chain starts.
    pub cksum: (u32, u32),
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Header {
    /// The header of the `-wal` of `size` bytes; `None` when there is none SQLite would use.
    pub fn read(file: &File, size: u64) -> std::io::Result<Option<Header>> {
        if size < WAL_HEADER {
            return Ok(None);
        }
        let mut h = [0u8; WAL_HEADER as usize];
        if !read_exact_at(file, &mut h, 0)? {
            return Ok(None);
        }
        let magic = be32(&h, 0);
        let page_size = match be32(&h, 8) {
            1 => 65536,
            n => n,
        };
        let ok_size = (512..=65536).contains(&page_size) && page_size.is_power_of_two();
        if magic & !1 != 0x377f_0682 || be32(&h, 4) != 3_007_000 || !ok_size {
            return Ok(None);
        }
        let big_endian = magic & 1 == 1;
        let cksum = checksum(&h[..24], big_endian, (0, 0));
        if cksum != (be32(&h, 24), be32(&h, 28)) {
            return Ok(None);
        }
        let mut salts = [0u8; 8];
        salts.copy_from_slice(&h[16..24]);
        Ok(Some(Header { big_endian, page_size, salts, cksum }))
    }

    pub fn salt1(&self) -> u32 {
        be32(&self.salts, 0)
    }

    /// Salt-1 of the generation one reset after this one (`walRestartHdr` adds one; the
    /// checkpoint sequence it also adds one to is the resetting connection's own count, 0
    /// for one that did not recover the WAL, so it tells nothing).
    pub fn next_salt1(&self) -> u32 {
        self.salt1().wrapping_add(1)
    }
}

/// SQLite's WAL checksum (`walChecksumBytes`) of `data` (a multiple of 8 bytes), going on
/// from `s`.
pub(super) fn checksum(data: &[u8], big_endian: bool, mut s: (u32, u32)) -> (u32, u32) {
    for c in data.chunks_exact(8) {
        let (a, b) = if big_endian {
            (be32(c, 0), be32(c, 4))
        } else {
            (u32::from_le_bytes([c[0], c[1], c[2], c[3]]), u32::from_le_bytes([c[4], c[5], c[6], c[7]]))
        };
        s.0 = s.0.wrapping_add(a).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(b).wrapping_add(s.0);
    }
    s
}

/// `false` on a short read (the file ends first).
fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<bool> {
    match file.read_exact_at(buf, at) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// A generation as far as it was read: up to and including its last commit frame.
#[derive(Debug)]
pub(super) struct Generation {
    pub hdr: Header,
    /// Frames up to the last commit read (0: none).
    frames: u32,
    /// The checksum after frame `frames`.
    cksum: (u32, u32),
    /// The header of frame `frames`, to tell later whether it was overwritten.
    last: [u8; FRAME_HEADER],
}

/// One commit read: the pages of its frames (in frame order, repeats included).
pub(super) struct Read {
    pub salts: [u8; 8],
    pub end_frame: u32,
    pub cksum: (u32, u32),
    pub pages: Vec<u32>,
}

/// What ended a read of a generation's frames.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The file ends (or holds only part of the next frame).
    Eof,
    /// The next frame is not a valid continuation; `salts` are those its header carries.
    Invalid { salts: [u8; 8] },
}

impl Generation {
    pub fn new(hdr: Header) -> Generation {
        Generation { cksum: hdr.cksum, hdr, frames: 0, last: [0; FRAME_HEADER] }
    }

    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER as u64 + u64::from(self.hdr.page_size)
    }

    fn offset(&self, frame: u32) -> u64 {
        WAL_HEADER + u64::from(frame - 1) * self.frame_len()
    }

    /// Whether the last commit frame read still holds the header it had when read.
    pub fn last_frame_intact(&self, file: &File) -> std::io::Result<bool> {
        if self.frames == 0 {
            return Ok(true);
        }
        let mut h = [0u8; FRAME_HEADER];
        Ok(read_exact_at(file, &mut h, self.offset(self.frames))? && h == self.last)
    }

    /// Reads the frames past the last commit read, handing each complete commit to `commit`,
    /// until a frame is missing or not valid; frames after the last commit frame are read
    /// again next time.
    pub fn read_commits(&mut self, file: &File, size: u64, mut commit: impl FnMut(Read)) -> std::io::Result<End> {
        let len = self.frame_len();
        let mut buf = vec![0u8; len as usize];
        let mut pages = Vec::new();
        let mut s = self.cksum;
        let mut frame = self.frames;
        loop {
            frame += 1;
            let at = self.offset(frame);
            if at + len > size || !read_exact_at(file, &mut buf, at)? {
                return Ok(End::Eof);
            }
            let h = &buf[..FRAME_HEADER];
            let mut salts = [0u8; 8];
            salts.copy_from_slice(&h[8..16]);
            if salts != self.hdr.salts {
                return Ok(End::Invalid { salts });
            }
            s = checksum(&h[..8], self.hdr.big_endian, s);
            s = checksum(&buf[FRAME_HEADER..], self.hdr.big_endian, s);
            if s != (be32(h, 16), be32(h, 20)) {
                return Ok(End::Invalid { salts });
            }
            pages.push(be32(h, 0));
            if be32(h, 4) != 0 {
                self.frames = frame;
                self.cksum = s;
                self.last.copy_from_slice(h);
                let pages = std::mem::take(&mut pages);
                commit(Read { salts, end_frame: frame, cksum: s, pages });
            }
        }
    }
}
