//! The source's rows as PostgreSQL CSV, for the COPY ceiling and the bare upsert.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use owsync::source::TableInfo;
use owsync::sql::quote_ident;
use owsync::target::{MirrorTable, PgType, fmt_f64};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

pub fn select_sql(info: &TableInfo, m: &MirrorTable, filter: &str) -> String {
    let cols: Vec<String> = info.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let rowid = if m.by_rowid { "rowid, " } else { "" };
    format!("SELECT {rowid}{} FROM {}{filter}", cols.join(", "), quote_ident(&info.name))
}

/// One value as a PostgreSQL CSV field for a column of type `ty` (NULL is an empty
/// unquoted field, text is always quoted so '' stays distinct from NULL).
pub fn csv_field(out: &mut Vec<u8>, ty: PgType, v: ValueRef<'_>) {
    match v {
        ValueRef::Null => {}
        ValueRef::Integer(i) if ty == PgType::Boolean => out.push(if i != 0 { b't' } else { b'f' }),
        ValueRef::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        ValueRef::Real(f) => fmt_f64(out, f),
        ValueRef::Text(t) => {
            out.push(b'"');
            for &b in t {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        }
        ValueRef::Blob(b) => {
            out.extend_from_slice(b"\"\\x");
            for x in b {
                let _ = write!(out, "{x:02x}");
            }
            out.push(b'"');
        }
    }
}

pub fn csv_row(out: &mut Vec<u8>, m: &MirrorTable, row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
    let off = usize::from(m.by_rowid);
    if m.by_rowid {
        let _ = write!(out, "{},", row.get::<_, i64>(0)?);
    }
    for (j, (_, ty)) in m.columns.iter().enumerate() {
        if j > 0 {
            out.push(b',');
        }
        csv_field(out, *ty, row.get_ref(j + off)?);
    }
    out.push(b'\n');
    Ok(())
}

/// Every table to `<dir>/<table>.csv`, readable by the server's OS user.
pub fn export_csv(
    db: &Path,
    tables: &[(TableInfo, MirrorTable)],
    dir: &Path,
) -> Result<(BTreeMap<String, PathBuf>, u64)> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut files = BTreeMap::new();
    let mut total = 0;
    for (i, (info, m)) in tables.iter().enumerate() {
        let path = dir.join(format!("t{i:03}.csv"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut st = conn.prepare(&select_sql(info, m, ""))?;
        let mut rows = st.query([])?;
        let mut line = Vec::new();
        while let Some(r) = rows.next()? {
            line.clear();
            csv_row(&mut line, m, r)?;
            w.write_all(&line)?;
        }
        w.flush()?;
        drop(w);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        total += std::fs::metadata(&path)?.len();
        files.insert(info.name.clone(), path);
    }
    Ok((files, total))
}
