//! COPY of a table's rows: encoding of source slices for COPY (with the quarantine of
//! values the mirror cannot hold), and one `COPY ... FROM STDIN` per table through which
//! all its slices stream, either into the transaction's stage or, when the mirror table
//! is empty, straight into the mirror.
//!
//! COPY's binary format unless the table has a `numeric` column (then text): PostgreSQL
//! then takes each value by its length instead of scanning the text for delimiters and
//! escapes, which was 40-45% of the server's time to COPY chat JSON.

use sqlx::PgConnection;
use sqlx::postgres::PgCopyIn;

use super::Unfit;
use super::encode::{Field, fit, write_binary, write_text};
use super::{COL_DELETED, COL_SYNCED_AT, MirrorTable, Quarantined, Result, TargetError, key_text, raw_of};
use crate::source::{Slice, Value};
use crate::sql::quote_ident;

/// Where a table's COPY writes.
#[derive(Debug, Clone)]
pub enum Dest {
    /// The transaction's stage (`stage::create`), upserted into the mirror afterwards (`stage::upsert`).
    Stage,
    /// The mirror itself, which must be empty (see [`mirror_is_empty`]): every row is new,
    /// so there is nothing to merge, resolve or tombstone. The COPY writes the bookkeeping
    /// columns itself: not deleted, synced at the transaction's `now()` (`SyncedAt`), as
    /// the stage path's upsert writes it.
    Mirror { synced_at: SyncedAt },
}

/// A transaction's `now()`: as this session prints it (COPY text) and in microseconds
/// since 2000-01-01 UTC (`timestamptz` in COPY binary).
#[derive(Debug, Clone)]
pub struct SyncedAt {
    pub text: String,
    pub micros: i64,
}

/// COPY binary's file header: signature, flags, header extension length.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// COPY binary's file trailer: a tuple of -1 fields.
const BINARY_TRAILER: &[u8] = &[0xff, 0xff];

/// Whether the mirror table has no row at all (not even a tombstone), and the
/// transaction's `now()`. Call after provisioning.
pub async fn mirror_is_empty(conn: &mut PgConnection, t: &MirrorTable) -> Result<(bool, SyncedAt)> {
    // extract(epoch ...) is numeric (exact) since PostgreSQL 14.
    let sql = format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {}), now()::text,
                (extract(epoch FROM now()) * 1000000)::bigint - 946684800000000",
        t.qualified()
    );
    let (empty, text, micros): (bool, String, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_one(conn)
        .await
        .map_err(t.db_err("check whether the mirror table is empty"))?;
    Ok((empty, SyncedAt { text, micros }))
}

/// The fields every row ends with, encoded (`Dest::Mirror`'s bookkeeping columns).
#[derive(Debug, Clone, Default)]
pub struct Tail {
    bytes: Vec<u8>,
    fields: i16,
}

impl Tail {
    fn new(dest: &Dest, binary: bool) -> Tail {
        match dest {
            Dest::Stage => Tail::default(),
            Dest::Mirror { synced_at } if binary => {
                let mut bytes = Vec::new();
                write_binary(&mut bytes, Field::Bool(false));
                bytes.extend_from_slice(&8i32.to_be_bytes());
                bytes.extend_from_slice(&synced_at.micros.to_be_bytes());
                Tail { bytes, fields: 2 }
            }
            Dest::Mirror { synced_at } => Tail { bytes: format!("\tf\t{}", synced_at.text).into_bytes(), fields: 2 },
        }
    }
}

/// Encodes a slice as COPY rows, binary or text as `t.copy_binary()` says (rowid first
/// when the table has one, then the source columns, then `tail` on every row). A value
/// its column cannot hold becomes NULL and is returned for the quarantine; a row whose
/// key cannot be held is left out entirely (and its key value quarantined).
pub fn encode_slice(t: &MirrorTable, slice: &Slice, tail: &Tail) -> (Vec<u8>, Vec<Quarantined>) {
    let binary = t.copy_binary();
    let per_row = 16 + tail.bytes.len() + if binary { 4 * t.columns.len() } else { t.columns.len() };
    let mut buf = Vec::with_capacity(slice.bytes + slice.rows.len() * per_row);
    let mut quarantined = Vec::new();
    let fields = i16::try_from(usize::from(t.has_rowid) + t.columns.len()).unwrap_or(i16::MAX) + tail.fields;
    let write = if binary { write_binary } else { write_text };
    'rows: for (i, row) in slice.rows.iter().enumerate() {
        let start = buf.len();
        if binary {
            buf.extend_from_slice(&fields.to_be_bytes());
        }
        if t.has_rowid {
            write(&mut buf, Field::Int(slice.rowids[i]));
        }
        for (j, ((name, ty), v)) in t.columns.iter().zip(row).enumerate() {
            if !binary && (j > 0 || t.has_rowid) {
                buf.push(b'\t');
            }
            let in_key = t.key.contains(name);
            let fits = if in_key && matches!(v, Value::Null) { Err(Unfit::NullInKey) } else { fit(*ty, v) };
            match fits {
                Ok(f) => write(&mut buf, f),
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
                    write(&mut buf, Field::Null);
                }
            }
        }
        buf.extend_from_slice(&tail.bytes);
        if !binary {
            buf.push(b'\n');
        }
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
    tail: Tail,
}

impl<'c> TableCopy<'c> {
    pub fn new(conn: &'c mut PgConnection, t: &'c MirrorTable, dest: Dest) -> TableCopy<'c> {
        let tail = Tail::new(&dest, t.copy_binary());
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
        let format = if self.t.copy_binary() { " (FORMAT binary)" } else { "" };
        format!("COPY {into} ({}) FROM STDIN{format}", cols.join(", "))
    }

    /// Encodes and sends one slice; returns its quarantined values.
    pub async fn send(&mut self, slice: &Slice) -> Result<Vec<Quarantined>> {
        let (mut buf, quarantined) = encode_slice(self.t, slice, &self.tail);
        if buf.is_empty() {
            return Ok(quarantined);
        }
        if self.copy.is_none() {
            let stmt = self.statement();
            let Some(conn) = self.conn.take() else { return Err(self.gone()) };
            self.copy = Some(conn.copy_in_raw(&stmt).await.map_err(self.t.db_err("start COPY"))?);
            if self.t.copy_binary() {
                buf.splice(0..0, BINARY_HEADER.iter().copied());
            }
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
        let Some(mut copy) = self.copy else { return Ok(0) };
        if self.t.copy_binary() {
            copy.send(BINARY_TRAILER).await.map_err(self.t.db_err("end COPY data"))?;
        }
        copy.finish().await.map_err(self.t.db_err("finish COPY"))
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
