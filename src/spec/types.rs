//! The `ClientSync` resource as operators write it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "owsync.io/v1alpha1";
pub const KIND: &str = "ClientSync";

/// One tenant's desired mirror: which SQLite file goes to which PostgreSQL schema, how
/// often, and how conflicts are resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "ClientSync")]
pub struct ClientSync {
    /// Always `owsync.io/v1alpha1`.
    pub api_version: String,
    /// Always `ClientSync`.
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ClientSyncSpec,
    /// Controller-owned; ignored when applied (so `get -o yaml` output can be re-applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// DNS-1123 label, unique per cluster.
    pub name: String,
    /// The host's sync cluster that owns this tenant (default: the CLI's `--cluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Server-set; ignored on apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Server-set; ignored on apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientSyncSpec {
    /// Whether the controller syncs this tenant (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    pub source: SourceSpec,
    #[serde(default)]
    pub target: TargetSpec,
    /// How often to sync, as a humantime duration between 10s and 60m (default 5m).
    #[serde(default = "default_interval")]
    #[schemars(with = "String", regex(pattern = r"^[0-9]+(\.[0-9]+)?\s*[a-z]+(\s*[0-9]+\s*[a-z]+)*$"))]
    pub interval: String,
    /// Also sync within seconds of a change to the source file (debounced file watch),
    /// not only every `interval`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub watch: bool,
    #[serde(default)]
    pub tables: TableSelector,
    #[serde(default)]
    pub deletes: DeletePolicy,
    /// When a sync holds instead of tombstoning (the mirror is the tenant's backup).
    #[serde(default, skip_serializing_if = "DeletionGuard::is_default")]
    pub deletion_guard: DeletionGuard,
    #[serde(default)]
    pub conflicts: ConflictPolicy,
}

/// The deletion guard: a sync that would tombstone more than `maxShare` of a table's live
/// rows (tables with at least `minRows`), empty a table that had rows (`holdEmptied`), or
/// finds another database at the source path writes nothing and holds (`DeletionsHeld`)
/// until the source comes back or an operator approves (`owsyncctl deletions approve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeletionGuard {
    /// Hold on suspicious deletions at all (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The share of a table's live rows one sync may tombstone without approval, over 0
    /// and at most 1 (default 0.5).
    #[serde(default = "default_max_share")]
    pub max_share: f64,
    /// Tables with fewer live rows are judged by `holdEmptied` only (default 20).
    #[serde(default = "default_min_rows")]
    pub min_rows: i64,
    /// Hold a sync that would tombstone every row of a table that had rows (default true).
    #[serde(default = "default_true")]
    pub hold_emptied: bool,
}

impl Default for DeletionGuard {
    fn default() -> Self {
        DeletionGuard {
            enabled: true,
            max_share: default_max_share(),
            min_rows: default_min_rows(),
            hold_emptied: true,
        }
    }
}

impl DeletionGuard {
    pub fn is_default(&self) -> bool {
        *self == DeletionGuard::default()
    }
}

fn default_max_share() -> f64 {
    0.5
}

fn default_min_rows() -> i64 {
    20
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSpec {
    /// Absolute path of the tenant's `webui.db` as seen by owsyncd.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetSpec {
    /// PostgreSQL schema of the mirror; must start with `client_` (default: `client_` +
    /// name with `-` turned into `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TableSelector {
    /// Glob patterns (`*`, `?`) of tables to mirror (default: every user table).
    #[serde(default = "default_include")]
    pub include: Vec<String>,
    /// Glob patterns of tables to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl Default for TableSelector {
    fn default() -> Self {
        TableSelector { include: default_include(), exclude: Vec::new() }
    }
}

/// What a row deleted in SQLite becomes in the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeletePolicy {
    /// The mirror row stays, marked deleted (`_owsync_deleted = true`).
    #[default]
    Tombstone,
    /// Deletions are not propagated.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    NewestWins,
    SourceWins,
    TargetWins,
    Merge,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MergeRule {
    Append,
    NewestWins,
    SourceWins,
    TargetWins,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConflictPolicy {
    /// Strategy for tables without an entry in `tables` (default newest_wins).
    #[serde(default)]
    pub default: Strategy,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, TableConflict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TableConflict {
    pub strategy: Strategy,
    /// Column compared by `newest_wins` (default `updated_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_field: Option<String>,
    /// Per-column rules for `merge`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub merge_rules: BTreeMap<String, MergeRule>,
    /// Record an event for every conflict of this table (for `manual`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notify: bool,
}

fn default_true() -> bool {
    true
}

pub fn default_interval() -> String {
    "5m".to_string()
}

fn default_include() -> Vec<String> {
    vec!["*".to_string()]
}
