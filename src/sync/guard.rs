//! The deletion guard: the mirror is the tenant's backup, so a sync never turns a large
//! share of it into tombstones on its own. Before anything is written, the source's row
//! counts are compared with what the last sync recorded, and a few keys sampled at the
//! last complete sync ("anchors") are looked up in the source. A sync that would tombstone
//! more than `spec.deletionGuard.maxShare` of a table, empty a table, or that finds
//! another database at the path (a volume not mounted: a fresh Open WebUI database)
//! writes nothing and holds until the source comes back or an operator approves exactly
//! the deletions seen (`owsyncctl deletions approve`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::source::{self, Source, SourceError, TableInfo};
use crate::spec::{DeletionGuard, table_selected};
use crate::sql::quote_ident;

/// Keys sampled per table, spread over its rowids.
const ANCHORS_PER_TABLE: i64 = 8;

/// Per table, the key tuples of a few of its rows.
pub type Anchors = BTreeMap<String, Vec<Vec<Json>>>;

/// Why a sync holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// None of the rows sampled at the last complete sync are in most tables: another
    /// database sits at the path.
    SourceReplaced,
    /// The source is the same database, but the sync would delete too much of it.
    MassDeletion,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::SourceReplaced => "SourceReplaced",
            Reason::MassDeletion => "MassDeletion",
        }
    }
}

/// One table the sync would shrink beyond the guard's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldTable {
    pub table: String,
    /// Rows of the table at the last sync (live in the mirror).
    pub live: i64,
    /// Rows the source has now.
    pub remaining: i64,
}

impl HeldTable {
    pub fn deleting(&self) -> i64 {
        (self.live - self.remaining).max(0)
    }
}

/// What a sync refused to apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub reason: Reason,
    /// Tables that would lose more than the guard lets one sync delete.
    pub tables: Vec<HeldTable>,
    /// Tables none of whose sampled rows are in the source (`SourceReplaced`).
    #[serde(default)]
    pub foreign: Vec<String>,
    /// Tables that had sampled rows at the last complete sync.
    #[serde(default)]
    pub anchored: usize,
}

impl Plan {
    /// What an operator reads in the condition, `sync --once` and the event.
    pub fn message(&self, client: &str, path: &str) -> String {
        let shown: Vec<String> =
            self.tables.iter().take(6).map(|t| format!("{} {} of {} rows", t.table, t.deleting(), t.live)).collect();
        let more = self.tables.len().saturating_sub(6);
        let deletions = match (shown.is_empty(), more) {
            (true, _) => String::new(),
            (false, 0) => format!("; it would tombstone {}", shown.join(", ")),
            (false, n) => format!("; it would tombstone {} and {n} more tables", shown.join(", ")),
        };
        let what = match self.reason {
            Reason::SourceReplaced => format!(
                "the source at {path} looks like another database (none of the rows sampled at the last sync \
                 are in {} of {} tables: {}){deletions}",
                self.foreign.len(),
                self.anchored,
                self.foreign.iter().take(6).cloned().collect::<Vec<_>>().join(", ")
            ),
            Reason::MassDeletion => format!("the source at {path} lost rows beyond the deletion guard{deletions}"),
        };
        format!(
            "deletions held: {what}; nothing was written, the mirror keeps every row. If a volume is not \
             mounted, mount it again: the hold clears at the next sync. If the data is lost, restore it: \
             `owsyncctl restore {client} --in-place`. If the deletions are intended: `owsyncctl deletions \
             approve {client}`"
        )
    }

    /// Whether `approved` covers this plan: the same or fewer deletions in every table, and
    /// a replaced source only if the approval was for one.
    pub fn covered_by(&self, approved: &Plan) -> bool {
        if self.reason == Reason::SourceReplaced && approved.reason != Reason::SourceReplaced {
            return false;
        }
        self.tables.iter().all(|t| {
            approved.tables.iter().any(|a| a.table == t.table && t.remaining >= a.remaining && t.live <= a.live)
        })
    }
}

/// A table as the guard sees it: recorded rows and the source's rows now.
#[derive(Debug, Clone)]
pub struct Counted {
    pub table: String,
    pub live: i64,
    /// `None`: the table is not in the source (a sync does not tombstone it).
    pub remaining: Option<i64>,
}

/// What the guard read from the source.
#[derive(Debug, Default)]
pub struct Observed {
    pub tables: Vec<Counted>,
    /// Tables that had anchors, and those none of whose anchors were found.
    pub anchored: Vec<String>,
    pub foreign: Vec<String>,
    /// Anchors sampled now, recorded after the sync succeeds.
    pub anchors: Anchors,
}

/// The decision: `None` lets the sync run; `Some` holds with that plan.
pub fn decide(policy: &DeletionGuard, seen: &Observed) -> Option<Plan> {
    if !policy.enabled {
        return None;
    }
    let mut tables = Vec::new();
    for c in &seen.tables {
        let Some(remaining) = c.remaining else { continue };
        let deleting = c.live - remaining;
        let share = deleting > 0 && c.live >= policy.min_rows && deleting as f64 > policy.max_share * c.live as f64;
        let emptied = policy.hold_emptied && c.live > 0 && remaining == 0;
        if share || emptied {
            tables.push(HeldTable { table: c.table.clone(), live: c.live, remaining });
        }
    }
    let replaced = !seen.anchored.is_empty() && seen.foreign.len() * 2 > seen.anchored.len();
    if !replaced && tables.is_empty() {
        return None;
    }
    Some(Plan {
        reason: if replaced { Reason::SourceReplaced } else { Reason::MassDeletion },
        tables,
        foreign: if replaced { seen.foreign.clone() } else { Vec::new() },
        anchored: seen.anchored.len(),
    })
}

/// The most rows each table's transaction may tombstone in a sync the guard let through:
/// the second line of the guard, for what counts cannot see (rows deleted and as many
/// inserted). Beyond it the table rolls back and the sync holds. No limit when the guard
/// is off; an approval raises a table's limit to the deletions it approved.
pub fn limits(policy: &DeletionGuard, seen: &Observed, approval: Option<&Plan>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if !policy.enabled {
        return out;
    }
    for c in seen.tables.iter().filter(|c| c.live > 0) {
        let mut max =
            if c.live >= policy.min_rows { (policy.max_share * c.live as f64).floor() as i64 } else { c.live };
        if policy.hold_emptied {
            max = max.min(c.live - 1);
        }
        if let Some(a) = approval.and_then(|a| a.tables.iter().find(|t| t.table == c.table)) {
            max = max.max(a.deleting());
        }
        out.insert(c.table.clone(), max.max(0) as u64);
    }
    out
}

/// The plan of a table whose transaction would have tombstoned `tombstoned` of `live` rows.
pub fn exceeded(table: &str, live: i64, tombstoned: u64) -> Plan {
    let remaining = (live - tombstoned as i64).max(0);
    Plan {
        reason: Reason::MassDeletion,
        tables: vec![HeldTable { table: table.to_string(), live, remaining }],
        foreign: Vec::new(),
        anchored: 0,
    }
}

/// Reads what the guard needs from the source at `path`: the row count of every selected
/// table the last sync recorded (`recorded`: table -> rows), whether the `previous`
/// anchors are there, and fresh anchors. Short statements, each its own read.
pub fn observe(
    path: &Path,
    selection: &crate::spec::TableSelector,
    recorded: &BTreeMap<String, i64>,
    previous: &Anchors,
) -> Result<Observed, SourceError> {
    let src = Source::open(path)?;
    let discovered = source::discover(&src)?;
    observe_in(&src, &discovered, selection, recorded, previous)
}

/// [`observe`] on an open source whose tables were just discovered (`discovered`).
pub fn observe_in(
    src: &Source,
    discovered: &[TableInfo],
    selection: &crate::spec::TableSelector,
    recorded: &BTreeMap<String, i64>,
    previous: &Anchors,
) -> Result<Observed, SourceError> {
    let infos: BTreeMap<&str, &TableInfo> = discovered.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut seen = Observed::default();
    for (table, live) in recorded {
        if !table_selected(selection, table) {
            continue;
        }
        let remaining = match infos.get(table.as_str()) {
            Some(_) => Some(src.row_count(table)?),
            None => None,
        };
        seen.tables.push(Counted { table: table.clone(), live: *live, remaining });
    }
    for (table, keys) in previous.iter().filter(|(t, k)| !k.is_empty() && table_selected(selection, t)) {
        seen.anchored.push(table.clone());
        let found = match infos.get(table.as_str()) {
            Some(info) => any_present(src, info, keys)?,
            None => false,
        };
        if !found {
            seen.foreign.push(table.clone());
        }
    }
    for info in infos.values().filter(|t| table_selected(selection, &t.name)) {
        let keys = sample(src, info)?;
        if !keys.is_empty() {
            seen.anchors.insert(info.name.clone(), keys);
        }
    }
    Ok(seen)
}

/// Up to `ANCHORS_PER_TABLE` keys spread evenly over the table's rowids. Tables keyed by
/// rowid or WITHOUT ROWID have none (a rowid says nothing of which database it is in).
fn sample(src: &Source, t: &TableInfo) -> Result<Vec<Vec<Json>>, SourceError> {
    let keys = t.key_columns();
    if keys.is_empty() || t.without_rowid {
        return Ok(Vec::new());
    }
    // Two subqueries: SQLite answers a lone min() or max() with one b-tree descent, but
    // both in one query with a scan of every row.
    let bounds = format!("SELECT (SELECT min(rowid) FROM {0}), (SELECT max(rowid) FROM {0})", quote_ident(&t.name));
    let (lo, hi): (Option<i64>, Option<i64>) =
        src.statement(&t.name, &bounds)?.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(src.err(&t.name))?;
    let (Some(lo), Some(hi)) = (lo, hi) else { return Ok(Vec::new()) };
    let cols: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
    let sql =
        format!("SELECT {} FROM {} WHERE rowid >= ?1 ORDER BY rowid LIMIT 1", cols.join(", "), quote_ident(&t.name));
    let mut stmt = src.statement(&t.name, &sql)?;
    let mut out: Vec<Vec<Json>> = Vec::new();
    let span = (i128::from(hi) - i128::from(lo)).max(0);
    for i in 0..ANCHORS_PER_TABLE {
        let at = i128::from(lo) + span * i128::from(i) / i128::from(ANCHORS_PER_TABLE - 1);
        let at = i64::try_from(at).unwrap_or(hi);
        let row: Option<Vec<Json>> = stmt
            .query_row([at], |r| (0..cols.len()).map(|c| r.get_ref(c).map(json_of)).collect::<Result<Vec<_>, _>>())
            .map(|v| v.into_iter().collect::<Option<Vec<Json>>>())
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
            .map_err(src.err(&t.name))?;
        if let Some(k) = row.filter(|k| !out.contains(k)) {
            out.push(k);
        }
    }
    Ok(out)
}

/// A key value as JSON; `None` for values that make no anchor (NULL, blobs, bad UTF-8, NUL).
fn json_of(v: rusqlite::types::ValueRef<'_>) -> Option<Json> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Integer(i) => Some(Json::from(i)),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map(Json::Number),
        // jsonb cannot hold NUL; such a key is quarantined anyway.
        ValueRef::Text(t) => {
            std::str::from_utf8(t).ok().filter(|s| !s.contains('\0')).map(|s| Json::from(s.to_string()))
        }
        ValueRef::Null | ValueRef::Blob(_) => None,
    }
}

/// Whether any of `keys` is a row of `t` (looked up by its primary key).
fn any_present(src: &Source, t: &TableInfo, keys: &[Vec<Json>]) -> Result<bool, SourceError> {
    let cols = t.key_columns();
    if cols.is_empty() {
        return Ok(false);
    }
    let cond: Vec<String> = cols.iter().enumerate().map(|(i, c)| format!("{} = ?{}", quote_ident(c), i + 1)).collect();
    let sql = format!("SELECT 1 FROM {} WHERE {} LIMIT 1", quote_ident(&t.name), cond.join(" AND "));
    let mut stmt = src.statement(&t.name, &sql)?;
    for key in keys.iter().filter(|k| k.len() == cols.len()) {
        let params: Vec<rusqlite::types::Value> = key.iter().map(sqlite_of).collect();
        if stmt.exists(rusqlite::params_from_iter(params)).map_err(src.err(&t.name))? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn sqlite_of(v: &Json) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Json::Number(n) => n.as_i64().map(V::Integer).or_else(|| n.as_f64().map(V::Real)).unwrap_or(V::Null),
        Json::String(s) => V::Text(s.clone()),
        _ => V::Null,
    }
}

#[cfg(test)]
mod tests;

/// A sync the guard let through, with what to record once it is complete.
pub struct Passed {
    anchors: Anchors,
    /// Per table, the most rows its transaction may tombstone ([`limits`]); with the
    /// rows each table had at the last sync.
    pub limits: BTreeMap<String, (u64, i64)>,
    /// The approval it applied, if any (logged; consumed by [`settle`]).
    approved: bool,
}

fn parse<T: serde::de::DeserializeOwned>(v: Option<serde_json::Value>) -> Option<T> {
    v.and_then(|v| serde_json::from_value(v).ok())
}

/// What the guard recorded of the tenant: the anchors of the last complete sync and any
/// approval, read before the source is observed ([`observe_in`]).
pub(super) async fn load(job: &super::SyncJob<'_>) -> Result<crate::store::guard::GuardRow, super::SyncError> {
    let store_err = |source| super::SyncError::store(job.client, source);
    let mut tx = crate::store::begin(job.pool, job.cluster).await.map_err(store_err)?;
    let row = crate::store::guard::load(&mut tx, job.cluster, job.client).await.map_err(store_err)?;
    let _ = tx.commit().await;
    Ok(row)
}

/// The anchors a loaded guard row recorded (none when it has none or they do not parse).
pub(super) fn previous(row: &crate::store::guard::GuardRow) -> Anchors {
    parse(row.anchors.clone()).unwrap_or_default()
}

/// Decides, before a sync writes anything, on what the source showed (`seen`, observed
/// with the anchors of `row`). `Err(DeletionsHeld)` after recording the hold (fenced):
/// nothing else is written.
pub(super) async fn pass(
    job: &super::SyncJob<'_>,
    row: crate::store::guard::GuardRow,
    seen: Observed,
) -> Result<Passed, super::SyncError> {
    let client = job.client;
    // With `deletes: ignore` nothing is tombstoned: nothing to hold, no limit.
    let tombstones = job.spec.deletes == crate::spec::DeletePolicy::Tombstone;
    let plan = if tombstones { decide(&job.spec.deletion_guard, &seen) } else { None };
    let approval: Option<Plan> = parse(row.approved);
    let live: BTreeMap<&str, i64> = seen.tables.iter().map(|c| (c.table.as_str(), c.live)).collect();
    let limits = if tombstones { limits(&job.spec.deletion_guard, &seen, approval.as_ref()) } else { BTreeMap::new() };
    let limits =
        limits.into_iter().map(|(t, max)| (t.clone(), (max, live.get(t.as_str()).copied().unwrap_or(0)))).collect();
    let Some(plan) = plan else { return Ok(Passed { anchors: seen.anchors, limits, approved: false }) };
    if approval.as_ref().is_some_and(|a| plan.covered_by(a)) {
        tracing::warn!(client = %client, approved_by = row.approved_by.as_deref().unwrap_or("?"),
                       reason = plan.reason.as_str(), "applying approved deletions");
        return Ok(Passed { anchors: seen.anchors, limits, approved: true });
    }
    Err(hold(job, plan).await)
}

/// Records the hold of `plan` (fenced) and returns the sync's `DeletionsHeld` error (or
/// the error that kept it from being recorded).
pub(super) async fn hold(job: &super::SyncJob<'_>, plan: Plan) -> super::SyncError {
    let client = job.client.to_string();
    let message = plan.message(job.client, &job.spec.source.path);
    tracing::warn!(client = %client, reason = plan.reason.as_str(), "{message}");
    let doc = serde_json::to_value(&plan).unwrap_or_default();
    let recorded = async {
        let mut tx = crate::store::FencedTx::begin(job.pool, job.cluster, job.fence).await?;
        crate::store::guard::hold(&mut tx, job.cluster, job.client, &doc).await?;
        tx.commit().await
    }
    .await;
    match recorded {
        Ok(()) => super::SyncError::DeletionsHeld { client, plan: Box::new(plan), message },
        Err(e) => super::SyncError::store(&client, e),
    }
}

/// After a complete sync: records the anchors sampled before it and clears any hold and
/// approval, in the caller's fenced transaction (committed with the sync's fingerprint:
/// `skip::record`).
pub(super) async fn settle(
    tx: &mut crate::store::FencedTx<'_>,
    job: &super::SyncJob<'_>,
    passed: Passed,
) -> Result<(), crate::store::StoreError> {
    let anchors = serde_json::to_value(&passed.anchors).unwrap_or_default();
    crate::store::guard::settle(tx, job.cluster, job.client, &anchors).await?;
    if passed.approved {
        tracing::info!(client = %job.client, "approved deletions applied; the approval is used up");
    }
    Ok(())
}
