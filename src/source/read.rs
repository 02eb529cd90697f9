//! Keyset-sliced reads: each slice is one short statement (its own implicit read
//! transaction), so a writer is never blocked for longer than one slice takes.

use rusqlite::types::ValueRef;

use super::discover::{RowKey, TableInfo};
use super::{Result, Source};
use crate::sql::quote_ident;

/// One SQLite value, with its storage class. Text is kept as bytes: SQLite does not
/// guarantee it is valid UTF-8.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

impl Value {
    fn from_ref(v: ValueRef<'_>) -> Value {
        match v {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(f) => Value::Real(f),
            ValueRef::Text(t) => Value::Text(t.to_vec()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    fn size(&self) -> usize {
        match self {
            Value::Text(b) | Value::Blob(b) => b.len() + 8,
            _ => 8,
        }
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput::Borrowed;
        Ok(match self {
            Value::Null => Borrowed(ValueRef::Null),
            Value::Integer(i) => Borrowed(ValueRef::Integer(*i)),
            Value::Real(f) => Borrowed(ValueRef::Real(*f)),
            Value::Text(t) => Borrowed(ValueRef::Text(t)),
            Value::Blob(b) => Borrowed(ValueRef::Blob(b)),
        })
    }
}

/// Rows of one slice; `rowids` is filled for tables keyed by rowid.
#[derive(Debug, Default)]
pub struct Slice {
    pub rows: Vec<Vec<Value>>,
    pub rowids: Vec<i64>,
    pub bytes: usize,
    /// For tables read by rowid: the inclusive rowid interval this slice looked at (rows
    /// absent from it within that interval do not exist in the source).
    pub scanned: Option<(i64, i64)>,
}

/// Iterates a table in key order, one bounded slice at a time.
pub struct SliceReader<'a> {
    src: &'a Source,
    table: &'a TableInfo,
    sql_first: String,
    sql_next: String,
    sql_range: String,
    /// Read only these inclusive rowid ranges (sorted, disjoint), from `ranges[range_idx]`
    /// at rowid `cursor` on.
    ranges: Option<Vec<(i64, i64)>>,
    range_idx: usize,
    cursor: i64,
    key_idx: Vec<usize>,
    last_key: Option<Vec<Value>>,
    last_rowid: Option<i64>,
    done: bool,
    pub max_rows: usize,
    /// A slice ends past this many bytes of values: with a channel of one slice per
    /// reader, two readers hold a few slices at once (peak RSS at 100k chats).
    pub max_bytes: usize,
    /// How long one slice may hold SQLite's read lock. In rollback-journal mode a writer's
    /// COMMIT waits for it, and SQLite's busy handler retries at 1, 3, 8, 18, 33, 53 ms: a
    /// slice must end well within that for the writer to wait less than 50 ms.
    pub max_time: std::time::Duration,
    /// End a slice as soon as a writer holds SQLite's RESERVED lock (rollback journal: its
    /// COMMIT would wait for the slice's read lock).
    pub yield_to_writers: bool,
}

impl<'a> SliceReader<'a> {
    pub fn new(src: &'a Source, table: &'a TableInfo) -> SliceReader<'a> {
        let cols: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let t = quote_ident(&table.name);
        let by_rowid = !table.without_rowid;
        let alias = rowid_alias(table);
        let sql_range = format!(
            "SELECT {alias}, {} FROM {t} WHERE {alias} >= ?2 AND {alias} <= ?3 ORDER BY {alias} LIMIT ?1",
            cols.join(", ")
        );
        let (sql_first, sql_next, key_idx) = if by_rowid {
            let list = cols.join(", ");
            (
                format!("SELECT {alias}, {list} FROM {t} ORDER BY {alias} LIMIT ?1"),
                format!("SELECT {alias}, {list} FROM {t} WHERE {alias} > ?2 ORDER BY {alias} LIMIT ?1"),
                vec![],
            )
        } else {
            let keys = match &table.key {
                RowKey::Primary(k) => k.clone(),
                RowKey::Rowid => vec![],
            };
            let key_idx: Vec<usize> =
                keys.iter().filter_map(|k| table.columns.iter().position(|c| &c.name == k)).collect();
            let klist = keys.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
            let params = (0..keys.len()).map(|i| format!("?{}", i + 2)).collect::<Vec<_>>().join(", ");
            let list = cols.join(", ");
            (
                format!("SELECT {list} FROM {t} ORDER BY {klist} LIMIT ?1"),
                format!("SELECT {list} FROM {t} WHERE ({klist}) > ({params}) ORDER BY {klist} LIMIT ?1"),
                key_idx,
            )
        };
        SliceReader {
            src,
            table,
            sql_first,
            sql_next,
            sql_range,
            ranges: None,
            range_idx: 0,
            cursor: i64::MIN,
            key_idx,
            last_key: None,
            last_rowid: None,
            done: false,
            max_rows: 2000,
            max_bytes: 2 << 20,
            max_time: std::time::Duration::from_millis(10),
            yield_to_writers: false,
        }
    }

    /// A reader of only the rows whose rowid lies in `ranges` (inclusive; sorted and
    /// disjoint, as `pages::merge_ranges` makes them) of a table that has a rowid.
    pub fn with_ranges(src: &'a Source, table: &'a TableInfo, ranges: Vec<(i64, i64)>) -> SliceReader<'a> {
        let mut r = SliceReader::new(src, table);
        r.cursor = ranges.first().map_or(i64::MIN, |x| x.0);
        r.ranges = Some(ranges);
        r
    }

    /// The next slice, or `None` at the end of the table.
    pub fn next_slice(&mut self) -> Result<Option<Slice>> {
        if self.done {
            return Ok(None);
        }
        if self.ranges.is_some() {
            return self.next_range_slice();
        }
        let by_rowid = !self.table.without_rowid;
        let first = self.last_key.is_none() && self.last_rowid.is_none();
        let sql = if first { &self.sql_first } else { &self.sql_next };
        let mut stmt = self.src.conn.prepare_cached(sql).map_err(self.src.err(&self.table.name))?;
        let limit = self.max_rows as i64;
        let mut params: Vec<&dyn rusqlite::ToSql> = vec![&limit];
        if let Some(r) = &self.last_rowid {
            params.push(r);
        }
        if let Some(k) = &self.last_key {
            params.extend(k.iter().map(|v| v as &dyn rusqlite::ToSql));
        }
        let hold = self.src.pace.begin();
        let mut rows = stmt.query(params.as_slice()).map_err(self.src.err(&self.table.name))?;
        let mut slice = Slice::default();
        let started = std::time::Instant::now();
        let mut cut = false;
        let ncols = self.table.columns.len();
        let off = usize::from(by_rowid);
        while let Some(row) = rows.next().map_err(self.src.err(&self.table.name))? {
            let mut vals = Vec::with_capacity(ncols);
            for i in 0..ncols {
                let v = Value::from_ref(row.get_ref(i + off).map_err(self.src.err(&self.table.name))?);
                slice.bytes += v.size();
                vals.push(v);
            }
            if by_rowid {
                slice.rowids.push(row.get(0).map_err(self.src.err(&self.table.name))?);
            }
            slice.rows.push(vals);
            if slice.bytes >= self.max_bytes || self.over(started) {
                cut = true;
                break;
            }
        }
        drop(rows);
        self.src.pace.end(hold);
        drop(stmt);
        let n = slice.rows.len();
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        if n < self.max_rows && !cut {
            self.done = true;
        }
        if by_rowid {
            let lo = self.last_rowid.map_or(i64::MIN, |r| r.saturating_add(1));
            self.last_rowid = slice.rowids.last().copied();
            let hi = if self.done { i64::MAX } else { self.last_rowid.unwrap_or(i64::MAX) };
            slice.scanned = Some((lo, hi));
        } else if let Some(last) = slice.rows.last() {
            self.last_key = Some(self.key_idx.iter().map(|&i| last[i].clone()).collect());
        }
        Ok(Some(slice))
    }
}

impl SliceReader<'_> {
    /// Whether the slice started at `started` must end: its time is up or, when it reads
    /// a rollback-journal source (`yield_to_writers`), a writer has begun a transaction.
    fn over(&self, started: std::time::Instant) -> bool {
        if self.yield_to_writers {
            self.src.slice_over(started, self.max_time)
        } else {
            started.elapsed() >= self.max_time
        }
    }

    /// One slice of a ranges reader: rows of as many ranges as the slice budget allows.
    fn next_range_slice(&mut self) -> Result<Option<Slice>> {
        let name = &self.table.name;
        let ranges = self.ranges.take().unwrap_or_default();
        let mut slice = Slice::default();
        let started = std::time::Instant::now();
        let scan_lo = self.cursor;
        let mut scan_hi = self.cursor;
        let ncols = self.table.columns.len();
        let mut full = false;
        let hold = self.src.pace.begin();
        let result = (|| -> Result<()> {
            let mut stmt = self.src.conn.prepare_cached(&self.sql_range).map_err(self.src.err(name))?;
            while let Some(&(lo, hi)) = ranges.get(self.range_idx) {
                let from = self.cursor.max(lo);
                let limit = (self.max_rows - slice.rows.len()) as i64;
                let mut rows = stmt.query(rusqlite::params![limit, from, hi]).map_err(self.src.err(name))?;
                let mut n = 0i64;
                let mut last = None;
                while let Some(row) = rows.next().map_err(self.src.err(name))? {
                    let rowid: i64 = row.get(0).map_err(self.src.err(name))?;
                    let mut vals = Vec::with_capacity(ncols);
                    for i in 0..ncols {
                        let v = Value::from_ref(row.get_ref(i + 1).map_err(self.src.err(name))?);
                        slice.bytes += v.size();
                        vals.push(v);
                    }
                    slice.rowids.push(rowid);
                    slice.rows.push(vals);
                    n += 1;
                    last = Some(rowid);
                    if slice.bytes >= self.max_bytes || self.over(started) {
                        full = true;
                        break;
                    }
                }
                match last {
                    Some(r) if (full || n == limit) && r < hi => {
                        self.cursor = r + 1;
                        scan_hi = r;
                        full = true;
                    }
                    _ => {
                        scan_hi = hi;
                        self.range_idx += 1;
                        self.cursor = ranges.get(self.range_idx).map_or(i64::MAX, |x| x.0);
                    }
                }
                if full || slice.rows.len() >= self.max_rows || self.over(started) {
                    break;
                }
            }
            Ok(())
        })();
        self.src.pace.end(hold);
        self.ranges = Some(ranges);
        result?;
        if self.range_idx >= self.ranges.as_ref().map_or(0, Vec::len) {
            self.done = true;
        }
        if slice.rows.is_empty() && self.done && scan_lo == scan_hi && scan_lo == i64::MIN {
            return Ok(None);
        }
        slice.scanned = Some((scan_lo, scan_hi));
        Ok(Some(slice))
    }
}

/// A name for the rowid that no column shadows.
fn rowid_alias(table: &TableInfo) -> &'static str {
    ["rowid", "_rowid_", "oid"]
        .into_iter()
        .find(|a| !table.columns.iter().any(|c| c.name.eq_ignore_ascii_case(a)))
        .unwrap_or("rowid")
}
