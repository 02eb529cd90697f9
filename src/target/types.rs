//! The type map from SQLite declared types to PostgreSQL column types.
//!
//! | SQLite declared type (first match wins)        | PostgreSQL         |
//! |------------------------------------------------|--------------------|
//! | `JSON`                                         | `json` (keeps the exact text, key order and spacing) |
//! | `BOOL*`                                        | `boolean` (0/1)    |
//! | contains `INT`                                 | `bigint`           |
//! | contains `CHAR`, `CLOB`, `TEXT`; `DATE*`, `TIME*` | `text`          |
//! | contains `BLOB`                                | `bytea`            |
//! | contains `REAL`, `FLOA`, `DOUB`                | `double precision` |
//! | `NUMERIC`, `DECIMAL`                           | `numeric`          |
//! | anything else, or no type                      | `text`             |
//!
//! Text-mapped columns also take integers and reals as their decimal text: SQLite's
//! NUMERIC affinity (`DATETIME` in peewee-era Open WebUI tables holds epoch seconds)
//! turns that text back into the same number on restore.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PgType {
    BigInt,
    Double,
    Text,
    Bytea,
    Boolean,
    Numeric,
    Json,
}

impl PgType {
    pub fn sql(self) -> &'static str {
        match self {
            PgType::BigInt => "bigint",
            PgType::Double => "double precision",
            PgType::Text => "text",
            PgType::Bytea => "bytea",
            PgType::Boolean => "boolean",
            PgType::Numeric => "numeric",
            PgType::Json => "json",
        }
    }

    /// Maps a declared SQLite column type.
    pub fn from_decl(decl: &str) -> PgType {
        let d = decl.trim().to_ascii_uppercase();
        let base = d.split('(').next().unwrap_or("").trim();
        if base == "JSON" || base == "JSONB" {
            PgType::Json
        } else if base.starts_with("BOOL") {
            PgType::Boolean
        } else if d.contains("INT") {
            PgType::BigInt
        } else if d.contains("CHAR")
            || d.contains("CLOB")
            || d.contains("TEXT")
            || base.starts_with("DATE")
            || base.starts_with("TIME")
        {
            PgType::Text
        } else if d.contains("BLOB") {
            PgType::Bytea
        } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
            PgType::Double
        } else if base == "NUMERIC" || base == "DECIMAL" {
            PgType::Numeric
        } else {
            PgType::Text
        }
    }
}

/// Bookkeeping columns every mirror table carries.
pub const COL_ROWID: &str = "_owsync_rowid";
pub const COL_DELETED: &str = "_owsync_deleted";
pub const COL_SYNCED_AT: &str = "_owsync_synced_at";

#[cfg(test)]
mod tests {
    use super::PgType::*;
    use super::*;

    #[test]
    fn open_webui_types() {
        for (decl, want) in [
            ("TEXT", Text),
            ("VARCHAR(255)", Text),
            ("BIGINT", BigInt),
            ("INTEGER", BigInt),
            ("JSON", Json),
            ("BOOLEAN", Boolean),
            ("DATETIME", Text),
            ("DATE", Text),
            ("BLOB", Bytea),
            ("REAL", Double),
            ("DOUBLE PRECISION", Double),
            ("NUMERIC(10,2)", Numeric),
            ("", Text),
        ] {
            assert_eq!(PgType::from_decl(decl), want, "{decl}");
        }
    }
}
