//! Everything owsync keeps in PostgreSQL's `sync_metadata` schema: migrations, specs,
//! status, the leader lease and fencing ([`FencedTx`]), jobs and events, and what a sync
//! records of each table (`table_state`, `quarantine`). `sync` and `controller` write
//! `sync_metadata` only through these modules.

pub mod cluster;
pub mod conflicts;
pub mod fence;
pub mod guard;
pub mod inventory;
pub mod jobs;
pub mod lease;
pub mod migrate;
pub mod observed;
pub mod quarantine;
pub mod requests;
pub mod roles;
pub mod session;
pub mod specs;
pub mod state;
pub mod status;
pub mod table_state;

pub use fence::{Durability, Fence, FencedTx};

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::sql::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("{context}: {source}")]
    Db { context: String, source: sqlx::Error },
    #[error(
        "database is not migrated (sync_metadata missing or at version {found}, need {want}): run `owsyncctl migrate --admin-url-file FILE` (FILE holds the admin URL)"
    )]
    NotMigrated { found: i64, want: i64 },
    #[error("{0}")]
    Migration(String),
    #[error("clientsync/{name} not found in cluster {cluster}")]
    NotFound { cluster: String, name: String },
    /// A spec the database refuses, with the field path and value.
    #[error("{0}")]
    Invalid(String),
    /// The connection goes through a transaction-mode pooler (see [`check_session_pooling`]).
    #[error("{0}")]
    TransactionPooler(String),
    /// A fenced transaction found the lease no longer held at its epoch and rolled back
    /// ([`FencedTx::commit`]).
    #[error("lost the lease (epoch {epoch} is no longer held); nothing of this transaction was written")]
    Fenced { epoch: i64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Adds what a query was doing to a database error.
pub trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, sqlx::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| StoreError::Db { context: context(), source })
    }
}

/// Connection options from a URL, tagged with an application name.
pub fn connect_options(url: &str, application: &str) -> Result<PgConnectOptions> {
    let opts: PgConnectOptions = url.parse().map_err(|source| StoreError::Connect { url: redact_url(url), source })?;
    // An IPv6 literal keeps its URL brackets (`[::1]`), which name resolution rejects.
    let opts = match opts.get_host().strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ip) => {
            let ip = ip.to_string();
            opts.host(&ip)
        }
        None => opts,
    };
    Ok(opts.application_name(application))
}

/// A pool of connections; fails at once, naming the cause, when the server is unreachable.
pub async fn connect(url: &str, application: &str, max_connections: u32) -> Result<PgPool> {
    connect_idle(url, application, max_connections, Some(Duration::from_secs(600))).await
}

/// [`connect`], closing a connection once it has been idle for `idle_timeout` (the pool
/// opens connections on demand and keeps none open: `min_connections` is 0).
pub async fn connect_idle(
    url: &str,
    application: &str,
    max_connections: u32,
    idle_timeout: Option<Duration>,
) -> Result<PgPool> {
    use sqlx::{ConnectOptions, Connection};
    let opts = connect_options(url, application)?;
    let err = |source| StoreError::Connect { url: redact_url(url), source };
    // One direct attempt first: the pool retries "connection refused" until its acquire
    // timeout and then reports only "pool timed out", hiding the cause.
    let probe = opts.connect().await.map_err(err)?;
    let _ = probe.close().await;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .idle_timeout(idle_timeout)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                session::prepare(conn).await;
                Ok(())
            })
        })
        .acquire_timeout(Duration::from_secs(10))
        // The probe above has shown the server answers: open connections on demand only.
        .connect_lazy_with(opts))
}

/// Begins a transaction scoped to one cluster: row-level security lets `sync_service`
/// see only rows whose `cluster_name` equals `app.current_host_id`, set here with
/// `SET LOCAL` semantics so it also holds through a session pooler. It also sets
/// `owsync.writer = on`: what owsync writes to a mirror is not a change made in
/// PostgreSQL (see `target::conflict`), whichever code path writes it.
pub async fn begin(pool: &PgPool, cluster: &str) -> Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await.ctx(|| "begin transaction".into())?;
    mark(&mut tx, cluster, Durability::Synchronous).await?;
    Ok(tx)
}

/// Begins a transaction on a connection the caller holds, marked as [`begin`] marks it;
/// with [`Durability::Relaxed`] its COMMIT does not wait for its WAL flush.
pub async fn begin_on<'c>(
    conn: &'c mut PgConnection,
    cluster: &str,
    durability: Durability,
) -> Result<Transaction<'c, Postgres>> {
    let mut tx = sqlx::Connection::begin(conn).await.ctx(|| "begin transaction".into())?;
    mark(&mut tx, cluster, durability).await?;
    Ok(tx)
}

async fn mark(conn: &mut PgConnection, cluster: &str, durability: Durability) -> Result<()> {
    let sql = match durability {
        Durability::Synchronous => {
            "SELECT set_config('app.current_host_id', $1, true), set_config('owsync.writer', 'on', true)"
        }
        Durability::Relaxed => {
            "SELECT set_config('app.current_host_id', $1, true), set_config('owsync.writer', 'on', true),
                    set_config('synchronous_commit', 'off', true)"
        }
    };
    sqlx::query(sql).bind(cluster).execute(conn).await.ctx(|| "set app.current_host_id".into())?;
    Ok(())
}

/// What to do about a transaction-mode pooler; part of every refusal.
pub const POOLER_FIX: &str = "owsyncd needs session semantics (prepared statements, SET, LISTEN/NOTIFY, a lease \
     held on one connection): use the session pooler instead (Supabase: the pooler host on port 5432, not 6543; \
     PgBouncer: pool_mode = session) or a direct connection, and drop pgbouncer=true from the URL";

/// A transaction-mode pooler named by the URL itself: Supabase's transaction pooler port
/// 6543, or `pgbouncer=true` (Prisma's flag for it). `None` when the URL says nothing.
pub fn transaction_pooler_hint(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let (base, query) = lower.split_once('?').unwrap_or((&lower, ""));
    if query.split('&').any(|kv| kv == "pgbouncer=true") {
        return Some("the database URL has pgbouncer=true (a transaction-mode pooler)".into());
    }
    let host_part = base.split_once("://").map_or(base, |(_, r)| r);
    let host_part = host_part.split('/').next().unwrap_or("");
    let host_part = host_part.rsplit_once('@').map_or(host_part, |(_, h)| h);
    let port_in_host = host_part.rsplit_once(':').map(|(_, p)| p);
    let port_in_query = query.split('&').find_map(|kv| kv.strip_prefix("port="));
    if port_in_host == Some("6543") || port_in_query == Some("6543") {
        return Some("the database URL uses port 6543 (Supabase's transaction-mode pooler)".into());
    }
    None
}

/// Refuses a transaction-mode pooler (PgBouncer `pool_mode = transaction`, Supavisor on
/// 6543): it hands each statement or transaction to whichever server connection is free,
/// which breaks named prepared statements, session settings, LISTEN/NOTIFY and the
/// lease's session. The probe: two pooled connections each set a session setting and
/// read their backend pid, then each reads both back in a separate round trip; through
/// a session pooler (or directly) every connection keeps its own backend and setting.
/// Uses the simple query protocol only, so the probe itself works through any pooler.
pub async fn check_session_pooling(pool: &PgPool) -> Result<()> {
    use rand::Rng;
    let ctx = || "probe the connection's session semantics".to_string();
    let mut a = pool.acquire().await.ctx(ctx)?;
    let mut b = pool.acquire().await.ctx(ctx)?;
    let tag = |c: char| -> String {
        let r: String = rand::rng().sample_iter(&rand::distr::Alphanumeric).take(16).map(char::from).collect();
        format!("{c}{r}")
    };
    let (ta, tb) = (tag('a'), tag('b'));
    let set = |t: &str| {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SELECT set_config('owsync.session_probe', '{t}', false), pg_backend_pid()"
        )))
    };
    let get = || sqlx::raw_sql("SELECT current_setting('owsync.session_probe', true), pg_backend_pid()");
    let read = |r: sqlx::postgres::PgRow| -> (String, i32) {
        use sqlx::Row;
        (r.try_get::<Option<String>, _>(0).ok().flatten().unwrap_or_default(), r.try_get(1).unwrap_or(0))
    };
    let pa = read(set(&ta).fetch_one(&mut *a).await.ctx(ctx)?);
    let pb = read(set(&tb).fetch_one(&mut *b).await.ctx(ctx)?);
    let ra = read(get().fetch_one(&mut *a).await.ctx(ctx)?);
    let rb = read(get().fetch_one(&mut *b).await.ctx(ctx)?);
    let _ = sqlx::raw_sql("SELECT set_config('owsync.session_probe', '', false)").execute(&mut *a).await;
    let _ = sqlx::raw_sql("SELECT set_config('owsync.session_probe', '', false)").execute(&mut *b).await;
    let session = pa.1 != pb.1 && ra == (ta.clone(), pa.1) && rb == (tb.clone(), pb.1);
    if session {
        return Ok(());
    }
    Err(StoreError::TransactionPooler(format!(
        "the database connection goes through a transaction-mode pooler: session state does not survive \
         between statements (two connections shared backend pids {} and {}; a setting made on one connection \
         read back as {:?} instead of {:?}). {POOLER_FIX}",
        pa.1, pb.1, ra.0, ta
    )))
}

#[cfg(test)]
mod tests {
    use super::transaction_pooler_hint as hint;

    #[test]
    fn pooler_hints_from_the_url() {
        assert!(hint("postgres://u:p@aws-0-eu.pooler.supabase.com:6543/postgres").is_some());
        assert!(hint("postgresql://u:p@host:5432/db?pgbouncer=true&sslmode=require").is_some());
        assert!(hint("postgres://u:p@host/db?port=6543").is_some());
        assert!(hint("postgres://u:p@aws-0-eu.pooler.supabase.com:5432/postgres").is_none());
        assert!(hint("postgres://u:6543@host:5432/db").is_none(), "a password of 6543 is not a port");
        assert!(hint("postgres://u:p@host:16543/db").is_none());
        assert!(hint("postgres://u:p@host:5432/db?pgbouncer=false").is_none());
    }
}
