//! Validation and normalisation of `ClientSync` documents (pure, no I/O).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::types::{
    API_VERSION, ClientSync, ClientSyncSpec, ConflictPolicy, DeletionGuard, KIND, Strategy, TableSelector,
};

pub const MIN_INTERVAL: Duration = Duration::from_secs(10);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60 * 60);
const MAX_PG_IDENT: usize = 63;

/// One violation, naming the field path and the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub value: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?} {}", self.path, self.value, self.message)
    }
}

fn err(path: impl Into<String>, value: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { path: path.into(), value: value.into(), message: message.into() }
}

/// DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric, at
/// most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The default mirror schema of a tenant: `client_` + name with '-' turned into '_'.
pub fn default_schema(name: &str) -> String {
    format!("client_{}", name.replace('-', "_"))
}

fn is_tenant_schema(s: &str) -> bool {
    s.len() <= MAX_PG_IDENT
        && s.strip_prefix("client_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        })
}

/// Parses a humantime duration such as `5m` or `1m 30s`.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| e.to_string())
}

/// The interval of a spec that passed [`normalize`].
pub fn interval_of(spec: &ClientSyncSpec) -> Duration {
    parse_interval(&spec.interval).unwrap_or(Duration::from_secs(300))
}

/// Whether `table` is mirrored under the spec's include/exclude globs.
pub fn table_selected(sel: &TableSelector, table: &str) -> bool {
    let m = |p: &String| wildmatch::WildMatch::new(p).matches(table);
    sel.include.iter().any(m) && !sel.exclude.iter().any(m)
}

/// Checks every field and returns the normalised document: defaults filled in
/// (`metadata.cluster`, `spec.target.schema`), the interval in canonical form and
/// server-set fields (`generation`, `status`, ...) cleared. All violations are reported,
/// not just the first.
pub fn normalize(doc: &ClientSync, default_cluster: &str) -> Result<ClientSync, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut out = doc.clone();
    out.status = None;
    out.metadata.generation = None;
    out.metadata.creation_timestamp = None;

    check_type(doc, &mut errors);
    let name = &doc.metadata.name;
    check_name(name, &mut errors);
    out.metadata.cluster = Some(normalize_cluster(doc.metadata.cluster.as_deref(), default_cluster, &mut errors));
    check_labels(&doc.metadata.labels, &mut errors);

    let spec = &doc.spec;
    if spec.source.path.is_empty() || !spec.source.path.starts_with('/') {
        errors.push(err("spec.source.path", &spec.source.path, "must be an absolute path"));
    }
    let schema = spec.mirror_schema(name);
    if !is_tenant_schema(&schema) {
        errors.push(err("spec.target.schema", &schema, "must match client_[a-z0-9_]+ and be at most 63 characters"));
    }
    out.spec.target.schema = Some(schema);
    if let Some(interval) = normalize_interval(&spec.interval, &mut errors) {
        out.spec.interval = interval;
    }
    check_table_patterns(&spec.tables, &mut errors);
    check_deletion_guard(&spec.deletion_guard, &mut errors);
    check_conflicts(&spec.conflicts, &mut errors);
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// `apiVersion` and `kind`: only this build's resource type is accepted.
fn check_type(doc: &ClientSync, errors: &mut Vec<FieldError>) {
    if doc.api_version != API_VERSION {
        errors.push(err("apiVersion", &doc.api_version, format!("is not supported (want {API_VERSION})")));
    }
    if doc.kind != KIND {
        errors.push(err("kind", &doc.kind, format!("is not supported (want {KIND})")));
    }
}

/// `metadata.name`: a DNS-1123 label, since it names the schema and the resource.
fn check_name(name: &str, errors: &mut Vec<FieldError>) {
    if !is_dns_label(name) {
        errors.push(err(
            "metadata.name",
            name,
            "is not a DNS-1123 label (lower-case letters, digits and '-', at most 63 characters)",
        ));
    }
}

/// `metadata.cluster`, defaulted from `--cluster` / `OWSYNC_CLUSTER`: returns the value to store.
fn normalize_cluster(cluster: Option<&str>, default_cluster: &str, errors: &mut Vec<FieldError>) -> String {
    let cluster = cluster.map_or_else(|| default_cluster.to_string(), str::to_string);
    if cluster.is_empty() {
        errors.push(err("metadata.cluster", "", "is empty and no --cluster / OWSYNC_CLUSTER is set"));
    } else if !is_dns_label(&cluster) {
        errors.push(err("metadata.cluster", &cluster, "is not a DNS-1123 label"));
    }
    cluster
}

/// `metadata.labels`: keys and values of at most 63 safe characters (keys not empty).
fn check_labels(labels: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    for (k, v) in labels {
        let ok = |s: &str, allow_empty: bool| {
            (allow_empty || !s.is_empty())
                && s.len() <= 63
                && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_./".contains(&c))
        };
        if !ok(k, false) {
            errors.push(err(format!("metadata.labels.{k}"), k, "is not a valid label key"));
        }
        if !ok(v, true) {
            errors.push(err(format!("metadata.labels.{k}"), v, "is not a valid label value"));
        }
    }
}

/// `spec.interval`: a duration within bounds; returns its canonical form when valid.
fn normalize_interval(interval: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match parse_interval(interval) {
        Err(_) => errors.push(err("spec.interval", interval, "is not a duration (e.g. 30s, 5m, 1h)")),
        Ok(d) if d < MIN_INTERVAL || d > MAX_INTERVAL => {
            errors.push(err("spec.interval", interval, "must be between 10s and 60m"));
        }
        Ok(d) => return Some(humantime::format_duration(d).to_string()),
    }
    None
}

/// `spec.tables`: no empty include/exclude pattern (it would match nothing, or everything).
fn check_table_patterns(tables: &TableSelector, errors: &mut Vec<FieldError>) {
    for (field, pats) in [("include", &tables.include), ("exclude", &tables.exclude)] {
        for (i, p) in pats.iter().enumerate() {
            if p.trim().is_empty() {
                errors.push(err(format!("spec.tables.{field}[{i}]"), p, "is an empty pattern"));
            }
        }
    }
}

/// `spec.deletionGuard`: a share in (0, 1] and a positive row floor.
fn check_deletion_guard(g: &DeletionGuard, errors: &mut Vec<FieldError>) {
    if !(g.max_share > 0.0 && g.max_share <= 1.0) {
        errors.push(err("spec.deletionGuard.maxShare", g.max_share.to_string(), "must be over 0 and at most 1"));
    }
    if g.min_rows < 1 {
        errors.push(err("spec.deletionGuard.minRows", g.min_rows.to_string(), "must be at least 1"));
    }
}

/// `spec.conflicts.tables`: each table's options fit its strategy.
fn check_conflicts(conflicts: &ConflictPolicy, errors: &mut Vec<FieldError>) {
    for (table, tc) in &conflicts.tables {
        let base = format!("spec.conflicts.tables.{table}");
        if table.is_empty() {
            errors.push(err(&base, table, "is an empty table name"));
        }
        if tc.compare_field.is_some() && tc.strategy != Strategy::NewestWins {
            errors.push(err(
                format!("{base}.compareField"),
                tc.compare_field.clone().unwrap_or_default(),
                "only applies to strategy newest_wins",
            ));
        }
        if tc.compare_field.as_deref() == Some("") {
            errors.push(err(format!("{base}.compareField"), "", "is empty"));
        }
        if tc.strategy == Strategy::Merge && tc.merge_rules.is_empty() {
            errors.push(err(format!("{base}.mergeRules"), "{}", "must name at least one column for strategy merge"));
        }
        if tc.strategy != Strategy::Merge && !tc.merge_rules.is_empty() {
            errors.push(err(
                format!("{base}.mergeRules"),
                format!("{:?}", tc.merge_rules.keys()),
                "only applies to strategy merge",
            ));
        }
    }
}

impl ClientSyncSpec {
    /// The PostgreSQL schema of this tenant's mirror: `spec.target.schema`, or
    /// `client_<name>` (see [`default_schema`]).
    pub fn mirror_schema(&self, name: &str) -> String {
        self.target.schema.clone().unwrap_or_else(|| default_schema(name))
    }
}
