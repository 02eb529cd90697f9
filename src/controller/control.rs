//! The control session: one connection per replica that carries the lease rounds (its
//! backend pid is recorded as the holder's), the heartbeat, and every LISTEN the
//! replica needs. A standby holds nothing else ([`super::budget`]).
//!
//! It is a `PgListener` on a pool of its own of one connection, never reconnected
//! behind the election's back: a lost connection is reported (`next` returns an error)
//! and the election drops the session, steps down if it led, and opens a new one.
//! Dropping it closes its connection, so the backend leaves `pg_stat_activity` and a
//! standby can take the lease over at once.

use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use sqlx::{Acquire, PgConnection, PgPool};

use super::Shared;

/// Lease releases (wake a standby).
pub(super) const LEASE: &str = "owsync_lease";
/// Spec changes and sync requests (wake the leader's fleet loop).
const SPECS: &str = "owsync_specs";
const REQUESTS: &str = "owsync_requests";
/// State writes (drop the key from the API's cache).
const STATE: &str = "owsync_state";

pub(super) struct Control {
    listener: PgListener,
    pool: PgPool,
}

impl Control {
    /// Opens the session and LISTENs on every channel.
    pub async fn connect(opts: &PgConnectOptions) -> Result<Control, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(opts.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener.listen_all([LEASE, SPECS, REQUESTS, STATE]).await?;
        Ok(Control { listener, pool })
    }

    /// The session's connection, for queries.
    pub async fn conn(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        (&mut self.listener).acquire().await
    }

    /// The next notification; an error when the connection is lost (the caller drops
    /// this session then).
    pub async fn next(&mut self) -> Result<PgNotification, sqlx::Error> {
        match self.listener.try_recv().await? {
            Some(n) => Ok(n),
            None => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the control session's connection was lost",
            ))),
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // The listener gives its connection back to this session's pool when dropped;
        // closing the pool closes the connection then.
        let pool = self.pool.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { pool.close().await });
        }
    }
}

/// Hands a notification to whoever waits for it; true for a lease release.
pub(super) fn dispatch(shared: &Shared, n: &PgNotification) -> bool {
    match n.channel() {
        LEASE => true,
        SPECS | REQUESTS => {
            shared.spec_wake.notify_one();
            false
        }
        STATE => {
            let _ = shared.state_notes.send(Some(n.payload().to_string()));
            false
        }
        _ => false,
    }
}

/// Tells the loops that woke on notifications that some may have been missed (the
/// control session was (re)opened): the leader re-reads specs and requests, the API's
/// cache catches up.
pub(super) fn resync(shared: &Shared) {
    shared.spec_wake.notify_one();
    let _ = shared.state_notes.send(None);
}
