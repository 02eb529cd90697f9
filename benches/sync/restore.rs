//! Restore (issue 12, item 2): `owsyncctl restore` of the synced tenant, run as the real
//! binary, against the naive pipeline (`psql \copy (SELECT ...) TO` CSV per table, then
//! `sqlite3 .import` into the source's DDL), interleaved, each with its peak RSS from
//! GNU time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use owsync::fixtures;
use owsync::source::TableInfo;
use owsync::sql::quote_ident;
use owsync::target::{COL_DELETED, MirrorTable};
use rusqlite::{Connection, OpenFlags};

use crate::results::{RestoreCases, RestoreRun};
use crate::util::{mib, sh};
use crate::{CLIENT, CLUSTER, MIRROR_SCHEMA};

/// What a restore run needs: the source it must equal, its tables, the mirror's
/// database (an admin URL, as an operator restores with) and a scratch directory.
pub struct Restore<'a> {
    pub src: &'a Path,
    pub tables: &'a [(TableInfo, MirrorTable)],
    pub url: String,
    pub psql: PathBuf,
    pub dir: PathBuf,
    /// Another `owsyncctl` to run the same way in every run (`OWSYNC_BENCH_RESTORE_BASELINE`),
    /// to compare two builds of the restore in one run.
    pub baseline: Option<PathBuf>,
}

const GNU_TIME: &str = "/usr/bin/time";

/// Runs `cmd` under GNU time when it is installed: (wall seconds, peak RSS MiB, output).
fn timed(cmd: &mut Command, time_file: &Path) -> Result<(f64, Option<f64>, Output)> {
    let have_time = Path::new(GNU_TIME).exists();
    let mut run = if have_time {
        let mut c = Command::new(GNU_TIME);
        c.arg("-v").arg("-o").arg(time_file).arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                c.env(k, v);
            }
        }
        c
    } else {
        std::mem::replace(cmd, Command::new("true"))
    };
    run.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let out = run.output().with_context(|| format!("run {}", run.get_program().display()))?;
    let secs = t0.elapsed().as_secs_f64();
    let rss = have_time
        .then(|| std::fs::read_to_string(time_file).unwrap_or_default())
        .and_then(|t| {
            t.lines()
                .find(|l| l.contains("Maximum resident set size"))
                .and_then(|l| l.rsplit(':').next())
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .map(mib);
    Ok((secs, rss, out))
}

fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let lines: Vec<&str> = s.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// The tables whose row counts in `file` differ from the source's, as `table got/want`.
fn count_mismatches(file: &Path, want: &BTreeMap<String, u64>) -> Result<Vec<String>> {
    let got = fixtures::table_counts(file)?;
    Ok(want
        .iter()
        .filter(|(t, n)| got.get(*t) != Some(n))
        .map(|(t, n)| format!("{t} {}/{n}", got.get(t).map_or("missing".into(), std::string::ToString::to_string)))
        .collect())
}

impl Restore<'_> {
    /// `owsyncctl restore bench --to FILE` (integrity_check and WAL included, as it ships),
    /// with the `owsyncctl` at `bin`.
    fn owsync(&self, bin: &Path, want: &BTreeMap<String, u64>) -> Result<RestoreRun> {
        let out = self.dir.join("restored-owsync.db");
        let _ = std::fs::remove_file(&out);
        let mut cmd = Command::new(bin);
        cmd.args(["--cluster", CLUSTER, "restore", CLIENT, "--to"]).arg(&out).env("OWSYNC_DATABASE_URL", &self.url);
        let (secs, rss_mib, o) = timed(&mut cmd, &self.dir.join("owsync.time"))?;
        if !o.status.success() {
            bail!("owsyncctl restore failed ({}): {}", o.status, tail(&o.stderr));
        }
        let bytes = std::fs::metadata(&out)?.len();
        let bad = count_mismatches(&out, want)?;
        for f in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{f}", out.display()));
        }
        Ok(RestoreRun {
            secs,
            rss_mib,
            bytes,
            rows: want.values().sum(),
            ok: bad.is_empty(),
            note: if bad.is_empty() { "row counts = source".into() } else { format!("counts: {}", bad.join(", ")) },
            parts: Vec::new(),
        })
    }

    /// The source's DDL as `sqlite3 src.db .schema` gives it, less SQLite's own tables, in
    /// one transaction as `sqlite3 src.db .dump` writes it: (its tables, the rest: indexes,
    /// triggers, views).
    fn source_ddl(&self) -> Result<(String, String)> {
        let c = Connection::open_with_flags(self.src, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let mut st = c.prepare(
            "SELECT type = 'table', sql FROM sqlite_schema WHERE sql IS NOT NULL \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid",
        )?;
        let ddl: Vec<(bool, String)> =
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        let txn = |table: bool| {
            let body: String = ddl.iter().filter(|(t, _)| *t == table).map(|(_, d)| format!("{d};\n")).collect();
            format!("BEGIN;\n{body}COMMIT;\n")
        };
        Ok((txn(true), txn(false)))
    }

    /// One psql exporting every table to CSV (a `-c` per table), then one sqlite3 creating
    /// the source's DDL and importing every CSV: both timed, their peak RSS the larger.
    /// `every_row`: the same pipeline mended so that it gives back every row: CSV has no
    /// NULL, so psql writes NULL as `\N` and each table is imported through a view whose
    /// INSTEAD OF trigger turns `\N` back into NULL; the indexes and triggers come after
    /// the rows. The cheapest mend found: every row is written once (an `UPDATE ... SET c =
    /// NULL` afterwards writes them twice, and fails on a UNIQUE column), and building the
    /// indexes afterwards took half the time of filling them row by row (10k chats: 1.7 s
    /// against 3.2 s in sqlite3).
    fn naive(&self, want: &BTreeMap<String, u64>, every_row: bool) -> Result<RestoreRun> {
        let csv = self.dir.join("naive-csv");
        let db = self.dir.join("restored-naive.db");
        let _ = std::fs::remove_dir_all(&csv);
        let _ = std::fs::remove_file(&db);
        std::fs::create_dir_all(&csv)?;
        let mut psql = Command::new(&self.psql);
        psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url]);
        let (tables_ddl, rest_ddl) = self.source_ddl()?;
        let mut script = if every_row { tables_ddl.clone() } else { format!("{tables_ddl}{rest_ddl}") };
        for (info, m) in self.tables {
            let cols: Vec<String> = m.columns.iter().map(|(c, _)| quote_ident(c)).collect();
            let file = csv.join(format!("{}.csv", info.name));
            psql.arg("-c").arg(format!(
                "\\copy (SELECT {} FROM {}.{} WHERE NOT {}) TO '{}' {}",
                cols.join(", "),
                quote_ident(MIRROR_SCHEMA),
                quote_ident(&info.name),
                quote_ident(COL_DELETED),
                file.display(),
                if every_row { "(FORMAT csv, NULL '\\N')" } else { "CSV" }
            ));
            if every_row {
                script.push_str(&null_view(&info.name, &cols));
                script.push_str(&format!(".import --csv --skip 0 {} {}\n", file.display(), view_name(&info.name)));
                script.push_str(&format!("DROP VIEW {};\n", quote_ident(&view_name(&info.name))));
            } else {
                script.push_str(&format!(".import --csv --skip 0 {} {}\n", file.display(), info.name));
            }
        }
        if every_row {
            script.push_str(&rest_ddl);
        }
        let script_file = self.dir.join("naive-import.sql");
        std::fs::write(&script_file, script)?;
        let (export_secs, export_rss, o) = timed(&mut psql, &self.dir.join("psql.time"))?;
        if !o.status.success() {
            bail!("psql \\copy failed ({}): {}", o.status, tail(&o.stderr));
        }
        let mut sqlite = Command::new("sqlite3");
        sqlite.arg(&db).arg(format!(".read {}", script_file.display()));
        let (import_secs, import_rss, o) = timed(&mut sqlite, &self.dir.join("sqlite3.time"))?;
        let rejected = String::from_utf8_lossy(&o.stderr).lines().filter(|l| l.contains("INSERT failed")).count();
        let bytes = std::fs::metadata(&db)?.len();
        let bad = count_mismatches(&db, want)?;
        let _ = std::fs::remove_dir_all(&csv);
        let _ = std::fs::remove_file(&db);
        Ok(RestoreRun {
            secs: export_secs + import_secs,
            rss_mib: match (export_rss, import_rss) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            bytes,
            rows: want.values().sum(),
            ok: bad.is_empty(),
            note: if bad.is_empty() {
                "row counts = source".into()
            } else {
                format!(
                    "{rejected} rows rejected by sqlite3 (CSV has no NULL: a NULL in a UNIQUE column arrives as ''); \
                     counts: {}",
                    bad.join(", ")
                )
            },
            parts: vec![("psql \\copy".into(), export_secs), ("sqlite3 DDL + .import".into(), import_secs)],
        })
    }
}

/// The view a table's CSV is imported through by the mended naive pipeline.
fn view_name(table: &str) -> String {
    format!("{table}_csv_import")
}

/// A view over `table` whose INSTEAD OF INSERT trigger writes each row into `table` with
/// `\N` turned into NULL.
fn null_view(table: &str, cols: &[String]) -> String {
    let (t, v) = (quote_ident(table), quote_ident(&view_name(table)));
    let values: Vec<String> = cols.iter().map(|c| format!("NULLIF(new.{c}, '\\N')")).collect();
    format!(
        "CREATE VIEW {v} AS SELECT {cols} FROM {t};\n\
         CREATE TRIGGER {v} INSTEAD OF INSERT ON {v} BEGIN INSERT INTO {t} ({cols}) VALUES ({values}); END;\n",
        cols = cols.join(", "),
        values = values.join(", ")
    )
}

/// `runs` interleaved runs of each case (the order reversed every other run).
pub fn cases(r: &Restore<'_>, runs: usize) -> Result<RestoreCases> {
    std::fs::create_dir_all(&r.dir)?;
    let want = fixtures::table_counts(r.src)?;
    let mut res = RestoreCases {
        sqlite3: sh("sqlite3", &["--version"]).split_whitespace().next().unwrap_or("").to_string(),
        psql: sh(&r.psql.display().to_string(), &["--version"]),
        baseline_bin: r.baseline.as_ref().map(|b| b.display().to_string()),
        ..Default::default()
    };
    if res.sqlite3.is_empty() {
        res.naive_note = "sqlite3 not installed (scripts/ensure-deps.sh sqlite3): naive pipeline skipped".into();
    }
    settle(r)?;
    let owsync = Path::new(env!("CARGO_BIN_EXE_owsyncctl"));
    for i in 0..runs {
        eprintln!("bench: restore run {}/{runs}", i + 1);
        let mut order = [Case::Owsync, Case::Baseline, Case::Naive, Case::NaiveEveryRow];
        if i % 2 == 1 {
            order.reverse();
        }
        for case in order {
            match case {
                Case::Owsync => res.owsync.push(r.owsync(owsync, &want)?),
                Case::Baseline => {
                    if let Some(b) = &r.baseline {
                        res.baseline.push(r.owsync(b, &want)?);
                    }
                }
                Case::Naive if !res.sqlite3.is_empty() => res.naive.push(r.naive(&want, false)?),
                Case::NaiveEveryRow if !res.sqlite3.is_empty() => res.naive_every_row.push(r.naive(&want, true)?),
                Case::Naive | Case::NaiveEveryRow => {}
            }
        }
        let last = |v: &Vec<RestoreRun>| v.last().map_or("—".into(), |x| format!("{:.2} s", x.secs));
        eprintln!(
            "bench:   owsync {}  naive {}  naive, every row {}  other build {}",
            last(&res.owsync),
            last(&res.naive),
            last(&res.naive_every_row),
            last(&res.baseline)
        );
    }
    Ok(res)
}

/// Brings the freshly filled mirror to the state of one that has existed for a while
/// before the timed runs: `VACUUM` (hint bits set, so the first reader does not write
/// them) and `CHECKPOINT` (the first sync's WAL written out, not by the first restore's
/// time; that first run took 14-15 s at 100k chats against 11 s for the next ones).
fn settle(r: &Restore<'_>) -> Result<()> {
    let o = Command::new(&r.psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &r.url, "-c", "VACUUM", "-c", "CHECKPOINT"])
        .output()
        .context("run psql")?;
    if !o.status.success() {
        bail!("psql VACUUM, CHECKPOINT failed ({}): {}", o.status, tail(&o.stderr));
    }
    Ok(())
}

/// The restores each run measures.
#[derive(Clone, Copy)]
enum Case {
    Owsync,
    Baseline,
    Naive,
    NaiveEveryRow,
}
