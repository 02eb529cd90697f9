//! The connection budget: how many PostgreSQL sessions one owsyncd process may open
//! (`owsyncd --max-connections`), and how they are shared out.
//!
//! * 1 **control session**: the lease rounds (its backend pid is the holder's), the
//!   heartbeat, and LISTEN for lease releases, spec changes, sync requests and state
//!   invalidations. A standby needs nothing else.
//! * the **pool**, `max_connections - 1` sessions, opened on demand and closed after
//!   [`POOL_IDLE_TIMEOUT`] unused (`min_connections` 0): syncs, status records, the API.
//!   One of them is kept out of the syncs' share (a sync's own bookkeeping, its late
//!   tables' provisioning, the API and the leader's spec reads take turns on it), the
//!   others are **sync connections**: a sync holds at least one and up to
//!   `--table-connections` while it copies, and a tenant whose turn comes when none is
//!   free waits for one instead of failing.
//!
//! With the default (4) a leader holds at most 4 sessions and a standby 1 (2 for a few
//! seconds after it answered an API request that reads the database): a pair stays
//! within 6 at peak (5 unless the standby is asked) and 2 when idle, so 11 host pairs fit
//! a Supabase Micro (60) and 17 a Small (90) even if all of them peak at once, with room
//! left for an admin session.

use std::time::Duration;

/// Sessions one owsyncd process may hold by default.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4;

/// The least budget that works: the control session, and two pool sessions (the
/// start-up probe of session pooling needs two at once; one of them syncs).
pub const MIN_MAX_CONNECTIONS: u32 = 3;

/// A pool session unused this long is closed, so an idle replica holds its control
/// session only.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions a host pair holds at most with the default budget (the leader's budget, and
/// the standby's control session) and when idle (each replica's control session).
pub const PAIR_PEAK: u32 = DEFAULT_MAX_CONNECTIONS + 1;
pub const PAIR_IDLE: u32 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    #[error(
        "--max-connections {0} is too small: owsyncd needs at least {MIN_MAX_CONNECTIONS} (the control session and two pool sessions)"
    )]
    TooSmall(u32),
}

/// How a process's sessions are shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Every session the process may hold.
    pub max_connections: u32,
    /// The pool's size (all but the control session).
    pub pool: u32,
    /// Pool sessions the running syncs may hold together (all but one of the pool's).
    pub sync_connections: usize,
    /// Tables of one tenant a sync copies at once, at most.
    pub table_connections: usize,
    /// Tenants syncing at once, at most.
    pub max_concurrency: usize,
}

impl Budget {
    /// Shares `max_connections` out, capping the requested table connections and
    /// concurrency to what fits.
    pub fn derive(
        max_connections: u32,
        max_concurrency: usize,
        table_connections: usize,
    ) -> Result<Budget, BudgetError> {
        if max_connections < MIN_MAX_CONNECTIONS {
            return Err(BudgetError::TooSmall(max_connections));
        }
        let pool = max_connections - 1;
        let sync_connections = (pool - 1) as usize;
        Ok(Budget {
            max_connections,
            pool,
            sync_connections,
            table_connections: table_connections.clamp(1, sync_connections),
            max_concurrency: max_concurrency.clamp(1, sync_connections),
        })
    }
}

/// How many host pairs of the default budget fit a server that allows
/// `max_connections` sessions, `reserved` of them kept for superusers and `in_use` by
/// others (an admin session is kept free as well).
pub fn pairs_that_fit(max_connections: i64, reserved: i64, in_use_by_others: i64) -> i64 {
    let free = max_connections - reserved - in_use_by_others - 1;
    (free / i64::from(PAIR_PEAK)).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_fits_a_pair_in_six_sessions() {
        let b = Budget::derive(DEFAULT_MAX_CONNECTIONS, 8, 2).unwrap();
        assert_eq!((b.pool, b.sync_connections, b.table_connections, b.max_concurrency), (3, 2, 2, 2));
        assert_eq!(PAIR_PEAK, 5);
        // Supabase Micro (60) and Small (90), with 3 superuser slots (PostgreSQL's default)
        // and one admin session kept free.
        assert!(pairs_that_fit(60, 3, 0) >= 10);
        assert!(pairs_that_fit(90, 3, 0) >= 15);
        assert_eq!(pairs_that_fit(10, 3, 20), 0);
    }

    #[test]
    fn small_budgets_cap_concurrency_and_too_small_ones_are_refused() {
        let b = Budget::derive(3, 8, 2).unwrap();
        assert_eq!((b.pool, b.sync_connections, b.table_connections, b.max_concurrency), (2, 1, 1, 1));
        assert_eq!(Budget::derive(2, 8, 2), Err(BudgetError::TooSmall(2)));
        let big = Budget::derive(40, 8, 2).unwrap();
        assert_eq!((big.table_connections, big.max_concurrency), (2, 8));
    }
}
