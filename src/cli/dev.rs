//! `owsyncctl dev`: the Open WebUI-shaped database generator, for demos, tests and
//! benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::common::CliError;
use crate::fixtures::{self, CreateOptions, JournalMode, MutateOptions, OpKind, SchemaFlavor};

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Create an Open WebUI 0.12.4-shaped webui.db filled with synthetic data.
    GenerateDb {
        path: PathBuf,
        #[arg(long, default_value_t = 5)]
        users: u32,
        #[arg(long, default_value_t = 4)]
        chats_per_user: u32,
        #[arg(long, default_value_t = 4)]
        messages_per_chat: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// fresh | legacy
        #[arg(long, default_value = "fresh")]
        schema: SchemaFlavor,
        /// wal | delete
        #[arg(long, default_value = "wal")]
        journal: JournalMode,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Apply Open WebUI-like changes to a database; prints a JSON summary of what changed.
    MutateDb {
        path: PathBuf,
        #[arg(long, default_value_t = 100)]
        ops: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Comma-separated op names (e.g. append_turn,rename_chat,delete_chat).
        #[arg(long, value_delimiter = ',')]
        only: Option<Vec<OpKind>>,
    },
}

pub async fn run(c: DevCommand) -> Result<ExitCode, CliError> {
    tokio::task::spawn_blocking(move || run_blocking(c))
        .await
        .map_err(|e| CliError::msg(format!("generator task failed: {e}")))?
}

fn run_blocking(c: DevCommand) -> Result<ExitCode, CliError> {
    match c {
        DevCommand::GenerateDb { path, users, chats_per_user, messages_per_chat, seed, schema, journal, force } => {
            let opts = CreateOptions {
                users,
                chats_per_user,
                messages_per_chat,
                seed,
                schema,
                journal,
                force,
                ..Default::default()
            };
            let s = fixtures::create(&path, &opts)?;
            let rows: u64 = s.rows.values().sum();
            println!(
                "created {} ({} schema, {} journal): {} tables, {rows} rows, {:.1} MB in {:.1}s",
                path.display(),
                s.schema,
                s.journal_mode,
                s.rows.len(),
                s.bytes as f64 / 1e6,
                s.seconds
            );
        }
        DevCommand::MutateDb { path, ops, seed, only } => {
            let s = fixtures::mutate(&path, &MutateOptions { ops, seed, only, ..Default::default() })?;
            println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        }
    }
    Ok(ExitCode::SUCCESS)
}
