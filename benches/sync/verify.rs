//! Row-count checks of the baselines' plain tables and of owsync's mirror against the
//! source.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use owsync::fixtures;
use owsync::source::TableInfo;
use owsync::sql::quote_ident;
use owsync::target::{COL_DELETED, MirrorTable};
use sqlx::PgConnection;

use crate::MIRROR_SCHEMA;
use crate::results::Dataset;
use crate::util::count;

/// Compares each table's count (the query `count_sql` builds) with `want`; the
/// mismatches as `table: got != want`, joined (empty when every count matches).
async fn compare(
    conn: &mut PgConnection,
    tables: &[(TableInfo, MirrorTable)],
    want: impl Fn(&str) -> i64,
    count_sql: impl Fn(&TableInfo, &MirrorTable) -> String,
    lenient: bool,
) -> Result<String> {
    let mut bad = Vec::new();
    for (info, m) in tables {
        let got = match count(conn, count_sql(info, m)).await {
            Ok(n) => n,
            Err(_) if lenient => -1,
            Err(e) => return Err(e),
        };
        let want = want(&info.name);
        if got != want {
            bad.push(format!("{}: {got} != {want}", info.name));
        }
    }
    Ok(bad.join(", "))
}

fn plain(_: &TableInfo, m: &MirrorTable) -> String {
    format!("SELECT count(*) FROM {}", m.qualified())
}

fn live_counts(src: &Path) -> Result<impl Fn(&str) -> i64> {
    let counts: BTreeMap<String, u64> = fixtures::table_counts(src)?;
    Ok(move |t: &str| counts.get(t).copied().unwrap_or(0) as i64)
}

pub async fn plain_counts_ok(
    conn: &mut PgConnection,
    tables: &[(TableInfo, MirrorTable)],
    ds: &Dataset,
) -> Result<String> {
    compare(conn, tables, |t| ds.counts.get(t).copied().unwrap_or(0) as i64, plain, false).await
}

pub async fn mirror_counts_ok(
    conn: &mut PgConnection,
    tables: &[(TableInfo, MirrorTable)],
    src: &Path,
) -> Result<String> {
    let live = |info: &TableInfo, _: &MirrorTable| {
        format!(
            "SELECT count(*) FROM {}.{} WHERE {} IS NOT TRUE",
            quote_ident(MIRROR_SCHEMA),
            quote_ident(&info.name),
            quote_ident(COL_DELETED)
        )
    };
    compare(conn, tables, live_counts(src)?, live, true).await
}

pub async fn plain_counts_ok_live(
    conn: &mut PgConnection,
    tables: &[(TableInfo, MirrorTable)],
    src: &Path,
) -> Result<String> {
    compare(conn, tables, live_counts(src)?, plain, false).await
}
