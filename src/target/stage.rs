//! A table transaction's stage: a temporary table shaped like the mirror table, which
//! COPY fills (`copy::Dest::Stage`), conflict resolution compares with the mirror
//! (`conflict::resolve_stage`), and [`upsert`] applies to the mirror.

use sqlx::PgConnection;

use super::{COL_DELETED, COL_SYNCED_AT, MirrorTable, PgType, Result, RowCounts, conflict};
use crate::sql::quote_ident;

/// Creates this transaction's stage table for `t`.
pub async fn create(conn: &mut PgConnection, t: &MirrorTable) -> Result<()> {
    let sql = format!("CREATE TEMP TABLE owsync_stage (LIKE {}) ON COMMIT DROP", t.qualified());
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(conn).await.map_err(t.db_err("create the stage table"))?;
    Ok(())
}

/// Upserts the stage into the mirror (rows whose values did not change are left
/// alone) and, for a full pass, tombstones mirror rows the source no longer has.
pub async fn upsert(conn: &mut PgConnection, t: &MirrorTable, tombstone_missing: bool) -> Result<RowCounts> {
    let cols = t.data_columns();
    let list = cols.iter().map(|(n, _)| quote_ident(n)).collect::<Vec<_>>().join(", ");
    let keys = t.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
    let non_key: Vec<&(String, PgType)> = cols.iter().filter(|(n, _)| !t.key.contains(n)).collect();
    let mut sets: Vec<String> = non_key.iter().map(|(n, _)| format!("{0} = EXCLUDED.{0}", quote_ident(n))).collect();
    sets.push(format!("{} = false", quote_ident(COL_DELETED)));
    sets.push(format!("{} = now()", quote_ident(COL_SYNCED_AT)));
    let mut changed = vec![format!("t.{} IS DISTINCT FROM false", quote_ident(COL_DELETED))];
    if !non_key.is_empty() {
        let old: Vec<String> = non_key.iter().map(|(n, ty)| MirrorTable::comparable("t.", n, *ty)).collect();
        let new: Vec<String> = non_key.iter().map(|(n, ty)| MirrorTable::comparable("EXCLUDED.", n, *ty)).collect();
        changed.push(format!("ROW({}) IS DISTINCT FROM ROW({})", old.join(", "), new.join(", ")));
    }
    let upsert = format!(
        "INSERT INTO {tbl} AS t ({list}, {del}, {at}) SELECT {list}, false, now() FROM owsync_stage
         ON CONFLICT ({keys}) DO UPDATE SET {sets} WHERE ({changed}) AND t.{stamp} IS NULL",
        tbl = t.qualified(),
        del = quote_ident(COL_DELETED),
        at = quote_ident(COL_SYNCED_AT),
        sets = sets.join(", "),
        changed = changed.join(" OR "),
        // A row changed in PostgreSQL meanwhile is the next sync's conflict, never overwritten.
        stamp = quote_ident(conflict::COL_TARGET_CHANGED),
    );
    let upserted = sqlx::query(sqlx::AssertSqlSafe(upsert))
        .execute(&mut *conn)
        .await
        .map_err(t.db_err("upsert rows"))?
        .rows_affected();
    let mut tombstoned = 0;
    if tombstone_missing {
        let join = t.key_join("s", "t");
        let sql = format!(
            "UPDATE {tbl} AS t SET {del} = true, {at} = now()
             WHERE t.{del} IS NOT TRUE AND NOT EXISTS (SELECT 1 FROM owsync_stage s WHERE {join})",
            tbl = t.qualified(),
            del = quote_ident(COL_DELETED),
            at = quote_ident(COL_SYNCED_AT),
        );
        tombstoned = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(t.db_err("mark deleted rows"))?
            .rows_affected();
    }
    Ok(RowCounts { upserted, tombstoned })
}
