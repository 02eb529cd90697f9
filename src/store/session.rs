//! Per-connection set-up of owsync's PostgreSQL sessions, run once when the pool opens a
//! connection: lz4 TOAST compression, no JIT. (TCP_NODELAY, which a COPY's small CopyDone
//! needs not to wait for a delayed ACK, is set by sqlx itself since 0.9.1.)
//!
//! lz4: `default_toast_compression = lz4` (PostgreSQL >= 14, a per-session setting that
//! needs no privilege) makes the values owsync writes compress with lz4 instead of pglz,
//! which is most of PostgreSQL's ingest cost for Open WebUI's chat JSON (the mirror's
//! columns keep the default method, so this applies to whatever owsync writes). A server
//! built without lz4 rejects the setting; the session then keeps pglz.
//!
//! No JIT (`jit = off`, a per-session setting): owsync's statements touch few rows each,
//! but the planner cannot know how few rows a range of rowids holds and may estimate a
//! statement past `jit_above_cost` (BENCHMARKS.md, "Measurements behind the code").

use sqlx::PgConnection;
use tracing::debug;

/// Sets up a new connection.
pub async fn prepare(conn: &mut PgConnection) {
    if let Err(e) = sqlx::raw_sql("SET default_toast_compression = lz4").execute(&mut *conn).await {
        debug!(error = %e, "server refuses lz4 TOAST compression; keeping pglz");
    }
    if let Err(e) = sqlx::raw_sql("SET jit = off").execute(&mut *conn).await {
        debug!(error = %e, "server refuses jit = off");
    }
}
