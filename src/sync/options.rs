//! What the caller decides about one sync, carried by its job ([`super::SyncJob`]):
//! read every table or only what changed, how many tables at once, where progress goes.

use std::sync::Arc;

use super::progress::Progress;

/// Tables of one tenant synced at once, each on its own PostgreSQL connection and SQLite
/// reader, unless the caller says otherwise (owsyncd's `--table-connections`).
pub const DEFAULT_TABLE_CONNECTIONS: usize = 2;

/// How one sync runs.
#[derive(Clone)]
pub struct SyncOptions {
    /// Read every table even if the source is unchanged since the last complete sync
    /// (`owsyncctl sync --full`, `restore --adopt`, a schema-drift re-sync).
    pub full: bool,
    /// Tables copied at once, each on its own PostgreSQL connection and SQLite reader (at
    /// least 1, and at most the pool's size): what owsyncd's connection budget grants.
    pub table_connections: usize,
    /// Receives each table started, slice written and table finished (the CLI's progress
    /// display); `None`: reported nowhere.
    pub progress: Option<Arc<dyn Progress>>,
}

impl Default for SyncOptions {
    fn default() -> SyncOptions {
        SyncOptions { full: false, table_connections: DEFAULT_TABLE_CONNECTIONS, progress: None }
    }
}

impl SyncOptions {
    /// Reports to the progress receiver, if there is one.
    pub(crate) fn report(&self, f: impl FnOnce(&dyn Progress)) {
        if let Some(p) = &self.progress {
            f(p.as_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl Progress for Log {
        fn table_started(&self, t: &str) {
            self.0.lock().unwrap().push(format!("start {t}"));
        }
        fn slice(&self, t: &str, rows: u64, _bytes: u64) {
            self.0.lock().unwrap().push(format!("{t} +{rows}"));
        }
    }

    #[test]
    fn reports_reach_the_progress_receiver_only_when_one_is_given() {
        let log = Arc::new(Log::default());
        let without = SyncOptions::default();
        without.report(|p| p.table_started("outside"));
        let with = SyncOptions { progress: Some(log.clone()), ..SyncOptions::default() };
        with.report(|p| p.table_started("chat"));
        with.report(|p| p.slice("chat", 5, 100));
        without.report(|p| p.slice("after", 1, 1));
        assert_eq!(*log.0.lock().unwrap(), ["start chat", "chat +5"]);
        assert_eq!(SyncOptions::default().table_connections, DEFAULT_TABLE_CONNECTIONS);
    }
}
