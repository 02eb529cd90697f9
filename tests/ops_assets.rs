//! Operations assets checked against the code: the Grafana dashboard and alert rules use
//! only metrics and labels owsyncd exports, the GitOps hosts apply and diff clean, and
//! every `owsyncctl`/`owsyncd` command line in the operator guide exists.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo::{clientsync_sources, read, root, yaml};
use serde_json::Value;

const GITOPS_HOSTS: &str = "manifests/gitops/hosts";

#[derive(Debug, Default)]
struct Exported {
    /// Series name -> label names.
    series: BTreeMap<String, BTreeSet<String>>,
}

/// What owsyncd exports, read from src/metrics.rs as text: `registry.register("name",
/// help, var.clone())` with `let var = Family::<Labels, Counter|Gauge|Histogram>...`.
/// prometheus-client appends `_total` to counters; histograms give `_bucket` (with `le`),
/// `_sum` and `_count`.
fn exported_metrics() -> Exported {
    let text = read("src/metrics.rs");
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut structs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for part in flat.split("pub struct ").skip(1) {
        let name = part.split([' ', '{']).next().unwrap().to_string();
        let body = part.split_once('{').map(|(_, b)| b.split('}').next().unwrap()).unwrap_or("");
        let fields = body
            .split(',')
            .filter_map(|f| f.trim().strip_prefix("pub ").and_then(|f| f.split(':').next()))
            .map(|f| f.trim().to_string())
            .collect();
        structs.insert(name, fields);
    }
    let mut out = Exported::default();
    for call in flat.split("registry.register(").skip(1) {
        let name = call.split('"').nth(1).expect("metric name").to_string();
        let args = call.split(".clone()").next().unwrap();
        let var = args.rsplit([',', ' ']).next().unwrap().trim().to_string();
        let decl = flat
            .split(&format!("let {var} = "))
            .nth(1)
            .unwrap_or_else(|| panic!("src/metrics.rs: no `let {var} = ` for metric {name}"));
        let decl = decl.split("; ").next().unwrap();
        let labels = decl
            .split("Family::<")
            .nth(1)
            .map(|r| r.split(',').next().unwrap().trim().to_string())
            .map(|s| structs.get(&s).cloned().unwrap_or_else(|| panic!("labels struct {s}")))
            .unwrap_or_default();
        if decl.contains("Histogram") {
            let mut with_le = labels.clone();
            with_le.insert("le".into());
            out.series.insert(format!("{name}_bucket"), with_le);
            out.series.insert(format!("{name}_sum"), labels.clone());
            out.series.insert(format!("{name}_count"), labels);
        } else if decl.contains("Counter") {
            out.series.insert(format!("{name}_total"), labels);
        } else if decl.contains("Gauge") {
            out.series.insert(name, labels);
        } else {
            panic!("src/metrics.rs: cannot tell the type of {name} from {decl:?}");
        }
    }
    assert!(out.series.len() >= 10, "src/metrics.rs parsed to too few metrics: {:?}", out.series.keys());
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
    let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
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
}

// ---------------------------------------------------------------------------------------
// Documentation and CI snippets name only commands and flags that exist

/// Subcommands and long/short flags of `owsyncctl <path...>` from its --help.
fn help(bin: &str, path: &[String]) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(bin).args(path).arg("--help").output().expect("--help");
    assert!(out.status.success(), "{bin} {path:?} --help failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut subs = BTreeSet::new();
    let mut flags = BTreeSet::new();
    let mut in_commands = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if !line.starts_with(' ') {
            in_commands = false;
        }
        let t = line.trim_start();
        if in_commands && let Some(w) = t.split_whitespace().next() {
            subs.insert(w.to_string());
        }
        if t.starts_with('-') {
            for w in t.split([' ', ',']).filter(|w| w.starts_with('-')) {
                flags.insert(w.split(['=', '<']).next().unwrap().to_string());
            }
        }
    }
    (subs, flags)
}

/// Checks a command line like `owsyncctl apply -R -f dir --dry-run`.
fn check_command(bin_name: &str, words: &[String], origin: &str) {
    let bin = match bin_name {
        "owsyncctl" => env!("CARGO_BIN_EXE_owsyncctl"),
        _ => env!("CARGO_BIN_EXE_owsyncd"),
    };
    let mut path: Vec<String> = Vec::new();
    let (mut subs, mut flags) = help(bin, &path);
    for w in words {
        if w.starts_with('-') {
            let flag = w.split('=').next().unwrap();
            assert!(flags.contains(flag), "{origin}: `{bin_name} {}` has no flag {flag}", path.join(" "));
        } else if subs.contains(w) {
            path.push(w.clone());
            (subs, flags) = help(bin, &path);
        }
    }
    if bin_name == "owsyncctl" {
        assert!(!path.is_empty(), "{origin}: `owsyncctl {}` names no subcommand", words.join(" "));
    }
}

/// `owsyncctl ...` / `owsyncd ...` invocations in a line of shell.
fn invocations(line: &str) -> Vec<(String, Vec<String>)> {
    let line = line.split(" #").next().unwrap();
    let mut out = Vec::new();
    for bin in ["owsyncctl", "owsyncd"] {
        for (i, _) in line.match_indices(bin) {
            let before = line[..i].chars().last();
            let after = line[i + bin.len()..].chars().next();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '/' || c == '_' || c == '.')
                || after != Some(' ')
            {
                continue;
            }
            let rest = &line[i + bin.len()..];
            let end = rest.find(['|', ';', '&', ')', '`', '>', '<']).unwrap_or(rest.len());
            let words: Vec<String> = rest[..end].split_whitespace().map(|w| w.trim_matches('"').to_string()).collect();
            if words.first().is_some_and(|w| w == "..." || w == "…") {
                continue; // a placeholder: "owsyncctl ..."
            }
            out.push((bin.to_string(), words));
        }
    }
    out
}

#[test]
fn docs_and_ci_name_only_commands_and_flags_that_exist() {
    let mut files: Vec<PathBuf> = Vec::new();
    let docs = root().join("docs");
    for e in std::fs::read_dir(&docs).expect("docs/") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "md") {
            files.push(p);
        }
    }
    assert!(files.len() >= 3, "the operator guide is missing: {files:?}");
    for rel in ["manifests/gitops/README.md", "manifests/gitops/ci/github-actions.yml", "docker/README.md"] {
        files.push(root().join(rel));
    }
    for d in std::fs::read_dir(root().join(GITOPS_HOSTS)).unwrap() {
        files.push(d.unwrap().path().join("README.md"));
    }
    let mut checked = 0;
    for f in files {
        let origin = f.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{origin}: {e}"));
        let is_md = origin.ends_with(".md");
        // Units to check, each with its line and whether it describes a plan: joined shell
        // lines of code blocks (and of the CI file), and prose paragraphs (or list items)
        // for their inline `owsyncctl ...` spans.
        let mut units: Vec<(usize, String, bool)> = Vec::new();
        let mut in_block = false;
        let mut planned_section = false; // under a heading that says "planned"/"not built"
        let mut logical = String::new();
        let mut para = String::new();
        let mut para_line = 0;
        let says_planned = |t: &str| t.contains("planned") || t.contains("not built");
        let flush = |para: &mut String, line: usize, section: bool, units: &mut Vec<(usize, String, bool)>| {
            if !para.is_empty() {
                let planned = section || says_planned(para);
                for (k, span) in para.split('`').enumerate() {
                    if k % 2 == 1 && (span.starts_with("owsyncctl ") || span.starts_with("owsyncd ")) {
                        units.push((line, span.to_string(), planned));
                    }
                }
                para.clear();
            }
        };
        for (n, raw) in text.lines().enumerate() {
            let t = raw.trim();
            if is_md && t.starts_with("```") {
                flush(&mut para, para_line, planned_section, &mut units);
                in_block = !in_block;
                continue;
            }
            if !is_md || in_block {
                if let Some(body) = t.strip_suffix('\\') {
                    logical.push_str(body);
                    logical.push(' ');
                    continue;
                }
                logical.push_str(t);
                let line = std::mem::take(&mut logical);
                if !line.starts_with('#') {
                    let planned = planned_section || says_planned(&line);
                    units.push((n + 1, line, planned));
                }
                continue;
            }
            let item = t.starts_with("* ")
                || t.starts_with("- ")
                || t.split_once(". ").is_some_and(|(d, _)| d.parse::<u32>().is_ok());
            if t.is_empty() || t.starts_with('#') || t.starts_with('|') || item {
                flush(&mut para, para_line, planned_section, &mut units);
            }
            if t.starts_with('#') {
                let h = t.to_ascii_lowercase();
                planned_section = says_planned(&h);
                continue;
            }
            if !t.is_empty() {
                if para.is_empty() {
                    para_line = n + 1;
                }
                para.push_str(t);
                para.push(' ');
                if t.starts_with('|') {
                    flush(&mut para, para_line, planned_section, &mut units);
                }
            }
        }
        flush(&mut para, para_line, planned_section, &mut units);
        for (line, unit, planned) in units {
            if planned {
                continue;
            }
            for (bin, words) in invocations(&unit) {
                check_command(&bin, &words, &format!("{origin}:{line}"));
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "expected the guide's many command lines, checked {checked}");
}

// ---------------------------------------------------------------------------------------
// GitOps layout: applies, then diffs clean

#[tokio::test(flavor = "multi_thread")]
async fn gitops_hosts_apply_and_then_diff_clean() {
    let env = common::TestEnv::new("gitops").await;
    let hosts = root().join(GITOPS_HOSTS);
    let mut names: Vec<_> = std::fs::read_dir(&hosts).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert!(names.len() >= 2, "a directory per host");
    for dir in names {
        let host = dir.file_name().unwrap().to_str().unwrap().to_string();
        let d = dir.to_str().unwrap();
        let files = clientsync_sources(&dir);
        let diff = env.ctl(&["diff", "-R", "-f", d, "--cluster", &host]);
        assert_eq!(diff.status.code(), Some(1), "{host}: diff before apply shows changes: {}", common::stderr(&diff));
        let dry = common::ok(&env.ctl(&["apply", "-R", "-f", d, "--cluster", &host, "--dry-run"]));
        assert_eq!(dry.matches("created").count(), files.len(), "{host}: dry run\n{dry}");
        let applied = common::ok(&env.ctl(&["apply", "-R", "-f", d, "--cluster", &host]));
        assert_eq!(applied.matches("created").count(), files.len(), "{host}: apply\n{applied}");
        let diff = env.ctl(&["diff", "-R", "-f", d, "--cluster", &host]);
        assert_eq!(diff.status.code(), Some(0), "{host}: diff after apply: {}", common::stdout(&diff));
        let again = common::ok(&env.ctl(&["apply", "-R", "-f", d, "--cluster", &host]));
        assert_eq!(again.matches("unchanged").count(), files.len(), "{host}: re-apply\n{again}");
        let list = common::ok(&env.ctl(&["get", "clients", "--cluster", &host, "-o", "json"]));
        for (tenant, _) in &files {
            assert!(list.contains(&format!("\"{tenant}\"")), "{host}: {tenant} missing from get clients:\n{list}");
        }
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn docs_links_resolve() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(root().join("manifests/gitops/README.md"));
    files.push(root().join("docker/README.md"));
    let anchors_of = |p: &Path| -> BTreeSet<String> {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let mut in_block = false;
        let mut out = BTreeSet::new();
        for l in text.lines() {
            if l.trim_start().starts_with("```") {
                in_block = !in_block;
            } else if !in_block && l.starts_with('#') {
                out.insert(anchor(l.trim_start_matches('#')));
            }
        }
        out
    };
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap();
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (file, frag) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() { f.clone() } else { f.parent().unwrap().join(file) };
            assert!(path.exists(), "{}: link to {target}: no such file", f.display());
            if !frag.is_empty() {
                assert!(anchors_of(&path).contains(frag), "{}: link to {target}: no such heading", f.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "expected the guide's cross references, checked {checked}");
}
