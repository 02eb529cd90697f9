//! COPY of a table's rows: encoding of source slices as COPY text (with the quarantine of
//! values the mirror cannot hold), and one `COPY ... FROM STDIN` per table through which
//! all its slices stream, either into the transaction's stage or, when the mirror table
//! is empty, straight into the mirror.

use sqlx::PgConnection;
use sqlx::postgres::PgCopyIn;

use super::{COL_DELETED, COL_SYNCED_AT, MirrorTable, Quarantined, Result, TargetError, key_text, raw_of};
use super::{Unfit, encode_field};
use crate::source::{Slice, Value};
use crate::sql::quote_ident;

/// Where a table's COPY writes.
#[derive(Debug, Clone)]
pub enum Dest {
    /// The transaction's stage (`begin_stage`), merged into the mirror afterwards.
    Stage,
    /// The mirror itself, which must be empty (see [`mirror_is_empty`]): every row is new,
    /// so there is nothing to merge, resolve or tombstone. The COPY writes the bookkeeping
    /// columns itself: not deleted, synced at `synced_at` (the transaction's `now()` as
    /// text of this session, as the stage path's upsert writes it).
    Mirror { synced_at: String },
}

/// Whether the mirror table has no row at all (not even a tombstone), and the
/// transaction's `now()` as this session prints it. Call after provisioning.
pub async fn mirror_is_empty(conn: &mut PgConnection, t: &MirrorTable) -> Result<(bool, String)> {
    let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM {}), now()::text", t.qualified());
    let row: (bool, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_one(conn)
        .await
        .map_err(t.db_err("check whether the mirror table is empty"))?;
    Ok(row)
}

/// Encodes a slice as COPY text rows (rowid first when the table has one, then the source
/// columns, then `tail` on every row). A value its column cannot hold becomes NULL and
/// is returned for the quarantine; a row whose key cannot be held is left out entirely
/// (and its key value quarantined).
pub fn encode_slice(t: &MirrorTable, slice: &Slice, tail: &[u8]) -> (Vec<u8>, Vec<Quarantined>) {
    let mut buf = Vec::with_capacity(slice.bytes + slice.rows.len() * (16 + tail.len()));
    let mut quarantined = Vec::new();
    let mut field = Vec::new();
    'rows: for (i, row) in slice.rows.iter().enumerate() {
        let start = buf.len();
        if t.has_rowid {
            buf.extend_from_slice(slice.rowids[i].to_string().as_bytes());
            buf.push(b'\t');
        }
        for (j, ((name, ty), v)) in t.columns.iter().zip(row).enumerate() {
            if j > 0 {
                buf.push(b'\t');
            }
            field.clear();
            let in_key = t.key.contains(name);
            let fits = if in_key && matches!(v, Value::Null) {
                Err(Unfit::NullInKey)
            } else {
                encode_field(&mut field, *ty, v)
            };
            match fits {
                Ok(()) => buf.extend_from_slice(&field),
                Err(reason) => {
                    let (storage_class, raw) = raw_of(v);
                    let key = key_text(t, slice, i);
                    quarantined.push(Quarantined {
                        key,
                        column: name.clone(),
                        storage_class,
                        reason: if in_key {
                            format!("{reason} (a key column: the row is not mirrored)")
                        } else {
                            reason.to_string()
                        },
                        raw,
                    });
                    if in_key {
                        buf.truncate(start);
                        continue 'rows;
                    }
                    buf.extend_from_slice(b"\\N");
                }
            }
        }
        buf.extend_from_slice(tail);
        buf.push(b'\n');
    }
    (buf, quarantined)
}

/// One COPY into the stage or the mirror for all of a table's slices: started by the
/// first slice that has rows (a table without rows costs no COPY), so the per-COPY round
/// trips are paid once per table, not once per slice.
pub struct TableCopy<'c> {
    conn: Option<&'c mut PgConnection>,
    copy: Option<PgCopyIn<&'c mut PgConnection>>,
    t: &'c MirrorTable,
    dest: Dest,
    tail: Vec<u8>,
}

impl<'c> TableCopy<'c> {
    pub fn new(conn: &'c mut PgConnection, t: &'c MirrorTable, dest: Dest) -> TableCopy<'c> {
        let tail = match &dest {
            Dest::Stage => Vec::new(),
            Dest::Mirror { synced_at } => format!("\tf\t{synced_at}").into_bytes(),
        };
        TableCopy { conn: Some(conn), copy: None, t, dest, tail }
    }

    fn statement(&self) -> String {
        let mut cols: Vec<String> = self.t.data_columns().iter().map(|(n, _)| quote_ident(n)).collect();
        let into = match self.dest {
            Dest::Stage => "owsync_stage".to_string(),
            Dest::Mirror { .. } => {
                cols.push(quote_ident(COL_DELETED));
                cols.push(quote_ident(COL_SYNCED_AT));
                self.t.qualified()
            }
        };
        format!("COPY {into} ({}) FROM STDIN", cols.join(", "))
    }

    /// Encodes and sends one slice; returns its quarantined values.
    pub async fn send(&mut self, slice: &Slice) -> Result<Vec<Quarantined>> {
        let (buf, quarantined) = encode_slice(self.t, slice, &self.tail);
        if buf.is_empty() {
            return Ok(quarantined);
        }
        if self.copy.is_none() {
            let stmt = self.statement();
            let Some(conn) = self.conn.take() else { return Err(self.gone()) };
            self.copy = Some(conn.copy_in_raw(&stmt).await.map_err(self.t.db_err("start COPY"))?);
        }
        let Some(copy) = self.copy.as_mut() else { return Err(self.gone()) };
        if let Err(e) = copy.send(buf).await {
            self.abort().await;
            return Err(TargetError::Db { table: self.t.name.clone(), context: "send COPY data".into(), source: e });
        }
        Ok(quarantined)
    }

    /// Ends the COPY; the rows it wrote.
    pub async fn finish(self) -> Result<u64> {
        match self.copy {
            Some(copy) => copy.finish().await.map_err(self.t.db_err("finish COPY")),
            None => Ok(0),
        }
    }

    /// Abandons the COPY (the transaction is rolled back afterwards).
    pub async fn abort(&mut self) {
        if let Some(copy) = self.copy.take() {
            let _ = copy.abort("owsync: table not synced").await;
        }
    }

    fn gone(&self) -> TargetError {
        TargetError::Db {
            table: self.t.name.clone(),
            context: "COPY after it ended".into(),
            source: sqlx::Error::Protocol("the COPY was already aborted".into()),
        }
    }
}
