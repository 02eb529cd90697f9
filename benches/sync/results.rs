//! The results of a run, as written to `<work>/results-<chats>.json` and rendered
//! into the report.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::util::median;

#[derive(Debug, Default, Serialize)]
pub struct Env {
    pub date: String,
    pub git: String,
    pub nproc: usize,
    pub cpu: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub load_start: String,
    pub load_end: String,
    pub postgres: String,
    pub pgloader: String,
    pub sqlite: String,
    pub pg_settings: String,
    pub command: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Dataset {
    pub users: u32,
    pub chats: u32,
    pub msgs: u32,
    pub file_bytes: u64,
    pub csv_bytes: u64,
    pub tables: usize,
    pub nonempty_tables: usize,
    pub rows: u64,
    pub counts: BTreeMap<String, u64>,
    pub generate_secs: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct FirstCase {
    pub name: String,
    pub what: String,
    /// The median over the rounds.
    pub secs: Option<f64>,
    pub rss_mib: Option<f64>,
    pub ok: bool,
    pub note: String,
    /// Seconds per round (NaN: that round failed).
    pub runs: Vec<f64>,
    /// Per round, this case's time over the COPY ceiling's in the same round.
    pub ratios: Vec<f64>,
}

/// Adds one round's result of a case to the list (same name: another round).
pub fn merge_case(cases: &mut Vec<FirstCase>, mut case: FirstCase, copy_secs: Option<f64>) {
    let t = case.secs.unwrap_or(f64::NAN);
    let ratio = copy_secs.map_or(f64::NAN, |c| t / c);
    if let Some(c) = cases.iter_mut().find(|c| c.name == case.name) {
        c.runs.push(t);
        c.ratios.push(ratio);
        let mut ok_runs: Vec<f64> = c.runs.iter().copied().filter(|x| x.is_finite()).collect();
        c.secs = (!ok_runs.is_empty()).then(|| median(&mut ok_runs));
        c.rss_mib = match (c.rss_mib, case.rss_mib) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        if c.ok && !case.ok {
            c.note = case.note;
        }
        c.ok &= case.ok;
    } else {
        case.runs = vec![t];
        case.ratios = vec![ratio];
        cases.push(case);
    }
}

#[derive(Debug, Default, Serialize)]
pub struct IncRound {
    pub ops: u32,
    pub changed_chats: usize,
    pub changed_rows: usize,
    pub deleted_rows: usize,
    pub changed_tables: Vec<String>,
    pub delta_bytes: usize,
    pub delta_read_secs: f64,
    pub upsert_secs: f64,
    pub owsync_secs: f64,
    pub owsync_rss_mib: f64,
    pub owsync_rows_written: u64,
    pub owsync_rows_read: i64,
    /// Longest `SELECT 1 FROM <mirror>.chat LIMIT 1` while owsync synced, and how many ran.
    pub mirror_read_stall_ms: f64,
    pub mirror_reads: usize,
    pub ok: bool,
    pub note: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Unchanged {
    pub runs: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub all_skipped: bool,
    pub samples_ms: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct StatementCosts {
    /// category -> (total ms, statements)
    pub categories: BTreeMap<String, (f64, u64)>,
    /// table -> (wall span ms, server busy ms, rows)
    pub tables: BTreeMap<String, (f64, f64, i64)>,
    /// COPY statements no table could be named for (a defect of the attribution).
    pub unattributed_copies: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub env: Env,
    pub data: Dataset,
    pub first: Vec<FirstCase>,
    pub read_encode: Option<(f64, f64)>,
    pub owsync_first_costs: Option<StatementCosts>,
    pub owsync_inc_costs: Option<StatementCosts>,
    pub copy_probe: Option<CopyProbe>,
    pub incremental: Vec<IncRound>,
    pub unchanged: Option<Unchanged>,
    pub restore: Option<RestoreCases>,
    pub followed: Option<FollowedCases>,
}

#[derive(Debug, Default, Serialize)]
pub struct CopyProbe {
    /// One tiny `COPY ... FROM STDIN` through sqlx, as owsync sends each slice.
    pub copy_ms: f64,
    pub select1_ms: f64,
}

/// One restore, owsync's or the naive pipeline's.
#[derive(Debug, Default, Serialize)]
pub struct RestoreRun {
    pub secs: f64,
    pub rss_mib: Option<f64>,
    /// The restored file's size.
    pub bytes: u64,
    /// The source's rows (what a restore must give back).
    pub rows: u64,
    /// Row counts per table equal the source's.
    pub ok: bool,
    pub note: String,
    /// The naive pipeline's steps: (step, seconds).
    pub parts: Vec<(String, f64)>,
}

#[derive(Debug, Default, Serialize)]
pub struct RestoreCases {
    /// In run order, interleaved with `naive`.
    pub owsync: Vec<RestoreRun>,
    pub naive: Vec<RestoreRun>,
    /// The naive pipeline mended to give back every row (NULL through CSV as `\\N`).
    pub naive_every_row: Vec<RestoreRun>,
    /// `OWSYNC_BENCH_RESTORE_BASELINE`'s runs, right after owsync's in each run.
    pub baseline: Vec<RestoreRun>,
    pub baseline_bin: Option<String>,
    pub naive_note: String,
    pub sqlite3: String,
    pub psql: String,
    /// The first sync that filled the mirror (`--restore-only`: its only run).
    pub first_sync_secs: Option<f64>,
}

/// One sync of the `--followed` cases, against the bare upsert of the same rows.
#[derive(Debug, Default, Serialize)]
pub struct FollowedRun {
    /// With the tenant's WAL followed (else a fresh child: the walk of every leaf).
    pub followed: bool,
    pub ops: u32,
    pub changed_chats: usize,
    /// Rows upserted or deleted by the bare upsert.
    pub changed_rows: usize,
    pub changed_tables: Vec<String>,
    pub delta_bytes: usize,
    pub upsert_secs: f64,
    pub owsync_secs: f64,
    pub owsync_cpu_secs: f64,
    pub rss_mib: f64,
    pub pages_read: u64,
    /// table -> (capture, pages read)
    pub captures: BTreeMap<String, (String, u64)>,
    /// Times the follower lost track during the round (each makes the next sync walk).
    pub losses: u64,
    pub ok: bool,
    pub note: String,
}

#[derive(Debug, Default, Serialize)]
pub struct FollowedCases {
    pub burst: usize,
    pub first_sync_secs: f64,
    /// `--changed` chats per round, followed and walked alternately.
    pub rounds: Vec<FollowedRun>,
    /// One changed chat per sync: the followed runs, then the walked ones.
    pub single: Vec<FollowedRun>,
    pub unchanged: Option<Unchanged>,
}
