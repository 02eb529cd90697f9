//! Row-count checks of the baselines' plain tables and of owsync's mirror against the
//! source.

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

pub async fn plain_counts_ok(
    conn: &mut PgConnection,
    tables: &[(TableInfo, MirrorTable)],
    ds: &Dataset,
) -> Result<String> {
    let mut bad = Vec::new();
    for (info, m) in tables {
        let n = count(conn, format!("SELECT count(*) FROM {}", m.qualified())).await?;
        let want = ds.counts.get(&info.name).copied().unwrap_or(0) as i64;
        if n != want {
            bad.push(format!("{}: {n} != {want}", info.name));
        }
    }
    Ok(bad.join(", "))
}

pub async fn mirror_counts_ok(
    conn: &mut PgConnection,
    tables: &[(TableInfo, MirrorTable)],
    src: &Path,
) -> Result<String> {
    let counts = fixtures::table_counts(src)?;
    let mut bad = Vec::new();
    for (info, _) in tables {
        let q = format!(
            "SELECT count(*) FROM {}.{} WHERE {} IS NOT TRUE",
            quote_ident(MIRROR_SCHEMA),
            quote_ident(&info.name),
            quote_ident(COL_DELETED)
        );
        let n = count(conn, q).await.unwrap_or(-1);
        let want = counts.get(&info.name).copied().unwrap_or(0) as i64;
        if n != want {
            bad.push(format!("{}: {n} != {want}", info.name));
        }
    }
    Ok(bad.join(", "))
}

pub async fn plain_counts_ok_live(
    conn: &mut PgConnection,
    tables: &[(TableInfo, MirrorTable)],
    src: &Path,
) -> Result<String> {
    let counts = fixtures::table_counts(src)?;
    let mut bad = Vec::new();
    for (info, m) in tables {
        let n = count(conn, format!("SELECT count(*) FROM {}", m.qualified())).await?;
        let want = counts.get(&info.name).copied().unwrap_or(0) as i64;
        if n != want {
            bad.push(format!("{}: {n} != {want}", info.name));
        }
    }
    Ok(bad.join(", "))
}
