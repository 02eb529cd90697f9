//! Disaster recovery: rebuild a tenant's SQLite database from its mirror, with the
//! source's original DDL (tables, indexes, triggers kept from discovery); tombstoned
//! rows are left out. Writes to a temporary file and renames it into place.

use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rusqlite::Connection;
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use crate::source::Value;
use crate::sql::quote_ident;
use crate::store::{self, Context};
use crate::target::{COL_DELETED, COL_ROWID, COL_SYNCED_AT};

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

#[derive(Debug, Clone)]
struct TableState {
    name: String,
    ddl: String,
    extra: Vec<String>,
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
    /// `PRAGMA integrity_check` of the file written: "ok".
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

async fn tables(pool: &PgPool, cluster: &str, client: &str) -> Result<Vec<TableState>, RestoreError> {
    let mut tx = store::begin(pool, cluster).await?;
    let rows = sqlx::query(
        "SELECT table_name, coalesce(source_ddl, ''), source_indexes FROM sync_metadata.table_state
         WHERE cluster_name = $1 AND client_name = $2 AND source_ddl IS NOT NULL ORDER BY table_name",
    )
    .bind(cluster)
    .bind(client)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read table state of {client}"))?;
    let _ = tx.commit().await;
    Ok(rows.iter().map(|r| TableState { name: r.get(0), ddl: r.get(1), extra: r.get(2) }).collect())
}

/// Column name and PostgreSQL type of a mirror table, in order.
async fn mirror_columns(pool: &PgPool, schema: &str, table: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn decode(row: &sqlx::postgres::PgRow, i: usize, ty: &str) -> Value {
    let v = match ty {
        "bigint" | "integer" => row.try_get::<Option<i64>, _>(i).ok().flatten().map(Value::Integer),
        "double precision" => row.try_get::<Option<f64>, _>(i).ok().flatten().map(Value::Real),
        "boolean" => row.try_get::<Option<bool>, _>(i).ok().flatten().map(|b| Value::Integer(i64::from(b))),
        "bytea" => row.try_get::<Option<Vec<u8>>, _>(i).ok().flatten().map(Value::Blob),
        // numeric and json are selected as text; NUMERIC/JSON affinity turns numeric text back into numbers.
        _ => row.try_get::<Option<String>, _>(i).ok().flatten().map(|s| Value::Text(s.into_bytes())),
    };
    v.unwrap_or(Value::Null)
}

/// Rebuilds `client`'s database at `to`: written to a temporary file beside it, checked
/// (`PRAGMA integrity_check`), then renamed into place.
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
    let tables = tables(pool, cluster, client).await?;
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
    for t in &tables {
        let mirror_err = |source| RestoreError::Mirror { client: client.into(), table: t.name.clone(), source };
        let cols = mirror_columns(pool, schema, &t.name).await.map_err(mirror_err)?;
        sent = send_rows(pool, schema, t, &cols, None, &tx).await.map_err(mirror_err);
        if let (Ok(true), Some(since)) = (&sent, opts.include_deleted_since) {
            sent = send_rows(pool, schema, t, &cols, Some(since), &tx).await.map_err(mirror_err);
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
    report.bytes = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    for t in &tables {
        let c = counts.get(&t.name).cloned().unwrap_or_default();
        report.rows += c.rows;
        report.revived += c.revived;
        report.tables.push(TableRestored { table: t.name.clone(), ..c });
    }
    Ok(report)
}

/// Streams one table's live rows (`since` None) or its rows tombstoned since `since` to
/// the writer. `Ok(false)`: the writer stopped (its error says why).
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
    let mut select: Vec<String> = Vec::new();
    if by_rowid {
        select.push(quote_ident(COL_ROWID));
    }
    select.extend(data.iter().map(|(c, ty)| match ty.as_str() {
        "numeric" | "json" | "jsonb" => format!("{}::text", quote_ident(c)),
        _ => quote_ident(c),
    }));
    let which = match since {
        None => format!("{} IS NOT TRUE", quote_ident(COL_DELETED)),
        Some(_) => format!("{} AND {} >= $1", quote_ident(COL_DELETED), quote_ident(COL_SYNCED_AT)),
    };
    let sql =
        format!("SELECT {} FROM {}.{} WHERE {which}", select.join(", "), quote_ident(schema), quote_ident(&t.name));
    let names: Vec<String> = data.iter().map(|(c, _)| c.clone()).collect();
    let revived = since.is_some();
    if tx.send(Msg::Table { name: t.name.clone(), columns: names, by_rowid, revived }).await.is_err() {
        return Ok(false);
    }
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    if let Some(s) = since {
        q = q.bind(s);
    }
    let mut stream = q.fetch(pool);
    let mut batch = Vec::with_capacity(1000);
    while let Some(row) = stream.try_next().await? {
        let off = usize::from(by_rowid);
        // The mirror's key for a table without a primary key: NOT NULL, so a failure
        // here is a damaged mirror, reported rather than restored as rowid 0.
        let rowid = if by_rowid { Some(row.try_get::<i64, _>(0)?) } else { None };
        let vals: Vec<Value> = data.iter().enumerate().map(|(i, (_, ty))| decode(&row, i + off, ty)).collect();
        batch.push((rowid, vals));
        if batch.len() == 1000 && tx.send(Msg::Rows(std::mem::take(&mut batch))).await.is_err() {
            return Ok(false);
        }
    }
    Ok(batch.is_empty() || tx.send(Msg::Rows(batch)).await.is_ok())
}

enum Msg {
    /// The rows that follow are of this table; `revived`: tombstoned rows brought back,
    /// inserted unless a row already holds their key.
    Table {
        name: String,
        columns: Vec<String>,
        by_rowid: bool,
        revived: bool,
    },
    Rows(Vec<(Option<i64>, Vec<Value>)>),
}

type Counts = std::collections::BTreeMap<String, TableRestored>;

/// Writes the database at `path` from the messages; the rows written per table and the
/// result of `PRAGMA integrity_check`.
fn write_db(path: &Path, tables: &[TableState], mut rx: mpsc::Receiver<Msg>) -> Result<(Counts, String), RestoreError> {
    let err = |table: &str| {
        let (path, table) = (path.to_path_buf(), table.to_string());
        move |source| RestoreError::Sqlite { path, table, source }
    };
    let mut conn = Connection::open(path).map_err(err(""))?;
    conn.execute_batch("PRAGMA foreign_keys = OFF; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
        .map_err(err(""))?;
    for t in tables {
        conn.execute_batch(&t.ddl).map_err(err(&t.name))?;
    }
    let mut counts = Counts::new();
    let mut current: Option<(String, String, bool)> = None;
    let txn = conn.transaction().map_err(err(""))?;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Table { name, columns, by_rowid, revived } => {
                let mut cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
                if by_rowid {
                    cols.insert(0, "rowid".into());
                }
                let params = (1..=cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                let verb = if revived { "INSERT OR IGNORE" } else { "INSERT" };
                let sql = format!("{verb} INTO {} ({}) VALUES ({params})", quote_ident(&name), cols.join(", "));
                current = Some((name, sql, revived));
            }
            Msg::Rows(rows) => {
                let Some((name, sql, revived)) = &current else { continue };
                let mut stmt = txn.prepare_cached(sql).map_err(err(name))?;
                let c = counts.entry(name.clone()).or_default();
                for (rowid, vals) in rows {
                    let mut p: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(vals.len() + 1);
                    if let Some(r) = &rowid {
                        p.push(r);
                    }
                    p.extend(vals.iter().map(|v| v as &dyn rusqlite::ToSql));
                    let n = stmt.execute(p.as_slice()).map_err(err(name))? as u64;
                    match revived {
                        false => c.rows += n,
                        true => {
                            c.revived += n;
                            c.skipped += 1 - n;
                        }
                    }
                }
            }
        }
    }
    txn.commit().map_err(err(""))?;
    finish_db(&mut conn, tables, &err)?;
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(err(""))?;
    Ok((counts, integrity))
}

/// Indexes and triggers after the rows (faster, and triggers must not fire on them), then
/// WAL mode, as Open WebUI runs it.
fn finish_db<F, E>(conn: &mut Connection, tables: &[TableState], err: &F) -> Result<(), RestoreError>
where
    F: Fn(&str) -> E,
    E: FnOnce(rusqlite::Error) -> RestoreError,
{
    let txn = conn.transaction().map_err(err(""))?;
    for t in tables {
        for ddl in &t.extra {
            txn.execute_batch(ddl).map_err(err(&t.name))?;
        }
    }
    txn.commit().map_err(err(""))?;
    conn.execute_batch("PRAGMA journal_mode = WAL;").map_err(err(""))?;
    Ok(())
}
