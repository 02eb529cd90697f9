//! The order in which a sync's readers take the source's tables: largest first, so that
//! with several table connections the big tables (`chat`, `chat_message`) overlap instead
//! of one of them running alone at the end.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::reader::Queue;
use crate::source::{Source, TableInfo};
use crate::spec::{ClientSyncSpec, table_selected};

/// The selected tables of `discovered` (the tables of the open source `src`), largest (by
/// highest rowid, a cheap estimate of the row count: one b-tree descent) first; WITHOUT
/// ROWID tables count as small. Ties keep the source's order.
pub(super) fn order(src: &Source, discovered: &[TableInfo], spec: &ClientSyncSpec) -> Queue {
    let tables = discovered.iter().filter(|t| table_selected(&spec.tables, &t.name)).cloned();
    let mut sized: Vec<(i64, TableInfo)> =
        tables.map(|t| (if t.without_rowid { 0 } else { src.max_rowid(&t.name) }, t)).collect();
    sized.sort_by_key(|(size, _)| std::cmp::Reverse(*size));
    Arc::new(Mutex::new(sized.into_iter().map(|(_, t)| t).collect::<VecDeque<_>>()))
}
