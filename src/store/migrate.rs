//! Versioned, embedded migrations of `sync_metadata`, and the `sync_service` role.
//! Run as an admin role; idempotent: a second run applies nothing.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};

use super::{Context, Result, StoreError};

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "sync_metadata", sql: include_str!("migrations/0001_sync_metadata.sql") },
    Migration { version: 2, name: "roles_and_rls", sql: include_str!("migrations/0002_roles_and_rls.sql") },
    Migration { version: 3, name: "table_state_indexes", sql: include_str!("migrations/0003_table_state_indexes.sql") },
    Migration {
        version: 4,
        name: "unique_target_schema",
        sql: include_str!("migrations/0004_unique_target_schema.sql"),
    },
    Migration { version: 5, name: "quarantine", sql: include_str!("migrations/0005_quarantine.sql") },
    Migration {
        version: 6,
        name: "provision_without_locks",
        sql: include_str!("migrations/0006_provision_without_locks.sql"),
    },
    Migration { version: 7, name: "conflicts", sql: include_str!("migrations/0007_conflicts.sql") },
    Migration {
        version: 8,
        name: "inventory_and_retirement",
        sql: include_str!("migrations/0008_inventory_and_retirement.sql"),
    },
    Migration { version: 9, name: "page_state", sql: include_str!("migrations/0009_page_state.sql") },
    Migration { version: 10, name: "page_state_storage", sql: include_str!("migrations/0010_page_state_storage.sql") },
    Migration { version: 11, name: "history_retention", sql: include_str!("migrations/0011_history_retention.sql") },
    Migration { version: 12, name: "page_state_delta", sql: include_str!("migrations/0012_page_state_delta.sql") },
    Migration { version: 13, name: "deletion_guard", sql: include_str!("migrations/0013_deletion_guard.sql") },
    Migration { version: 14, name: "mirror_owners", sql: include_str!("migrations/0014_mirror_owners.sql") },
    Migration { version: 15, name: "cluster_roles", sql: include_str!("migrations/0015_cluster_roles.sql") },
];

/// The schema version this build needs.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The login role owsyncd runs as.
pub const SYNC_ROLE: &str = "sync_service";

#[derive(Debug, Default)]
pub struct Report {
    pub applied: Vec<(i64, &'static str)>,
    pub role_created: bool,
    pub password_set: bool,
    pub version: i64,
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A SCRAM-SHA-256 verifier, so the password itself never reaches the server (or its
/// statement log).
pub fn scram_verifier(password: &str) -> String {
    const ITERATIONS: u32 = 4096;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, ITERATIONS, &mut salted);
    let hmac = |key: &[u8], msg: &[u8]| {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(msg);
        m.finalize().into_bytes()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!("SCRAM-SHA-256${ITERATIONS}:{}${}:{}", B64.encode(salt), B64.encode(stored_key), B64.encode(server_key))
}

/// Creates or upgrades `sync_metadata` and the `sync_service` role in one transaction,
/// serialised against concurrent runs by an advisory lock.
pub async fn run(pool: &PgPool, sync_password: Option<&str>) -> Result<Report> {
    let mut report = Report::default();
    let mut tx = pool.begin().await.ctx(|| "begin migration".into())?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('owsync.migrate'))")
        .execute(&mut *tx)
        .await
        .ctx(|| "take the migration lock".into())?;
    ensure_migrations_table(&mut tx).await?;
    report.role_created = ensure_sync_role(&mut tx).await?;
    if let Some(pw) = sync_password {
        set_sync_password(&mut tx, pw).await?;
        report.password_set = true;
    }
    let have = applied_migrations(&mut tx).await?;
    report.applied = apply_pending(&mut tx, &have).await?;
    tx.commit().await.ctx(|| "commit migration".into())?;
    report.version = latest();
    Ok(report)
}

/// Creates `sync_metadata.schema_migrations` (and the schema) on a fresh database.
async fn ensure_migrations_table(conn: &mut PgConnection) -> Result<()> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'sync_metadata' AND tablename = 'schema_migrations')",
    )
    .fetch_one(&mut *conn)
    .await
    .ctx(|| "look for sync_metadata.schema_migrations".into())?;
    if !exists {
        sqlx::raw_sql(
            "CREATE SCHEMA IF NOT EXISTS sync_metadata;
             CREATE TABLE sync_metadata.schema_migrations (
                 version bigint PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .execute(&mut *conn)
        .await
        .ctx(|| "create sync_metadata.schema_migrations (does this role have CREATE on the database?)".into())?;
    }
    Ok(())
}

/// Creates the `sync_service` login role unless it exists; returns whether it created it.
async fn ensure_sync_role(conn: &mut PgConnection) -> Result<bool> {
    let role_exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(SYNC_ROLE)
        .fetch_one(&mut *conn)
        .await
        .ctx(|| "look up role sync_service".into())?;
    if !role_exists {
        sqlx::raw_sql("CREATE ROLE sync_service LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS")
            .execute(&mut *conn)
            .await
            .ctx(|| "create role sync_service (the admin role needs CREATEROLE)".into())?;
    }
    Ok(!role_exists)
}

/// Sets `sync_service`'s password as a SCRAM verifier, so the password never reaches the server.
async fn set_sync_password(conn: &mut PgConnection, pw: &str) -> Result<()> {
    let verifier = scram_verifier(pw);
    // The verifier is base64 plus `$:`; nothing in it needs escaping.
    debug_assert!(verifier.bytes().all(|c| c.is_ascii_alphanumeric() || b"+/=$:-".contains(&c)));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER ROLE sync_service PASSWORD '{verifier}'")))
        .execute(&mut *conn)
        .await
        .ctx(|| "set the password of sync_service".into())?;
    Ok(())
}

/// The applied migrations' checksums by version; refuses a database newer than this build.
async fn applied_migrations(conn: &mut PgConnection) -> Result<BTreeMap<i64, String>> {
    let applied = sqlx::query("SELECT version, checksum FROM sync_metadata.schema_migrations ORDER BY version")
        .fetch_all(&mut *conn)
        .await
        .ctx(|| "read applied migrations".into())?;
    let mut have = BTreeMap::new();
    for row in applied {
        have.insert(row.get::<i64, _>(0), row.get::<String, _>(1));
    }
    if let Some((&v, _)) = have.iter().next_back()
        && v > latest()
    {
        return Err(StoreError::Migration(format!(
            "the database is at schema version {v}, newer than this owsync ({}); upgrade owsync",
            latest()
        )));
    }
    Ok(have)
}

/// Applies and records, in order, each migration not in `have`; refuses one applied
/// with different contents. Returns what it applied.
async fn apply_pending(conn: &mut PgConnection, have: &BTreeMap<i64, String>) -> Result<Vec<(i64, &'static str)>> {
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let sum = checksum(m.sql);
        match have.get(&m.version) {
            Some(s) if *s == sum => continue,
            Some(_) => {
                return Err(StoreError::Migration(format!(
                    "migration {} ({}) was applied with different contents; the database was migrated by another build",
                    m.version, m.name
                )));
            }
            None => {}
        }
        sqlx::raw_sql(m.sql).execute(&mut *conn).await.ctx(|| format!("apply migration {} ({})", m.version, m.name))?;
        sqlx::query("INSERT INTO sync_metadata.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)")
            .bind(m.version)
            .bind(m.name)
            .bind(&sum)
            .execute(&mut *conn)
            .await
            .ctx(|| format!("record migration {}", m.version))?;
        applied.push((m.version, m.name));
    }
    Ok(applied)
}

/// The schema version of the database (0 when `sync_metadata` is missing).
pub async fn current_version(pool: &PgPool) -> Result<i64> {
    let present: bool = sqlx::query_scalar("SELECT to_regclass('sync_metadata.schema_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .ctx(|| "look for sync_metadata".into())?;
    if !present {
        return Ok(0);
    }
    let v: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM sync_metadata.schema_migrations")
        .fetch_one(pool)
        .await
        .ctx(|| "read the schema version".into())?;
    Ok(v.unwrap_or(0))
}

/// Fails with a message that says to run `owsyncctl migrate` unless the schema is current.
pub async fn require_current(pool: &PgPool) -> Result<()> {
    let found = current_version(pool).await?;
    if found < latest() {
        return Err(StoreError::NotMigrated { found, want: latest() });
    }
    Ok(())
}
