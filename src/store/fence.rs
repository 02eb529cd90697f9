//! Fencing in one type: a write transaction begun with the lease's epoch commits only if,
//! last thing before the commit and under the lease row's lock ([`super::lease::holds`]),
//! this replica still holds the lease at that epoch; otherwise it rolls back and returns
//! [`StoreError::Fenced`]. A transaction begun without a fence (`owsyncctl sync --once`,
//! which runs outside any election) commits as it is.

use std::ops::{Deref, DerefMut};

use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::lease::{self, Candidate};
use super::{Context, Result, StoreError};

/// Proof of leadership a transaction is fenced with: who holds the lease, at which epoch.
#[derive(Debug, Clone)]
pub struct Fence {
    pub who: Candidate,
    pub epoch: i64,
}

/// How a transaction's COMMIT waits for its WAL flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The server's setting (on by default): COMMIT returns once the WAL is flushed.
    Synchronous,
    /// `synchronous_commit = off` for this transaction only: safe where a commit lost in
    /// a crash loses nothing a later run does not redo (a table's rows and its state).
    Relaxed,
}

/// A write transaction, fenced by the lease (see the module doc). Derefs to the
/// connection, like [`Transaction`]: `&mut *tx` runs a query inside it.
pub struct FencedTx<'c> {
    tx: Transaction<'c, Postgres>,
    fence: Option<Fence>,
}

impl FencedTx<'static> {
    /// Begins a transaction on a pooled connection, marked as [`super::begin`] marks it.
    pub async fn begin(pool: &PgPool, cluster: &str, fence: Option<&Fence>) -> Result<FencedTx<'static>> {
        let tx = super::begin(pool, cluster).await?;
        Ok(FencedTx { tx, fence: fence.cloned() })
    }
}

impl<'c> FencedTx<'c> {
    /// Begins a transaction on a connection the caller holds, marked as [`super::begin`]
    /// marks it, with the given commit durability.
    pub async fn begin_on(
        conn: &'c mut PgConnection,
        cluster: &str,
        fence: Option<&Fence>,
        durability: Durability,
    ) -> Result<FencedTx<'c>> {
        let tx = super::begin_on(conn, cluster, durability).await?;
        Ok(FencedTx { tx, fence: fence.cloned() })
    }

    /// The epoch this transaction is fenced with, if any.
    pub fn epoch(&self) -> Option<i64> {
        self.fence.as_ref().map(|f| f.epoch)
    }

    /// Commits if the lease is still held at the fence's epoch (checked under the lease
    /// row's lock, so a takeover either committed before and fails this check, or waits
    /// for this commit); otherwise rolls back and returns [`StoreError::Fenced`].
    pub async fn commit(mut self) -> Result<()> {
        if let Some(f) = self.fence.take()
            && !lease::holds(&mut self.tx, &f.who, f.epoch).await?
        {
            let _ = self.tx.rollback().await;
            return Err(StoreError::Fenced { epoch: f.epoch });
        }
        self.tx.commit().await.ctx(|| "commit".into())
    }

    /// Rolls back: nothing of this transaction is written.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.ctx(|| "roll back".into())
    }
}

impl Deref for FencedTx<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for FencedTx<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
