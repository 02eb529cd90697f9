//! When a tenant reconciles next, decided from what its reconcile came to (kube-runtime's
//! `Action` and `error_policy`). Pure: no I/O, no clock, the jitter passed in, so the
//! rules are unit-tested; the runner applies the decision ([`super::schedule::Schedule`]).

use std::time::Duration;

use super::backoff::backoff_delay;
use crate::sync::{SyncError, SyncReport};

/// When to reconcile next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Requeue {
    /// After the spec's interval, with the failures reset: a complete sync, or a held one
    /// (a hold is not a failure: it is checked again every interval, without backoff).
    Interval,
    /// After `delay`, the backoff of the `attempt`-th consecutive failure (1 = first).
    Backoff { attempt: u32, delay: Duration },
    /// Never: this replica lost the lease, so the reconcile stops.
    Stop,
}

impl Requeue {
    /// The backoff of the `attempt`-th consecutive failure; `jitter` in [-1, 1].
    pub fn backoff(attempt: u32, jitter: f64) -> Requeue {
        Requeue::Backoff { attempt, delay: backoff_delay(attempt, jitter) }
    }
}

/// The requeue after a sync that failed as a whole with `err`, the `attempt`-th
/// consecutive failure if it is one (`jitter` in [-1, 1]).
pub fn error_policy(err: &SyncError, attempt: u32, jitter: f64) -> Requeue {
    match err {
        SyncError::OwnershipLost { .. } => Requeue::Stop,
        SyncError::DeletionsHeld { .. } => Requeue::Interval,
        _ => Requeue::backoff(attempt, jitter),
    }
}

/// The requeue after any sync, `failures` consecutive failures before it: a complete one
/// at the interval, one in which some tables failed backs off as a failure, and a failed
/// one as [`error_policy`] says.
pub fn requeue(result: &Result<SyncReport, SyncError>, failures: u32, jitter: f64) -> Requeue {
    let attempt = failures.saturating_add(1);
    match result {
        Ok(r) if r.failed.is_empty() => Requeue::Interval,
        Ok(_) => Requeue::backoff(attempt, jitter),
        Err(e) => error_policy(e, attempt, jitter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::guard::{Plan, Reason};

    fn failed(message: &str) -> SyncError {
        SyncError::Reader { client: "acme".into(), message: message.into() }
    }

    #[test]
    fn failures_back_off_a_hold_waits_the_interval_a_lost_lease_stops() {
        let secs = Duration::from_secs;
        assert_eq!(error_policy(&failed("x"), 1, 0.0), Requeue::Backoff { attempt: 1, delay: secs(5) });
        assert_eq!(error_policy(&failed("x"), 3, 0.0), Requeue::Backoff { attempt: 3, delay: secs(20) });
        assert_eq!(error_policy(&failed("x"), 3, 1.0), Requeue::Backoff { attempt: 3, delay: secs(24) });
        assert_eq!(error_policy(&failed("x"), 40, 0.0), Requeue::Backoff { attempt: 40, delay: secs(300) });
        let lost = SyncError::OwnershipLost { client: "acme".into(), epoch: 7 };
        assert_eq!(error_policy(&lost, 1, 0.0), Requeue::Stop);
        let plan = Plan { reason: Reason::MassDeletion, tables: vec![], foreign: vec![], anchored: 0 };
        let held = SyncError::DeletionsHeld { client: "acme".into(), plan: Box::new(plan), message: "held".into() };
        assert_eq!(error_policy(&held, 4, 0.0), Requeue::Interval, "a hold is not a failure");
    }

    #[test]
    fn a_complete_sync_waits_the_interval_a_degraded_one_backs_off() {
        let ok = SyncReport::default();
        assert_eq!(requeue(&Ok(ok.clone()), 6, 0.0), Requeue::Interval);
        let mut degraded = ok;
        degraded.failed.insert("chat".into(), "NUL in text".into());
        let after_two = Requeue::Backoff { attempt: 3, delay: Duration::from_secs(20) };
        assert_eq!(requeue(&Ok(degraded), 2, 0.0), after_two, "the third failure in a row");
        assert_eq!(requeue(&Err(failed("x")), 2, 0.0), after_two);
        assert_eq!(requeue(&Err(failed("x")), u32::MAX, -1.0), Requeue::backoff(u32::MAX, -1.0));
    }
}
