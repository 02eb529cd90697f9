//! The incremental part: N changed chats synced by owsync against the bare upsert of
//! exactly the changed rows, and the unchanged-source cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use owsync::fixtures::{self, MutateOptions};
use owsync::source::{RowKey, TableInfo, Value};
use owsync::sql::quote_ident;
use owsync::sync::{SyncJob, sync_tenant};
use owsync::target::{COL_DELETED, MirrorTable, PgType};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde_json::Value as J;
use sqlx::{Connection as _, PgConnection};

use crate::child::run_child_probed;
use crate::costs::{log_len, log_since, statement_costs};
use crate::csv::{csv_row, select_sql};
use crate::first_sync::Kept;
use crate::results::{IncRound, Results, Unchanged};
use crate::setup::checkpoint;
use crate::util::{count_text, exec, median, mib, sql_lit};
use crate::verify::{mirror_counts_ok, plain_counts_ok_live};
use crate::{Args, CHAT_OPS, CLIENT, CLUSTER, MIRROR_SCHEMA};

/// Runs chat-changing mutate ops until exactly `want` distinct chats changed; the
/// union of changed keys per table.
pub fn mutate_until(db: &Path, want: usize, seed: u64) -> Result<(BTreeMap<String, BTreeSet<String>>, u32)> {
    let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut ops = 0;
    for i in 0..200 {
        let have = keys.get("chat").map_or(0, BTreeSet::len);
        if have >= want {
            break;
        }
        let n = (want - have) as u32;
        let opts = MutateOptions { ops: n, seed: seed * 1000 + i, only: Some(CHAT_OPS.to_vec()), ..Default::default() };
        let s = fixtures::mutate(db, &opts)?;
        ops += n;
        for (t, ch) in s.tables {
            keys.entry(t).or_default().extend(ch.inserted.into_iter().chain(ch.updated).chain(ch.deleted));
        }
    }
    Ok((keys, ops))
}

pub struct TableDelta {
    pub m: MirrorTable,
    pub csv: Vec<u8>,
    pub rows: usize,
    pub deletes: Vec<Vec<Value>>,
}

/// A key as `mutate` reports it, as values of the key columns.
pub fn parse_key(key: &str, types: &[PgType]) -> Vec<Value> {
    let one = |j: &J, ty: PgType| match j {
        J::Number(n) => Value::Integer(n.as_i64().unwrap_or_default()),
        J::String(s) if ty == PgType::BigInt => {
            s.parse().map_or_else(|_| Value::Text(s.clone().into_bytes()), Value::Integer)
        }
        J::String(s) => Value::Text(s.clone().into_bytes()),
        J::Null => Value::Null,
        other => Value::Text(other.to_string().into_bytes()),
    };
    if types.len() == 1 {
        return vec![match types[0] {
            PgType::BigInt => key.parse().map_or_else(|_| Value::Text(key.as_bytes().to_vec()), Value::Integer),
            _ => Value::Text(key.as_bytes().to_vec()),
        }];
    }
    let parts: Vec<J> = serde_json::from_str(key).unwrap_or_default();
    parts.iter().zip(types).map(|(j, ty)| one(j, *ty)).collect()
}

/// Reads exactly the changed rows from the source by key and encodes them as CSV.
pub fn read_delta(
    db: &Path,
    tables: &[(TableInfo, MirrorTable)],
    changes: &BTreeMap<String, BTreeSet<String>>,
) -> Result<(Vec<TableDelta>, f64, usize)> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut bytes = 0;
    for (name, keys) in changes {
        let Some((info, m)) = tables.iter().find(|(i, _)| &i.name == name) else { continue };
        let (kcols, types): (Vec<String>, Vec<PgType>) = match &info.key {
            RowKey::Primary(k) => (
                k.iter().map(|c| quote_ident(c)).collect(),
                k.iter().map(|c| m.columns.iter().find(|(n, _)| n == c).map_or(PgType::Text, |x| x.1)).collect(),
            ),
            RowKey::Rowid => (vec!["rowid".into()], vec![PgType::BigInt]),
        };
        let filter: Vec<String> = kcols.iter().enumerate().map(|(i, k)| format!("{k} = ?{}", i + 1)).collect();
        let mut st = conn.prepare(&select_sql(info, m, &format!(" WHERE {}", filter.join(" AND "))))?;
        let mut d = TableDelta { m: m.clone(), csv: Vec::new(), rows: 0, deletes: Vec::new() };
        for key in keys {
            let kv = parse_key(key, &types);
            let params: Vec<&dyn rusqlite::ToSql> = kv.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
            let mut line = Vec::new();
            let found = st.query_row(params.as_slice(), |r| csv_row(&mut line, m, r)).optional()?;
            match found {
                Some(()) => {
                    d.csv.extend_from_slice(&line);
                    d.rows += 1;
                }
                None => d.deletes.push(kv),
            }
        }
        bytes += d.csv.len();
        out.push(d);
    }
    Ok((out, t0.elapsed().as_secs_f64(), bytes))
}

/// One transaction: per changed table, COPY the changed rows into a temp table and
/// INSERT ... ON CONFLICT DO UPDATE them (DELETE for rows that are gone). Timed.
pub async fn bare_upsert(conn: &mut PgConnection, deltas: &[TableDelta]) -> Result<f64> {
    let payloads: Vec<Vec<u8>> = deltas.iter().map(|d| d.csv.clone()).collect();
    let t0 = Instant::now();
    let mut tx = conn.begin().await?;
    for (d, payload) in deltas.iter().zip(payloads) {
        let m = &d.m;
        let key: Vec<String> = m.key.iter().map(|k| quote_ident(k)).collect();
        if d.rows > 0 {
            let stage = quote_ident(&format!("delta_{}", m.name));
            exec(&mut tx, format!("CREATE TEMP TABLE {stage} (LIKE {}) ON COMMIT DROP", m.qualified())).await?;
            let mut copy = tx.copy_in_raw(&format!("COPY {stage} FROM STDIN (FORMAT csv)")).await?;
            copy.send(payload).await?;
            copy.finish().await?;
            let sets: Vec<String> = m
                .columns
                .iter()
                .filter(|(n, _)| !m.key.contains(n))
                .map(|(n, _)| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
                .collect();
            let action =
                if sets.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", sets.join(", ")) };
            exec(
                &mut tx,
                format!(
                    "INSERT INTO {} SELECT * FROM {stage} ON CONFLICT ({}) DO {action}",
                    m.qualified(),
                    key.join(", ")
                ),
            )
            .await?;
        }
        for kv in &d.deletes {
            let cond: Vec<String> = key.iter().zip(kv).map(|(k, v)| format!("{k} = {}", sql_lit(v))).collect();
            exec(&mut tx, format!("DELETE FROM {} WHERE {}", m.qualified(), cond.join(" AND "))).await?;
        }
    }
    tx.commit().await?;
    Ok(t0.elapsed().as_secs_f64())
}

const CHAT_DIGEST: &str = "md5(string_agg(id || ':' || coalesce(title, '') || ':' || coalesce(updated_at::text, '') \
     || ':' || coalesce(md5(chat::text), '') || ':' || coalesce(meta::text, ''), ',' ORDER BY id))";

/// Whether owsync's mirror (`admin_c`) and the upserted baseline (`conn_a`) both equal the
/// source by row counts and have the same chats (a digest), and how they differ if not.
pub async fn same_as_baseline(
    admin_c: &mut PgConnection,
    conn_a: &mut PgConnection,
    tables: &[(TableInfo, MirrorTable)],
    db: &Path,
) -> Result<(bool, String)> {
    let bad_c = mirror_counts_ok(admin_c, tables, db).await?;
    let bad_a = plain_counts_ok_live(conn_a, tables, db).await?;
    let dig_a = count_text(conn_a, format!("SELECT {CHAT_DIGEST} FROM public.chat")).await?;
    let dig_c = count_text(
        admin_c,
        format!("SELECT {CHAT_DIGEST} FROM {MIRROR_SCHEMA}.chat WHERE {} IS NOT TRUE", quote_ident(COL_DELETED)),
    )
    .await?;
    Ok(if bad_c.is_empty() && bad_a.is_empty() && dig_a == dig_c {
        (true, "mirror = source (counts), chat digest equal to the upserted baseline".into())
    } else {
        (false, format!("mirror counts: {bad_c}; baseline counts: {bad_a}; chat digest equal: {}", dig_a == dig_c))
    })
}

/// The incremental rounds into `res`: the same changes synced by owsync into its mirror
/// and upserted bare into the COPY ceiling's tables, both verified against the source.
pub async fn rounds(
    a: &Args,
    db: &Path,
    tables: &[(TableInfo, MirrorTable)],
    k: &mut Kept,
    res: &mut Results,
) -> Result<()> {
    let Kept { admin_c, c, conn_a, pg_a } = k;
    for round in 0..a.inc_rounds {
        let (changes, ops) = mutate_until(db, a.changed, a.seed + 100 + round as u64)?;
        let changed_chats = changes.get("chat").map_or(0, BTreeSet::len);
        let (deltas, read_secs, delta_bytes) = read_delta(db, tables, &changes)?;
        checkpoint(&c.pg)?;
        let from = log_len(&c.pg);
        let (r, stall_ms, probes) = run_child_probed(&c.sync_url, admin_c).await?;
        if round == 0 {
            res.owsync_inc_costs = Some(statement_costs(&log_since(&c.pg, from), &r));
        }
        checkpoint(pg_a)?;
        let up = bare_upsert(conn_a, &deltas).await?;
        let (same, note) = same_as_baseline(admin_c, conn_a, tables, db).await?;
        let ok = same && r.failed.is_empty() && !r.unchanged;
        let round_res = IncRound {
            ops,
            changed_chats,
            changed_rows: deltas.iter().map(|d| d.rows).sum(),
            deleted_rows: deltas.iter().map(|d| d.deletes.len()).sum(),
            changed_tables: deltas.iter().map(|d| d.m.name.clone()).collect(),
            delta_bytes,
            delta_read_secs: read_secs,
            upsert_secs: up,
            owsync_secs: r.secs,
            owsync_rss_mib: mib(r.hwm_kib),
            owsync_rows_written: r.rows_written,
            owsync_rows_read: r.tables.values().map(|t| t.0).sum(),
            mirror_read_stall_ms: stall_ms,
            mirror_reads: probes,
            ok,
            note,
        };
        eprintln!(
            "bench: incremental round {}: {} chats ({} rows in {:?}); owsync {:.2} s, bare upsert {:.3} s (+ read {:.3} s)",
            round + 1,
            changed_chats,
            round_res.changed_rows,
            round_res.changed_tables,
            r.secs,
            up,
            read_secs
        );
        res.incremental.push(round_res);
    }
    Ok(())
}

/// `runs` timed unchanged-source cycles of `sync_tenant`, in process, on a warm pool
/// (after three untimed ones).
pub async fn unchanged_cycles(runs: usize, sync_url: &str) -> Result<Unchanged> {
    let pool = owsync::store::connect(sync_url, "owsync-bench", 2).await?;
    let spec = owsync::store::specs::get(&pool, CLUSTER, CLIENT).await?.spec;
    let job = SyncJob {
        pool: &pool,
        cluster: CLUSTER,
        client: CLIENT,
        spec: &spec,
        fence: None,
        options: Default::default(),
    };
    let mut all_skipped = true;
    for _ in 0..3 {
        all_skipped &= sync_tenant(&job).await?.unchanged;
    }
    let mut times = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let r = sync_tenant(&job).await?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        all_skipped &= r.unchanged;
    }
    pool.close().await;
    let in_order = times.clone();
    let med = median(&mut times);
    let rank = ((0.99 * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1;
    let u = Unchanged {
        runs: times.len(),
        median_ms: med,
        p99_ms: times[rank],
        min_ms: times[0],
        max_ms: times[times.len() - 1],
        all_skipped,
        samples_ms: in_order,
    };
    eprintln!("bench: unchanged cycle median {:.2} ms, p99 {:.2} ms", u.median_ms, u.p99_ms);
    Ok(u)
}
