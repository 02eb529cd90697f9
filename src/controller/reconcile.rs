//! One reconcile of a tenant, shaped like kube-runtime's: [`reconcile`] syncs it and says
//! what that came to, knowing nothing of when it runs or runs next. The policy decides
//! the requeue from the result ([`super::policy`], pure), and the runner owns the rest:
//! concurrency, the tenant's lock, the lease-lost cancellation, the record and the wait
//! ([`super::runner`]).

use std::sync::Arc;

use super::Shared;
use super::record::Recorder;
use crate::store::specs::StoredSpec;
use crate::sync::{Fence, SyncError, SyncJob, SyncOptions, SyncReport, drift};

/// What every reconcile of a term shares (kube's context): the controller's state and
/// the lease the term holds.
pub(super) struct ReconcileContext {
    pub shared: Arc<Shared>,
    pub fence: Fence,
}

impl ReconcileContext {
    /// Whether this replica may still act on the term's lease (by its own clock).
    pub fn lease_valid(&self) -> bool {
        self.shared.lease_valid(self.fence.epoch)
    }

    /// How `spec`'s runs are recorded: fenced with the term's lease, as this node;
    /// `lease_valid` is [`ReconcileContext::lease_valid`], borrowed for as long.
    pub fn recorder<'a>(&'a self, spec: &'a StoredSpec, lease_valid: &'a (dyn Fn() -> bool + Sync)) -> Recorder<'a> {
        Recorder { pool: &self.shared.pool, spec, fence: Some(&self.fence), node: &self.fence.who.node_id, lease_valid }
    }
}

/// Syncs `spec`'s tenant once, its schema drift last reported as `drift` (the sync decides
/// whether a changed drift calls for syncing every table: [`drift::sync_rechecking`]),
/// copying `tables` tables at once (the runner's grant). A lost lease is
/// [`SyncError::OwnershipLost`].
pub(super) async fn reconcile(
    ctx: &ReconcileContext,
    spec: &StoredSpec,
    drift: &drift::Reported,
    tables: usize,
) -> Result<SyncReport, SyncError> {
    let job = SyncJob {
        pool: &ctx.shared.pool,
        cluster: &spec.cluster,
        client: &spec.name,
        spec: &spec.spec,
        fence: Some(&ctx.fence),
        options: SyncOptions { table_connections: tables, ..SyncOptions::default() },
    };
    drift::sync_rechecking(&job, drift).await
}
