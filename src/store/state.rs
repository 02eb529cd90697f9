//! `state`: the seed's key-value deployment state (authoritative in PostgreSQL).

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgPool, Row};

use super::{Context, Result};

#[derive(Debug, Clone, serde::Serialize)]
pub struct StateEntry {
    pub key: String,
    pub value: serde_json::Value,
    pub updated_at: DateTime<Utc>,
}

pub async fn get(pool: &PgPool, cluster: &str, key: &str) -> Result<Option<StateEntry>> {
    let mut tx = super::begin(pool, cluster).await?;
    let row = sqlx::query("SELECT value, updated_at FROM sync_metadata.state WHERE cluster_name = $1 AND key = $2")
        .bind(cluster)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .ctx(|| format!("read state {key}"))?;
    tx.commit().await.ctx(|| "commit".into())?;
    let Some(r) = row else { return Ok(None) };
    let value = r.try_get::<Json<serde_json::Value>, _>(0).ctx(|| format!("decode state {key}"))?.0;
    Ok(Some(StateEntry { key: key.to_string(), value, updated_at: r.get(1) }))
}

/// What a write tells every replica (the NOTIFY owsync_state payload, JSON): which key
/// changed and the version written, so a replica that already fetched that version (the
/// notification can arrive after its read) keeps it cached.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StateNote {
    pub cluster: String,
    pub key: String,
    pub updated_at: DateTime<Utc>,
}

impl StateNote {
    /// Reads a payload; `None` for one this version does not understand (the caller then
    /// catches up by polling).
    pub fn parse(payload: &str) -> Option<StateNote> {
        serde_json::from_str(payload).ok()
    }
}

/// Writes a key, then tells every replica to drop older versions of it from its cache
/// (NOTIFY owsync_state with a [`StateNote`]), in the same transaction.
pub async fn put(
    pool: &PgPool,
    cluster: &str,
    key: &str,
    value: &serde_json::Value,
    by: &str,
) -> Result<DateTime<Utc>> {
    let mut tx = super::begin(pool, cluster).await?;
    let at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO sync_metadata.state (cluster_name, key, value, updated_at, updated_by) VALUES ($1, $2, $3, now(), $4)
         ON CONFLICT (cluster_name, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now(),
             updated_by = EXCLUDED.updated_by
         RETURNING updated_at",
    )
    .bind(cluster)
    .bind(key)
    .bind(Json(value))
    .bind(by)
    .fetch_one(&mut *tx)
    .await
    .ctx(|| format!("write state {key}"))?;
    let note = StateNote { cluster: cluster.to_string(), key: key.to_string(), updated_at: at };
    sqlx::query("SELECT pg_notify('owsync_state', $1::jsonb::text)")
        .bind(Json(&note))
        .execute(&mut *tx)
        .await
        .ctx(|| "notify owsync_state".into())?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(at)
}

/// Keys changed since `since` (the polling fallback of cache invalidation).
pub async fn changed_since(pool: &PgPool, cluster: &str, since: DateTime<Utc>) -> Result<Vec<(String, DateTime<Utc>)>> {
    let mut tx = super::begin(pool, cluster).await?;
    let rows =
        sqlx::query("SELECT key, updated_at FROM sync_metadata.state WHERE cluster_name = $1 AND updated_at > $2")
            .bind(cluster)
            .bind(since)
            .fetch_all(&mut *tx)
            .await
            .ctx(|| "poll state changes".into())?;
    tx.commit().await.ctx(|| "commit".into())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_reads_back_and_an_unknown_payload_is_none() {
        let note = StateNote { cluster: "host-a".into(), key: "a/b@c".into(), updated_at: Utc::now() };
        let payload = serde_json::to_string(&note).expect("encode");
        assert_eq!(StateNote::parse(&payload), Some(note));
        // jsonb's text form (what PostgreSQL sends) has spaces and an offset.
        let pg = r#"{"key": "k", "cluster": "c", "updated_at": "2026-12-07T22:32:29.99764+00:00"}"#;
        assert_eq!(StateNote::parse(pg).map(|n| n.key), Some("k".to_string()));
        assert_eq!(StateNote::parse("c/k"), None);
    }
}
