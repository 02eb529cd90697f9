//! An independent check that a mirror equals its SQLite source: every live row, every
//! column, compared value by value with the storage class in mind. Written against
//! rusqlite and sqlx directly (not owsync's own reader), so it does not share bugs
//! with the engine under test.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::types::ValueRef;
use sqlx::{PgPool, Row};

#[derive(Debug, Clone, PartialEq)]
enum V {
    Null,
    Int(i64),
    Real(u64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
}

fn canon(v: ValueRef<'_>) -> V {
    match v {
        ValueRef::Null => V::Null,
        ValueRef::Integer(i) => V::Int(i),
        ValueRef::Real(f) => V::Real(f.to_bits()),
        ValueRef::Text(t) => V::Text(t.to_vec()),
        ValueRef::Blob(b) => V::Blob(b.to_vec()),
    }
}

struct Table {
    name: String,
    cols: Vec<(String, String)>,
    pk: Vec<String>,
}

fn sqlite_tables(conn: &rusqlite::Connection) -> Vec<Table> {
    let mut st = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    let names: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    names
        .into_iter()
        .map(|name| {
            let mut st = conn.prepare("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid").unwrap();
            let rows: Vec<(String, String, i64)> =
                st.query_map([&name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
            let mut pk: Vec<(i64, String)> = rows.iter().filter(|r| r.2 > 0).map(|r| (r.2, r.0.clone())).collect();
            pk.sort();
            Table {
                name,
                cols: rows.iter().map(|r| (r.0.clone(), r.1.clone())).collect(),
                pk: pk.into_iter().map(|p| p.1).collect(),
            }
        })
        .collect()
}

fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Compares every table; returns the differences (empty when equal) and the number of
/// rows compared.
pub async fn mirror_diff(pool: &PgPool, schema: &str, sqlite: &Path) -> (Vec<String>, usize) {
    let conn = rusqlite::Connection::open_with_flags(sqlite, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut diffs = Vec::new();
    let mut compared = 0;
    for t in sqlite_tables(&conn) {
        let key_sql = if t.pk.is_empty() {
            "rowid".to_string()
        } else {
            t.pk.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ")
        };
        let cols = t.cols.iter().map(|(c, _)| q(c)).collect::<Vec<_>>().join(", ");
        let mut st = conn.prepare(&format!("SELECT {key_sql}, {cols} FROM {}", q(&t.name))).unwrap();
        let nkey = if t.pk.is_empty() { 1 } else { t.pk.len() };
        let mut src: BTreeMap<String, Vec<V>> = BTreeMap::new();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let key: Vec<String> = (0..nkey).map(|i| format!("{:?}", canon(r.get_ref(i).unwrap()))).collect();
            let vals = (0..t.cols.len()).map(|i| canon(r.get_ref(nkey + i).unwrap())).collect();
            src.insert(key.join("|"), vals);
        }
        // Mirror side: key as text, every column as text plus its type.
        let pg_key = if t.pk.is_empty() {
            "\"_owsync_rowid\"".to_string()
        } else {
            t.pk.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ")
        };
        let sel: Vec<String> = t.cols.iter().map(|(c, _)| format!("{0}::text, pg_typeof({0})::text", q(c))).collect();
        let sql = format!(
            "SELECT {pg_key}, {} FROM {}.{} WHERE NOT \"_owsync_deleted\"",
            sel.join(", "),
            q(schema),
            q(&t.name)
        );
        let pg_rows = match sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await {
            Ok(r) => r,
            Err(e) => {
                diffs.push(format!("{}: cannot read mirror: {e}", t.name));
                continue;
            }
        };
        if pg_rows.len() != src.len() {
            diffs.push(format!("{}: {} rows in source, {} live rows in mirror", t.name, src.len(), pg_rows.len()));
        }
        for row in &pg_rows {
            let key: Vec<String> = (0..nkey)
                .map(|i| {
                    // Rebuild the key in the source's canonical form.
                    if let Ok(v) = row.try_get::<i64, _>(i) {
                        format!("{:?}", V::Int(v))
                    } else {
                        let s: String = row.get(i);
                        format!("{:?}", V::Text(s.into_bytes()))
                    }
                })
                .collect();
            let key = key.join("|");
            let Some(vals) = src.get(&key) else {
                diffs.push(format!("{}: mirror row {key} is not in the source", t.name));
                continue;
            };
            compared += 1;
            for (i, (col, _)) in t.cols.iter().enumerate() {
                let text: Option<String> = row.get(nkey + 2 * i);
                let ty: String = row.get(nkey + 2 * i + 1);
                if !same(&vals[i], text.as_deref(), &ty) {
                    diffs.push(format!(
                        "{}[{key}].{col}: source {:?} != mirror {:?} ({ty})",
                        t.name,
                        short(&vals[i]),
                        text
                    ));
                }
            }
        }
    }
    (diffs, compared)
}

fn short(v: &V) -> String {
    let s = match v {
        V::Text(t) => format!("text {:?}", String::from_utf8_lossy(t)),
        V::Blob(b) => format!("blob {} bytes", b.len()),
        V::Real(bits) => format!("real {}", f64::from_bits(*bits)),
        other => format!("{other:?}"),
    };
    s.chars().take(120).collect()
}

/// Whether a mirror value (as PostgreSQL's text output, with its type) equals the source.
fn same(src: &V, pg: Option<&str>, ty: &str) -> bool {
    match (src, pg) {
        (V::Null, None) => true,
        (V::Null, Some(_)) | (_, None) => false,
        (V::Int(i), Some(p)) => match ty {
            "boolean" => (*i == 1 && p == "true") || (*i == 0 && p == "false"),
            "double precision" => p.parse::<f64>().ok() == Some(*i as f64),
            _ => p == i.to_string(),
        },
        (V::Real(bits), Some(p)) => {
            let f = f64::from_bits(*bits);
            match p {
                "Infinity" => f == f64::INFINITY,
                "-Infinity" => f == f64::NEG_INFINITY,
                "NaN" => f.is_nan(),
                _ => p.parse::<f64>().is_ok_and(|g| g.to_bits() == *bits),
            }
        }
        (V::Text(t), Some(p)) => p.as_bytes() == t.as_slice(),
        (V::Blob(b), Some(p)) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            p == format!("\\x{hex}")
        }
    }
}
