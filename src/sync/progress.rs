//! The progress receiver of long syncs (the CLI's progress display), given in
//! [`super::SyncOptions::progress`]: the engine reports each table it starts, each slice
//! it writes and each table it finishes.

/// Receives a sync's progress. Called on the sync's task: keep it quick.
pub trait Progress: Send + Sync {
    /// A table's copy starts.
    fn table_started(&self, _table: &str) {}
    /// `rows` rows (`bytes` bytes read from the source) of `table` were written.
    fn slice(&self, _table: &str, _rows: u64, _bytes: u64) {}
    /// A table is done: synced (`error` none) or failed.
    fn table_done(&self, _table: &str, _rows: i64, _error: Option<&str>) {}
}
