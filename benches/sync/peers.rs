//! The baselines of the first sync: the COPY-from-file ceiling and pgloader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use owsync::devpg::TempPostgres;
use owsync::source::TableInfo;
use owsync::sql::quote_ident;
use owsync::target::{COL_ROWID, MirrorTable};
use rusqlite::Connection;
use sqlx::{Connection as _, PgConnection};

use crate::results::{Dataset, FirstCase};
use crate::setup::{checkpoint, start_pg};
use crate::util::{count, exec, mib, sh};
use crate::verify::plain_counts_ok;
use crate::{Args, PGLOADER_OPTS};

/// The baseline's target: the mirror's column types and primary key, nothing else.
pub fn plain_ddl(t: &MirrorTable) -> String {
    let mut cols = Vec::new();
    if t.by_rowid {
        cols.push(format!("{} bigint", quote_ident(COL_ROWID)));
    }
    cols.extend(t.columns.iter().map(|(n, ty)| format!("{} {}", quote_ident(n), ty.sql())));
    let key: Vec<String> = t.key.iter().map(|k| quote_ident(k)).collect();
    cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
    format!("CREATE TABLE {} ({})", t.qualified(), cols.join(", "))
}

pub async fn create_plain_tables(conn: &mut PgConnection, tables: &[(TableInfo, MirrorTable)]) -> Result<()> {
    for (_, m) in tables {
        exec(conn, plain_ddl(m)).await?;
    }
    Ok(())
}

/// Server-side `COPY t FROM 'file' CSV` of every table into pre-created plain tables,
/// only the COPYs timed. Returns the open connection for the upsert baseline.
pub async fn copy_ceiling(
    pg: &TempPostgres,
    prefix: &str,
    lz4: bool,
    tables: &[(TableInfo, MirrorTable)],
    csv: &BTreeMap<String, PathBuf>,
    ds: &Dataset,
) -> Result<(FirstCase, PgConnection)> {
    let db = pg.create_database(prefix)?;
    let mut conn = PgConnection::connect(&pg.admin_url(&db)).await?;
    create_plain_tables(&mut conn, tables).await?;
    if lz4 {
        exec(&mut conn, "SET default_toast_compression = lz4".into()).await?;
    }
    checkpoint(pg)?;
    let t0 = Instant::now();
    for (info, m) in tables {
        let file = csv[&info.name].display().to_string().replace('\'', "''");
        exec(&mut conn, format!("COPY {} FROM '{file}' (FORMAT csv)", m.qualified())).await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let bad = plain_counts_ok(&mut conn, tables, ds).await?;
    let case = FirstCase {
        name: if lz4 { "copy_lz4".into() } else { "copy".into() },
        what: if lz4 {
            "same COPY, `default_toast_compression = lz4` (informative)".into()
        } else {
            "**COPY-from-file ceiling**: server-side `COPY t FROM 'file' (FORMAT csv)` per table into \
             pre-created tables with the mirror's types and primary keys (CSV export untimed)"
                .into()
        },
        secs: Some(secs),
        rss_mib: None,
        ok: bad.is_empty(),
        note: if bad.is_empty() { "server-side; no client".into() } else { format!("row counts differ: {bad}") },
        ..Default::default()
    };
    Ok((case, conn))
}

/// A copy of the source without the indexes on expressions (Open WebUI 0.12.4 has
/// `uq_user_email_lower ON user (lower(email))`), which pgloader cannot read: its
/// SQLite catalog query dies with "The value NIL is not of type PGLOADER.CATALOG:COLUMN".
pub fn without_expression_indexes(db: &Path) -> Result<(PathBuf, Vec<String>)> {
    let copy = db.with_file_name("webui-pgloader.db");
    let _ = std::fs::remove_file(&copy);
    let c = Connection::open(db)?;
    c.execute("VACUUM INTO ?1", [copy.display().to_string()])?;
    drop(c);
    let c = Connection::open(&copy)?;
    let names: Vec<String> = {
        let mut st = c.prepare(
            "SELECT DISTINCT il.name FROM sqlite_schema s, pragma_index_list(s.name) il, pragma_index_xinfo(il.name) x
             WHERE s.type = 'table' AND x.cid = -2",
        )?;
        st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
    };
    for n in &names {
        c.execute_batch(&format!("DROP INDEX {}", quote_ident(n)))?;
    }
    c.close().map_err(|(_, e)| e)?;
    Ok((copy, names))
}

/// Runs pgloader under GNU time on its own fresh server: (seconds, peak RSS MiB,
/// exit status, row-count mismatches).
pub async fn pgloader_run(
    a: &Args,
    big_heap: bool,
    file: &Path,
    log_file: &Path,
    tables: &[(TableInfo, MirrorTable)],
    ds: &Dataset,
) -> Result<(f64, Option<f64>, std::process::ExitStatus, Vec<String>)> {
    let pg = start_pg(a, &[])?;
    let db = pg.create_database("pgloader")?;
    checkpoint(&pg)?;
    let url = format!("postgresql://postgres:{}@127.0.0.1:{}/{db}", pg.admin_password(), pg.port());
    let time_file = log_file.with_extension("time");
    let log = std::fs::File::create(log_file)?;
    let t0 = Instant::now();
    let mut child = Command::new("/usr/bin/time")
        .arg("-v")
        .arg("-o")
        .arg(&time_file)
        .arg("pgloader")
        .args(if big_heap { &["--dynamic-space-size", "4096"][..] } else { &[] })
        .args(PGLOADER_OPTS)
        .arg(format!("sqlite://{}", file.display()))
        .arg(&url)
        .stdin(Stdio::null()) // on a crash SBCL's debugger then exits instead of waiting
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("run /usr/bin/time pgloader (apt-get install -y time pgloader)")?;
    // After a crash SBCL may sit in its debugger instead of exiting: once the log shows
    // the crash, give it a few seconds, then stop it (GNU time's child, then time).
    let mut crashed_at: Option<f64> = None;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        let now = t0.elapsed().as_secs_f64();
        if crashed_at.is_none()
            && std::fs::read_to_string(log_file)
                .is_ok_and(|t| t.contains("KABOOM") || t.contains("Heap exhausted") || t.contains("fatal error"))
        {
            crashed_at = Some(now);
        }
        if crashed_at.is_some_and(|c| now - c > 5.0) || now > 7200.0 {
            let pid = child.id().to_string();
            let _ = Command::new("pkill").args(["-TERM", "-P", &pid]).status();
            std::thread::sleep(std::time::Duration::from_secs(2));
            let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let secs = crashed_at.unwrap_or_else(|| t0.elapsed().as_secs_f64());
    let timing = std::fs::read_to_string(&time_file).unwrap_or_default();
    let rss = timing
        .lines()
        .find(|l| l.contains("Maximum resident set size"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(mib);
    let mut conn = PgConnection::connect(&pg.admin_url(&db)).await?;
    let mut bad = Vec::new();
    for (info, _) in tables {
        let want = ds.counts.get(&info.name).copied().unwrap_or(0) as i64;
        let q = format!("SELECT count(*) FROM public.{}", quote_ident(&info.name));
        match count(&mut conn, q).await {
            Ok(n) if n == want => {}
            Ok(n) => bad.push(format!("{} {n}/{want}", info.name)),
            Err(_) => bad.push(format!("{} missing", info.name)),
        }
    }
    conn.close().await?;
    Ok((secs, rss, status, bad))
}

pub fn pgloader_errors(log_file: &Path) -> String {
    let text = std::fs::read_to_string(log_file).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        let pick = if l.starts_with("KABOOM") {
            Some("crashed (KABOOM)".to_string())
        } else if l.starts_with("Heap exhausted, game over") {
            Some("SBCL heap exhausted (1 GiB), game over".to_string())
        } else if l.starts_with("is not of type") || l.starts_with("PGLOADER.CATALOG") {
            Some(l.to_string())
        } else if l.starts_with("DETAIL: Token") || l.starts_with("COPY ") && l.contains("column") {
            Some(l.replace('|', "\\|"))
        } else {
            None
        };
        if let Some(p) = pick
            && !out.contains(&p)
        {
            out.push(p);
        }
    }
    out.truncate(4);
    out.join("; ")
}

pub async fn pgloader_cases(
    a: &Args,
    db_path: &Path,
    tables: &[(TableInfo, MirrorTable)],
    ds: &Dataset,
    try_exact: bool,
    needs_heap: &mut bool,
) -> Result<Vec<FirstCase>> {
    let what = "pgloader `--with \"prefetch rows = 1000\" --with \"batch rows = 1000\"` (the peer's working options; \
                creates its own tables and indexes; whole process timed)";
    if sh("pgloader", &["--version"]).is_empty() {
        return Ok(vec![FirstCase {
            name: "pgloader".into(),
            what: what.into(),
            note: "pgloader not installed (apt-get install -y pgloader; scripts/bench.sh does it)".into(),
            ..Default::default()
        }]);
    }
    let run = db_path.parent().unwrap_or(Path::new("."));
    let mut cases = Vec::new();
    let mut ok = false;
    if try_exact {
        let log = run.join("pgloader.log");
        let (secs, rss, status, bad) = pgloader_run(a, false, db_path, &log, tables, ds).await?;
        ok = status.success() && bad.is_empty();
        cases.push(FirstCase {
            name: if ok { "pgloader".into() } else { "pgloader_exact".into() },
            what: format!("{what}, on the same file"),
            secs: if status.success() { Some(secs) } else { None },
            rss_mib: rss,
            ok,
            note: if ok {
                "rows verified".into()
            } else {
                format!(
                    "{} after {secs:.1} s: {}{}",
                    if status.success() { "finished" } else { "**failed**" },
                    pgloader_errors(&log),
                    if bad.is_empty() { String::new() } else { format!("; row counts {}", bad.len()) }
                )
            },
            ..Default::default()
        });
    }
    if !ok {
        let (copy, dropped) = without_expression_indexes(db_path)?;
        let log2 = run.join("pgloader-fallback.log");
        let mut attempt = 0;
        loop {
            let big_heap = *needs_heap;
            let (secs, rss, status, bad) = pgloader_run(a, big_heap, &copy, &log2, tables, ds).await?;
            let heap_died = std::fs::read_to_string(&log2).is_ok_and(|t| t.contains("Heap exhausted"));
            let errors = pgloader_errors(&log2);
            cases.push(FirstCase {
                name: if heap_died && !big_heap { "pgloader_small_heap".into() } else { "pgloader".into() },
                what: format!(
                    "pgloader, same options{}, on a copy of the file without the expression index{} it cannot \
                     read ({})",
                    if big_heap { " + `--dynamic-space-size 4096` (4 GiB heap)" } else { "" },
                    if dropped.len() == 1 { "" } else { "es" },
                    dropped.join(", ")
                ),
                secs: (!heap_died).then_some(secs),
                rss_mib: rss,
                ok: status.success() && bad.is_empty(),
                note: format!(
                    "{}exit {}; {}{}",
                    if heap_died { format!("**died** after {secs:.1} s; ") } else { String::new() },
                    status.code().unwrap_or(-1),
                    if bad.is_empty() { "rows verified".to_string() } else { format!("rows lost: {}", bad.join(", ")) },
                    if errors.is_empty() { String::new() } else { format!("; {errors}") }
                ),
                ..Default::default()
            });
            attempt += 1;
            if heap_died && !big_heap && attempt < 2 {
                *needs_heap = true; // the peer's other way around the crash
                continue;
            }
            break;
        }
    }
    Ok(cases)
}
