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
use crate::target::{COL_DELETED, COL_ROWID};

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

#[derive(Debug, Default, serde::Serialize)]
pub struct RestoreReport {
    pub tables: Vec<(String, u64)>,
    pub rows: u64,
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

/// Rebuilds `client`'s database at `to`.
pub async fn restore(
    pool: &PgPool,
    cluster: &str,
    client: &str,
    schema: &str,
    to: &Path,
    force: bool,
) -> Result<RestoreReport, RestoreError> {
    if to.exists() && !force {
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
    let mut report = RestoreReport::default();
    for t in &tables {
        let cols = mirror_columns(pool, schema, &t.name).await.map_err(|source| RestoreError::Mirror {
            client: client.into(),
            table: t.name.clone(),
            source,
        })?;
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
        let sql = format!(
            "SELECT {} FROM {}.{} WHERE {} IS NOT TRUE",
            select.join(", "),
            quote_ident(schema),
            quote_ident(&t.name),
            quote_ident(COL_DELETED)
        );
        let names: Vec<String> = data.iter().map(|(c, _)| c.clone()).collect();
        if tx.send(Msg::Table { name: t.name.clone(), columns: names, by_rowid }).await.is_err() {
            break;
        }
        let mut stream = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(pool);
        let mut batch = Vec::with_capacity(1000);
        let mut n = 0u64;
        while let Some(row) = stream.try_next().await.map_err(|source| RestoreError::Mirror {
            client: client.into(),
            table: t.name.clone(),
            source,
        })? {
            let off = usize::from(by_rowid);
            // The mirror's key for a table without a primary key: NOT NULL, so a failure
            // here is a damaged mirror, reported rather than restored as rowid 0.
            let rowid = match by_rowid {
                true => Some(row.try_get::<i64, _>(0).map_err(|source| RestoreError::Mirror {
                    client: client.into(),
                    table: t.name.clone(),
                    source,
                })?),
                false => None,
            };
            let vals: Vec<Value> = data.iter().enumerate().map(|(i, (_, ty))| decode(&row, i + off, ty)).collect();
            batch.push((rowid, vals));
            n += 1;
            if batch.len() == 1000 && tx.send(Msg::Rows(std::mem::take(&mut batch))).await.is_err() {
                break;
            }
        }
        if !batch.is_empty() {
            let _ = tx.send(Msg::Rows(batch)).await;
        }
        report.tables.push((t.name.clone(), n));
        report.rows += n;
    }
    drop(tx);
    writer.await.map_err(|e| RestoreError::Other(e.to_string()))??;
    std::fs::rename(&tmp, to)
        .map_err(|e| RestoreError::Other(format!("rename {} to {}: {e}", tmp.display(), to.display())))?;
    Ok(report)
}

enum Msg {
    Table { name: String, columns: Vec<String>, by_rowid: bool },
    Rows(Vec<(Option<i64>, Vec<Value>)>),
}

fn write_db(path: &Path, tables: &[TableState], mut rx: mpsc::Receiver<Msg>) -> Result<(), RestoreError> {
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
    let mut current: Option<(String, String)> = None;
    let mut txn = conn.transaction().map_err(err(""))?;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Table { name, columns, by_rowid } => {
                let mut cols: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
                if by_rowid {
                    cols.insert(0, "rowid".into());
                }
                let params = (1..=cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                let sql = format!("INSERT INTO {} ({}) VALUES ({params})", quote_ident(&name), cols.join(", "));
                current = Some((name, sql));
            }
            Msg::Rows(rows) => {
                let Some((name, sql)) = &current else { continue };
                let mut stmt = txn.prepare_cached(sql).map_err(err(name))?;
                for (rowid, vals) in rows {
                    let mut p: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(vals.len() + 1);
                    if let Some(r) = &rowid {
                        p.push(r);
                    }
                    p.extend(vals.iter().map(|v| v as &dyn rusqlite::ToSql));
                    stmt.execute(p.as_slice()).map_err(err(name))?;
                }
            }
        }
    }
    txn.commit().map_err(err(""))?;
    txn = conn.transaction().map_err(err(""))?;
    for t in tables {
        for ddl in &t.extra {
            txn.execute_batch(ddl).map_err(err(&t.name))?;
        }
    }
    txn.commit().map_err(err(""))?;
    conn.execute_batch("PRAGMA journal_mode = WAL;").map_err(err(""))?;
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(err(""))?;
    if ok != "ok" {
        return Err(RestoreError::Other(format!("integrity check of {} failed: {ok}", path.display())));
    }
    Ok(())
}
