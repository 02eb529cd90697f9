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
            "SELECT s.name, coalesce(s.sql, '') FROM sqlite_schema s
             JOIN pragma_table_list l ON l.schema = 'main' AND l.name = s.name
             WHERE s.type = 'table' AND l.type = 'table' AND s.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
             ORDER BY s.name",
        )
        .map_err(src.err("sqlite_schema"))?;
    let all: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(src.err("sqlite_schema"))?
        .collect::<Result<_, _>>()
        .map_err(src.err("sqlite_schema"))?;
    all.iter().map(|(name, ddl)| table_info(src, name, ddl)).collect()
}

fn table_info(src: &Source, name: &str, ddl: &str) -> Result<TableInfo> {
    let mut stmt = src
        .conn
        .prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1) ORDER BY cid")
        .map_err(src.err(name))?;
    let columns: Vec<ColumnInfo> = stmt
        .query_map([name], |r| {
            let hidden: i64 = r.get(3)?;
            Ok(ColumnInfo {
                name: r.get(0)?,
                decl_type: r.get(1)?,
                pk: r.get(2)?,
                generated: hidden == 2 || hidden == 3,
            })
        })
        .map_err(src.err(name))?
        .collect::<Result<_, _>>()
        .map_err(src.err(name))?;
    let mut pk: Vec<&ColumnInfo> = columns.iter().filter(|c| c.pk > 0).collect();
    pk.sort_by_key(|c| c.pk);
    let key = if pk.is_empty() { RowKey::Rowid } else { RowKey::Primary(pk.iter().map(|c| c.name.clone()).collect()) };
    let without_rowid: bool = src
        .conn
        .query_row(
            "SELECT coalesce((SELECT wr FROM pragma_table_list WHERE name = ?1 AND schema = 'main'), 0)",
            [name],
            |r| r.get(0),
        )
        .map_err(src.err(name))?;
    let mut stmt = src
        .conn
        .prepare("SELECT sql FROM sqlite_schema WHERE tbl_name = ?1 AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name")
        .map_err(src.err(name))?;
    let extra_ddl = stmt
        .query_map([name], |r| r.get(0))
        .map_err(src.err(name))?
        .collect::<Result<Vec<String>, _>>()
        .map_err(src.err(name))?;
    Ok(TableInfo { name: name.to_string(), ddl: ddl.to_string(), columns, key, without_rowid, extra_ddl })
}
