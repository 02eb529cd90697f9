//! Disaster recovery: rebuild a tenant's SQLite database from its mirror, with the
//! source's original DDL (tables, indexes, triggers kept from discovery); tombstoned
//! rows are left out. Writes to a temporary file and renames it into place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rusqlite::types::{Null, ToSqlOutput, ValueRef};
use rusqlite::{Connection, Statement};
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use crate::sql::quote_ident;
use crate::store;
use crate::store::table_state::SourceSchema as TableState;
use crate::target::{COL_DELETED, COL_ROWID, COL_SYNCED_AT};

mod finish;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path} already exists; choose another --to or pass --force")]
    Exists { path: PathBuf },
    #[error("tenant {client}: no synced tables recorded; has it ever synced?")]
    NothingSynced { client: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("tenant {client}, table {table}: reading the mirror: {source}")]
    Mirror { client: String, table: String, source: sqlx::Error },
    #[error("writing {path} (table {table}): {source}")]
    Sqlite { path: PathBuf, table: String, source: rusqlite::Error },
    #[error("{0}")]
    Other(String),
}

impl RestoreError {
    /// A SQLite error writing or checking `path`, in `table` ("" for the whole file).
    fn sqlite(path: &Path, table: &str) -> impl FnOnce(rusqlite::Error) -> RestoreError + use<> {
        let (path, table) = (path.to_path_buf(), table.to_string());
        move |source| RestoreError::Sqlite { path, table, source }
    }
}

/// What a restore wrote, per table: the mirror's live rows, and the tombstoned rows
/// brought back (`--include-deleted-since`), less those a live row's key or a unique
/// constraint of the source's DDL kept out.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TableRestored {
    pub table: String,
    pub rows: u64,
    pub revived: u64,
    pub skipped: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    pub tables: Vec<TableRestored>,
    pub rows: u64,
    pub revived: u64,
    /// The check of the file written (what `PRAGMA integrity_check` checks, see
    /// `finish.rs`): "ok", or what it found.
    pub integrity: String,
    pub bytes: u64,
}

/// How to restore.
#[derive(Debug, Default, Clone)]
pub struct RestoreOptions {
    /// Overwrite an existing file.
    pub force: bool,
    /// Also bring back rows tombstoned at or after this time.
    pub include_deleted_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Column names and PostgreSQL types of every table of the mirror `schema`, each in
/// order: one query for all (a query per table added ~1.5-4 ms each before its COPY, while
/// the writer waited: ~7% of a 10k-chat restore).
async fn mirror_columns(pool: &PgPool, schema: &str) -> Result<HashMap<String, Vec<(String, String)>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = $1 ORDER BY table_name, ordinal_position",
    )
    .bind(schema)
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for r in &rows {
        out.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    Ok(out)
}

/// How a mirror column's values arrive in `COPY ... (FORMAT binary)`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wire {
    Int8,
    Int4,
    Int2,
    Float8,
    Float4,
    Bool,
    Blob,
    Text,
}

/// The wire form of a column of PostgreSQL type `ty`, and whether it is selected as text:
/// numeric, jsonb and anything unlisted arrive as their text (NUMERIC/JSON affinity turns
/// numeric text back into numbers); json's binary form is its text.
fn wire(ty: &str) -> (Wire, bool) {
    match ty {
        "bigint" => (Wire::Int8, false),
        "integer" => (Wire::Int4, false),
        "smallint" => (Wire::Int2, false),
        "double precision" => (Wire::Float8, false),
        "real" => (Wire::Float4, false),
        "boolean" => (Wire::Bool, false),
        "bytea" => (Wire::Blob, false),
        "text" | "character varying" | "json" => (Wire::Text, false),
        _ => (Wire::Text, true),
    }
}

/// Rebuilds `client`'s database at `to`: written to a temporary file beside it, checked
/// as `PRAGMA integrity_check` checks (`finish.rs`), then renamed into place.
pub async fn restore(
    pool: &PgPool,
    cluster: &str,
    client: &str,
    schema: &str,
    to: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    if to.exists() && !opts.force {
        return Err(RestoreError::Exists { path: to.to_path_buf() });
    }
    let tables = store::table_state::source_schemas(pool, cluster, client).await?;
    if tables.is_empty() {
        return Err(RestoreError::NothingSynced { client: client.to_string() });
    }
    let tmp = to.with_extension("owsync-restore-tmp");
    let _ = std::fs::remove_file(&tmp);
    let (tx, rx) = mpsc::channel::<Msg>(4);
    let writer = {
        let (tmp, tables) = (tmp.clone(), tables.clone());
        tokio::task::spawn_blocking(move || write_db(&tmp, &tables, rx))
    };
    let mut sent: Result<bool, RestoreError> = Ok(true);
    let columns = mirror_columns(pool, schema).await.map_err(|source| RestoreError::Mirror {
        client: client.into(),
        table: "(every table's columns)".into(),
        source,
    })?;
    for t in &tables {
        let mirror_err = |source| RestoreError::Mirror { client: client.into(), table: t.table.clone(), source };
        let cols = columns.get(&t.table).map_or(&[][..], Vec::as_slice);
        sent = send_rows(pool, schema, t, cols, None, &tx).await.map_err(mirror_err);
        if let (Ok(true), Some(since)) = (&sent, opts.include_deleted_since) {
            sent = send_rows(pool, schema, t, cols, Some(since), &tx).await.map_err(mirror_err);
        }
        if !matches!(sent, Ok(true)) {
            break;
        }
    }
    drop(tx);
    // The writer's error (the reason the channel closed) comes first.
    let (counts, integrity) = writer.await.map_err(|e| RestoreError::Other(e.to_string()))??;
    sent?;
    if integrity != "ok" {
        return Err(RestoreError::Other(format!(
            "integrity check of {} failed: {integrity}; {} was not replaced",
            tmp.display(),
            to.display()
        )));
    }
    std::fs::rename(&tmp, to)
        .map_err(|e| RestoreError::Other(format!("rename {} to {}: {e}", tmp.display(), to.display())))?;
    let mut report = RestoreReport { integrity, ..Default::default() };
    report.bytes = std::fs::metadata(to).map_or(0, |m| m.len());
    for t in &tables {
        let c = counts.get(&t.table).cloned().unwrap_or_default();
        report.rows += c.rows;
        report.revived += c.revived;
        report.tables.push(TableRestored { table: t.table.clone(), ..c });
    }
    Ok(report)
}

/// Streams one table's live rows (`since` None) or its rows tombstoned since `since` to
/// the writer, as `COPY (SELECT ...) TO STDOUT (FORMAT binary)` tuples in batches of about
/// [`BATCH_BYTES`]. `Ok(false)`: the writer stopped (its error says why).
async fn send_rows(
    pool: &PgPool,
    schema: &str,
    t: &TableState,
    cols: &[(String, String)],
    since: Option<chrono::DateTime<chrono::Utc>>,
    tx: &mpsc::Sender<Msg>,
) -> Result<bool, sqlx::Error> {
    let by_rowid = cols.iter().any(|(c, _)| c == COL_ROWID);
    let data: Vec<&(String, String)> = cols.iter().filter(|(c, _)| !c.starts_with("_owsync_")).collect();
    let (mut select, mut wires) = (Vec::new(), Vec::new());
    if by_rowid {
        select.push(quote_ident(COL_ROWID));
        wires.push(Wire::Int8);
    }
    for (c, ty) in &data {
        let (w, as_text) = wire(ty);
        select.push(if as_text { format!("{}::text", quote_ident(c)) } else { quote_ident(c) });
        wires.push(w);
    }
    // COPY takes no parameters: the time as a literal (RFC 3339, no quotes in it).
    let which = match since {
        None => format!("{} IS NOT TRUE", quote_ident(COL_DELETED)),
        Some(s) => format!(
            "{} AND {} >= '{}'::timestamptz",
            quote_ident(COL_DELETED),
            quote_ident(COL_SYNCED_AT),
            s.to_rfc3339()
        ),
    };
    let sql = format!(
        "COPY (SELECT {} FROM {}.{} WHERE {which}) TO STDOUT (FORMAT binary)",
        select.join(", "),
        quote_ident(schema),
        quote_ident(&t.table)
    );
    let names: Vec<String> = data.iter().map(|(c, _)| c.clone()).collect();
    let (revived, fields) = (since.is_some(), wires.len());
    if tx.send(Msg::Table { name: t.table.clone(), columns: names, wires, by_rowid, revived }).await.is_err() {
        return Ok(false);
    }
    let mut conn = pool.acquire().await?;
    let mut stream = conn.copy_out_raw(&sql).await?;
    let mut framer = Framer::new(fields);
    while let Some(chunk) = stream.try_next().await? {
        framer.push(&chunk).map_err(sqlx::Error::Protocol)?;
        if framer.complete() >= BATCH_BYTES && tx.send(Msg::Rows(framer.take())).await.is_err() {
            return Ok(false);
        }
    }
    let last = framer.finish().map_err(sqlx::Error::Protocol)?;
    Ok(last.is_empty() || tx.send(Msg::Rows(last)).await.is_ok())
}

/// Tuples per message to the writer: about this many bytes of them.
const BATCH_BYTES: usize = 1 << 20;
/// `COPY ... (FORMAT binary)`'s signature, then a flags word and a header extension length.
const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

fn be_i16(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Cuts a binary COPY stream into batches of whole tuples (a tuple may span messages).
struct Framer {
    buf: Vec<u8>,
    /// End of the last whole tuple in `buf`.
    whole: usize,
    fields: usize,
    header: bool,
    ended: bool,
}

impl Framer {
    fn new(fields: usize) -> Self {
        Framer { buf: Vec::with_capacity(BATCH_BYTES + (64 << 10)), whole: 0, fields, header: false, ended: false }
    }

    fn push(&mut self, chunk: &[u8]) -> Result<(), String> {
        if self.ended {
            return Err("binary COPY: data after the trailer".into());
        }
        self.buf.extend_from_slice(chunk);
        if !self.header {
            let n = COPY_SIGNATURE.len();
            let Some(ext) = be_i32(&self.buf, n + 4) else { return Ok(()) };
            if !self.buf.starts_with(COPY_SIGNATURE) || ext < 0 {
                return Err("binary COPY: bad header".into());
            }
            let skip = n + 8 + ext as usize;
            if self.buf.len() < skip {
                return Ok(());
            }
            self.buf.drain(..skip);
            self.header = true;
        }
        while let Some(n) = be_i16(&self.buf, self.whole) {
            if n == -1 {
                self.buf.truncate(self.whole);
                self.ended = true;
                break;
            }
            if n as usize != self.fields {
                return Err(format!("binary COPY: a tuple of {n} fields, expected {}", self.fields));
            }
            let mut at = self.whole + 2;
            for _ in 0..self.fields {
                match be_i32(&self.buf, at) {
                    Some(len) => at += 4 + len.max(0) as usize,
                    None => return Ok(()),
                }
            }
            if at > self.buf.len() {
                return Ok(());
            }
            self.whole = at;
        }
        Ok(())
    }

    fn complete(&self) -> usize {
        self.whole
    }

    /// The whole tuples so far; a partial one stays.
    fn take(&mut self) -> Vec<u8> {
        let rest = self.buf.split_off(self.whole);
        self.whole = 0;
        std::mem::replace(&mut self.buf, rest)
    }

    fn finish(mut self) -> Result<Vec<u8>, String> {
        if !self.ended {
            return Err("binary COPY: the stream ended without its trailer".into());
        }
        Ok(self.take())
    }
}

enum Msg {
    /// The rows that follow are of this table; `revived`: tombstoned rows brought back,
    /// inserted unless a row already holds their key.
    Table { name: String, columns: Vec<String>, wires: Vec<Wire>, by_rowid: bool, revived: bool },
    /// Whole tuples of binary COPY (no header, no trailer).
    Rows(Vec<u8>),
}

type Counts = std::collections::BTreeMap<String, TableRestored>;

/// The table the writer is on.
struct Current {
    name: String,
    sql: String,
    wires: Vec<Wire>,
    by_rowid: bool,
    revived: bool,
}

enum Bad {
    Sqlite(rusqlite::Error),
    Data(String),
}

impl From<rusqlite::Error> for Bad {
    fn from(e: rusqlite::Error) -> Self {
        Bad::Sqlite(e)
    }
}

/// Inserts the whole binary COPY tuples in `data` with `stmt`, binding each field as its
/// wire form says, straight from the buffer.
fn insert_tuples(stmt: &mut Statement<'_>, data: &[u8], cur: &Current, c: &mut TableRestored) -> Result<(), Bad> {
    let short = || Bad::Data("binary COPY: a truncated tuple".into());
    let mut at = 0;
    while at < data.len() {
        at += 2; // the field count, checked by the framer
        for (i, w) in cur.wires.iter().enumerate() {
            let len = be_i32(data, at).ok_or_else(short)?;
            at += 4;
            if len < 0 {
                if cur.by_rowid && i == 0 {
                    // The mirror's key for a table without a primary key is NOT NULL: a
                    // damaged mirror, reported rather than restored as another rowid.
                    return Err(Bad::Data(format!("NULL {COL_ROWID} in the mirror")));
                }
                stmt.raw_bind_parameter(i + 1, Null)?;
                continue;
            }
            let v = data.get(at..at + len as usize).ok_or_else(short)?;
            at += len as usize;
            bind(stmt, i + 1, *w, v).ok_or_else(|| Bad::Data(format!("a {w:?} value of {len} bytes")))??;
        }
        let n = stmt.raw_execute()? as u64;
        if cur.revived {
            c.revived += n;
            c.skipped += 1 - n;
        } else {
            c.rows += n;
        }
    }
    Ok(())
}

/// Binds one field's value; None when its length does not fit its wire form.
fn bind(stmt: &mut Statement<'_>, i: usize, w: Wire, v: &[u8]) -> Option<rusqlite::Result<()>> {
    Some(match w {
        Wire::Int8 => stmt.raw_bind_parameter(i, i64::from_be_bytes(v.try_into().ok()?)),
        Wire::Int4 => stmt.raw_bind_parameter(i, i64::from(i32::from_be_bytes(v.try_into().ok()?))),
        Wire::Int2 => stmt.raw_bind_parameter(i, i64::from(i16::from_be_bytes(v.try_into().ok()?))),
        Wire::Float8 => stmt.raw_bind_parameter(i, f64::from_be_bytes(v.try_into().ok()?)),
        Wire::Float4 => stmt.raw_bind_parameter(i, f64::from(f32::from_be_bytes(v.try_into().ok()?))),
        Wire::Bool => stmt.raw_bind_parameter(i, i64::from(*v.first()? != 0)),
        Wire::Blob => stmt.raw_bind_parameter(i, v),
        Wire::Text => stmt.raw_bind_parameter(i, ToSqlOutput::Borrowed(ValueRef::Text(v))),
    })
}

/// Writes the database at `path` from the messages; the rows written per table and the
/// result of `PRAGMA integrity_check`.
fn write_db(path: &Path, tables: &[TableState], mut rx: mpsc::Receiver<Msg>) -> Result<(Counts, String), RestoreError> {
    let err = |table: &str| RestoreError::sqlite(path, table);
    let mut conn = Connection::open(path).map_err(err(""))?;
    // A 16 MiB page cache (SQLite's default is 2 MiB) for the primary-key indexes filled in
    // random key order; the sorter of each index built afterwards takes as much again.
    conn.execute_batch(
        "PRAGMA foreign_keys = OFF; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; \
         PRAGMA cache_size = -16384;",
    )
    .map_err(err(""))?;
    // Unique indexes before the rows, so that a row brought back by
    // `--include-deleted-since` that collides with a live one is skipped (INSERT OR
    // IGNORE) instead of failing the index built afterwards.
    for t in tables {
        conn.execute_batch(&t.ddl).map_err(err(&t.table))?;
        for ddl in t.extra.iter().filter(|d| is_unique_index(d)) {
            conn.execute_batch(ddl).map_err(err(&t.table))?;
        }
    }
    let mut counts = Counts::new();
    let mut current: Option<Current> = None;
    let txn = conn.transaction().map_err(err(""))?;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Table { name, columns, wires, by_rowid, revived } => {
                let mut cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
                if by_rowid {
                    cols.insert(0, "rowid".into());
                }
                let params = (1..=cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                let verb = if revived { "INSERT OR IGNORE" } else { "INSERT" };
                let sql = format!("{verb} INTO {} ({}) VALUES ({params})", quote_ident(&name), cols.join(", "));
                current = Some(Current { name, sql, wires, by_rowid, revived });
            }
            Msg::Rows(data) => {
                let Some(cur) = &current else { continue };
                let mut stmt = txn.prepare_cached(&cur.sql).map_err(err(&cur.name))?;
                let c = counts.entry(cur.name.clone()).or_default();
                insert_tuples(&mut stmt, &data, cur, c).map_err(|e| match e {
                    Bad::Sqlite(e) => err(&cur.name)(e),
                    Bad::Data(m) => RestoreError::Other(format!("table {}: {m}", cur.name)),
                })?;
            }
        }
    }
    txn.commit().map_err(err(""))?;
    tracing::info!(rows = counts.values().map(|c| c.rows).sum::<u64>(), "restore: rows written");
    let integrity = finish::finish_and_check(&mut conn, path, tables, &counts)?;
    Ok((counts, integrity))
}

/// Whether `ddl` (one statement of the source's `sqlite_schema`) creates a unique index.
fn is_unique_index(ddl: &str) -> bool {
    let words: Vec<String> = ddl.split_whitespace().take(3).map(str::to_ascii_uppercase).collect();
    words.get(1).map(String::as_str) == Some("UNIQUE") && words.get(2).map(String::as_str) == Some("INDEX")
}

#[cfg(test)]
mod tests {
    use super::is_unique_index;

    #[test]
    fn unique_indexes_are_told_from_other_statements() {
        assert!(is_unique_index("CREATE UNIQUE INDEX ix ON user (lower(email)) WHERE email IS NOT NULL"));
        assert!(is_unique_index("create  unique\nindex if not exists ix on prompt (command)"));
        assert!(!is_unique_index("CREATE INDEX unique_idx ON chat (user_id)"));
        assert!(!is_unique_index("CREATE TRIGGER unique AFTER INSERT ON chat BEGIN SELECT 1; END"));
        assert!(!is_unique_index("CREATE TABLE unique_index (a)"));
    }
}
