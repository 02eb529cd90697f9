//! `sync_metadata.table_state`: per tenant and table, what the last sync of it recorded
//! (source DDL, key, row count, page state, the mirror table's oid and shape), plus one
//! row per tenant ([`FINGERPRINT_ROW`]) holding the source fingerprint of its last
//! complete sync. Written inside the callers' fenced transactions.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool, Row};

use super::{Context, Result};

/// The `table_name` of the row that holds a tenant's source fingerprint.
pub const FINGERPRINT_ROW: &str = "*";

/// The recorded fingerprint of a tenant and the row counts of the tables of its last sync.
#[derive(Debug, Default)]
pub struct Fingerprint {
    pub fingerprint: Option<String>,
    /// Every mirror table the state was recorded with is still the same table (same
    /// oid): false when an operator dropped or re-created one since.
    pub intact: bool,
    pub rows: BTreeMap<String, i64>,
}

/// Reads the fingerprint row and the tables' row counts of `client` (mirror `schema`).
pub async fn fingerprint(pool: &PgPool, cluster: &str, client: &str, schema: &str) -> Result<Fingerprint> {
    let mut tx = super::begin(pool, cluster).await?;
    let rows = sqlx::query(
        "SELECT table_name, rows, watermark->>'fingerprint',
                table_name = $3 OR NOT watermark ? 'mirror_oid'
                  OR (watermark->>'mirror_oid')::bigint
                     IS NOT DISTINCT FROM to_regclass(format('%I.%I', $4::text, table_name))::oid::bigint
         FROM sync_metadata.table_state
         WHERE cluster_name = $1 AND client_name = $2",
    )
    .bind(cluster)
    .bind(client)
    .bind(FINGERPRINT_ROW)
    .bind(schema)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read the table state of {client}"))?;
    let _ = tx.commit().await;
    let mut out = Fingerprint { intact: true, ..Default::default() };
    for r in rows {
        let name: String = r.get(0);
        out.intact &= r.get::<bool, _>(3);
        if name == FINGERPRINT_ROW {
            out.fingerprint = r.get(2);
        } else {
            out.rows.insert(name, r.get(1));
        }
    }
    Ok(out)
}

/// Records the fingerprint a complete sync started from, and forgets the mirror oid of
/// recorded tables whose mirror is missing: a complete sync re-created the mirror of
/// every table it syncs, so such a table is one it no longer syncs (dropped at the
/// source, or excluded), and its missing mirror must not make every later sync run.
pub async fn record_fingerprint(
    conn: &mut PgConnection,
    cluster: &str,
    client: &str,
    schema: &str,
    fingerprint: &str,
    epoch: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sync_metadata.table_state (cluster_name, client_name, table_name, watermark, epoch, updated_at)
         VALUES ($1, $2, $3, jsonb_build_object('fingerprint', $4::text), $5, now())
         ON CONFLICT (cluster_name, client_name, table_name) DO UPDATE SET watermark = EXCLUDED.watermark,
             epoch = EXCLUDED.epoch, updated_at = now()",
    )
    .bind(cluster)
    .bind(client)
    .bind(FINGERPRINT_ROW)
    .bind(fingerprint)
    .bind(epoch)
    .execute(&mut *conn)
    .await
    .ctx(|| format!("record the source fingerprint of {client}"))?;
    sqlx::query(
        "UPDATE sync_metadata.table_state SET watermark = watermark - 'mirror_oid'
         WHERE cluster_name = $1 AND client_name = $2 AND table_name <> $3 AND watermark ? 'mirror_oid'
           AND to_regclass(format('%I.%I', $4::text, table_name)) IS NULL",
    )
    .bind(cluster)
    .bind(client)
    .bind(FINGERPRINT_ROW)
    .bind(schema)
    .execute(&mut *conn)
    .await
    .ctx(|| format!("record the mirror tables of {client} no longer synced"))?;
    Ok(())
}

/// A `table_state` row's version: changes with every write of the row, by anyone (the
/// writing transaction's id and the time it wrote the row). A macro, for `concat!`.
macro_rules! version {
    () => {
        "xmin::text || ':' || (extract(epoch FROM updated_at) * 1000000)::bigint"
    };
}

/// One table's recorded state, as a sync starts from it.
#[derive(Debug)]
pub struct RecordedTable {
    pub table: String,
    pub source_ddl: String,
    /// The base page state, and a delta against it (`source::pages::delta`); both `None`
    /// when the caller already has this version of them (`fresh`).
    pub pages: Option<Vec<u8>>,
    pub pages_delta: Option<Vec<u8>>,
    /// The row's version (`version!`).
    pub version: String,
    /// The row is the version the caller said it has: its page state was not read.
    pub fresh: bool,
    /// The mirror shape digest provisioning recorded; `None` also while the ClientSync is
    /// deleted (provisioning then runs and lets `provision_table` refuse it).
    pub shape: Option<String>,
}

/// The recorded state of `client`'s tables whose mirror table in `schema` is still the
/// one the state was recorded with (same oid). `have`: the row versions whose page states
/// the caller holds, by table: those are not read again.
pub async fn recorded(
    pool: &PgPool,
    cluster: &str,
    client: &str,
    schema: &str,
    have: &BTreeMap<String, String>,
) -> Result<Vec<RecordedTable>> {
    let mut tx = super::begin(pool, cluster).await?;
    let rows = sqlx::query(concat!(
        "SELECT table_name, coalesce(source_ddl, ''), CASE WHEN fresh THEN NULL ELSE pages END, watermark->>'shape',
                EXISTS (SELECT 1 FROM sync_metadata.client_specs s WHERE s.cluster_name = $1
                        AND s.spec #>> '{target,schema}' = $3 AND s.deleted_at IS NULL),
                CASE WHEN fresh THEN NULL ELSE pages_delta END, version, fresh
         FROM (SELECT *, coalesce(version = ($4::jsonb ->> table_name), false) AS fresh
               FROM (SELECT table_name, source_ddl, pages, pages_delta, watermark, ",
        version!(),
        " AS version
                     FROM sync_metadata.table_state
                     WHERE cluster_name = $1 AND client_name = $2
                       AND (watermark->>'mirror_oid')::bigint
                           = to_regclass(format('%I.%I', $3::text, table_name))::oid::bigint) v) f",
    ))
    .bind(cluster)
    .bind(client)
    .bind(schema)
    .bind(sqlx::types::Json(have))
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read the recorded table state of {client}"))?;
    // The largest state grew the connection's read buffer: not kept by an idle connection.
    sqlx::Connection::shrink_buffers(&mut *tx);
    let _ = tx.commit().await;
    Ok(rows
        .into_iter()
        .map(|r| RecordedTable {
            table: r.get(0),
            source_ddl: r.get(1),
            pages: r.get(2),
            shape: r.get::<Option<String>, _>(3).filter(|_| r.get::<bool, _>(4)),
            pages_delta: r.get(5),
            version: r.get(6),
            fresh: r.get(7),
        })
        .collect())
}

/// A page state to record with a table's row (see `source::pages::StateWrite`).
#[derive(Debug)]
pub enum Pages {
    /// No page state (WITHOUT ROWID tables, or none could be taken).
    None,
    /// A whole state: the new base, with no delta (shared with the sync's follower, which
    /// keeps it as the recorded state).
    Base(std::sync::Arc<Vec<u8>>),
    /// A delta against the recorded base, which is kept.
    Delta(Vec<u8>),
}

/// What a table's sync records of it.
#[derive(Debug)]
pub struct TableState<'a> {
    pub cluster: &'a str,
    pub client: &'a str,
    pub table: &'a str,
    pub source_ddl: &'a str,
    pub source_indexes: &'a [String],
    pub key_columns: Vec<String>,
    pub rows: i64,
    pub epoch: Option<i64>,
    /// `incremental` or `full`.
    pub pass: &'a str,
    /// The mirror table, schema-qualified and quoted (its oid is recorded).
    pub mirror: &'a str,
    /// The mirror's shape digest (`target::shape_digest`).
    pub shape: &'a str,
    /// Owned: sqlx copies it into its arguments at `bind`, where it is freed at once.
    pub pages: Pages,
}

/// Records a table's state, inside the transaction that wrote its rows; the row's new
/// version (`version!`).
pub async fn record(conn: &mut PgConnection, s: TableState<'_>) -> Result<String> {
    let (base, delta, keep_base) = match s.pages {
        Pages::Base(b) => (Some(b), None, false),
        Pages::Delta(d) => (None, Some(d), true),
        Pages::None => (None, None, false),
    };
    sqlx::query_scalar(concat!(
        "INSERT INTO sync_metadata.table_state (cluster_name, client_name, table_name, source_ddl, key_columns, rows, watermark, epoch, updated_at, source_indexes, pages, pages_delta)
         VALUES ($1, $2, $3, $4, $5, $6,
                 jsonb_build_object('synced_at', now(), 'pass', $10::text, 'mirror_oid', to_regclass($11)::oid::bigint,
                                   'shape', $12::text),
                 $7, now(), $8, $9, $13)
         ON CONFLICT (cluster_name, client_name, table_name) DO UPDATE SET source_ddl = EXCLUDED.source_ddl,
             source_indexes = EXCLUDED.source_indexes,
             key_columns = EXCLUDED.key_columns, rows = EXCLUDED.rows, watermark = EXCLUDED.watermark,
             epoch = EXCLUDED.epoch, updated_at = now(),
             pages = CASE WHEN $14 THEN table_state.pages ELSE EXCLUDED.pages END, pages_delta = EXCLUDED.pages_delta
         RETURNING ",
        version!()
    ))
    .bind(s.cluster)
    .bind(s.client)
    .bind(s.table)
    .bind(s.source_ddl)
    .bind(s.key_columns)
    .bind(s.rows)
    .bind(s.epoch)
    .bind(s.source_indexes)
    .bind(base.as_deref().map(Vec::as_slice))
    .bind(s.pass)
    .bind(s.mirror)
    .bind(s.shape)
    .bind(delta)
    .bind(keep_base)
    .fetch_one(conn)
    .await
    .ctx(|| format!("record state of table {}", s.table))
}

/// Forgets the recorded shape and page state of `tables`, so that the next sync
/// provisions them again and reads them in full.
pub async fn forget(conn: &mut PgConnection, cluster: &str, client: &str, tables: &[String]) -> Result<()> {
    sqlx::query(
        "UPDATE sync_metadata.table_state SET pages = NULL, pages_delta = NULL, watermark = watermark - 'shape'
         WHERE cluster_name = $1 AND client_name = $2 AND table_name = ANY($3)",
    )
    .bind(cluster)
    .bind(client)
    .bind(tables)
    .execute(conn)
    .await
    .ctx(|| format!("forget the state of the failed tables of {client}"))?;
    Ok(())
}

/// The tables of `client` whose state records a source DDL (they were synced).
pub async fn synced_tables(conn: &mut PgConnection, cluster: &str, client: &str) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT table_name FROM sync_metadata.table_state
         WHERE cluster_name = $1 AND client_name = $2 AND source_ddl IS NOT NULL",
    )
    .bind(cluster)
    .bind(client)
    .fetch_all(conn)
    .await
    .ctx(|| format!("read the mirrored tables of {client}"))
}

/// Forgets `client`'s recorded source fingerprint: its next sync reads the source instead
/// of skipping it as unchanged (the deletion guard holds it: the source must be checked
/// again when the original file comes back).
pub async fn forget_fingerprint(conn: &mut PgConnection, cluster: &str, client: &str) -> Result<()> {
    sqlx::query(
        "UPDATE sync_metadata.table_state SET watermark = watermark - 'fingerprint', updated_at = now()
         WHERE cluster_name = $1 AND client_name = $2 AND table_name = $3",
    )
    .bind(cluster)
    .bind(client)
    .bind(FINGERPRINT_ROW)
    .execute(conn)
    .await
    .ctx(|| format!("forget the source fingerprint of {client}"))?;
    Ok(())
}

/// A synced table's schema as its source had it: the table's DDL and its indexes' and
/// triggers' (what a restore recreates).
#[derive(Debug, Clone)]
pub struct SourceSchema {
    pub table: String,
    pub ddl: String,
    pub extra: Vec<String>,
}

/// The source schemas of the tenant's synced tables, by name.
pub async fn source_schemas(pool: &PgPool, cluster: &str, client: &str) -> Result<Vec<SourceSchema>> {
    let mut tx = super::begin(pool, cluster).await?;
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
    Ok(rows.iter().map(|r| SourceSchema { table: r.get(0), ddl: r.get(1), extra: r.get(2) }).collect())
}
