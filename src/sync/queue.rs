//! The order in which a sync's readers take the source's tables: largest first, so that
//! with several table connections the big tables (`chat`, `chat_message`) overlap instead
//! of one of them running alone at the end.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::reader::Queue;
use crate::source::{self, Source, SourceError, TableInfo};
use crate::spec::{ClientSyncSpec, table_selected};

static TABLE_CONNECTIONS: AtomicUsize = AtomicUsize::new(DEFAULT_TABLE_CONNECTIONS);

/// Tables of one tenant synced at once, each on its own PostgreSQL connection and SQLite
/// reader, unless set otherwise.
pub const DEFAULT_TABLE_CONNECTIONS: usize = 2;

/// Sets how many tables of one tenant a sync copies at once (at least 1; also capped by
/// the pool's size). Process-wide: `owsyncd --table-connections`.
pub fn set_table_connections(n: usize) {
    TABLE_CONNECTIONS.store(n.max(1), Ordering::Relaxed);
}

tokio::task_local! {
    static GRANTED: usize;
}

/// Runs `f` (a sync) with `n` table connections instead of the process-wide setting:
/// owsyncd's scheduler grants each sync what its connection budget has free.
pub async fn with_table_connections<F: std::future::Future>(n: usize, f: F) -> F::Output {
    GRANTED.scope(n.max(1), f).await
}

/// How many tables of one tenant a sync copies at once.
pub fn table_connections() -> usize {
    GRANTED.try_with(|n| *n).unwrap_or_else(|_| TABLE_CONNECTIONS.load(Ordering::Relaxed)).max(1)
}

/// The selected tables of the source, largest (by highest rowid, a cheap estimate of
/// the row count: one b-tree descent) first; WITHOUT ROWID tables count as small. Ties
/// keep the source's order. Also every table discovered, selected or not (for the drift
/// check after the sync).
pub(super) fn tables(path: &Path, spec: &ClientSyncSpec) -> Result<(Queue, Vec<TableInfo>), SourceError> {
    let src = Source::open(path)?;
    let discovered = source::discover(&src)?;
    let tables: Vec<TableInfo> = discovered.iter().filter(|t| table_selected(&spec.tables, &t.name)).cloned().collect();
    let mut sized: Vec<(i64, TableInfo)> =
        tables.into_iter().map(|t| (if t.without_rowid { 0 } else { src.max_rowid(&t.name) }, t)).collect();
    sized.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    Ok((Arc::new(Mutex::new(sized.into_iter().map(|(_, t)| t).collect::<VecDeque<_>>())), discovered))
}
