//! `owsyncctl deletions approve NAME`: lets the next sync apply the deletions the guard
//! holds (`DeletionsHeld`), exactly those: a durable approval, like `trigger`.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::common::{CliError, Global};
use crate::store::{guard, requests, specs};
use crate::sync::guard::Plan;

#[derive(Debug, Subcommand)]
pub enum DeletionsCommand {
    /// Let the next sync apply the deletions the guard holds (and no more), then sync.
    Approve(ApproveArgs),
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The tenant (ClientSync name).
    pub name: String,
}

pub async fn run(g: &Global, c: DeletionsCommand) -> Result<ExitCode, CliError> {
    match c {
        DeletionsCommand::Approve(a) => approve(g, a).await,
    }
}

async fn approve(g: &Global, a: ApproveArgs) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    specs::get(&pool, &g.cluster, &a.name).await?;
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .map_err(|e| CliError::msg(format!("read the database role: {e}")))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let by = format!("{role}@{} (owsyncctl)", host.trim());
    let Some(doc) = guard::approve(&pool, &g.cluster, &a.name, &by).await? else {
        eprintln!("error: clientsync/{}: no deletions are held; nothing to approve", a.name);
        return Ok(ExitCode::from(1));
    };
    let plan: Option<Plan> = serde_json::from_value(doc).ok();
    match &plan {
        Some(p) if p.tables.is_empty() => {
            println!(
                "clientsync/{}: approved ({}): the next sync takes the new source as it is",
                a.name,
                p.reason.as_str()
            );
        }
        Some(p) => {
            let tables: Vec<String> =
                p.tables.iter().map(|t| format!("{} {} of {} rows", t.table, t.deleting(), t.live)).collect();
            println!("clientsync/{}: approved ({}): {}", a.name, p.reason.as_str(), tables.join(", "));
        }
        None => println!("clientsync/{}: approved", a.name),
    }
    let id = requests::file(&pool, &g.cluster, &a.name, &by).await?;
    println!(
        "sync requested ({id}); the approval covers these deletions only: a sync that would delete more holds again"
    );
    Ok(ExitCode::SUCCESS)
}
