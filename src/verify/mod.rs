//! `owsyncctl verify`: proves a mirror equals its source, row by row and column by
//! column, streaming both sides and comparing per-row digests; lists every difference
//! by table, key and column.

mod canon;

use std::collections::HashMap;
use std::path::PathBuf;

use futures_util::TryStreamExt;
use sqlx::{PgPool, Row};

use crate::source::{self, RowKey, SliceReader, Source, TableInfo, Value};
use crate::spec::{ClientSyncSpec, table_selected};
use crate::sql::quote_ident;
use crate::target::{COL_DELETED, COL_ROWID, MirrorTable};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("tenant {client}: {source}")]
    Source { client: String, source: source::SourceError },
    #[error("tenant {client}, table {table}: reading the mirror: {source}")]
    Mirror { client: String, table: String, source: sqlx::Error },
    #[error("tenant {client}: {message}")]
    Task { client: String, message: String },
    #[error("tenant {client}: {source}")]
    Store { client: String, source: crate::store::StoreError },
}

/// How many differing rows per table are described column by column.
const DETAIL_LIMIT: usize = 20;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct TableDiff {
    pub table: String,
    pub source_rows: u64,
    pub mirror_rows: u64,
    /// Keys in the source but not (live) in the mirror.
    pub missing: Vec<String>,
    /// Live mirror keys the source does not have.
    pub extra: Vec<String>,
    /// Keys whose values differ, with the differing columns (for the first few).
    pub differing: Vec<(String, Vec<String>)>,
    /// Source values held in `sync_metadata.quarantine` (NULL, or no row, in the mirror).
    pub quarantined: u64,
}

impl TableDiff {
    pub fn is_equal(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.differing.is_empty()
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub tables: Vec<TableDiff>,
}

impl VerifyReport {
    pub fn is_equal(&self) -> bool {
        self.tables.iter().all(TableDiff::is_equal)
    }
}

/// Canonical source rows of one table: key text -> (digest, canonical columns kept only
/// for detail lookups later).
struct SourceSide {
    info: TableInfo,
    rows: HashMap<String, [u8; 16]>,
    quarantined: u64,
}

/// Open quarantine entries: (table, row key, column) -> raw value.
type Quarantine = HashMap<(String, String, String), Option<Vec<u8>>>;

/// The raw bytes the quarantine keeps of a value (as the sync stores them).
fn raw(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::Integer(i) => Some(i.to_string().into_bytes()),
        Value::Real(f) => {
            let mut b = Vec::new();
            crate::target::fmt_f64(&mut b, *f);
            Some(b)
        }
        Value::Text(b) | Value::Blob(b) => Some(b.clone()),
    }
}

fn source_side(
    path: PathBuf,
    spec: ClientSyncSpec,
    schema: String,
    quarantine: Quarantine,
) -> Result<Vec<SourceSide>, source::SourceError> {
    let src = Source::open(&path)?;
    let mut out = Vec::new();
    for info in source::discover(&src)?.into_iter().filter(|t| table_selected(&spec.tables, &t.name)) {
        let mt = MirrorTable::from_source(&schema, &info);
        let key_idx = key_positions(&info);
        let mut rows = HashMap::new();
        let mut quarantined = 0;
        let has_q = quarantine.keys().any(|(t, _, _)| t == &info.name);
        let mut reader = SliceReader::new(&src, &info);
        while let Some(slice) = reader.next_slice()? {
            'rows: for (i, row) in slice.rows.iter().enumerate() {
                let mut canon: Vec<Option<Vec<u8>>> =
                    mt.columns.iter().zip(row).map(|((_, ty), v)| canon::source(*ty, v)).collect();
                let key = match &key_idx {
                    None => format!("rowid {}", slice.rowids[i]),
                    Some(idx) => canon::key_text(&idx.iter().map(|&k| canon[k].clone()).collect::<Vec<_>>()),
                };
                if has_q {
                    // The sync's key text for quarantine entries is the raw key.
                    let qkey = match &key_idx {
                        None => key.clone(),
                        Some(idx) => {
                            crate::target::row_key_text(idx.iter().map(|&k| &row[k]), slice.rowids.get(i).copied())
                        }
                    };
                    for (j, (col, _)) in mt.columns.iter().enumerate() {
                        if quarantine.get(&(info.name.clone(), qkey.clone(), col.clone())) == Some(&raw(&row[j])) {
                            quarantined += 1;
                            if mt.key.contains(col) {
                                continue 'rows;
                            }
                            canon[j] = None;
                        }
                    }
                }
                let key = key.strip_prefix("rowid ").map(str::to_string).unwrap_or(key);
                rows.insert(key, canon::row_hash(canon.iter()));
            }
        }
        out.push(SourceSide { info, rows, quarantined });
    }
    Ok(out)
}

/// Positions of the primary key columns, or `None` for rowid tables.
fn key_positions(info: &TableInfo) -> Option<Vec<usize>> {
    match &info.key {
        RowKey::Rowid => None,
        RowKey::Primary(k) => Some(k.iter().filter_map(|c| info.columns.iter().position(|x| &x.name == c)).collect()),
    }
}

/// Compares every selected table of a tenant's source with its mirror.
pub async fn verify(
    pool: &PgPool,
    cluster: &str,
    client: &str,
    spec: &ClientSyncSpec,
) -> Result<VerifyReport, VerifyError> {
    let schema = spec.mirror_schema(client);
    let q: Quarantine = crate::store::quarantine::open_values(pool, cluster, client)
        .await
        .map_err(|source| VerifyError::Store { client: client.into(), source })?
        .into_iter()
        .collect();
    let (path, sp, sc) = (PathBuf::from(&spec.source.path), spec.clone(), schema.clone());
    let sides = tokio::task::spawn_blocking(move || source_side(path, sp, sc, q))
        .await
        .map_err(|e| VerifyError::Task { client: client.into(), message: e.to_string() })?
        .map_err(|source| VerifyError::Source { client: client.into(), source })?;
    let mut report = VerifyReport::default();
    for side in sides {
        report.tables.push(compare_table(pool, client, &schema, side, spec).await?);
    }
    Ok(report)
}

async fn compare_table(
    pool: &PgPool,
    client: &str,
    schema: &str,
    mut side: SourceSide,
    spec: &ClientSyncSpec,
) -> Result<TableDiff, VerifyError> {
    let mt = MirrorTable::from_source(schema, &side.info);
    let mut diff = TableDiff {
        table: side.info.name.clone(),
        source_rows: side.rows.len() as u64,
        quarantined: side.quarantined,
        ..Default::default()
    };
    let key_idx = key_positions(&side.info);
    let mut select: Vec<String> = Vec::new();
    if mt.by_rowid {
        select.push(format!("{}::text", quote_ident(COL_ROWID)));
    }
    select.extend(mt.columns.iter().map(|(c, _)| format!("{}::text", quote_ident(c))));
    let sql =
        format!("SELECT {} FROM {} WHERE {} IS NOT TRUE", select.join(", "), mt.qualified(), quote_ident(COL_DELETED));
    let off = usize::from(mt.by_rowid);
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(pool);
    let mirror_err = |source| VerifyError::Mirror { client: client.into(), table: side.info.name.clone(), source };
    let mut differing_keys = Vec::new();
    loop {
        let row = match rows.try_next().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            // A table the mirror never got: every source row is missing.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => break,
            Err(e) => return Err(mirror_err(e)),
        };
        diff.mirror_rows += 1;
        let canon: Vec<Option<Vec<u8>>> = mt
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| canon::mirror(*ty, row.get::<Option<&str>, _>(i + off)))
            .collect();
        let key = match &key_idx {
            None => row.get::<Option<String>, _>(0).unwrap_or_default(),
            Some(idx) => canon::key_text(&idx.iter().map(|&k| canon[k].clone()).collect::<Vec<_>>()),
        };
        match side.rows.remove(&key) {
            None => diff.extra.push(key),
            Some(h) if h != canon::row_hash(canon.iter()) => differing_keys.push((key, canon)),
            Some(_) => {}
        }
    }
    drop(rows);
    diff.missing = side.rows.into_keys().collect();
    diff.missing.sort();
    if spec.deletes == crate::spec::DeletePolicy::Ignore {
        // Rows deleted at the source are meant to stay live in the mirror.
        diff.extra.clear();
    }
    diff.extra.sort();
    let wanted: Vec<String> = differing_keys.iter().take(DETAIL_LIMIT).map(|(k, _)| k.clone()).collect();
    let found = source_rows(&spec.source.path, &side.info, &mt, wanted).await;
    for (n, (key, mirror_cols)) in differing_keys.into_iter().enumerate() {
        let cols = match found.get(&key) {
            Some(src) => mt
                .columns
                .iter()
                .zip(src.iter().zip(&mirror_cols))
                .filter(|((_, ty), (s, m))| canon::source(*ty, s) != **m)
                .map(|((c, _), _)| c.clone())
                .collect(),
            None if n < DETAIL_LIMIT => vec!["<row changed at the source during verify>".into()],
            None => vec![],
        };
        diff.differing.push((key, cols));
    }
    Ok(diff)
}

/// Re-reads the source rows with the given keys (one pass over the table).
async fn source_rows(path: &str, info: &TableInfo, mt: &MirrorTable, keys: Vec<String>) -> HashMap<String, Vec<Value>> {
    if keys.is_empty() {
        return HashMap::new();
    }
    let (path, info) = (PathBuf::from(path), info.clone());
    let types: Vec<_> = mt.columns.iter().map(|(_, t)| *t).collect();
    tokio::task::spawn_blocking(move || {
        let mut out = HashMap::new();
        let Ok(s) = Source::open(&path) else { return out };
        let mut reader = SliceReader::new(&s, &info);
        let idx = key_positions(&info);
        while let Ok(Some(slice)) = reader.next_slice() {
            for (i, row) in slice.rows.iter().enumerate() {
                let k = match &idx {
                    None => slice.rowids[i].to_string(),
                    Some(ix) => {
                        canon::key_text(&ix.iter().map(|&j| canon::source(types[j], &row[j])).collect::<Vec<_>>())
                    }
                };
                if keys.contains(&k) {
                    out.insert(k, row.clone());
                }
            }
        }
        out
    })
    .await
    .unwrap_or_default()
}
