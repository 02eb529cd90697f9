//! `owsyncctl`: the declarative command line (apply, diff, get, describe, delete, ...).

mod add_role;
mod apply;
mod cluster;
mod common;
mod conflicts;
mod deletions;
mod demo;
mod dev;
mod doctor;
mod evacuate;
mod get;
mod in_use;
mod ops;
mod progress;
mod restore;
mod verify;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use common::{CliError, Global, Output, read_secret};

#[derive(Debug, Parser)]
#[command(name = "owsyncctl", version, about = "Declaratively mirror Open WebUI SQLite tenants into PostgreSQL")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade sync_metadata, the sync_service role, grants and RLS (as admin).
    Migrate(ops::MigrateArgs),
    /// Apply ClientSync documents from files or directories (all or nothing).
    Apply(apply::ApplyArgs),
    /// Show what apply would change, as a unified diff (exit 0 none, 1 differences, 2 error).
    Diff(apply::DiffArgs),
    /// List tenants, or show one.
    Get(get::GetArgs),
    /// Show a tenant's spec, status, conditions and recent events.
    Describe(get::DescribeArgs),
    /// Delete a tenant's ClientSync (refuses while enabled unless --force; the mirror is kept).
    Delete(get::DeleteArgs),
    /// Ask the leader to sync a tenant now (a durable request; works against any replica's DB).
    Trigger(ops::TriggerArgs),
    /// Block until a tenant meets a condition (exit 0 met, 1 timeout).
    Wait(watch::WaitArgs),
    /// The manual-review queue: rows changed both in the source and in PostgreSQL.
    #[command(subcommand)]
    Conflicts(conflicts::ConflictsCommand),
    /// The cluster's leader, epoch and replicas; deregistering a host; stale hosts.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Move a tenant to another cluster (admin; spec, status and state rows in one transaction).
    Move(cluster::MoveArgs),
    /// Approve deletions the deletion guard holds (`DeletionsHeld`).
    #[command(subcommand)]
    Deletions(deletions::DeletionsCommand),
    /// Run one reconcile of a tenant in this process (operators' debug tool).
    Sync(ops::SyncArgs),
    /// Prove the mirror equals the source, row by row (exit 0 equal, 1 differs).
    Verify(verify::VerifyArgs),
    /// Rebuild a tenant's SQLite database from its mirror (disaster recovery).
    Restore(restore::RestoreArgs),
    /// Print the JSON Schema of a kind.
    Schema(ops::SchemaArgs),
    /// Check that a database URL is usable by owsyncd, step by step (exit 0 usable, 1 not).
    Doctor(doctor::DoctorArgs),
    /// Run a complete local demo: throwaway PostgreSQL, a generated tenant, owsyncd.
    Demo(demo::DemoArgs),
    /// Developer tools: generate and mutate Open WebUI-shaped databases.
    #[command(subcommand)]
    Dev(dev::DevCommand),
}

/// Runs the command line; the exit code is part of the contract (GitOps reads it).
pub async fn run(cli: Cli) -> ExitCode {
    let diff_like = matches!(cli.command, Command::Diff(_));
    let result = match cli.command {
        Command::Migrate(a) => ops::migrate(&cli.global, a).await,
        Command::Apply(a) => apply::apply(&cli.global, a).await,
        Command::Diff(a) => apply::diff(&cli.global, a).await,
        Command::Get(a) => get::get(&cli.global, a).await,
        Command::Describe(a) => get::describe(&cli.global, a).await,
        Command::Delete(a) => get::delete(&cli.global, a).await,
        Command::Sync(a) => ops::sync(&cli.global, a).await,
        Command::Trigger(a) => ops::trigger(&cli.global, a).await,
        Command::Wait(a) => watch::wait(&cli.global, a).await,
        Command::Cluster(c) => cluster::cluster(&cli.global, c).await,
        Command::Move(a) => cluster::move_tenant(&cli.global, a).await,
        Command::Conflicts(c) => conflicts::run(&cli.global, c).await,
        Command::Deletions(c) => deletions::run(&cli.global, c).await,
        Command::Schema(a) => ops::schema(a),
        Command::Verify(a) => verify::verify(&cli.global, a).await,
        Command::Restore(a) => restore::restore(&cli.global, a).await,
        Command::Doctor(a) => doctor::doctor(&cli.global, a).await,
        Command::Demo(a) => demo::demo(a).await,
        Command::Dev(c) => dev::run(c).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            if diff_like { ExitCode::from(2) } else { ExitCode::from(1) }
        }
    }
}
