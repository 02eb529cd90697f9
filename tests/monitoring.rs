//! The Grafana dashboard and the alert rules use only metrics and labels owsyncd really
//! exports (read from what `owsync::metrics` renders), the alerts are the seed's five,
//! and promtool checks the rules and runs their unit tests (alerts.test.yaml), which
//! cover every alert firing and its false positives.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use owsync::metrics::Metrics;
use serde_json::Value;

mod common;

use common::repo::{read, root, yaml};

#[derive(Debug, Default)]
struct Exported {
    /// Series name -> label names.
    series: BTreeMap<String, BTreeSet<String>>,
    /// Metric families (`# TYPE`): a histogram's name without `_bucket`, `_sum`, `_count`.
    families: BTreeSet<String>,
}

/// Series names and label names of an exposition (OpenMetrics text). Every family it
/// declares (`# TYPE`) must have at least one sample, or its labels are unknown.
fn parse_exposition(text: &str) -> Exported {
    let mut out = Exported::default();
    let mut families = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families.push(rest.split(' ').next().unwrap_or_default().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = line[..name_end].to_string();
        let mut labels = BTreeSet::new();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').expect("closing }")];
            for pair in body.split("\",").filter(|p| !p.is_empty()) {
                labels.insert(pair.split('=').next().unwrap_or_default().trim_start_matches(',').to_string());
            }
        }
        out.series.entry(name).or_default().extend(labels);
    }
    out.families.extend(families.iter().cloned());
    for f in families {
        assert!(
            out.series.keys().any(|s| s == &f || s.strip_prefix(f.as_str()).is_some_and(|r| r.starts_with('_'))),
            "metric family {f} has no sample in the test's exposition: record one in exported_metrics()"
        );
    }
    out
}

/// What owsyncd exports: a leader's metrics (cluster label, one tracked tenant, a sync
/// of each outcome, rows, a conflict, cache use), rendered and parsed.
fn exported_metrics() -> Exported {
    let m = Metrics::for_cluster("prod-host-1");
    m.track("acme", Duration::from_secs(300), None);
    m.record_sync("acme", true, 1.5);
    m.record_sync("acme", false, 0.5);
    m.record_rows("acme", "chat", "upsert", 3);
    m.record_conflicts("acme", "chat", "newest_wins", 1);
    m.cache_hits.inc();
    m.cache_misses.inc();
    m.leader_transitions.inc();
    m.record_held("acme", true);
    let out = parse_exposition(&m.render(true));
    assert!(out.series.len() >= 10, "too few metrics rendered: {:?}", out.series.keys());
    for (name, labels) in &out.series {
        assert!(labels.contains("cluster"), "{name} has no cluster label: {labels:?}");
    }
    out
}

/// Labels every scraped series has (Prometheus' target labels).
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "inf",
    "nan",
];

#[derive(Debug, Default)]
struct Used {
    metrics: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
}

/// Metric names with their label matchers, and grouping labels, of a PromQL expression.
fn promql_uses(expr: &str) -> Used {
    // Drop string literals (label values, Grafana variables inside them).
    let mut s = String::new();
    let mut quote = None;
    for c in expr.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' || c == '`' => {
                quote = Some(c);
                s.push_str("\"\"");
            }
            None => s.push(c),
        }
    }
    let b: Vec<char> = s.chars().collect();
    let mut used = Used::default();
    let mut i = 0;
    let ident = |i: &mut usize| {
        let st = *i;
        while *i < b.len() && (b[*i].is_ascii_alphanumeric() || b[*i] == '_' || b[*i] == ':') {
            *i += 1;
        }
        b[st..*i].iter().collect::<String>()
    };
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_whitespace() {
            *i += 1;
        }
    };
    let group_list = |i: &mut usize| {
        // at '(' : label names until ')'
        let end = b[*i..].iter().position(|&c| c == ')').map(|p| *i + p).expect("unclosed label list");
        let list: String = b[*i + 1..end].iter().collect();
        *i = end + 1;
        list.split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect::<Vec<_>>()
    };
    while i < b.len() {
        let c = b[i];
        if c == '$' {
            i += 1;
            ident(&mut i);
        } else if c == '[' {
            i = b[i..].iter().position(|&c| c == ']').map(|p| i + p + 1).expect("unclosed [");
        } else if c.is_ascii_digit() || c == '.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let word = ident(&mut i);
            let mut j = i;
            skip_ws(&mut j);
            let lower = word.to_ascii_lowercase();
            if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&lower.as_str()) {
                if j < b.len() && b[j] == '(' {
                    i = j;
                    used.grouping.extend(group_list(&mut i));
                }
            } else if lower == "offset" {
                i = j;
                while i < b.len() && b[i].is_ascii_alphanumeric() {
                    i += 1;
                }
            } else if j < b.len() && b[j] == '(' || PROMQL_WORDS.contains(&lower.as_str()) {
                // a function or an operator
            } else {
                let mut labels = Vec::new();
                if j < b.len() && b[j] == '{' {
                    let end = b[j..].iter().position(|&c| c == '}').map(|p| j + p).expect("unclosed {");
                    let body: String = b[j + 1..end].iter().collect();
                    for m in body.split(',') {
                        let name = m.split(['=', '!', '~']).next().unwrap().trim();
                        if !name.is_empty() {
                            labels.push(name.to_string());
                        }
                    }
                    i = end + 1;
                }
                used.metrics.push((word, labels));
            }
        } else if c == '{' {
            // a selector without a name, e.g. {__name__=~"..."}: not used here
            panic!("nameless selector in {expr:?}");
        } else {
            i += 1;
        }
    }
    used
}

/// Checks one expression against what owsyncd exports; returns the metrics it uses.
fn check_expr(where_: &str, expr: &str, exported: &Exported) -> Vec<String> {
    let used = promql_uses(expr);
    assert!(!used.metrics.is_empty(), "{where_}: no metric in {expr:?}");
    let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(std::string::ToString::to_string).collect();
    for (metric, matchers) in &used.metrics {
        let labels = exported.series.get(metric).unwrap_or_else(|| {
            panic!(
                "{where_}: {metric} is not a series owsyncd exports (src/metrics.rs gives {:?})",
                exported.series.keys().collect::<Vec<_>>()
            )
        });
        for m in matchers {
            assert!(
                labels.contains(m) || TARGET_LABELS.contains(&m.as_str()),
                "{where_}: {metric} has no label {m:?} (it has {labels:?})"
            );
        }
        available.extend(labels.iter().cloned());
    }
    for g in &used.grouping {
        assert!(available.contains(g), "{where_}: grouping by {g:?}, which none of its metrics has: {expr:?}");
    }
    used.metrics.into_iter().map(|(m, _)| m).collect()
}

#[test]
fn promql_scanner_finds_metrics_labels_and_grouping() {
    let u = promql_uses(
        r#"histogram_quantile(0.95, sum by (client, le) (rate(sync_duration_seconds_bucket{job=~"$job"}[$__rate_interval]))) > 60 and on (job) x_total offset 10m"#,
    );
    let names: Vec<_> = u.metrics.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names, ["sync_duration_seconds_bucket", "x_total"]);
    assert_eq!(u.metrics[0].1, ["job"]);
    assert_eq!(u.grouping, ["client", "le", "job"]);
}

#[test]
fn grafana_dashboard_is_importable_and_uses_exported_metrics() {
    let rel = "manifests/monitoring/grafana-dashboard.json";
    let d: Value = serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let exported = exported_metrics();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "uid");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus" && i["type"] == "datasource"),
        "a DS_PROMETHEUS datasource input"
    );
    let ds_ok = |v: &Value| v["uid"] == "${DS_PROMETHEUS}" && v["type"] == "prometheus";
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut boxes: Vec<(String, u64, u64, u64, u64)> = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate panel id in {title}");
        let g = &p["gridPos"];
        let (x, y, w, h) =
            (g["x"].as_u64().unwrap(), g["y"].as_u64().unwrap(), g["w"].as_u64().unwrap(), g["h"].as_u64().unwrap());
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: gridPos out of the 24-column grid");
        for (other, ox, oy, ow, oh) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((title.clone(), x, y, w, h));
        if p["type"] == "row" {
            continue;
        }
        assert!(ds_ok(&p["datasource"]), "{title}: datasource must be ${{DS_PROMETHEUS}}");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            assert!(ds_ok(&t["datasource"]), "{title}: target datasource must be ${{DS_PROMETHEUS}}");
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{title}: target without expr"));
            used.extend(check_expr(&format!("{rel}: panel {title:?}"), expr, &exported));
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            assert!(ds_ok(&a["datasource"]), "annotation datasource");
            used.extend(check_expr(&format!("{rel}: annotation"), expr, &exported));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        assert!(ds_ok(&v["datasource"]), "variable {}: datasource", v["name"]);
        let q = v["query"]["query"].as_str().or(v["query"].as_str()).expect("variable query");
        let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).expect("label_values(...)");
        let (sel, label) = inner.rsplit_once(',').expect("label_values(selector, label)");
        let metrics = check_expr(&format!("{rel}: variable {}", v["name"]), sel, &exported);
        let label = label.trim();
        assert!(
            TARGET_LABELS.contains(&label) || exported.series[&metrics[0]].contains(label),
            "variable {}: {} has no label {label}",
            v["name"],
            metrics[0]
        );
    }
    for m in [
        "sync_operations_total",
        "sync_duration_seconds_bucket",
        "state_sync_lag_seconds",
        "conflicts_detected_total",
        "is_leader",
        "leader_transitions_total",
        "reconcile_queue_depth",
        "rows_synced_total",
    ] {
        assert!(used.contains(m), "the dashboard has no panel for {m}");
    }
}

#[test]
fn alert_rules_are_the_seeds_five_on_exported_metrics() {
    let rel = "manifests/monitoring/alerts.yaml";
    let a = yaml(rel);
    let exported = exported_metrics();
    let mut alerts = BTreeMap::new();
    for g in a["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alert name").to_string();
            let expr = r["expr"].as_str().expect("expr");
            assert!(r["labels"]["severity"].is_string(), "{name}: severity");
            assert!(r["annotations"]["summary"].is_string(), "{name}: summary");
            let used = check_expr(&format!("{rel}: {name}"), expr, &exported);
            alerts.insert(name, (expr.to_string(), used));
        }
    }
    // The seed's five: failed syncs > 5 in 10 min, leaders != 1, p95 > 60 s, conflict
    // spike, lag > 600 s.
    let uses = |m: &str, threshold: &str| {
        alerts.values().any(|(e, used)| used.iter().any(|u| u == m) && e.replace(' ', "").contains(threshold))
    };
    assert!(uses("sync_operations_total", ">5"), "failed syncs > 5 in 10 minutes");
    assert!(uses("is_leader", "!=1"), "leaders != 1");
    assert!(uses("sync_duration_seconds_bucket", ">60"), "p95 sync duration > 60 s");
    assert!(alerts.values().any(|(_, u)| u.iter().any(|m| m == "conflicts_detected_total")), "conflict spike");
    assert!(uses("state_sync_lag_seconds", ">600"), "lag > 600 s");
    // And the deletion guard's hold (issue #12).
    assert!(uses("deletions_held", "==1"), "deletions held");
}

// ---------------------------------------------------------------------------------------
// promtool: the rules load, and their unit tests (alerts.test.yaml) pass

/// Runs promtool; fails (never skips) when it is not installed.
fn promtool(args: &[&str]) -> String {
    let dir = root().join("manifests/monitoring");
    let out = Command::new("promtool").args(args).current_dir(&dir).output().unwrap_or_else(|e| {
        panic!(
            "promtool cannot run ({e}): install it with `scripts/ensure-deps.sh promtool` (Debian's prometheus \
             package; scripts/test.sh does it)"
        )
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    text
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let checked = promtool(&["check", "rules", "alerts.yaml"]);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every alert has unit tests where it fires and where it must not.
#[test]
fn every_alert_has_firing_and_quiet_unit_tests() {
    let rules = yaml("manifests/monitoring/alerts.yaml");
    let tests = yaml("manifests/monitoring/alerts.test.yaml");
    assert_eq!(tests["rule_files"][0], "alerts.yaml");
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in tests["tests"].as_array().expect("tests") {
        for a in t["alert_rule_test"].as_array().expect("alert_rule_test") {
            let name = a["alertname"].as_str().expect("alertname").to_string();
            let fired = a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty());
            let c = cases.entry(name).or_default();
            if fired { c.0 += 1 } else { c.1 += 1 }
        }
    }
    for g in rules["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alert");
            let (fire, quiet) = cases.get(name).copied().unwrap_or_default();
            assert!(fire > 0 && quiet > 0, "{name}: {fire} firing and {quiet} quiet unit test cases (want both)");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The real daemons: lag series only from the leader, only for tenants it runs

/// Sample lines of a metric in an exposition.
fn samples<'a>(text: &'a str, metric: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(&format!("{metric}{{"))).collect()
}

/// The metrics once a leader has synced both tenants (two lag series).
async fn synced_both(d: &common::daemon::Daemon) -> Option<String> {
    let m = d.get_text("/metrics").await?;
    (samples(&m, "state_sync_lag_seconds").len() == 2 && samples(&m, "sync_operations_total").len() >= 2).then_some(m)
}

/// The issue's reproduction: the leader is frozen past its lease (SIGSTOP), the standby
/// takes over, the old leader resumes as a standby: only the new leader exports lag, and
/// a deleted tenant's series goes.
#[tokio::test(flavor = "multi_thread")]
async fn lag_comes_from_the_leader_only_and_goes_with_its_tenant() {
    use common::daemon::{Daemon, eventually};
    const T: Duration = Duration::from_secs(60);
    let env = common::TestEnv::new("lag_series").await;
    for name in ["acme", "beta"] {
        let db = env.path(&format!("{name}.db"));
        common::small_db(&db, 3);
        let m = env.manifest(name, &db, "");
        common::ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    }
    let fast = ["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"];
    let a = Daemon::start(&env, "node-a", &fast);
    a.wait_up(T).await;
    let leader = eventually(T, "node-a synced both tenants", || synced_both(&a)).await;
    assert!(leader.contains("is_leader{cluster=\"test-host\"} 1"), "{leader}");
    assert!(leader.contains("sync_interval_seconds{cluster=\"test-host\",client=\"acme\"} 10"), "{leader}");
    for l in samples(&leader, "state_sync_lag_seconds") {
        let v: f64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("lag value");
        assert!(v < 60.0, "{l}");
    }
    assert!(leader.contains("conflicts_detected_total{cluster=\"test-host\",client=\"acme\""), "{leader}");
    let b = Daemon::start(&env, "node-b", &fast);
    b.wait_up(T).await;
    a.signal(libc::SIGSTOP);
    let new_leader = eventually(T, "node-b took over and synced both", || synced_both(&b)).await;
    assert!(new_leader.contains("is_leader{cluster=\"test-host\"} 1"), "{new_leader}");
    a.signal(libc::SIGCONT);
    let ar = &a;
    let former = eventually(T, "node-a resumed as a standby", || async move {
        let h = ar.get_json("/health").await?;
        (h["is_leader"] == false).then_some(())?;
        ar.get_text("/metrics").await
    })
    .await;
    assert!(former.contains("is_leader{cluster=\"test-host\"} 0"), "{former}");
    assert!(samples(&former, "state_sync_lag_seconds").is_empty(), "a former leader exports no lag: {former}");
    assert!(samples(&former, "sync_interval_seconds").is_empty(), "{former}");
    // Deleting a tenant drops its series (within a spec poll).
    common::ok(&env.ctl(&["delete", "client", "beta", "--force"]));
    let br = &b;
    eventually(T, "beta's lag series gone", || async move {
        let m = br.get_text("/metrics").await?;
        let lag = samples(&m, "state_sync_lag_seconds");
        (lag.len() == 1 && lag[0].contains("client=\"acme\"")).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The docs name only metrics (and labels) owsyncd exports

/// Code spans in the docs that look like metrics but are fields of `/health`.
const NOT_METRICS: &[&str] = &["uptime_seconds"];

/// How metric names end (a gauge without such an ending is recognised in a metric table
/// of the docs, or by its `{labels}`).
const METRIC_ENDINGS: &[&str] = &["_total", "_seconds", "_bucket", "_sum", "_count"];

/// `state_cache_{hits,misses}_total` -> both names; anything else as it is.
fn expand_alternatives(name: &str) -> Vec<String> {
    match (name.find('{'), name.find('}')) {
        (Some(a), Some(b)) if a < b => {
            name[a + 1..b].split(',').map(|alt| format!("{}{}{}", &name[..a], alt.trim(), &name[b + 1..])).collect()
        }
        _ => vec![name.to_string()],
    }
}

/// A code span as (metric names, label names) when it names a metric: `name`,
/// `name{label,...}` or `a_{x,y}_b`; `in_table` says it is the first column of a metric table.
fn metric_span(span: &str, in_table: bool) -> Option<(Vec<String>, Vec<String>)> {
    let (name, labels) = match span.strip_suffix('}').and_then(|s| s.rsplit_once('{')) {
        Some((n, l)) if !n.ends_with('_') => (n, l.split(',').map(|l| l.trim().to_string()).collect()),
        _ => (span, Vec::new()),
    };
    let names = expand_alternatives(name);
    let snake = |n: &String| {
        n.starts_with(|c: char| c.is_ascii_lowercase())
            && n.contains('_')
            && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    if !names.iter().all(snake) || names.iter().any(|n| NOT_METRICS.contains(&n.as_str())) {
        return None;
    }
    let looks_like = names.iter().all(|n| METRIC_ENDINGS.iter().any(|e| n.ends_with(e)));
    (in_table || !labels.is_empty() || looks_like).then_some((names, labels))
}

/// Backticked spans of a markdown line.
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// Label names of a family: of its series, and of a histogram's `_bucket` (less `le`).
fn family_labels(exported: &Exported, name: &str) -> Option<BTreeSet<String>> {
    if let Some(l) = exported.series.get(name) {
        return Some(l.clone());
    }
    exported.families.contains(name).then(|| {
        exported
            .series
            .iter()
            .filter(|(s, _)| s.strip_prefix(name).is_some_and(|r| r.starts_with('_')))
            .flat_map(|(_, l)| l.iter().filter(|l| *l != "le").cloned())
            .collect()
    })
}

#[test]
fn docs_name_only_exported_metrics_and_labels() {
    let exported = exported_metrics();
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(root().join("README.md"));
    files.sort();
    let (mut named, mut wrong) = (BTreeSet::new(), Vec::new());
    for f in files {
        let origin = f.strip_prefix(root()).expect("in the repository").display().to_string();
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{origin}: {e}"));
        let (mut in_block, mut in_table) = (false, false);
        for (n, line) in text.lines().enumerate() {
            let at = format!("{origin}:{}", n + 1);
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
            }
            in_table = line.starts_with('|') && (in_table || line.starts_with("| metric |"));
            if in_block || line.starts_with("| metric |") {
                continue;
            }
            let cells: Vec<&str> = line.split(" | ").collect();
            let mut found: Vec<(Vec<String>, Vec<String>)> = Vec::new();
            for (k, cell) in cells.iter().enumerate() {
                for span in code_spans(cell) {
                    if let Some((names, mut labels)) = metric_span(span, in_table && k == 0) {
                        if in_table && let Some(col) = cells.get(2) {
                            // The labels column, less the values in parentheses.
                            let col: String = col.split('(').map(|p| p.split_once(')').map_or(p, |(_, r)| r)).collect();
                            labels.extend(code_spans(&col).iter().map(std::string::ToString::to_string));
                        }
                        found.push((names, labels));
                    }
                }
            }
            for (names, labels) in found {
                for name in names {
                    let Some(have) = family_labels(&exported, &name) else {
                        wrong.push(format!("{at}: {name} is not a metric owsyncd exports"));
                        continue;
                    };
                    for l in labels.iter().filter(|l| !have.contains(*l) && !TARGET_LABELS.contains(&l.as_str())) {
                        wrong.push(format!("{at}: {name} has no label {l} (it has {have:?})"));
                    }
                    named.insert(name);
                }
            }
        }
    }
    assert!(wrong.is_empty(), "the docs name metrics owsyncd does not export:\n{}", wrong.join("\n"));
    for f in &exported.families {
        // A counter's family is named without `_total` (OpenMetrics).
        assert!(
            named.contains(f) || named.contains(&format!("{f}_total")),
            "docs/status.md's metric table does not describe {f}"
        );
    }
}
