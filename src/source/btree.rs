//! Parsing of SQLite table b-tree pages, per <https://www.sqlite.org/fileformat2.html>
//! (section 1.6, "B-tree Pages"). No I/O: the page walker (`pages.rs`) reads the bytes.

/// Page type bytes.
pub const TABLE_INTERIOR: u8 = 0x05;
pub const TABLE_LEAF: u8 = 0x0d;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("page {pgno}: {what}")]
pub struct PageError {
    pub pgno: u32,
    pub what: String,
}

fn bad(pgno: u32, what: impl Into<String>) -> PageError {
    PageError { pgno, what: what.into() }
}

/// A table b-tree page: an interior page's children, or a leaf's cells.
#[derive(Debug, PartialEq)]
pub enum TablePage {
    Interior { children: Vec<u32> },
    Leaf { cells: Vec<LeafCell> },
}

/// One row of a table leaf: its rowid, the first page of its overflow chain, if any, and
/// where its bytes on the page are.
#[derive(Debug, PartialEq)]
pub struct LeafCell {
    pub rowid: i64,
    pub overflow: Option<u32>,
    pub bytes: std::ops::Range<usize>,
}

/// SQLite's variable-length integer: up to 9 bytes, big-endian, 7 bits a byte but 8 in the 9th.
pub fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    for i in 0..9 {
        let byte = *b.get(i)?;
        if i == 8 {
            return Some(((v << 8) | u64::from(byte), 9));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?)))
}

pub fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// How many bytes of a table leaf cell's payload of `p` bytes are stored on the page
/// (the rest goes to overflow pages), for a usable page size `u`.
pub fn table_leaf_local(p: u64, u: usize) -> u64 {
    let u = u as u64;
    let x = u - 35;
    if p <= x {
        return p;
    }
    let m = ((u - 12) * 32 / 255) - 23;
    let k = m + ((p - m) % (u - 4));
    if k <= x { k } else { m }
}

/// The page type byte of `data` (page 1 has the 100-byte file header first).
pub fn page_type(pgno: u32, data: &[u8]) -> Option<u8> {
    data.get(if pgno == 1 { 100 } else { 0 }).copied()
}

/// Parses one table b-tree page; `usable` is the page size less the reserved bytes.
pub fn parse_table_page(pgno: u32, data: &[u8], usable: usize) -> Result<TablePage, PageError> {
    let hdr = if pgno == 1 { 100 } else { 0 };
    let kind = *data.get(hdr).ok_or_else(|| bad(pgno, "empty page"))?;
    let ncells = u16_at(data, hdr + 3).ok_or_else(|| bad(pgno, "short header"))?;
    let header_len = match kind {
        TABLE_INTERIOR => 12,
        TABLE_LEAF => 8,
        other => return Err(bad(pgno, format!("not a table b-tree page (type {other:#04x})"))),
    };
    let ptrs = hdr + header_len;
    let cell_at = |i: usize| -> Result<usize, PageError> {
        let off = u16_at(data, ptrs + 2 * i).ok_or_else(|| bad(pgno, "cell pointer array past the page"))?;
        if off >= data.len() || off < ptrs {
            return Err(bad(pgno, format!("cell {i} at offset {off} is outside the page")));
        }
        Ok(off)
    };
    if kind == TABLE_INTERIOR {
        let mut children = Vec::with_capacity(ncells + 1);
        for i in 0..ncells {
            let off = cell_at(i)?;
            children.push(u32_at(data, off).ok_or_else(|| bad(pgno, "short interior cell"))?);
        }
        children.push(u32_at(data, hdr + 8).ok_or_else(|| bad(pgno, "short interior header"))?);
        return Ok(TablePage::Interior { children });
    }
    let mut cells = Vec::with_capacity(ncells);
    for i in 0..ncells {
        let off = cell_at(i)?;
        let (p, n1) = varint(&data[off..]).ok_or_else(|| bad(pgno, format!("cell {i}: bad payload size")))?;
        let (rowid, n2) = varint(&data[off + n1..]).ok_or_else(|| bad(pgno, format!("cell {i}: bad rowid")))?;
        let local = table_leaf_local(p, usable);
        let at = off + n1 + n2 + local as usize;
        let (overflow, end) = if local < p {
            let ptr = u32_at(data, at).ok_or_else(|| bad(pgno, format!("cell {i}: overflow pointer past the page")))?;
            (Some(ptr), at + 4)
        } else {
            (None, at)
        };
        if end > data.len() {
            return Err(bad(pgno, format!("cell {i}: payload past the page")));
        }
        cells.push(LeafCell { rowid: rowid as i64, overflow, bytes: off..end });
    }
    Ok(TablePage::Leaf { cells })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_like_sqlite() {
        assert_eq!(varint(&[0x05]), Some((5, 1)));
        assert_eq!(varint(&[0x81, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(varint(&[0x81]), None);
    }

    #[test]
    fn local_payload_follows_the_file_format() {
        // 4096-byte pages: up to U-35 = 4061 bytes stay local.
        assert_eq!(table_leaf_local(4061, 4096), 4061);
        let m = ((4096 - 12) * 32 / 255) - 23;
        // K = M + (P - M) % (U - 4) = 4062 > X: only M bytes stay local.
        assert_eq!(table_leaf_local(4062, 4096), m);
        assert_eq!(table_leaf_local(5000, 4096), m + ((5000 - m) % 4092));
        assert!(table_leaf_local(100_000, 4096) <= 4061);
    }

    #[test]
    fn rejects_what_is_not_a_table_page() {
        let page = vec![0x0a_u8; 512];
        assert!(parse_table_page(2, &page, 512).is_err());
    }
}
