//! Tombstones of an incremental pass: only mirror rows whose source rowid lies in the
//! re-read ranges can have disappeared; those the re-read did not return (matched by the
//! table's key, so a row that moved to another rowid is kept) are marked deleted.

use sqlx::PgConnection;

use super::{COL_DELETED, COL_ROWID, MirrorTable, Result};
use crate::sql::quote_ident;

/// Marks deleted the live mirror rows with a rowid in `ranges` (inclusive) that are not
/// in the stage. Returns how many.
pub async fn tombstone_in_ranges(conn: &mut PgConnection, t: &MirrorTable, ranges: &[(i64, i64)]) -> Result<u64> {
    if ranges.is_empty() || !t.has_rowid {
        return Ok(0);
    }
    // The candidates are found range by range through the rowid index (`OFFSET 0` keeps
    // each range's subquery apart, so it is planned with its bounds as parameters), then
    // updated through that index with `= ANY`. Written as one join, the planner, which
    // cannot know how few rows a range holds, scanned the whole mirror (BENCHMARKS.md,
    // "Measurements behind the code"). The outer conditions
    // are checked again on the row being updated, so a row changed concurrently is
    // judged on its newest version.
    let sql = format!(
        "UPDATE {tbl} AS t SET {del} = true, {at} = now()
         WHERE t.{rowid} = ANY (ARRAY(
                 SELECT x.r FROM unnest($1::bigint[], $2::bigint[]) AS r(lo, hi),
                 LATERAL (SELECT y.{rowid} AS r FROM {tbl} AS y
                          WHERE y.{rowid} BETWEEN r.lo AND r.hi AND y.{del} IS NOT TRUE
                            AND NOT EXISTS (SELECT 1 FROM owsync_stage s WHERE {join_y})
                          OFFSET 0) AS x))
           AND t.{del} IS NOT TRUE
           AND NOT EXISTS (SELECT 1 FROM owsync_stage s WHERE {join_t})",
        tbl = t.qualified(),
        del = quote_ident(COL_DELETED),
        at = quote_ident(super::COL_SYNCED_AT),
        rowid = quote_ident(COL_ROWID),
        join_y = t.key_join("s", "y"),
        join_t = t.key_join("s", "t"),
    );
    let lo: Vec<i64> = ranges.iter().map(|r| r.0).collect();
    let hi: Vec<i64> = ranges.iter().map(|r| r.1).collect();
    let n = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(lo)
        .bind(hi)
        .execute(conn)
        .await
        .map_err(t.db_err("mark deleted rows in the changed ranges"))?
        .rows_affected();
    Ok(n)
}
