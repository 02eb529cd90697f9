//! `get`, `describe` and `delete`.

use std::fmt::Write as _;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};

use super::common::{CliError, Global, Output};
use crate::spec::{self, ClientSyncStatus};
use crate::store::{StoreError, conflicts, jobs, specs, status};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Resource {
    #[value(alias = "client", alias = "clientsync", alias = "clientsyncs")]
    Clients,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub resource: Resource,
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    pub resource: Resource,
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub resource: Resource,
    pub name: String,
    /// Delete even though sync is enabled.
    #[arg(long)]
    pub force: bool,
}

pub(super) fn ago(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        None => "-".into(),
        Some(t) => {
            let secs = (now - t).num_seconds().max(0) as u64;
            humantime::format_duration(std::time::Duration::from_secs(secs))
                .to_string()
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join("")
        }
    }
}

/// Renders rows as a left-aligned table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        let _ = writeln!(out, "{}", parts.join("   ").trim_end());
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub async fn get(g: &Global, a: GetArgs) -> Result<ExitCode, CliError> {
    let Resource::Clients = a.resource;
    let pool = g.pool().await?;
    let mut list = specs::list(&pool, &g.cluster).await?;
    if let Some(n) = &a.name {
        list.retain(|s| &s.name == n);
        if list.is_empty() {
            eprintln!("error: clientsync/{n} not found in cluster {}", g.cluster);
            return Ok(ExitCode::from(1));
        }
    }
    let statuses = status::list(&pool, &g.cluster).await?;
    let pending = conflicts::pending_counts(&pool, &g.cluster).await?;
    let resources: Vec<_> = list.iter().map(|s| s.to_resource(statuses.get(&s.name))).collect();
    match g.output {
        Output::Json => {
            let v = if a.name.is_some() {
                serde_json::to_value(&resources[0])
            } else {
                serde_json::to_value(serde_json::json!({"items": resources}))
            };
            println!("{}", serde_json::to_string_pretty(&v.unwrap_or_default()).unwrap_or_default());
        }
        Output::Yaml => {
            for (i, r) in resources.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{}", spec::to_yaml(r));
            }
        }
        Output::Table | Output::Wide => {
            let now = Utc::now();
            let wide = g.output == Output::Wide;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    let st = statuses.get(&s.name).cloned().unwrap_or_default();
                    let mut r = vec![
                        s.name.clone(),
                        s.spec.enabled.to_string(),
                        st.phase.as_str().to_string(),
                        st.last_sync_time.map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
                        ago(st.last_sync_time, now),
                        pending.get(&s.name).copied().unwrap_or(0).to_string(),
                        ago(Some(s.created_at), now),
                    ];
                    if wide {
                        r.push(s.spec.interval.clone());
                        r.push(s.spec.target.schema.clone().unwrap_or_default());
                        r.push(s.spec.source.path.clone());
                    }
                    r
                })
                .collect();
            let mut header = vec!["NAME", "ENABLED", "PHASE", "LAST-SYNC", "LAG", "CONFLICTS", "AGE"];
            if wide {
                header.extend(["INTERVAL", "SCHEMA", "SOURCE"]);
            }
            if rows.is_empty() {
                eprintln!("No clientsyncs found in cluster {}.", g.cluster);
            } else {
                print!("{}", table(&header, &rows));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_status(out: &mut String, st: &ClientSyncStatus) {
    let _ = writeln!(out, "Status:");
    let _ = writeln!(out, "  Phase:                {}", st.phase.as_str());
    let _ = writeln!(out, "  Observed Generation:  {}", st.observed_generation);
    let fmt_t =
        |t: Option<DateTime<Utc>>| t.map_or("-".into(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let _ = writeln!(out, "  Last Sync Time:       {}", fmt_t(st.last_sync_time));
    let _ = writeln!(out, "  Next Sync Time:       {}", fmt_t(st.next_sync_time));
    let _ = writeln!(out, "  Last Sync Duration:   {}", st.last_sync_duration.clone().unwrap_or("-".into()));
    let _ = writeln!(out, "  Consecutive Failures: {}", st.consecutive_failures);
    if let Some(e) = &st.last_error {
        let _ = writeln!(out, "  Last Error:           {e}");
    }
    let _ = writeln!(out, "Conditions:");
    let rows: Vec<Vec<String>> = st
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.last_transition_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                c.message.clone(),
            ]
        })
        .collect();
    for l in table(&["TYPE", "STATUS", "REASON", "LAST-TRANSITION", "MESSAGE"], &rows).lines() {
        let _ = writeln!(out, "  {l}");
    }
    let _ = writeln!(out, "Tables:");
    let rows: Vec<Vec<String>> = st
        .tables
        .iter()
        .map(|(t, ts)| vec![t.clone(), ts.rows.to_string(), ts.quarantined.to_string(), ts.conflicts.to_string()])
        .collect();
    for l in table(&["TABLE", "ROWS", "QUARANTINED", "CONFLICTS"], &rows).lines() {
        let _ = writeln!(out, "  {l}");
    }
}

/// The tenant's conflicts waiting for review (the newest 10).
fn describe_conflicts(out: &mut String, name: &str, open: &[conflicts::Conflict]) {
    let _ = writeln!(
        out,
        "Open Conflicts: {}",
        if open.is_empty() { "<none>".to_string() } else { open.len().to_string() }
    );
    if open.is_empty() {
        return;
    }
    let now = Utc::now();
    let rows: Vec<Vec<String>> = open
        .iter()
        .take(10)
        .map(|c| vec![c.id.to_string(), c.table.clone(), c.row_key.to_string(), ago(Some(c.detected_at), now)])
        .collect();
    for l in table(&["ID", "TABLE", "KEY", "AGE"], &rows).lines() {
        let _ = writeln!(out, "  {l}");
    }
    let _ = writeln!(out, "  (owsyncctl conflicts list {name}; owsyncctl conflicts resolve ID --use source|target)");
}

/// `Ok(None)` (after saying so) when the tenant does not exist: exit code 1, not an error.
fn found(r: Result<specs::StoredSpec, StoreError>) -> Result<Option<specs::StoredSpec>, CliError> {
    match r {
        Ok(s) => Ok(Some(s)),
        Err(e @ StoreError::NotFound { .. }) => {
            eprintln!("error: {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn describe(g: &Global, a: DescribeArgs) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    let Some(s) = found(specs::get(&pool, &g.cluster, &a.name).await)? else { return Ok(ExitCode::from(1)) };
    let st = status::get(&pool, &g.cluster, &a.name).await?;
    let events = jobs::recent_events(&pool, &g.cluster, &a.name, 10).await?;
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", s.name);
    let _ = writeln!(out, "Cluster:      {}", s.cluster);
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(out, "Labels:       {}", if labels.is_empty() { "<none>".into() } else { labels.join(",") });
    let _ = writeln!(out, "Generation:   {}", s.generation);
    let _ = writeln!(out, "Created:      {}", s.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let _ = writeln!(out, "Spec:");
    for l in spec::to_yaml(&s.spec).lines() {
        let _ = writeln!(out, "  {l}");
    }
    match &st {
        Some(st) => describe_status(&mut out, st),
        None => {
            let _ = writeln!(out, "Status:       <none> (no owsyncd leader has reconciled it yet)");
        }
    }
    let open = conflicts::list(&pool, &g.cluster, Some(&a.name), false).await?;
    describe_conflicts(&mut out, &a.name, &open);
    let _ = writeln!(out, "Events:");
    if events.is_empty() {
        let _ = writeln!(out, "  <none>");
    } else {
        let now = Utc::now();
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    e.type_.clone(),
                    e.reason.clone(),
                    ago(Some(e.time), now),
                    e.node_id.clone().unwrap_or_default(),
                    e.message.clone(),
                ]
            })
            .collect();
        for l in table(&["TYPE", "REASON", "AGE", "FROM", "MESSAGE"], &rows).lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(g: &Global, a: DeleteArgs) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    let Some(s) = found(specs::get(&pool, &g.cluster, &a.name).await)? else { return Ok(ExitCode::from(1)) };
    if s.spec.enabled && !a.force {
        eprintln!(
            "error: clientsync/{} has sync enabled; disable it first (set spec.enabled: false and apply), or pass --force",
            a.name
        );
        return Ok(ExitCode::from(1));
    }
    specs::delete(&pool, &g.cluster, &a.name).await?;
    println!("clientsync/{} deleted (its mirror schema {} is kept)", a.name, s.spec.target.schema.unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
