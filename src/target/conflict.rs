//! Conflicts between the source and writes made to the mirror by anyone but owsync.
//!
//! A trigger (`sync_metadata.stamp_target_change`, migration 0007) stamps every write to a
//! mirror row made outside owsync's sync transactions (which set `owsync.writer = on`)
//! with `_owsync_target_changed_at`, and keeps in `_owsync_source_hash` the hash of the
//! version owsync last wrote. Before the stage is upserted, [`resolve_stage`] looks at
//! the staged rows whose mirror row is stamped:
//! - the staged row hashes like the stored hash: only PostgreSQL changed it; the mirror
//!   row is left alone (the upsert skips stamped rows);
//! - otherwise both sides changed: the table's strategy decides ([`super::merge`]), the
//!   conflict goes to `sync_metadata.conflict_log` in the table's transaction.
//!
//! A row whose mirror version intentionally differs from the source (target kept, merged,
//! pending) stays stamped, with the hash of the source version it was resolved against,
//! so the next sync leaves it alone until the source changes it again.

use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use tracing::warn;

use super::merge::{self, Resolution, Rules};
use super::{COL_DELETED, COL_ROWID, COL_SYNCED_AT, MirrorTable, Result, TargetError};
use crate::spec::ConflictPolicy;
use crate::sql::quote_ident;
use crate::store;

/// When something other than owsync last wrote the row (NULL: owsync did).
pub const COL_TARGET_CHANGED: &str = "_owsync_target_changed_at";
/// `sync_metadata.source_hash` of the source version the row was last synced or resolved against.
pub const COL_SOURCE_HASH: &str = "_owsync_source_hash";

/// Who and what a table's conflicts are resolved for.
pub struct ConflictCtx<'a> {
    pub cluster: &'a str,
    pub client: &'a str,
    pub policy: &'a ConflictPolicy,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ConflictCounts {
    /// Rows changed only in PostgreSQL, left as they are.
    pub kept_target: u64,
    /// Rows changed on both sides.
    pub conflicts: u64,
    /// Of those, left for review (`manual`).
    pub pending: u64,
    pub strategy: &'static str,
}

/// Strips owsync's bookkeeping from a row (the rowid of a keyless table stays).
fn data_of(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m.into_iter().filter(|(k, _)| !k.starts_with("_owsync_") || k == COL_ROWID).collect(),
        _ => Map::new(),
    }
}

/// Resolves the stage's conflicts with the mirror (call after the COPY, before the
/// upsert, in the table's transaction); rows that stay stamped are skipped by the upsert.
/// First gives the mirror table its conflict bookkeeping (columns, trigger, index) when
/// missing, through the SECURITY DEFINER `sync_metadata.provision_conflict_tracking`,
/// and marks the transaction as owsync's.
pub async fn resolve_stage(conn: &mut PgConnection, t: &MirrorTable, ctx: &ConflictCtx<'_>) -> Result<ConflictCounts> {
    let rules = Rules::for_table(ctx.policy, &t.name);
    let mut counts = ConflictCounts { strategy: merge::strategy_name(rules.strategy), ..Default::default() };
    // One round trip: the bookkeeping (only created when missing), owsync's mark, and
    // whether any row was changed in PostgreSQL at all.
    let any: bool = sqlx::query_scalar(
        "SELECT sync_metadata.provision_conflict_tracking($1, $2) FROM set_config('owsync.writer', 'on', true)",
    )
    .bind(&t.schema)
    .bind(&t.name)
    .fetch_one(&mut *conn)
    .await
    .map_err(t.db_err("provision conflict tracking"))?;
    if !any {
        return Ok(counts);
    }
    let tbl = t.qualified();
    let (stamp, hash) = (quote_ident(COL_TARGET_CHANGED), quote_ident(COL_SOURCE_HASH));
    let join = t.key_join("s", "t");
    // Changed only in PostgreSQL: the source still has the version owsync last wrote.
    // These rows (like every row that stays stamped below) stay in the stage, so the
    // tombstone pass sees the source still has them; the upsert skips stamped rows.
    let same = format!("sync_metadata.source_hash(to_jsonb(s)) IS NOT DISTINCT FROM t.{hash}");
    let kept: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM owsync_stage s JOIN {tbl} t ON {join} WHERE t.{stamp} IS NOT NULL AND {same}"
    )))
    .fetch_one(&mut *conn)
    .await
    .map_err(t.db_err("count rows changed only in PostgreSQL"))?;
    counts.kept_target = kept as u64;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT sync_metadata.source_hash(to_jsonb(s)), to_json(s), to_json(t)
         FROM owsync_stage s JOIN {tbl} t ON {join} WHERE t.{stamp} IS NOT NULL AND NOT ({same})"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(t.db_err("read conflicting rows"))?;
    for row in rows {
        let source_hash: String = row.get(0);
        let source = data_of(row.get::<Json<Value>, _>(1).0);
        let target = data_of(row.get::<Json<Value>, _>(2).0);
        let key: Map<String, Value> =
            t.key.iter().map(|k| (k.clone(), source.get(k).cloned().unwrap_or(Value::Null))).collect();
        let resolution = merge::decide(&rules, &source, &target);
        apply(conn, t, &key, &resolution, &source_hash).await?;
        log(conn, t, ctx, &rules, &key, &source, &target, &resolution, &source_hash).await?;
        counts.conflicts += 1;
        if resolution == Resolution::Pending {
            counts.pending += 1;
        }
    }
    if counts.conflicts > 0 {
        warn!(client = %ctx.client, table = %t.name, conflicts = counts.conflicts, pending = counts.pending,
              strategy = counts.strategy, "rows changed both in the source and in PostgreSQL");
    }
    Ok(counts)
}

/// Writes one conflict's resolution to the mirror row. `Source` clears the stamp, so the
/// upsert writes the staged version; every other resolution leaves the row stamped, so the
/// upsert skips it (it stays in the stage: the source has the row, no tombstone).
async fn apply(
    conn: &mut PgConnection,
    t: &MirrorTable,
    key: &Map<String, Value>,
    resolution: &Resolution,
    source_hash: &str,
) -> Result<()> {
    let tbl = t.qualified();
    let (stamp, hash) = (quote_ident(COL_TARGET_CHANGED), quote_ident(COL_SOURCE_HASH));
    let join = t.key_join("t", "r");
    let (sql, row) = match resolution {
        // Back to normal: the upsert writes the source's version.
        Resolution::Source => (
            format!(
                "UPDATE {tbl} t SET {stamp} = NULL, {hash} = NULL FROM jsonb_populate_record(NULL::{tbl}, $1) r WHERE {join}"
            ),
            Value::Object(key.clone()),
        ),
        Resolution::Target | Resolution::Pending => (
            format!("UPDATE {tbl} t SET {hash} = $2 FROM jsonb_populate_record(NULL::{tbl}, $1) r WHERE {join}"),
            Value::Object(key.clone()),
        ),
        Resolution::Merged(m) => {
            let sets: Vec<String> = t
                .data_columns()
                .iter()
                .filter(|(n, _)| !t.key.contains(n) && m.contains_key(n))
                .map(|(n, _)| format!("{0} = r.{0}", quote_ident(n)))
                .collect();
            let sets = if sets.is_empty() { String::new() } else { format!("{}, ", sets.join(", ")) };
            (
                format!(
                    "UPDATE {tbl} t SET {sets}{hash} = $2, {del} = false, {at} = now()
                     FROM jsonb_populate_record(NULL::{tbl}, $1) r WHERE {join}",
                    del = quote_ident(COL_DELETED),
                    at = quote_ident(COL_SYNCED_AT),
                ),
                Value::Object(m.clone()),
            )
        }
    };
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(Json(&row));
    if *resolution != Resolution::Source {
        q = q.bind(source_hash);
    }
    q.execute(&mut *conn).await.map_err(t.db_err("write a conflict's resolution"))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn log(
    conn: &mut PgConnection,
    t: &MirrorTable,
    ctx: &ConflictCtx<'_>,
    rules: &Rules,
    key: &Map<String, Value>,
    source: &Map<String, Value>,
    target: &Map<String, Value>,
    resolution: &Resolution,
    source_hash: &str,
) -> Result<()> {
    let strategy = merge::strategy_name(rules.strategy);
    let detected = store::conflicts::Detected {
        cluster: ctx.cluster,
        client: ctx.client,
        table: &t.name,
        key,
        strategy,
        source,
        target,
        resolution: resolution.as_str(),
        source_hash,
    };
    let in_store = |source| TargetError::Store { table: t.name.clone(), source };
    store::conflicts::record(conn, &detected).await.map_err(in_store)?;
    if rules.notify {
        let msg = format!(
            "table {}, row {}: changed in the source and in PostgreSQL; {strategy}: {}",
            t.name,
            Value::Object(key.clone()),
            resolution.as_str()
        );
        store::jobs::event(conn, ctx.cluster, Some(ctx.client), true, "Conflict", &msg, None)
            .await
            .map_err(in_store)?;
    }
    Ok(())
}
