//! `wait` (block until a tenant meets a condition) and `cluster status`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Args;

use super::common::{CliError, Global, Output};
use crate::spec::{ClientSyncStatus, Phase};
use crate::store::{self, observed, specs, status};

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// `client/NAME` (or just NAME).
    pub target: String,
    /// `condition=TYPE[=True|False]`; `condition=Synced` waits for phase Synced at the
    /// current generation.
    #[arg(long = "for")]
    pub for_: String,
    /// Give up after this long (exit 1).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Whether `st` (for a spec at `generation`) meets `cond`.
fn met(st: &ClientSyncStatus, generation: i64, cond: &str, want: &str) -> bool {
    if st.observed_generation != generation {
        return false;
    }
    if cond.eq_ignore_ascii_case("Synced") {
        return (st.phase == Phase::Synced) == want.eq_ignore_ascii_case("true");
    }
    st.conditions.iter().any(|c| c.type_.eq_ignore_ascii_case(cond) && c.status.eq_ignore_ascii_case(want))
}

pub async fn wait(g: &Global, a: WaitArgs) -> Result<ExitCode, CliError> {
    let name = a.target.strip_prefix("client/").or_else(|| a.target.strip_prefix("clientsync/")).unwrap_or(&a.target);
    let Some(spec) = a.for_.strip_prefix("condition=") else {
        return Err(CliError::msg(format!("--for {:?}: expected condition=TYPE[=True|False]", a.for_)));
    };
    let (cond, want) = spec.split_once('=').unwrap_or((spec, "True"));
    let pool = g.pool().await?;
    let deadline = Instant::now() + a.timeout;
    loop {
        let s = specs::get(&pool, &g.cluster, name).await?;
        if let Some(st) = status::get(&pool, &g.cluster, name).await?
            && met(&st, s.generation, cond, want)
        {
            println!("clientsync/{name} condition met ({cond}={want})");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "error: timed out after {} waiting for clientsync/{name} {cond}={want}",
                humantime::format_duration(a.timeout)
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `cluster status`: the lease and every replica. The role comes from the lease (holder,
/// expiry, the holder's session still connected), never from a replica's own heartbeat
/// row, which a killed replica never corrects; a replica whose heartbeat is older than
/// the lease lasts is shown as stale. An unknown cluster (no replica, lease, ClientSync
/// or retirement) exits 1.
pub async fn status(g: &Global) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    let view = observed::cluster_view(&pool, &g.cluster).await?;
    let mut tx = store::begin(&pool, &g.cluster).await?;
    let retired = store::cluster::retired(&mut tx, &g.cluster).await.map_err(|e| CliError::msg(e.to_string()))?;
    let _ = tx.commit().await;
    if view.lease.is_none() && view.replicas.is_empty() && !view.has_records && retired.is_none() {
        eprintln!(
            "error: cluster {} is unknown: no replica has registered, no lease, no ClientSync and no event (check --cluster or OWSYNC_CLUSTER)",
            g.cluster
        );
        return Ok(ExitCode::from(1));
    }
    if g.output == Output::Json || g.output == Output::Yaml {
        let v = status_json(&g.cluster, &view, retired.map(|r| r.0));
        if g.output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            print!("{}", crate::spec::to_yaml(&v));
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("Cluster: {}", g.cluster);
    if let Some((at, _)) = retired {
        println!(
            "Retired: deregistered at {} (its replicas cannot write; `owsyncctl cluster reinstate` frees the name)",
            at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    match &view.lease {
        Some(l) if l.held() => {
            let left = (l.expires_at - Utc::now()).num_milliseconds() as f64 / 1000.0;
            println!(
                "Leader:  {} (epoch {}, since {}, lease expires in {left:.1}s)",
                l.leader_id,
                l.epoch,
                l.acquired_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        Some(l) if !l.expired => println!(
            "Leader:  none (last: {} at epoch {}: its lease session is gone; a standby takes over)",
            l.leader_id, l.epoch
        ),
        Some(l) => println!("Leader:  none (last: {} at epoch {}, lease expired)", l.leader_id, l.epoch),
        None => println!("Leader:  none (no replica has ever led this cluster)"),
    }
    let rows: Vec<Vec<String>> = view
        .replicas
        .iter()
        .map(|r| {
            let status = if r.stale && r.status == "active" { "stale".to_string() } else { r.status.clone() };
            vec![
                r.node_id.clone(),
                role(r).into(),
                status,
                format!("{:.0}s ago", r.heartbeat_age_secs),
                r.hostname.clone(),
                r.version.clone(),
            ]
        })
        .collect();
    println!("Replicas:");
    for line in super::get::table(&["NODE", "ROLE", "STATUS", "HEARTBEAT", "HOSTNAME", "VERSION"], &rows).lines() {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `leader` (holds the lease), `standby`, or `unknown` (not leading and no recent heartbeat).
pub(super) fn role(r: &observed::ReplicaView) -> &'static str {
    match (r.leading, r.stale) {
        (true, _) => "leader",
        (false, false) => "standby",
        (false, true) => "unknown",
    }
}

/// `cluster status -o json|yaml`: every key camelCase, like the resources.
fn status_json(
    cluster: &str,
    view: &observed::ClusterView,
    retired_at: Option<chrono::DateTime<Utc>>,
) -> serde_json::Value {
    let lease = view.lease.as_ref().map(|l| {
        serde_json::json!({
            "leaderId": l.leader_id, "epoch": l.epoch, "acquiredAt": l.acquired_at, "renewedAt": l.renewed_at,
            "expiresAt": l.expires_at, "expired": l.expired, "holderConnected": l.holder_alive, "held": l.held(),
        })
    });
    serde_json::json!({
        "cluster": cluster,
        "leader": view.lease.as_ref().filter(|l| l.held()).map(|l| l.leader_id.clone()),
        "lease": lease,
        "retiredAt": retired_at,
        "replicas": view.replicas.iter().map(|r| serde_json::json!({
            "nodeId": r.node_id, "hostname": r.hostname, "version": r.version, "status": r.status,
            "role": role(r), "isLeader": r.leading, "stale": r.stale,
            "lastHeartbeat": r.last_heartbeat, "heartbeatAgeSeconds": r.heartbeat_age_secs,
        })).collect::<Vec<_>>(),
    })
}
