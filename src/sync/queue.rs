//! The order in which a sync's readers take the source's tables: largest first, so that
//! with several table connections the big tables (`chat`, `chat_message`) overlap instead
//! of one of them running alone at the end.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::reader::Queue;
use crate::source::{self, Source, SourceError, TableInfo};
use crate::spec::{ClientSyncSpec, table_selected};

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
