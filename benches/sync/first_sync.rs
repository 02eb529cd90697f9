//! The first sync: every case once per round, interleaved, each on a fresh server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use owsync::devpg::TempPostgres;
use owsync::source::{SliceReader, Source, TableInfo};
use owsync::target::{MirrorTable, encode_field};
use sqlx::{Connection as _, PgConnection};

use crate::Args;
use crate::child::run_child;
use crate::costs::{log_len, log_since, statement_costs};
use crate::peers::{copy_ceiling, pgloader_cases};
use crate::results::{FirstCase, Results, merge_case};
use crate::setup::{OwsyncServer, checkpoint, owsync_server, start_pg};
use crate::util::{fmt_s, mib};
use crate::verify::mirror_counts_ok;

/// The engine's own reader and COPY encoder over the whole file, no PostgreSQL:
/// (read seconds, encode seconds).
pub fn read_encode_only(db: &Path) -> Result<(f64, f64)> {
    let src = Source::open(db)?;
    let tables = owsync::source::discover(&src)?;
    let (mut read, mut enc) = (0.0, 0.0);
    let mut buf = Vec::new();
    for t in &tables {
        let m = MirrorTable::from_source("x", t);
        let mut r = SliceReader::new(&src, t);
        loop {
            let t0 = Instant::now();
            let Some(s) = r.next_slice()? else { break };
            read += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            buf.clear();
            for row in &s.rows {
                for ((_, ty), v) in m.columns.iter().zip(row) {
                    let _ = encode_field(&mut buf, *ty, v);
                    buf.push(b'\t');
                }
                buf.push(b'\n');
            }
            std::hint::black_box(&buf);
            enc += t1.elapsed().as_secs_f64();
        }
    }
    Ok((read, enc))
}

/// What the last first-sync round leaves for the incremental part (fields in the
/// reverse order of their creation, so that they drop in that order).
pub struct Kept {
    /// A connection to owsync's database, to verify and read the mirror.
    pub admin_c: PgConnection,
    /// owsync's server, with the mirror of its first sync.
    pub c: OwsyncServer,
    /// The connection to the COPY ceiling's database, which takes the bare upserts.
    pub conn_a: PgConnection,
    /// The COPY ceiling's server.
    pub pg_a: TempPostgres,
}

/// Runs the first-sync rounds into `res`: the last round's COPY database and owsync
/// mirror (None with no rounds).
pub async fn rounds(
    a: &Args,
    db: &Path,
    tables: &[(TableInfo, MirrorTable)],
    csv: &BTreeMap<String, PathBuf>,
    res: &mut Results,
) -> Result<Option<Kept>> {
    let mut keep: Option<Kept> = None;
    let mut pgloader_exact_works = true;
    let mut pgloader_needs_heap = false;
    for round in 0..a.rounds {
        let last = round + 1 == a.rounds;
        eprintln!("bench: first-sync round {}/{}", round + 1, a.rounds);
        // (a) the COPY-from-file ceiling; its database then takes the bare upserts.
        let pg_a = start_pg(a, &[])?;
        let mut round_cases = Vec::new();
        if a.lz4 {
            match copy_ceiling(&pg_a, "ceiling_lz4", true, tables, csv, &res.data).await {
                Ok((case, c)) => {
                    c.close().await?;
                    round_cases.push(case);
                }
                Err(e) => round_cases.push(FirstCase {
                    name: "copy_lz4".into(),
                    what: "COPY, lz4".into(),
                    note: format!("failed: {e:#}"),
                    ..Default::default()
                }),
            }
        }
        let (case, conn_a) = copy_ceiling(&pg_a, "ceiling", false, tables, csv, &res.data).await?;
        let copy_secs = case.secs;
        round_cases.insert(0, case);

        // (b) pgloader, on its own server.
        if a.pgloader {
            let cases =
                pgloader_cases(a, db, tables, &res.data, pgloader_exact_works, &mut pgloader_needs_heap).await?;
            pgloader_exact_works &= cases.first().is_some_and(|c| c.name == "pgloader" && c.ok);
            round_cases.extend(cases);
        }

        // owsync's first sync, in a child process, on its own server.
        let c = owsync_server(a, db, &[]).await?;
        checkpoint(&c.pg)?;
        let from = log_len(&c.pg);
        let first = run_child(&c.sync_url)?;
        let costs = statement_costs(&log_since(&c.pg, from), &first);
        let mut admin_c = PgConnection::connect(&c.pg.admin_url(&c.db)).await?;
        let bad = mirror_counts_ok(&mut admin_c, tables, db).await?;
        round_cases.push(FirstCase {
            name: "owsync".into(),
            what: "**owsync** first sync: `sync_tenant` in a child process (two tables at once, one \
                   transaction and one COPY straight into the empty mirror table per table)"
                .into(),
            secs: Some(first.secs),
            rss_mib: Some(mib(first.hwm_kib)),
            ok: bad.is_empty() && first.failed.is_empty(),
            note: if bad.is_empty() && first.failed.is_empty() {
                format!("rows verified; RSS before the sync {:.1} MiB", mib(first.hwm_before_kib))
            } else {
                format!("counts: {bad}; failed: {:?}", first.failed)
            },
            ..Default::default()
        });
        res.owsync_first_costs = Some(costs);

        for case in round_cases {
            eprintln!("bench:   {:<20} {:>7} s  {}", case.name, fmt_s(case.secs), case.note);
            merge_case(&mut res.first, case, copy_secs);
        }
        if last {
            keep = Some(Kept { admin_c, c, conn_a, pg_a });
        } else {
            conn_a.close().await?;
            admin_c.close().await?;
        }
    }
    Ok(keep)
}
