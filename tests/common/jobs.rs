//! A tenant's runs (`sync_metadata.sync_jobs`) and log text without colour codes: read
//! by several test binaries.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

/// One `sync_jobs` row.
#[derive(Debug, Clone)]
pub struct Job {
    pub leader: String,
    pub epoch: i64,
    pub status: String,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// The tenant's runs, oldest first (read as admin: no RLS).
pub async fn jobs(admin: &PgPool, client: &str) -> Vec<Job> {
    try_jobs(admin, client).await.expect("read sync_jobs")
}

/// The tenant's runs, or the error (a server that restarts under the test).
pub async fn try_jobs(admin: &PgPool, client: &str) -> Result<Vec<Job>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT leader_id, epoch, status, started_at, finished_at, error FROM sync_metadata.sync_jobs
         WHERE client_name = $1 ORDER BY started_at",
    )
    .bind(client)
    .fetch_all(admin)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Job {
            leader: r.get(0),
            epoch: r.get(1),
            status: r.get(2),
            started: r.get(3),
            finished: r.get(4),
            error: r.get(5),
        })
        .collect())
}

/// `s` without ANSI escape sequences (colour codes in a terminal's output).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(char::is_ascii_alphabetic);
        } else {
            out.push(c);
        }
    }
    out
}
