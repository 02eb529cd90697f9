//! `conflicts list [NAME]` and `conflicts resolve ID --use source|target`: the
//! manual-review queue of rows changed both in the source and in PostgreSQL.

use std::process::ExitCode;

use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};

use super::common::{CliError, Global, Output};
use crate::controller::conditions;
use crate::spec;
use crate::store::{self, conflicts, specs, status};

#[derive(Debug, Subcommand)]
pub enum ConflictsCommand {
    /// List conflicts (pending ones first; --all includes resolved ones).
    List(ListArgs),
    /// Resolve a pending conflict: write the chosen version to the mirror row.
    Resolve(ResolveArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this tenant's conflicts.
    pub name: Option<String>,
    /// Include resolved conflicts.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    Source,
    Target,
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// The conflict's ID (from `conflicts list`).
    pub id: i64,
    /// Which version the mirror row takes: the SQLite source's or PostgreSQL's.
    #[arg(long = "use", value_enum)]
    pub use_: Side,
}

pub async fn run(g: &Global, c: ConflictsCommand) -> Result<ExitCode, CliError> {
    match c {
        ConflictsCommand::List(a) => list(g, a).await,
        ConflictsCommand::Resolve(a) => resolve(g, a).await,
    }
}

fn one_line(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) if m.len() == 1 => m.values().next().map_or_else(String::new, |x| match x {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        other => other.to_string(),
    }
}

async fn list(g: &Global, a: ListArgs) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    if let Some(n) = &a.name {
        specs::get(&pool, &g.cluster, n).await?;
    }
    let items = conflicts::list(&pool, &g.cluster, a.name.as_deref(), a.all).await?;
    match g.output {
        Output::Json => {
            let v = serde_json::json!({ "items": items });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Yaml => {
            let v = serde_json::json!({ "items": items });
            print!("{}", spec::to_yaml(&v));
        }
        Output::Table | Output::Wide => {
            if items.is_empty() {
                let whose =
                    a.name.as_deref().map_or_else(|| format!("cluster {}", g.cluster), |n| format!("clientsync/{n}"));
                let what = if a.all { "no conflicts" } else { "no pending conflicts (--all shows resolved ones)" };
                eprintln!("{whose}: {what}");
                return Ok(ExitCode::SUCCESS);
            }
            let now = Utc::now();
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|c| {
                    let mut r = vec![
                        c.id.to_string(),
                        c.client.clone(),
                        c.table.clone(),
                        one_line(&c.row_key),
                        c.strategy.clone(),
                        c.resolution.clone(),
                        super::get::ago(Some(c.detected_at), now),
                    ];
                    if g.output == Output::Wide {
                        r.push(c.resolved_by.clone().unwrap_or_else(|| "-".into()));
                    }
                    r
                })
                .collect();
            let mut header = vec!["ID", "CLIENT", "TABLE", "KEY", "STRATEGY", "RESOLUTION", "AGE"];
            if g.output == Output::Wide {
                header.push("RESOLVED BY");
            }
            print!("{}", super::get::table(&header, &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Who resolves, as recorded in `conflict_log.resolved_by`: the operating-system user
/// (`$USER`, `$LOGNAME`), or when neither is set (cron, containers) the database role;
/// with the host name either way: `alice@ops-1 (owsyncctl)`.
async fn who(pool: &sqlx::PgPool) -> String {
    let os_user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok().filter(|u| !u.is_empty());
    let user = match os_user {
        Some(u) => u,
        None => sqlx::query_scalar::<_, String>("SELECT current_user::text")
            .fetch_one(pool)
            .await
            .map_or_else(|_| "unknown".into(), |r| format!("role {r}")),
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() { format!("{user} (owsyncctl)") } else { format!("{user}@{host} (owsyncctl)") }
}

async fn resolve(g: &Global, a: ResolveArgs) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    let use_source = a.use_ == Side::Source;
    // The tenant (for its schema) comes from the entry itself.
    let Some(entry) = conflicts::get(&pool, &g.cluster, a.id).await? else {
        return Err(CliError::msg(
            conflicts::ConflictError::NotFound { cluster: g.cluster.clone(), id: a.id }.to_string(),
        ));
    };
    let s = specs::get(&pool, &g.cluster, &entry.client).await?;
    let schema = s.spec.mirror_schema(&entry.client);
    let previous = status::get(&pool, &g.cluster, &entry.client).await?;
    let by = who(&pool).await;
    let mut tx = store::begin(&pool, &g.cluster).await?;
    let done = conflicts::resolve(&mut tx, &g.cluster, &schema, a.id, use_source, &by)
        .await
        .map_err(|e| CliError::msg(e.to_string()))?;
    let pending = conflicts::pending_count(&mut tx, &g.cluster, &entry.client).await?;
    if let Some(mut st) = previous {
        let generation = st.observed_generation;
        conditions::conflicts_pending(&mut st, &entry.client, pending, generation, Utc::now());
        status::write(&mut tx, &g.cluster, &entry.client, &st, None).await?;
    }
    tx.commit().await.map_err(|e| store::StoreError::Db { context: "commit the resolution".into(), source: e })?;
    println!(
        "conflict/{} resolved: clientsync/{} table {} row {} now holds the {} version ({} pending)",
        done.id,
        done.client,
        done.table,
        one_line(&done.row_key),
        if use_source { "source" } else { "target" },
        pending
    );
    Ok(ExitCode::SUCCESS)
}
