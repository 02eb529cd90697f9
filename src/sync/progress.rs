//! An optional progress hook for long syncs (the CLI's progress bar), off by default.
//!
//! Run a sync inside [`with_progress`] and the engine reports each table it starts, each
//! slice it writes and each table it finishes to the given [`Progress`]; without it, the
//! reports go nowhere and cost a task-local lookup. A scoped hook (rather than a field of
//! [`super::SyncJob`]) keeps the engine's signatures unchanged.

use std::future::Future;
use std::sync::Arc;

/// Receives a sync's progress. Called on the sync's task: keep it quick.
pub trait Progress: Send + Sync {
    /// A table's copy starts.
    fn table_started(&self, _table: &str) {}
    /// `rows` rows (`bytes` bytes read from the source) of `table` were written.
    fn slice(&self, _table: &str, _rows: u64, _bytes: u64) {}
    /// A table is done: synced (`error` none) or failed.
    fn table_done(&self, _table: &str, _rows: i64, _error: Option<&str>) {}
}

tokio::task_local! {
    static HOOK: Arc<dyn Progress>;
}

/// Runs `fut` (a sync) reporting its progress to `hook`.
pub async fn with_progress<F: Future>(hook: Arc<dyn Progress>, fut: F) -> F::Output {
    HOOK.scope(hook, fut).await
}

/// Reports to the current hook, if any.
pub(crate) fn report(f: impl FnOnce(&dyn Progress)) {
    let _ = HOOK.try_with(|h| f(h.as_ref()));
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

    #[tokio::test]
    async fn reports_reach_the_hook_only_inside_its_scope() {
        let log = Arc::new(Log::default());
        report(|p| p.table_started("outside"));
        with_progress(log.clone(), async {
            report(|p| p.table_started("chat"));
            tokio::task::yield_now().await;
            report(|p| p.slice("chat", 5, 100));
        })
        .await;
        report(|p| p.slice("after", 1, 1));
        assert_eq!(*log.0.lock().unwrap(), ["start chat", "chat +5"]);
    }
}
