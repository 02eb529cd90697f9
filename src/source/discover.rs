//! Schema discovery: user tables, their columns, keys and original DDL.

use super::{Result, Source};

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnInfo {
    pub name: String,
    /// Declared type as written in the DDL (may be empty).
    pub decl_type: String,
    /// 1-based position in the primary key, 0 when not part of it.
    pub pk: i32,
    /// Generated (virtual or stored) column.
    pub generated: bool,
}

/// How rows of a table are identified.
#[derive(Debug, Clone, PartialEq)]
pub enum RowKey {
    /// The declared primary key columns, in key order.
    Primary(Vec<String>),
    /// No primary key (Open WebUI tables created before 0.9.6): the rowid.
    Rowid,
}

#[derive(Debug, Clone)]
pub struct TableInfo {
    pub name: String,
    /// `CREATE TABLE` statement as stored in sqlite_schema (for restore).
    pub ddl: String,
    pub columns: Vec<ColumnInfo>,
    pub key: RowKey,
    pub without_rowid: bool,
    /// `CREATE INDEX` / `CREATE TRIGGER` statements of the table (for restore).
    pub extra_ddl: Vec<String>,
}

impl TableInfo {
    pub fn key_columns(&self) -> Vec<String> {
        match &self.key {
            RowKey::Primary(cols) => cols.clone(),
            RowKey::Rowid => vec![],
        }
    }
}

/// Every user table: skips `sqlite_*`, views, virtual tables and their shadow tables. SQLite
/// itself says which tables are virtual or shadow (`pragma_table_list.type`), so an ordinary
/// table whose name merely ends like a shadow table's (`geo_data` beside an rtree `geo`) is kept.
pub fn discover(src: &Source) -> Result<Vec<TableInfo>> {
    let mut stmt = src
        .conn
        .prepare(
            "SELECT s.name, coalesce(s.sql, ''), l.wr FROM sqlite_schema s
             JOIN pragma_table_list l ON l.schema = 'main' AND l.name = s.name
             WHERE s.type = 'table' AND l.type = 'table' AND s.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
             ORDER BY s.name",
        )
        .map_err(src.err("sqlite_schema"))?;
    let all: Vec<(String, String, bool)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(src.err("sqlite_schema"))?
        .collect::<Result<_, _>>()
        .map_err(src.err("sqlite_schema"))?;
    let mut extra = extra_ddl(src)?;
    all.into_iter()
        .map(|(name, ddl, without_rowid)| {
            let columns = columns(src, &name)?;
            let extra_ddl = extra.remove(&name).unwrap_or_default();
            Ok(TableInfo { key: key_of(&columns), name, ddl, columns, without_rowid, extra_ddl })
        })
        .collect()
}

/// The `CREATE INDEX` / `CREATE TRIGGER` statements of every table, by table, in one read.
fn extra_ddl(src: &Source) -> Result<std::collections::HashMap<String, Vec<String>>> {
    let mut stmt = src
        .conn
        .prepare(
            "SELECT tbl_name, sql FROM sqlite_schema WHERE type IN ('index', 'trigger') AND sql IS NOT NULL
             ORDER BY tbl_name, type, name",
        )
        .map_err(src.err("sqlite_schema"))?;
    let mut out: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    let mut rows = stmt.query([]).map_err(src.err("sqlite_schema"))?;
    while let Some(r) = rows.next().map_err(src.err("sqlite_schema"))? {
        let (table, sql): (String, String) =
            (r.get(0).map_err(src.err("sqlite_schema"))?, r.get(1).map_err(src.err("sqlite_schema"))?);
        out.entry(table).or_default().push(sql);
    }
    Ok(out)
}

fn columns(src: &Source, name: &str) -> Result<Vec<ColumnInfo>> {
    let mut stmt = src
        .conn
        .prepare_cached("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")
        .map_err(src.err(name))?;
    stmt.query_map([name], |r| {
        let hidden: i64 = r.get(3)?;
        Ok(ColumnInfo { name: r.get(0)?, decl_type: r.get(1)?, pk: r.get(2)?, generated: hidden == 2 || hidden == 3 })
    })
    .map_err(src.err(name))?
    .collect::<Result<_, _>>()
    .map_err(src.err(name))
}

/// The declared primary key, in key order, or the rowid.
fn key_of(columns: &[ColumnInfo]) -> RowKey {
    let mut pk: Vec<&ColumnInfo> = columns.iter().filter(|c| c.pk > 0).collect();
    pk.sort_by_key(|c| c.pk);
    if pk.is_empty() { RowKey::Rowid } else { RowKey::Primary(pk.iter().map(|c| c.name.clone()).collect()) }
}
