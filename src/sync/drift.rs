//! Schema drift: where the mirror can no longer follow its source.
//!
//! The mirror follows the source additively: new tables and columns appear on the next
//! sync, nothing is dropped. What it cannot follow on its own is *drift*: a column whose
//! declared type now maps to another PostgreSQL type than the mirror column's, a column
//! or a table dropped at the source but kept in the mirror, or a primary key that
//! changed. The sync goes on with what it can; the drift is reported (the tenant's
//! `SchemaDrift` condition) with what to do, and it clears once the mirror is fixed.
//!
//! [`compare`] is pure; [`check`] reads the source's schema and the mirror's catalog.
//! While a tenant drifts, [`sync_rechecking`] decides from the digest of the drift last
//! reported ([`Reported`]) whether an unchanged source's sync must sync every table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use sqlx::Row;

use super::{SyncError, SyncJob};
use crate::source::{self, Source, TableInfo};
use crate::spec::table_selected;
use crate::sql::{qualified, quote_ident};
use crate::store::{self, Context};
use crate::target::{MirrorTable, PgType};

/// The shape of one mirror table as PostgreSQL's catalog has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorShape {
    /// Column name -> `format_type` (e.g. `bigint`, `double precision`).
    pub columns: BTreeMap<String, String>,
    /// Primary key columns in key order (empty: none).
    pub key: Vec<String>,
}

/// One way the mirror differs from its source that the sync cannot follow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Drift {
    /// The source column's declared type now maps to another PostgreSQL type.
    #[serde(rename_all = "camelCase")]
    ColumnTypeChanged { table: String, column: String, source_decl: String, source_type: String, mirror_type: String },
    /// The column is gone at the source but kept in the mirror (new rows get NULL in it).
    ColumnDropped { table: String, column: String },
    /// The table is gone at the source but kept in the mirror with its last rows.
    TableDropped { table: String },
    /// The source's primary key is not the mirror's.
    #[serde(rename_all = "camelCase")]
    PrimaryKeyChanged { table: String, source_key: Vec<String>, mirror_key: Vec<String> },
}

impl Drift {
    /// The condition reason for this kind of drift.
    pub fn reason(&self) -> &'static str {
        match self {
            Drift::ColumnTypeChanged { .. } => "ColumnTypeChanged",
            Drift::ColumnDropped { .. } => "ColumnDropped",
            Drift::TableDropped { .. } => "TableDropped",
            Drift::PrimaryKeyChanged { .. } => "PrimaryKeyChanged",
        }
    }

    pub fn table(&self) -> &str {
        match self {
            Drift::ColumnTypeChanged { table, .. }
            | Drift::ColumnDropped { table, .. }
            | Drift::TableDropped { table }
            | Drift::PrimaryKeyChanged { table, .. } => table,
        }
    }

    /// What happened and what to do, naming the mirror table (in `schema`) and column.
    pub fn message(&self, schema: &str) -> String {
        let q = |t: &str| qualified(schema, t);
        match self {
            Drift::ColumnTypeChanged { table, column, source_decl, source_type, mirror_type } => format!(
                "table {table}, column {column}: the source now declares {source_decl:?} ({source_type}) but the mirror \
                 column is {mirror_type}; its values may not fit. As admin, convert the mirror column (ALTER TABLE {} \
                 ALTER COLUMN {c} TYPE {source_type} USING {c}::text::{source_type}) or drop it \
                 (the next sync re-adds and refills it)",
                q(table),
                c = quote_ident(column)
            ),
            Drift::ColumnDropped { table, column } => format!(
                "table {table}, column {column}: dropped at the source, kept in the mirror (rows synced from now on \
                 hold NULL there). If that is intended, drop it from the mirror as admin (ALTER TABLE {} DROP COLUMN \
                 {}), otherwise restore it at the source",
                q(table),
                quote_ident(column)
            ),
            Drift::TableDropped { table } => format!(
                "table {table}: gone at the source, kept in the mirror with its last rows. If that is intended, drop \
                 {} as admin or exclude it (spec.tables.exclude), otherwise restore it at the source",
                q(table)
            ),
            Drift::PrimaryKeyChanged { table, source_key, mirror_key } => format!(
                "table {table}: the source's primary key is ({}) but the mirror's is ({}); rows cannot be matched. \
                 As admin, drop {} (the next sync re-creates it with the new key and copies every row)",
                source_key.join(", "),
                mirror_key.join(", "),
                q(table)
            ),
        }
    }
}

/// Compares the selected source tables with the mirror. `recorded` names the tables
/// owsync has mirrored before (only those can have been dropped at the source).
pub fn compare(
    schema: &str,
    source: &[TableInfo],
    mirror: &BTreeMap<String, MirrorShape>,
    recorded: &BTreeSet<String>,
    selected: impl Fn(&str) -> bool,
) -> Vec<Drift> {
    let mut out = Vec::new();
    let in_source: BTreeSet<&str> = source.iter().map(|t| t.name.as_str()).collect();
    for t in source.iter().filter(|t| selected(&t.name)) {
        let Some(m) = mirror.get(&t.name) else { continue };
        let expected = MirrorTable::from_source(schema, t);
        if m.key != expected.key {
            out.push(Drift::PrimaryKeyChanged {
                table: t.name.clone(),
                source_key: expected.key.clone(),
                mirror_key: m.key.clone(),
            });
        }
        for c in &t.columns {
            let want = PgType::from_decl(&c.decl_type).sql();
            if let Some(have) = m.columns.get(&c.name)
                && have != want
            {
                out.push(Drift::ColumnTypeChanged {
                    table: t.name.clone(),
                    column: c.name.clone(),
                    source_decl: c.decl_type.clone(),
                    source_type: want.to_string(),
                    mirror_type: have.clone(),
                });
            }
        }
        let src_cols: BTreeSet<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        for col in m.columns.keys().filter(|c| !c.starts_with("_owsync_") && !src_cols.contains(c.as_str())) {
            out.push(Drift::ColumnDropped { table: t.name.clone(), column: col.clone() });
        }
    }
    for name in mirror.keys() {
        if !in_source.contains(name.as_str()) && recorded.contains(name) && selected(name) {
            out.push(Drift::TableDropped { table: name.clone() });
        }
    }
    out
}

/// A digest of a drift list (all of it, in the order [`compare`] finds it): what a sync
/// reported, handed back to the next one so that it can tell whether the drift changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(u128);

impl Digest {
    pub fn of(drifts: &[Drift]) -> Digest {
        Digest(xxhash_rust::xxh3::xxh3_128(&serde_json::to_vec(drifts).unwrap_or_default()))
    }
}

/// What was last reported of a tenant's schema drift, the input of a sync that decides
/// whether to check it again ([`sync_rechecking`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reported {
    /// No drift, or none reported yet: a sync of an unchanged source checks nothing.
    #[default]
    InSync,
    /// Drifting, as the digest says.
    Drifting(Digest),
    /// Drifting, as reported before this process knew what (the status it starts from).
    DriftingUnseen,
}

impl Reported {
    /// What a sync's result reports: its drift when it checked it, else what was before.
    pub fn after(self, result: &Result<super::SyncReport, SyncError>) -> Reported {
        match result.as_ref().ok().and_then(|r| r.drift.as_deref()) {
            Some([]) => Reported::InSync,
            Some(d) => Reported::Drifting(Digest::of(d)),
            None => self,
        }
    }

    /// Whether `now`, the drift found again with the source unchanged, calls for syncing
    /// every table: it is gone or changed (an operator fixed the mirror, or some of it).
    /// A drift reported unseen counts as changed: nothing says the mirror is as it was.
    pub fn resync(&self, now: &[Drift]) -> bool {
        match self {
            Reported::InSync => false,
            Reported::Drifting(d) => now.is_empty() || Digest::of(now) != *d,
            Reported::DriftingUnseen => true,
        }
    }
}

/// Runs one sync of a tenant whose drift was last reported as `last`. While it drifts
/// and its source is unchanged (the sync skipped it), checks the drift again: if it
/// changed ([`Reported::resync`]), syncs every table at once, so the fix takes effect
/// without waiting for a source change; else reports it. A tenant that does not drift
/// costs no more than [`super::sync_tenant`].
pub async fn sync_rechecking(job: &SyncJob<'_>, last: &Reported) -> Result<super::SyncReport, SyncError> {
    let mut result = super::sync_tenant(job).await;
    if let Ok(r) = &mut result
        && r.unchanged
        && *last != Reported::InSync
    {
        match check(job).await {
            Ok(d) if last.resync(&d) => {
                tracing::info!(client = %job.client, "schema drift changed: syncing every table");
                return super::sync_tenant(&job.full()).await;
            }
            Ok(d) => r.drift = Some(d),
            Err(e) => tracing::warn!(client = %job.client, error = %e, "cannot check schema drift"),
        }
    }
    result
}

/// Reads the source's schema and the mirror's catalog and compares them.
pub async fn check(job: &SyncJob<'_>) -> Result<Vec<Drift>, SyncError> {
    let client = job.client.to_string();
    let path = PathBuf::from(&job.spec.source.path);
    let source = tokio::task::spawn_blocking(move || source::discover(&Source::open(&path)?))
        .await
        .map_err(|e| SyncError::Reader { client: client.clone(), message: e.to_string() })?
        .map_err(|source| SyncError::Source { client: client.clone(), source })?;
    check_against(job, &source).await
}

/// Compares the mirror's catalog with the source's tables as a sync just discovered them
/// (all of them, selected or not), without opening the source again.
pub async fn check_against(job: &SyncJob<'_>, source: &[TableInfo]) -> Result<Vec<Drift>, SyncError> {
    let started = std::time::Instant::now();
    let client = job.client.to_string();
    let schema = job.spec.mirror_schema(job.client);
    let (mirror, recorded) = read_mirror(job, &schema).await.map_err(|source| SyncError::store(&client, source))?;
    let drift = compare(&schema, source, &mirror, &recorded, |t| table_selected(&job.spec.tables, t));
    tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "schema drift checked");
    Ok(drift)
}

type MirrorState = (BTreeMap<String, MirrorShape>, BTreeSet<String>);

async fn read_mirror(job: &SyncJob<'_>, schema: &str) -> Result<MirrorState, store::StoreError> {
    let mut tx = store::begin(job.pool, job.cluster).await?;
    let rows = sqlx::query(
        "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                array_position(i.indkey::int2[], a.attnum)
         FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
         ORDER BY 1, a.attnum",
    )
    .bind(schema)
    .fetch_all(&mut *tx)
    .await
    .ctx(|| format!("read the mirror's catalog (schema {schema})"))?;
    let mut mirror: BTreeMap<String, MirrorShape> = BTreeMap::new();
    let mut keys: BTreeMap<String, Vec<(i32, String)>> = BTreeMap::new();
    for r in rows {
        let (table, column, ty, pos): (String, String, String, Option<i32>) = (r.get(0), r.get(1), r.get(2), r.get(3));
        if let Some(p) = pos {
            keys.entry(table.clone()).or_default().push((p, column.clone()));
        }
        mirror.entry(table).or_default().columns.insert(column, ty);
    }
    for (table, mut k) in keys {
        k.sort();
        if let Some(m) = mirror.get_mut(&table) {
            m.key = k.into_iter().map(|(_, c)| c).collect();
        }
    }
    let recorded = store::table_state::synced_tables(&mut tx, job.cluster, job.client).await?;
    let _ = tx.commit().await;
    Ok((mirror, recorded.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{ColumnInfo, RowKey};

    fn table(name: &str, cols: &[(&str, &str)], key: &[&str]) -> TableInfo {
        TableInfo {
            name: name.into(),
            ddl: String::new(),
            columns: cols
                .iter()
                .map(|(n, t)| ColumnInfo {
                    name: n.to_string(),
                    decl_type: t.to_string(),
                    pk: key.iter().position(|k| k == n).map_or(0, |p| p as i32 + 1),
                    generated: false,
                })
                .collect(),
            key: if key.is_empty() {
                RowKey::Rowid
            } else {
                RowKey::Primary(key.iter().map(std::string::ToString::to_string).collect())
            },
            without_rowid: false,
            extra_ddl: vec![],
        }
    }

    fn shape(cols: &[(&str, &str)], key: &[&str]) -> MirrorShape {
        let mut columns: BTreeMap<String, String> = cols.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        columns.insert("_owsync_deleted".into(), "boolean".into());
        columns.insert("_owsync_synced_at".into(), "timestamp with time zone".into());
        MirrorShape { columns, key: key.iter().map(std::string::ToString::to_string).collect() }
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn an_identical_or_merely_grown_source_is_no_drift() {
        let chat = table("chat", &[("id", "VARCHAR"), ("n", "BIGINT"), ("meta", "JSON")], &["id"]);
        let mirror = BTreeMap::from([("chat".into(), shape(&[("id", "text"), ("n", "bigint")], &["id"]))]);
        // `meta` is new at the source (added on the next sync); `note` is new altogether.
        let note = table("note", &[("id", "TEXT")], &["id"]);
        let recorded = BTreeSet::from(["chat".to_string()]);
        assert_eq!(compare("client_a", &[chat, note], &mirror, &recorded, all), vec![]);
    }

    #[test]
    fn each_kind_of_drift_is_found_and_named() {
        let chat = table("chat", &[("id", "VARCHAR"), ("n", "TEXT")], &["id"]);
        let tag = table("tag", &[("id", "VARCHAR"), ("user_id", "VARCHAR")], &["id", "user_id"]);
        let old = table("old", &[("a", "TEXT")], &[]);
        let mirror = BTreeMap::from([
            ("chat".into(), shape(&[("id", "text"), ("n", "bigint"), ("summary", "text")], &["id"])),
            ("tag".into(), shape(&[("id", "text"), ("user_id", "text")], &["id"])),
            ("old".into(), shape(&[("_owsync_rowid", "bigint"), ("a", "text")], &["_owsync_rowid"])),
            ("gone".into(), shape(&[("id", "text")], &["id"])),
            ("not_ours".into(), shape(&[("id", "text")], &["id"])),
        ]);
        let recorded = BTreeSet::from(["chat", "tag", "old", "gone"].map(String::from));
        let d = compare("client_a", &[chat, tag, old], &mirror, &recorded, all);
        assert_eq!(
            d,
            vec![
                Drift::ColumnTypeChanged {
                    table: "chat".into(),
                    column: "n".into(),
                    source_decl: "TEXT".into(),
                    source_type: "text".into(),
                    mirror_type: "bigint".into()
                },
                Drift::ColumnDropped { table: "chat".into(), column: "summary".into() },
                Drift::PrimaryKeyChanged {
                    table: "tag".into(),
                    source_key: vec!["id".into(), "user_id".into()],
                    mirror_key: vec!["id".into()]
                },
                Drift::TableDropped { table: "gone".into() },
            ],
            "the rowid table `old` and the never-mirrored `not_ours` are no drift"
        );
        let m = d[0].message("client_a");
        assert!(m.contains("table chat, column n") && m.contains("ALTER TABLE \"client_a\".\"chat\""), "{m}");
        let m = d[1].message("client_a");
        assert!(m.contains("DROP COLUMN \"summary\""), "{m}");
        assert!(d[2].message("client_a").contains("(id, user_id)"));
        assert_eq!(d.iter().map(Drift::reason).collect::<Vec<_>>()[3], "TableDropped");
    }

    #[test]
    fn a_drift_found_again_resyncs_only_when_it_changed() {
        let dropped = Drift::ColumnDropped { table: "chat".into(), column: "summary".into() };
        let gone = Drift::TableDropped { table: "old".into() };
        let found = |drift: Option<Vec<Drift>>| super::super::SyncReport { drift, ..Default::default() };
        let last = Reported::InSync.after(&Ok(found(Some(vec![dropped.clone()]))));
        assert_eq!(last, Reported::Drifting(Digest::of(std::slice::from_ref(&dropped))));
        assert!(!last.resync(std::slice::from_ref(&dropped)), "the same drift: reported, no re-sync");
        assert!(last.resync(&[]), "fixed: every table synced");
        assert!(last.resync(&[dropped.clone(), gone.clone()]), "changed");
        assert!(last.resync(std::slice::from_ref(&gone)), "partly fixed, other drift");
        // A sync that did not check the drift (unchanged source, or the check failed) keeps it.
        assert_eq!(last.after(&Ok(found(None))), last);
        assert_eq!(last.after(&Err(SyncError::Reader { client: "a".into(), message: "gone".into() })), last);
        assert_eq!(last.after(&Ok(found(Some(vec![])))), Reported::InSync);
        assert!(!Reported::InSync.resync(std::slice::from_ref(&dropped)), "not drifting: never checked again");
        assert!(Reported::DriftingUnseen.resync(&[dropped]), "unseen: nothing says it is unchanged");
    }

    #[test]
    fn excluded_tables_are_no_drift_and_a_key_gained_by_an_old_table_is() {
        let chat = table("chat", &[("id", "VARCHAR")], &["id"]);
        let mirror = BTreeMap::from([
            ("chat".into(), shape(&[("_owsync_rowid", "bigint"), ("id", "text")], &["_owsync_rowid"])),
            ("gone".into(), shape(&[("id", "text")], &["id"])),
        ]);
        let recorded = BTreeSet::from(["chat", "gone"].map(String::from));
        let d = compare("s", std::slice::from_ref(&chat), &mirror, &recorded, |t| t != "gone");
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(matches!(&d[0], Drift::PrimaryKeyChanged { mirror_key, .. } if mirror_key == &["_owsync_rowid"]));
        assert!(compare("s", &[chat], &mirror, &recorded, |t| t != "chat" && t != "gone").is_empty());
    }
}
