//! `cluster status | deregister | reinstate | prune-stale` and `move`: a host's lifecycle.
//! Deregistration and moves run as admin (they delete rows and see every cluster); the
//! admin URL comes only from a file (`--admin-url-file`, `OWSYNC_ADMIN_URL_FILE`).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use sqlx::PgPool;

use super::common::{CliError, Global, read_secret};
use super::get::table;
use crate::store::{self, cluster as cl, observed};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, epoch, lease expiry and every replica's heartbeat.
    Status,
    /// Remove a retired host's cluster from sync_metadata (admin; refuses while any tenant syncs).
    Deregister(DeregisterArgs),
    /// Allow a deregistered cluster's name to be deployed again (admin).
    Reinstate(ReinstateArgs),
    /// Mark hosts whose heartbeat is older than --older-than offline (a host destroyed without deregistering).
    PruneStale(PruneStaleArgs),
    /// Restore, adopt and move every tenant of a lost host to another cluster (admin; resumable).
    Evacuate(super::evacuate::EvacuateArgs),
    /// A login role bound to one cluster: its rows and mirrors only (admin; prints the role's name).
    AddRole(super::add_role::AddRoleArgs),
}

#[derive(Debug, Args)]
pub struct AdminUrl {
    /// File holding the admin URL (a role that may DELETE in sync_metadata); never the URL itself.
    #[arg(long, env = "OWSYNC_ADMIN_URL_FILE")]
    pub admin_url_file: Option<PathBuf>,
}

impl AdminUrl {
    pub(super) async fn pool(&self) -> Result<PgPool, CliError> {
        let Some(f) = &self.admin_url_file else {
            return Err(CliError::msg(
                "this command runs as admin: pass --admin-url-file FILE (or set OWSYNC_ADMIN_URL_FILE)",
            ));
        };
        let url = read_secret(f)?;
        let pool = store::connect(&url, "owsyncctl-admin", 2).await?;
        store::migrate::require_current(&pool).await?;
        Ok(pool)
    }
}

#[derive(Debug, Args)]
pub struct DeregisterArgs {
    /// The cluster to deregister (its hosts' OWSYNC_CLUSTER).
    pub name: String,
    /// Do not ask for confirmation (scripts). Without it and without a terminal, refuses.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub admin: AdminUrl,
}

#[derive(Debug, Args)]
pub struct ReinstateArgs {
    pub name: String,
    #[command(flatten)]
    pub admin: AdminUrl,
}

#[derive(Debug, Args)]
pub struct PruneStaleArgs {
    /// Hosts whose last heartbeat is older than this are marked offline.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub older_than: Duration,
    /// Only list them.
    #[arg(long)]
    pub dry_run: bool,
    /// Every cluster's hosts, not only --cluster's (needs --admin-url-file).
    #[arg(long)]
    pub all_clusters: bool,
    #[command(flatten)]
    pub admin: AdminUrl,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The tenant (ClientSync name) in --cluster.
    pub name: String,
    /// The cluster to move it to.
    #[arg(long)]
    pub to_cluster: String,
    /// The tenant's database path on the new cluster's hosts (spec.source.path), e.g. a
    /// file restored there with `owsyncctl restore NAME --to PATH --adopt`.
    #[arg(long)]
    pub source_path: Option<String>,
    #[command(flatten)]
    pub admin: AdminUrl,
}

pub async fn cluster(g: &Global, c: ClusterCommand) -> Result<ExitCode, CliError> {
    match c {
        ClusterCommand::Status => super::watch::status(g).await,
        ClusterCommand::Deregister(a) => deregister(a).await,
        ClusterCommand::Reinstate(a) => reinstate(a).await,
        ClusterCommand::PruneStale(a) => prune_stale(g, a).await,
        ClusterCommand::Evacuate(a) => super::evacuate::evacuate(g, a).await,
        ClusterCommand::AddRole(a) => super::add_role::add_role(a).await,
    }
}

fn cerr(e: cl::ClusterError) -> CliError {
    CliError::msg(e.to_string())
}

fn indent(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

/// Prints what a cluster has in sync_metadata; returns its tenants.
async fn show(pool: &PgPool, name: &str) -> Result<(Vec<cl::TenantRow>, Vec<cl::HostRow>, i64), CliError> {
    let mut conn = pool.acquire().await.map_err(|e| CliError::msg(format!("connect: {e}")))?;
    let hosts = cl::hosts(&mut conn, name).await.map_err(cerr)?;
    let tenants = cl::tenants(&mut conn, name).await.map_err(cerr)?;
    let census = cl::census(&mut conn, name).await.map_err(cerr)?;
    drop(conn);
    // The role comes from the lease, like `cluster status`: never from `hosts.is_leader`,
    // which a killed replica never corrects.
    let view = observed::cluster_view(pool, name).await?;
    println!("Cluster {name}: metadata in sync_metadata");
    match &view.lease {
        Some(l) if l.held() => println!("  Leader:   {} (epoch {}, lease valid)", l.leader_id, l.epoch),
        Some(l) if !l.expired => {
            println!("  Leader:   none (last {} at epoch {}, its lease session is gone)", l.leader_id, l.epoch);
        }
        Some(l) => println!("  Leader:   none (last {} at epoch {}, lease expired)", l.leader_id, l.epoch),
        None => println!("  Leader:   none (no lease row)"),
    }
    println!("  Hosts:");
    let role_of = |node: &str| view.replicas.iter().find(|r| r.node_id == node).map_or("unknown", super::watch::role);
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.node_id.clone(),
                h.status.clone(),
                role_of(&h.node_id).into(),
                format!("{:.0}s ago", h.age_secs),
                h.hostname.clone(),
            ]
        })
        .collect();
    indent(&table(&["NODE", "STATUS", "ROLE", "HEARTBEAT", "HOSTNAME"], &rows));
    println!("  Tenants:");
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            let state = if t.deleted {
                "deleted"
            } else if t.enabled {
                "sync enabled"
            } else {
                "disabled"
            };
            let phase = if t.phase.is_empty() { "-".to_string() } else { t.phase.clone() };
            vec![t.name.clone(), state.into(), phase, t.schema.clone()]
        })
        .collect();
    indent(&table(&["NAME", "STATE", "PHASE", "MIRROR SCHEMA"], &rows));
    println!("  Rows:");
    let rows: Vec<Vec<String>> = census.iter().map(|c| vec![c.table.clone(), c.rows.to_string()]).collect();
    indent(&table(&["TABLE", "ROWS"], &rows));
    Ok((tenants, hosts, census.iter().map(|c| c.rows).sum()))
}

async fn deregister(a: DeregisterArgs) -> Result<ExitCode, CliError> {
    let name = a.name.as_str();
    let pool = a.admin.pool().await?;
    let (tenants, hosts, total) = show(&pool, name).await?;
    if total == 0 {
        eprintln!("error: cluster {name} has no rows in sync_metadata (not registered, or already deregistered)");
        return Ok(ExitCode::from(1));
    }
    let enabled: Vec<&cl::TenantRow> = tenants.iter().filter(|t| t.enabled && !t.deleted).collect();
    if !enabled.is_empty() {
        refuse_enabled(name, &enabled);
        return Ok(ExitCode::from(1));
    }
    warn_before_deregister(&tenants, &hosts);
    if !a.yes && !confirmed(name) {
        return Ok(ExitCode::from(1));
    }
    let d = cl::deregister(&pool, name).await.map_err(cerr)?;
    match d.epoch {
        Some((old, new)) => {
            println!("lease/{name} released: epoch {old} -> {new} (fenced writes of a still-running leader fail)");
        }
        None => println!("lease/{name}: none to release"),
    }
    for c in d.removed.iter().filter(|c| c.rows > 0) {
        println!("sync_metadata.{}: {} row(s) deleted", c.table, c.rows);
    }
    println!("cluster/{name} retired: its replicas can no longer register, heartbeat or lead");
    verify_deregistered(&pool, name, &tenants).await
}

/// Explains why a cluster with sync-enabled tenants is not deregistered, and the ways out.
fn refuse_enabled(name: &str, enabled: &[&cl::TenantRow]) {
    eprintln!(
        "error: refusing to deregister cluster {name}: {} tenant(s) still have sync enabled; nothing was changed",
        enabled.len()
    );
    for t in enabled {
        let phase = if t.phase.is_empty() { "Pending" } else { t.phase.as_str() };
        eprintln!("  clientsync/{} (phase {phase}, mirror schema {})", t.name, t.schema);
    }
    eprintln!("Ways out, for each of them:");
    eprintln!(
        "  1. disable it: set spec.enabled: false in its manifest, then `owsyncctl apply -f FILE --cluster {name}`"
    );
    eprintln!(
        "  2. move it to another cluster: `owsyncctl move NAME --to-cluster OTHER --cluster {name} --admin-url-file F`"
    );
    eprintln!(
        "  3. decommission it: `owsyncctl delete client NAME --force --cluster {name}` (its mirror schema is kept)"
    );
    eprintln!("then run `owsyncctl cluster deregister {name}` again.");
}

/// Warns about what deregistering removes (tenants without sync) and replicas that look alive.
fn warn_before_deregister(tenants: &[cl::TenantRow], hosts: &[cl::HostRow]) {
    let others: Vec<&cl::TenantRow> = tenants.iter().collect();
    if !others.is_empty() {
        println!(
            "warning: {} tenant(s) without sync will be removed from sync_metadata with their status, watermarks, \
             quarantine and conflicts: {}",
            others.len(),
            others.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    for h in hosts.iter().filter(|h| h.status != "offline" && h.age_secs < 60.0) {
        println!(
            "warning: replica {} heartbeat {:.0}s ago, it looks alive: its lease is released and its writes are \
             refused from now on; stop it too",
            h.node_id, h.age_secs
        );
    }
}

/// Asks on the terminal for the cluster's name; false (with the reason printed) unless typed.
fn confirmed(name: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        eprintln!("error: stdin is not a terminal, so there is no one to confirm: pass --yes to deregister {name}");
        return false;
    }
    print!("Deregister cluster {name} and delete the rows above? Type the cluster name to confirm: ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if answer.trim() != name {
        eprintln!("error: not confirmed; nothing was changed");
        return false;
    }
    true
}

/// Counts, from a fresh connection after the commit, what is left of the cluster; fails if anything is.
async fn verify_deregistered(pool: &PgPool, name: &str, tenants: &[cl::TenantRow]) -> Result<ExitCode, CliError> {
    let mut conn = pool.acquire().await.map_err(|e| CliError::msg(format!("connect: {e}")))?;
    let census = cl::census(&mut conn, name).await.map_err(cerr)?;
    let left: Vec<&cl::TableCount> = census.iter().filter(|c| c.rows > 0).collect();
    println!("Verification ({} tables of sync_metadata):", census.len());
    for c in &census {
        println!("  sync_metadata.{}: {} row(s) of cluster {name}", c.table, c.rows);
    }
    let schemas: Vec<&str> = tenants.iter().map(|t| t.schema.as_str()).filter(|s| !s.is_empty()).collect();
    println!(
        "Mirror data is NOT dropped: {} (drop a schema as admin when it is no longer needed)",
        if schemas.is_empty() { "no mirror schemas".to_string() } else { schemas.join(", ") }
    );
    if !left.is_empty() {
        eprintln!("error: rows of cluster {name} are left (written after the deregistration?): run it again");
        return Ok(ExitCode::from(1));
    }
    println!("cluster/{name} deregistered: nothing of it is left in sync_metadata");
    Ok(ExitCode::SUCCESS)
}

async fn reinstate(a: ReinstateArgs) -> Result<ExitCode, CliError> {
    let pool = a.admin.pool().await?;
    if cl::reinstate(&pool, &a.name).await.map_err(cerr)? {
        // Recorded, so the name is a known (empty) cluster until its replicas register.
        let mut conn = pool.acquire().await.map_err(|e| CliError::msg(format!("connect: {e}")))?;
        let msg = "reinstated: replicas may register under this name again";
        store::jobs::event(&mut conn, &a.name, None, false, "ClusterReinstated", msg, None).await?;
        println!("cluster/{} reinstated: replicas may register under this name again", a.name);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: cluster {} is not deregistered", a.name);
        Ok(ExitCode::from(1))
    }
}

async fn prune_stale(g: &Global, a: PruneStaleArgs) -> Result<ExitCode, CliError> {
    let (pool, cluster) = match (&a.admin.admin_url_file, a.all_clusters) {
        (Some(_), true) => (a.admin.pool().await?, None),
        (None, true) => {
            return Err(CliError::msg("--all-clusters needs --admin-url-file (sync_service sees one cluster)"));
        }
        (Some(_), false) => (a.admin.pool().await?, Some(g.cluster.as_str())),
        (None, false) => (g.pool().await?, Some(g.cluster.as_str())),
    };
    let secs = a.older_than.as_secs_f64();
    let stale = cl::prune_stale(&pool, cluster, secs, a.dry_run).await.map_err(cerr)?;
    let scope = cluster.map_or("any cluster".to_string(), |c| format!("cluster {c}"));
    let age = humantime::format_duration(a.older_than);
    if stale.is_empty() {
        println!("no host of {scope} has a heartbeat older than {age}");
        return Ok(ExitCode::SUCCESS);
    }
    let dry = if a.dry_run { " (dry run)" } else { "" };
    for h in &stale {
        println!(
            "host/{}/{} marked offline{dry} (last heartbeat {:.0}s ago{}{})",
            h.cluster,
            h.node_id,
            h.age_secs,
            if h.hostname.is_empty() { String::new() } else { format!(", hostname {}", h.hostname) },
            if h.is_leader { ", was leader" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn move_tenant(g: &Global, a: MoveArgs) -> Result<ExitCode, CliError> {
    let pool = a.admin.pool().await?;
    if let Some(p) = a.source_path.as_deref().filter(|p| !p.starts_with('/')) {
        return Err(CliError::msg(format!("--source-path {p:?}: must be an absolute path")));
    }
    let m = match cl::move_tenant(&pool, &g.cluster, &a.name, &a.to_cluster, a.source_path.as_deref()).await {
        Ok(m) => m,
        Err(cl::ClusterError::Store(e @ store::StoreError::NotFound { .. })) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e @ cl::ClusterError::Refused { .. }) => {
            eprintln!("error: {e}; nothing was changed");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(cerr(e)),
    };
    let rows: Vec<String> = m.moved.iter().filter(|c| c.rows > 0).map(|c| format!("{} {}", c.table, c.rows)).collect();
    println!(
        "clientsync/{} moved from cluster {} to {} ({}; sync {})",
        a.name,
        g.cluster,
        a.to_cluster,
        rows.join(", "),
        if m.enabled { "enabled" } else { "disabled" }
    );
    if let Some((old, new)) = m.epoch {
        println!(
            "lease/{}: epoch {old} -> {new} (a sync of {} in flight there cannot commit; its leader starts a new term)",
            g.cluster, a.name
        );
    }
    match &a.source_path {
        Some(p) => println!(
            "mirror schema {} unchanged; spec.source.path is now {p} on the hosts of {}",
            m.schema, a.to_cluster
        ),
        None => println!(
            "mirror schema {} unchanged; mount the tenant's source at spec.source.path on the hosts of {}",
            m.schema, a.to_cluster
        ),
    }
    Ok(ExitCode::SUCCESS)
}
