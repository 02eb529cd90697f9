//! Where owsync's time goes: the server's per-statement durations from its log, and
//! the fixed cost of one COPY round trip.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use owsync::devpg::TempPostgres;
use sqlx::{Connection as _, PgConnection};

use crate::child::ChildRun;
use crate::results::{CopyProbe, StatementCosts};
use crate::util::{exec, median};

/// The fixed cost of one COPY round trip through sqlx (which sets TCP_NODELAY since 0.9.1).
pub async fn copy_probe(url: &str) -> Result<CopyProbe> {
    async fn times(conn: &mut PgConnection, copy: bool) -> Result<f64> {
        let mut v = Vec::new();
        for i in 0..18 {
            let t0 = Instant::now();
            if copy {
                let mut c = conn.copy_in_raw("COPY probe FROM STDIN").await?;
                c.send(&b"1\n"[..]).await?;
                c.finish().await?;
            } else {
                sqlx::query("SELECT 1").execute(&mut *conn).await?;
            }
            if i >= 3 {
                v.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        Ok(median(&mut v))
    }
    let mut conn = PgConnection::connect(url).await?;
    exec(&mut conn, "CREATE TEMP TABLE probe (a int)".into()).await?;
    let copy_ms = times(&mut conn, true).await?;
    let select1_ms = times(&mut conn, false).await?;
    conn.close().await?;
    Ok(CopyProbe { copy_ms, select1_ms })
}

pub fn log_len(pg: &TempPostgres) -> u64 {
    std::fs::metadata(pg.log_file()).map_or(0, |m| m.len())
}

pub fn log_since(pg: &TempPostgres, from: u64) -> String {
    let b = std::fs::read(pg.log_file()).unwrap_or_default();
    String::from_utf8_lossy(b.get(from as usize..).unwrap_or_default()).into_owned()
}

/// The mirror table a statement names (`"schema"."table"` after one of the markers that
/// open a table's work), if any.
fn table_named(text: &str) -> Option<String> {
    const MARKERS: [&str; 3] = ["SELECT NOT EXISTS (SELECT 1 FROM ", "(LIKE ", "COPY "];
    let at = MARKERS.iter().find_map(|m| text.find(m).map(|i| i + m.len()))?;
    let q = text.get(at..)?.strip_prefix('"')?;
    let (_schema, rest) = q.split_once("\".\"")?;
    rest.split_once('"').map(|(t, _)| t.to_string())
}

/// Sums the server's per-statement durations (`log_min_duration_statement = 0`) by
/// kind, and per table: a backend's statements belong to the table it last named (its
/// provision_table call, its emptiness probe, its stage or COPY) until its COMMIT, so two
/// tables synced at once on two connections are told apart by the backend's PID.
pub fn statement_costs(log: &str, child: &ChildRun) -> StatementCosts {
    let mut c = StatementCosts::default();
    // backend pid -> the table its statements are for
    let mut table: BTreeMap<String, String> = BTreeMap::new();
    let mut want_table: Option<String> = None;
    // table -> (first start, last end, busy)
    let mut spans: BTreeMap<String, (f64, f64, f64)> = BTreeMap::new();
    for line in log.lines() {
        if line.contains("bench-probe") {
            continue; // the bench's own reads of the mirror, not owsync's
        }
        let pid = line.split_once(" [").and_then(|(_, r)| r.split_once(']')).map(|(p, _)| p.to_string());
        if let (Some(want), true) = (&want_table, line.contains("DETAIL:  parameters:")) {
            if let Some(t) = line.split("$2 = '").nth(1).and_then(|r| r.split('\'').next()) {
                table.insert(want.clone(), t.to_string());
            }
            want_table = None;
            continue;
        }
        let Some(pid) = pid else { continue };
        let Some(i) = line.find("duration: ") else { continue };
        let rest = &line[i + 10..];
        let Some((num, after)) = rest.split_once(" ms") else { continue };
        let Ok(ms) = num.trim().parse::<f64>() else { continue };
        let after = after.trim_start();
        let (kind, text) = match after.split_once(": ") {
            Some((k, t)) => (k, t),
            None => (after, ""),
        };
        let end = line
            .get(11..23)
            .and_then(|hms| {
                let mut p = hms.split(':');
                let h: f64 = p.next()?.parse().ok()?;
                let m: f64 = p.next()?.parse().ok()?;
                let s: f64 = p.next()?.parse().ok()?;
                Some((h * 3600.0 + m * 60.0 + s) * 1000.0)
            })
            .unwrap_or(0.0);
        if let Some(t) = table_named(text) {
            table.insert(pid.clone(), t);
        }
        let cat = if kind.starts_with("parse") || kind.starts_with("bind") {
            "parse/bind (extended protocol)"
        } else if text.starts_with("COPY owsync_stage") {
            "COPY into the stage (temp table)"
        } else if text.starts_with("COPY ") {
            "COPY straight into an empty mirror table"
        } else if text.contains("FROM owsync_stage") && text.starts_with("INSERT") {
            "upsert stage -> mirror (INSERT ... ON CONFLICT)"
        } else if text.starts_with("UPDATE") && text.contains("_owsync_deleted") {
            "tombstone pass (UPDATE ... NOT EXISTS stage)"
        } else if text.starts_with("CREATE TEMP TABLE owsync_stage") {
            "create the stage"
        } else if text.contains("provision_table") {
            if kind.starts_with("execute") {
                want_table = Some(pid.clone());
            }
            "provision_table"
        } else if text.starts_with("COMMIT") {
            "COMMIT"
        } else if text.starts_with("BEGIN") {
            "BEGIN"
        } else if text.contains("table_state") {
            "table_state bookkeeping"
        } else if text.contains("quarantine") {
            "quarantine bookkeeping"
        } else {
            "other"
        };
        let e = c.categories.entry(cat.to_string()).or_default();
        e.0 += ms;
        e.1 += 1;
        if cat.starts_with("COPY") && !table.contains_key(&pid) {
            c.unattributed_copies += 1;
        }
        if let Some(t) = table.get(&pid) {
            let s = spans.entry(t.clone()).or_insert((end - ms, end, 0.0));
            s.0 = s.0.min(end - ms);
            s.1 = s.1.max(end);
            s.2 += ms;
        }
        if text.starts_with("COMMIT") || text.starts_with("ROLLBACK") {
            table.remove(&pid);
        }
    }
    for (t, (start, end, busy)) in spans {
        let rows = child.tables.get(&t).map_or(0, |x| x.0);
        c.tables.insert(t, (end - start, busy, rows));
    }
    c
}
