//! `owsyncctl verify NAME`: exit 0 when the mirror equals the source, 1 when it differs.

use std::process::ExitCode;

use clap::Args;

use super::common::{CliError, Global, Output};
use crate::store::specs;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub name: String,
    /// How many keys to list per kind of difference and table.
    #[arg(long, default_value_t = 20)]
    pub show: usize,
}

pub async fn verify(g: &Global, a: VerifyArgs) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    let s = specs::get(&pool, &g.cluster, &a.name).await?;
    let report =
        crate::verify::verify(&pool, &g.cluster, &a.name, &s.spec).await.map_err(|e| CliError::msg(e.to_string()))?;
    if g.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        let rows: Vec<Vec<String>> = report
            .tables
            .iter()
            .map(|t| {
                vec![
                    t.table.clone(),
                    t.source_rows.to_string(),
                    t.mirror_rows.to_string(),
                    t.missing.len().to_string(),
                    t.extra.len().to_string(),
                    t.differing.len().to_string(),
                    t.quarantined.to_string(),
                    if t.is_equal() { "equal".into() } else { "DIFFERS".into() },
                ]
            })
            .collect();
        print!(
            "{}",
            super::get::table(
                &["TABLE", "SOURCE", "MIRROR", "MISSING", "EXTRA", "DIFFERING", "QUARANTINED", ""],
                &rows
            )
        );
        for t in report.tables.iter().filter(|t| !t.is_equal()) {
            for k in t.missing.iter().take(a.show) {
                println!("{}: row {k} is missing from the mirror", t.table);
            }
            for k in t.extra.iter().take(a.show) {
                println!("{}: row {k} is in the mirror but not in the source", t.table);
            }
            for (k, cols) in t.differing.iter().take(a.show) {
                println!(
                    "{}: row {k} differs in {}",
                    t.table,
                    if cols.is_empty() { "?".into() } else { cols.join(", ") }
                );
            }
        }
    }
    let differing = report.tables.iter().filter(|t| !t.is_equal()).count();
    if differing == 0 {
        eprintln!("clientsync/{}: mirror equals source ({} tables)", a.name, report.tables.len());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("clientsync/{}: {differing} of {} tables differ", a.name, report.tables.len());
        Ok(ExitCode::from(1))
    }
}
