//! `apply` and `diff`: read every document, validate them all, then act.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::common::{CliError, Global};
use crate::spec::{self, ClientSync, Document};
use crate::store::{inventory, specs};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// File or directory of ClientSync YAML (repeatable; `-` reads stdin).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Recurse into directories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Validate and show what would happen (prunes included), in a transaction that is rolled back.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub inv: PruneArgs,
}

/// The inventory and pruning flags `apply` and `diff` share.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Also delete (like `owsyncctl delete`; mirrors kept) the tenants previously applied
    /// from the same inventory that these files no longer have (diff: show them).
    #[arg(long)]
    pub prune: bool,
    /// The inventory (ApplySet) id recorded on every applied tenant; default: the last
    /// path components of the -f arguments (e.g. `hosts/prod-host-1` -> `prod-host-1`).
    #[arg(long, value_name = "ID")]
    pub inventory: Option<String>,
    /// With --prune: prune only tenants that also carry these labels (`k=v,k2=v2`); narrows
    /// the inventory, never replaces it.
    #[arg(short = 'l', long = "selector", value_name = "k=v,...", requires = "prune", value_parser = parse_selector)]
    pub selector: Option<BTreeMap<String, String>>,
}

/// `k=v,k2=v2` (equality only).
fn parse_selector(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("{part:?} is not k=v"));
        };
        let (k, v) = (k.trim().trim_end_matches('='), v.trim());
        if k.is_empty() {
            return Err(format!("{part:?} has no label key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    if out.is_empty() {
        return Err("empty selector".into());
    }
    Ok(out)
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[arg(short = 'R', long)]
    pub recursive: bool,
    #[command(flatten)]
    pub inv: PruneArgs,
}

/// Files skipped without a warning in a directory: Markdown (a host's README.md) and
/// hidden files (`.gitkeep`).
fn is_documentation(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "md")
        || p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

fn yaml_files(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let io = |source| CliError::Io { path: dir.display().to_string(), source };
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(io)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recursive {
                yaml_files(&p, recursive, out)?;
            }
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        } else if !is_documentation(&p) {
            // Not an error (a directory may hold other files), but never silent: a tenant
            // written as `.json` would otherwise look applied.
            eprintln!("warning: {}: skipped: apply reads *.yaml and *.yml files only", p.display());
        }
    }
    Ok(())
}

/// Reads, parses and validates every document; all errors are reported together.
pub fn load_all(files: &[PathBuf], recursive: bool, cluster: &str) -> Result<Vec<(Document, ClientSync)>, CliError> {
    let mut paths = Vec::new();
    for f in files {
        if f.as_os_str() == "-" {
            paths.push(f.clone());
        } else if f.is_dir() {
            yaml_files(f, recursive, &mut paths)?;
        } else if f.exists() {
            paths.push(f.clone());
        } else {
            return Err(CliError::msg(format!("{}: no such file or directory", f.display())));
        }
    }
    if paths.is_empty() {
        return Err(CliError::msg(
            "no YAML files found (directories are read for *.yaml and *.yml; add -R to recurse)",
        ));
    }
    let mut errors = Vec::new();
    let mut docs = Vec::new();
    for p in &paths {
        let name = p.display().to_string();
        let text = if name == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|source| CliError::Io { path: name.clone(), source })?;
            s
        } else {
            std::fs::read_to_string(p).map_err(|source| CliError::Io { path: name.clone(), source })?
        };
        match spec::parse_documents(&name, &text) {
            Ok(d) => docs.extend(d),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut schemas = std::collections::BTreeMap::new();
    for d in docs {
        match spec::normalize(&d.doc, cluster) {
            Ok(n) => {
                let key = (n.metadata.cluster.clone().unwrap_or_default(), n.metadata.name.clone());
                if !seen.insert(key.clone()) {
                    errors.push(format!(
                        "{}:{}: clientsync/{} (cluster {}) appears more than once",
                        d.file, d.line, key.1, key.0
                    ));
                } else if let Some(schema) = n.spec.target.schema.clone()
                    && let Some(other) = schemas.insert(schema.clone(), format!("{}/{}", key.0, key.1))
                {
                    errors.push(format!(
                        "{}:{}: clientsync/{}: spec.target.schema: {schema:?} is also the mirror of clientsync {other} in this apply",
                        d.file, d.line, key.1
                    ));
                }
                out.push((d, n));
            }
            Err(errs) => {
                for e in errs {
                    errors.push(format!("{}:{}: clientsync/{}: {e}", d.file, d.line, d.doc.metadata.name));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(CliError::msg(format!(
            "{} invalid; nothing was applied:\n  {}",
            if errors.len() == 1 { "1 problem".to_string() } else { format!("{} problems", errors.len()) },
            errors.join("\n  ")
        )));
    }
    Ok(out)
}

/// The inventory id of an apply: `--inventory`, else the last components of the `-f`
/// paths (sorted, joined with `+`), so where the repository is checked out does not
/// matter. `None` for documents from stdin without `--inventory`.
fn inventory_id(files: &[PathBuf], a: &PruneArgs) -> Result<Option<String>, CliError> {
    if let Some(id) = &a.inventory {
        if id.is_empty() || id.len() > 253 || id.chars().any(char::is_control) {
            return Err(CliError::msg(format!("--inventory {id:?}: give 1 to 253 printable characters")));
        }
        return Ok(Some(id.clone()));
    }
    let mut names = BTreeSet::new();
    for f in files {
        if f.as_os_str() == "-" {
            return Ok(None);
        }
        let name = match f.file_name() {
            Some(n) => n.to_string_lossy().into_owned(),
            None => std::fs::canonicalize(f)
                .ok()
                .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| f.display().to_string()),
        };
        names.insert(name);
    }
    Ok(Some(names.into_iter().collect::<Vec<_>>().join("+")))
}

pub async fn apply(g: &Global, a: ApplyArgs) -> Result<ExitCode, CliError> {
    let docs = load_all(&a.files, a.recursive, &g.cluster)?;
    let inventory_id = inventory_id(&a.files, &a.inv)?;
    if a.inv.prune && inventory_id.is_none() {
        return Err(CliError::msg(
            "--prune with documents from stdin needs --inventory ID (which earlier apply the documents belong to); nothing was applied",
        ));
    }
    let pool = g.pool().await?;
    let mut tx = pool.begin().await.map_err(|e| CliError::msg(format!("begin transaction: {e}")))?;
    let mut lines = Vec::new();
    let dry = if a.dry_run { " (dry run)" } else { "" };
    let applied = applied_by_cluster(g, &docs);
    for (d, n) in &docs {
        let outcome = specs::apply(&mut tx, n)
            .await
            .map_err(|e| CliError::msg(format!("{}:{}: {e}; nothing was applied", d.file, d.line)))?;
        let cluster = n.metadata.cluster.clone().unwrap_or_default();
        if let Some(id) = &inventory_id {
            inventory::claim(&mut tx, &cluster, &n.metadata.name, id)
                .await
                .map_err(|e| CliError::msg(format!("{e}; nothing was applied")))?;
        }
        lines.push(format!("clientsync/{} {}{dry}", n.metadata.name, outcome.as_str()));
    }
    if let Some(id) = &inventory_id {
        let fail = |e: crate::store::StoreError| CliError::msg(format!("{e}; nothing was applied"));
        for (cluster, keep) in &applied {
            if keep.is_empty() && !a.inv.prune {
                continue;
            }
            if a.inv.prune {
                for (name, enabled) in inventory::prune_candidates(&mut tx, cluster, id, keep, a.inv.selector.as_ref())
                    .await
                    .map_err(fail)?
                {
                    inventory::prune(&mut tx, cluster, &name).await.map_err(fail)?;
                    let was = if enabled { ", was enabled" } else { "" };
                    lines.push(format!("clientsync/{name} pruned{dry} (inventory {id}{was}; its mirror is kept)"));
                }
            }
            let members = inventory::record(&mut tx, cluster, id).await.map_err(fail)?;
            if a.inv.prune {
                lines.push(format!("inventory {id} of cluster {cluster}: {} tenants{dry}", members.len()));
            }
        }
    }
    if a.dry_run {
        tx.rollback().await.map_err(|e| CliError::msg(format!("roll back: {e}")))?;
    } else {
        tx.commit().await.map_err(|e| CliError::msg(format!("commit: {e}; nothing was applied")))?;
    }
    for l in lines {
        println!("{l}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn diff(g: &Global, a: DiffArgs) -> Result<ExitCode, CliError> {
    let docs = load_all(&a.files, a.recursive, &g.cluster)?;
    let pool = g.pool().await?;
    let mut differs = false;
    for (_, n) in &docs {
        let cluster = n.metadata.cluster.clone().unwrap_or_default();
        let live = specs::find(&pool, &cluster, &n.metadata.name).await?;
        let old = live.map(|s| spec::to_yaml(&s.to_applied())).unwrap_or_default();
        let new = spec::to_yaml(n);
        if old == new {
            continue;
        }
        differs = true;
        let name = format!("clientsync/{}", n.metadata.name);
        let text = similar::TextDiff::from_lines(&old, &new)
            .unified_diff()
            .context_radius(3)
            .header(&format!("live/{name}"), &format!("desired/{name}"))
            .to_string();
        print!("{text}");
    }
    if a.inv.prune {
        differs |= diff_prunes(g, &a, &pool, &docs).await?;
    }
    Ok(if differs { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `diff --prune`: what `apply --prune` would delete, as diffs from live to nothing.
async fn diff_prunes(
    g: &Global,
    a: &DiffArgs,
    pool: &sqlx::PgPool,
    docs: &[(Document, ClientSync)],
) -> Result<bool, CliError> {
    let Some(id) = inventory_id(&a.files, &a.inv)? else {
        return Err(CliError::msg("--prune with documents from stdin needs --inventory ID"));
    };
    let applied = applied_by_cluster(g, docs);
    let mut any = false;
    for (cluster, keep) in &applied {
        // Candidates are read under row locks in a transaction that is rolled back at once.
        let mut tx = pool.begin().await.map_err(|e| CliError::msg(format!("begin transaction: {e}")))?;
        let gone = inventory::prune_candidates(&mut tx, cluster, &id, keep, a.inv.selector.as_ref()).await?;
        tx.rollback().await.map_err(|e| CliError::msg(format!("roll back: {e}")))?;
        for (name, _) in gone {
            let Some(live) = specs::find(pool, cluster, &name).await? else { continue };
            any = true;
            let old = spec::to_yaml(&live.to_applied());
            let what = format!("clientsync/{name}");
            let text = similar::TextDiff::from_lines(old.as_str(), "")
                .unified_diff()
                .context_radius(3)
                .header(&format!("live/{what}"), &format!("pruned/{what} (inventory {id})"))
                .to_string();
            print!("{text}");
        }
    }
    Ok(any)
}

/// The applied names per cluster; the --cluster's own is always there, so --prune looks at it
/// even when no document names it.
fn applied_by_cluster(g: &Global, docs: &[(Document, ClientSync)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut applied: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    applied.entry(g.cluster.clone()).or_default();
    for (_, n) in docs {
        applied.entry(n.metadata.cluster.clone().unwrap_or_default()).or_default().insert(n.metadata.name.clone());
    }
    applied
}
