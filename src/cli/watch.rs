//! `wait` (block until a tenant meets a condition) and `cluster status`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Args;
use sqlx::Row;

use super::common::{CliError, Global, Output};
use crate::spec::{ClientSyncStatus, Phase};
use crate::store::{self, lease, specs, status};

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

/// `cluster status`: the lease and every replica's heartbeat.
pub async fn status(g: &Global) -> Result<ExitCode, CliError> {
    let pool = g.pool().await?;
    let l = lease::current(&pool, &g.cluster).await?;
    let mut tx = store::begin(&pool, &g.cluster).await?;
    let hosts = sqlx::query(
        "SELECT node_id, coalesce(hostname, ''), coalesce(version, ''), status, is_leader, last_heartbeat,
                extract(epoch FROM now() - last_heartbeat)::float8
         FROM sync_metadata.hosts WHERE cluster_name = $1 ORDER BY node_id",
    )
    .bind(&g.cluster)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| CliError::msg(format!("read hosts: {e}")))?;
    let retired = store::cluster::retired(&mut tx, &g.cluster).await.map_err(|e| CliError::msg(e.to_string()))?;
    let _ = tx.commit().await;
    if g.output == Output::Json || g.output == Output::Yaml {
        let v = serde_json::json!({
            "cluster": g.cluster,
            "lease": l,
            "retiredAt": retired.map(|r| r.0),
            "replicas": hosts.iter().map(|h| serde_json::json!({
                "nodeId": h.get::<String, _>(0), "hostname": h.get::<String, _>(1), "version": h.get::<String, _>(2),
                "status": h.get::<String, _>(3), "isLeader": h.get::<bool, _>(4),
                "lastHeartbeat": h.get::<chrono::DateTime<Utc>, _>(5),
            })).collect::<Vec<_>>(),
        });
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
    match &l {
        Some(l) if !l.expired => {
            let left = (l.expires_at - Utc::now()).num_milliseconds() as f64 / 1000.0;
            println!(
                "Leader:  {} (epoch {}, since {}, lease expires in {left:.1}s)",
                l.leader_id,
                l.epoch,
                l.acquired_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        Some(l) => println!("Leader:  none (last: {} at epoch {}, lease expired)", l.leader_id, l.epoch),
        None => println!("Leader:  none (no replica has ever led this cluster)"),
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let age: f64 = h.get(6);
            vec![
                h.get::<String, _>(0),
                if h.get::<bool, _>(4) { "leader".into() } else { "standby".into() },
                h.get::<String, _>(3),
                format!("{age:.0}s ago"),
                h.get::<String, _>(1),
                h.get::<String, _>(2),
            ]
        })
        .collect();
    println!("Replicas:");
    for line in super::get::table(&["NODE", "ROLE", "STATUS", "HEARTBEAT", "HOSTNAME", "VERSION"], &rows).lines() {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}
