//! Provisioning of a sync's mirror tables, before any row is copied: in one short, fenced
//! transaction of its own (a savepoint per table), only for tables whose shape changed
//! since their recorded state or whose mirror table is not the recorded one.
//!
//! Out of the table transactions because those run concurrently (`queue`), and
//! `provision_table` grants the schema's USAGE for each table it creates: two such grants
//! in concurrent open transactions fail ("tuple concurrently updated"). It also keeps
//! the ACCESS EXCLUSIVE lock of an added column short, instead of held through a COPY.
//! A table whose rows then fail to sync is left provisioned and empty, without a state.

use std::collections::{BTreeMap, HashMap};

use sqlx::Connection;

use super::{SyncError, SyncJob, TableFailure, table_failure};
use crate::source::TableInfo;
use crate::store::{Context, FencedTx, table_state};
use crate::target::{self, MirrorTable};

/// Provisions what needs it; returns the tables that could not be provisioned, with why.
/// `recorded`: the shape digests of the tables whose mirror is the recorded one
/// (`skip::baseline`); `all`: provision every table whatever its recorded shape
/// (a full sync: `owsyncctl sync --full`, `restore --adopt`, the drift re-sync).
pub(super) async fn provision_tables(
    job: &SyncJob<'_>,
    schema: &str,
    tables: &[TableInfo],
    recorded: &HashMap<String, String>,
    all: bool,
) -> Result<BTreeMap<String, String>, SyncError> {
    let client = job.client.to_string();
    let store_err = |source| SyncError::store(&client, source);
    let todo: Vec<(&TableInfo, MirrorTable)> = tables
        .iter()
        .map(|info| (info, MirrorTable::from_source(schema, info)))
        .filter(|(info, t)| all || recorded.get(&info.name) != Some(&target::shape_digest(t)))
        .collect();
    let mut failed = BTreeMap::new();
    // Nothing changed shape: no transaction at all.
    if todo.is_empty() {
        return Ok(failed);
    }
    let mut tx = FencedTx::begin(job.pool, job.cluster, job.fence).await.map_err(store_err)?;
    let mut provisioned = 0;
    for (info, t) in todo {
        let mut sp = (*tx).begin().await.ctx(|| "savepoint".into()).map_err(store_err)?;
        match target::provision(&mut sp, &t).await {
            Ok(()) => {
                sp.commit().await.ctx(|| "release savepoint".into()).map_err(store_err)?;
                provisioned += 1;
            }
            Err(e) => {
                let _ = sp.rollback().await;
                match table_failure(job.client, e) {
                    TableFailure::Fatal(e) => return Err(e),
                    TableFailure::Table(m) => {
                        failed.insert(info.name.clone(), m);
                    }
                }
            }
        }
    }
    if provisioned == 0 {
        let _ = tx.rollback().await;
        return Ok(failed);
    }
    tx.commit().await.map_err(store_err)?;
    Ok(failed)
}

/// Forgets the recorded shape and page state of tables whose sync failed, so that the next
/// sync provisions them again and reads them in full: a failure can come from a mirror an
/// operator changed (a dropped column: its values must come back for every row, not only
/// for the rows that changed since).
pub(super) async fn forget_failed(job: &SyncJob<'_>, tables: &[String]) -> Result<(), SyncError> {
    if tables.is_empty() {
        return Ok(());
    }
    let store_err = |source| SyncError::store(job.client, source);
    let mut tx = FencedTx::begin(job.pool, job.cluster, job.fence).await.map_err(store_err)?;
    table_state::forget(&mut tx, job.cluster, job.client, tables).await.map_err(store_err)?;
    tx.commit().await.map_err(store_err)
}
