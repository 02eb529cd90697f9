//! The tenant's mirror in PostgreSQL: table shapes, provisioning through the narrow
//! SECURITY DEFINER path, COPY into a per-transaction stage, upsert and tombstones.

pub mod conflict;
pub mod copy;
mod encode;
pub mod merge;
pub mod ranges;
pub mod stage;
mod types;

pub use encode::{Unfit, encode_field, fmt_f64};
pub use types::{COL_DELETED, COL_ROWID, COL_SYNCED_AT, PgType};

/// A value the mirror cannot hold, as `copy` reports it; recorded by `store::quarantine`.
pub use crate::store::quarantine::Quarantined;

use sqlx::PgConnection;
use sqlx::types::Json;

use crate::source::{RowKey, Slice, TableInfo, Value};
use crate::sql::{qualified, quote_ident};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("table {table}: {context}: {source}")]
    Db { table: String, context: String, source: sqlx::Error },
    /// A write of `store`'s (conflict log, events) in the table's transaction failed.
    #[error("table {table}: {source}")]
    Store { table: String, source: crate::store::StoreError },
}

pub type Result<T, E = TargetError> = std::result::Result<T, E>;

/// The shape of one mirrored table.
#[derive(Debug, Clone)]
pub struct MirrorTable {
    pub schema: String,
    pub name: String,
    /// Source columns with their mapped types, in source order.
    pub columns: Vec<(String, PgType)>,
    /// Key columns in the mirror (`_owsync_rowid` for tables without a primary key).
    pub key: Vec<String>,
    pub by_rowid: bool,
    /// The source table has a rowid (not WITHOUT ROWID): the mirror keeps it in `COL_ROWID`
    /// (the key when `by_rowid`, an indexed plain column otherwise) for incremental passes.
    pub has_rowid: bool,
}

impl MirrorTable {
    pub fn from_source(schema: &str, t: &TableInfo) -> MirrorTable {
        let columns = t.columns.iter().map(|c| (c.name.clone(), PgType::from_decl(&c.decl_type))).collect();
        let (key, by_rowid) = match &t.key {
            RowKey::Primary(k) => (k.clone(), false),
            RowKey::Rowid => (vec![COL_ROWID.to_string()], true),
        };
        MirrorTable {
            schema: schema.to_string(),
            name: t.name.clone(),
            columns,
            key,
            by_rowid,
            has_rowid: !t.without_rowid,
        }
    }

    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    fn db_err(&self, context: &str) -> impl FnOnce(sqlx::Error) -> TargetError + '_ {
        let context = context.to_string();
        move |source| TargetError::Db { table: self.name.clone(), context, source }
    }

    /// Columns the sync writes: rowid first when the source has one, then source columns.
    fn data_columns(&self) -> Vec<(String, PgType)> {
        let mut cols = Vec::new();
        if self.has_rowid {
            cols.push((COL_ROWID.to_string(), PgType::BigInt));
        }
        cols.extend(self.columns.iter().cloned());
        cols
    }

    /// `a.k1 = b.k1 AND ...` over the key columns (compared as `comparable`): joins two
    /// aliases of this table's rows (stage, mirror, ...) by key.
    pub(crate) fn key_join(&self, a: &str, b: &str) -> String {
        let (a, b) = (format!("{a}."), format!("{b}."));
        self.data_columns()
            .iter()
            .filter(|(n, _)| self.key.contains(n))
            .map(|(k, ty)| format!("{} = {}", MirrorTable::comparable(&a, k, *ty), MirrorTable::comparable(&b, k, *ty)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// Whether this table's rows go through COPY's binary format: every column type has
    /// a binary form here but `numeric` (`encode::write_binary`).
    pub fn copy_binary(&self) -> bool {
        !self.columns.iter().any(|(_, ty)| *ty == PgType::Numeric)
    }

    /// `x::text` for json (which has no equality operator), `x` otherwise.
    fn comparable(prefix: &str, col: &str, ty: PgType) -> String {
        let c = format!("{prefix}{}", quote_ident(col));
        if ty == PgType::Json { format!("{c}::text") } else { c }
    }
}

/// The columns `provision` asks for: the data columns, then the bookkeeping ones.
fn provision_columns(t: &MirrorTable) -> Vec<serde_json::Value> {
    let mut cols: Vec<serde_json::Value> =
        t.data_columns().iter().map(|(n, ty)| serde_json::json!({"name": n, "type": ty.sql()})).collect();
    if t.has_rowid && !t.by_rowid {
        // Incremental passes tombstone by rowid range (target::ranges): index it.
        cols[0]["index"] = serde_json::json!(true);
    }
    cols.push(serde_json::json!({"name": COL_DELETED, "type": "boolean"}));
    cols.push(serde_json::json!({"name": COL_SYNCED_AT, "type": "timestamptz"}));
    cols
}

/// A digest of everything `provision` asks of the mirror table (columns, types, indexes,
/// key): recorded with the table's state, so a sync provisions only when it changed.
pub fn shape_digest(t: &MirrorTable) -> String {
    use sha2::Digest;
    let shape = serde_json::json!({"columns": provision_columns(t), "key": t.key});
    sha2::Sha256::digest(shape.to_string().as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates the schema and table, or adds missing columns, through
/// `sync_metadata.provision_table` (sync_service itself has no CREATE privilege). The
/// conflict tracking (`conflict::resolve_stage`) is added by the table's transaction.
pub async fn provision(conn: &mut PgConnection, t: &MirrorTable) -> Result<()> {
    sqlx::query("SELECT sync_metadata.provision_table($1, $2, $3, $4)")
        .bind(&t.schema)
        .bind(&t.name)
        .bind(Json(provision_columns(t)))
        .bind(&t.key)
        .execute(&mut *conn)
        .await
        .map_err(t.db_err("provision the mirror table"))?;
    Ok(())
}

/// One key value as a row is named in errors and in `sync_metadata.quarantine.row_key`:
/// text PostgreSQL can hold as is, anything else as a hex literal (so two distinct keys
/// never print alike, as lossy UTF-8 would make them, and no NUL reaches PostgreSQL text).
pub fn key_value_text(v: &Value) -> String {
    match v {
        Value::Text(b) if !b.contains(&0) && std::str::from_utf8(b).is_ok() => String::from_utf8_lossy(b).into_owned(),
        Value::Text(b) | Value::Blob(b) => format!("x'{}'", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
        Value::Integer(n) => n.to_string(),
        Value::Real(f) => {
            let mut s = Vec::new();
            fmt_f64(&mut s, *f);
            String::from_utf8_lossy(&s).into_owned()
        }
        Value::Null => "NULL".to_string(),
    }
}

/// The name of a row of a table with a declared key: its key values joined by `, `; with
/// the rowid added when a key part is NULL (which a rowid table allows) and names nothing.
pub fn row_key_text<'a>(parts: impl IntoIterator<Item = &'a Value>, rowid: Option<i64>) -> String {
    let parts: Vec<String> = parts.into_iter().map(key_value_text).collect();
    match rowid {
        Some(r) if parts.iter().any(|p| p == "NULL") => format!("{} (rowid {r})", parts.join(", ")),
        _ => parts.join(", "),
    }
}

/// The quarantine's name of row `i` of `slice`.
pub fn key_text(t: &MirrorTable, slice: &Slice, i: usize) -> String {
    if t.by_rowid {
        return format!("rowid {}", slice.rowids.get(i).copied().unwrap_or_default());
    }
    let parts = t.key.iter().filter_map(|k| t.columns.iter().position(|(n, _)| n == k)).map(|idx| &slice.rows[i][idx]);
    row_key_text(parts, slice.rowids.get(i).copied())
}

fn raw_of(v: &Value) -> (&'static str, Option<Vec<u8>>) {
    match v {
        Value::Null => ("null", None),
        Value::Integer(i) => ("integer", Some(i.to_string().into_bytes())),
        Value::Real(f) => {
            let mut b = Vec::new();
            fmt_f64(&mut b, *f);
            ("real", Some(b))
        }
        Value::Text(t) => ("text", Some(t.clone())),
        Value::Blob(b) => ("blob", Some(b.clone())),
    }
}

/// What a table's write did to the mirror's rows.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct RowCounts {
    /// Rows inserted or changed.
    pub upserted: u64,
    /// Rows newly marked deleted.
    pub tombstoned: u64,
}
