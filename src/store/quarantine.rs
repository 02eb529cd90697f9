//! `sync_metadata.quarantine`: values the mirror cannot hold (NUL in text, invalid UTF-8,
//! a value its column type cannot take), kept raw with the reason, per row and column.
//! Written inside a table's transaction, together with its rows.

use sqlx::PgConnection;

use super::{Context, Result};

/// A value the mirror's column cannot hold as it is, kept raw for the quarantine table.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub key: String,
    pub column: String,
    pub storage_class: &'static str,
    pub reason: String,
    pub raw: Option<Vec<u8>>,
}

/// The table a quarantine call is about; its errors name it.
#[derive(Debug, Clone, Copy)]
pub struct Of<'a> {
    pub cluster: &'a str,
    pub client: &'a str,
    pub table: &'a str,
}

impl Of<'_> {
    fn context(&self, what: &str) -> String {
        format!("table {}: {what}", self.table)
    }
}

/// Whether the table has quarantine entries still open (an incremental pass then notes
/// which rows it re-reads, to resolve theirs).
pub async fn has_open(conn: &mut PgConnection, of: Of<'_>) -> Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sync_metadata.quarantine
                        WHERE cluster_name = $1 AND client_name = $2 AND table_name = $3 AND resolved_at IS NULL)",
    )
    .bind(of.cluster)
    .bind(of.client)
    .bind(of.table)
    .fetch_one(conn)
    .await
    .ctx(|| of.context("look for open quarantine entries"))
}

/// Records quarantined values (inside the table's transaction). After a full pass
/// (`full_pass`) it replaces the table's open entries: values fixed at the source are
/// marked resolved; an incremental pass only adds or refreshes the entries it met, and
/// resolves those of the rows it re-read (`reread`) that have no unfit value now.
pub async fn record(
    conn: &mut PgConnection,
    of: Of<'_>,
    entries: &[Quarantined],
    full_pass: bool,
    reread: Option<&[String]>,
) -> Result<()> {
    if let (Some(keys), false) = (reread, full_pass) {
        // An incremental pass: the rows it re-read that have no unfit value now.
        let (new_keys, new_cols): (Vec<&str>, Vec<&str>) =
            entries.iter().map(|q| (q.key.as_str(), q.column.as_str())).unzip();
        sqlx::query(
            "UPDATE sync_metadata.quarantine q SET resolved_at = now()
             WHERE cluster_name = $1 AND client_name = $2 AND table_name = $3 AND resolved_at IS NULL
               AND row_key = ANY($4)
               AND NOT EXISTS (SELECT 1 FROM unnest($5::text[], $6::text[]) AS n(k, c)
                               WHERE n.k = q.row_key AND n.c = q.column_name)",
        )
        .bind(of.cluster)
        .bind(of.client)
        .bind(of.table)
        .bind(keys)
        .bind(new_keys)
        .bind(new_cols)
        .execute(&mut *conn)
        .await
        .ctx(|| of.context("resolve the quarantine entries of re-read rows"))?;
    }
    if full_pass {
        sqlx::query(
            "UPDATE sync_metadata.quarantine SET resolved_at = now()
             WHERE cluster_name = $1 AND client_name = $2 AND table_name = $3 AND resolved_at IS NULL",
        )
        .bind(of.cluster)
        .bind(of.client)
        .bind(of.table)
        .execute(&mut *conn)
        .await
        .ctx(|| of.context("resolve quarantine entries"))?;
    }
    for q in entries {
        sqlx::query(
            "INSERT INTO sync_metadata.quarantine (cluster_name, client_name, table_name, row_key, column_name,
                 storage_class, reason, raw)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (cluster_name, client_name, table_name, row_key, column_name) DO UPDATE SET
                 storage_class = EXCLUDED.storage_class, reason = EXCLUDED.reason, raw = EXCLUDED.raw,
                 detected_at = CASE WHEN quarantine.resolved_at IS NULL AND quarantine.raw = EXCLUDED.raw
                                    THEN quarantine.detected_at ELSE now() END,
                 resolved_at = NULL",
        )
        .bind(of.cluster)
        .bind(of.client)
        .bind(of.table)
        .bind(&q.key)
        .bind(&q.column)
        .bind(q.storage_class)
        .bind(&q.reason)
        .bind(&q.raw)
        .execute(&mut *conn)
        .await
        .ctx(|| of.context("record a quarantined value"))?;
    }
    Ok(())
}

/// The tenant's open quarantine entries: (table, row key, column) and the raw value kept.
pub async fn open_values(
    pool: &sqlx::PgPool,
    cluster: &str,
    client: &str,
) -> Result<Vec<((String, String, String), Option<Vec<u8>>)>> {
    use sqlx::Row;
    let mut tx = super::begin(pool, cluster).await?;
    let rows = sqlx::query(
        "SELECT table_name, row_key, column_name, raw FROM sync_metadata.quarantine
         WHERE cluster_name = $1 AND client_name = $2 AND resolved_at IS NULL",
    )
    .bind(cluster)
    .bind(client)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read the open quarantine entries of {client}"))?;
    let _ = tx.commit().await;
    Ok(rows.iter().map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3))).collect())
}
