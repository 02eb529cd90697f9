//! Encoding SQLite values as PostgreSQL COPY text, exactly: a value that the mapped
//! column cannot hold is reported, never altered.

use std::io::Write;

use super::types::PgType;
use crate::source::Value;

/// Why a value cannot go into its mapped column as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    NulInText,
    InvalidUtf8,
    InvalidJson,
    /// The value's storage class does not fit the column type (e.g. text in INTEGER).
    StorageClass(&'static str),
    /// NULL in a key column: SQLite allows it in the primary key of a rowid table.
    NullInKey,
}

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfit::NulInText => write!(f, "text contains a NUL byte, which PostgreSQL text cannot hold"),
            Unfit::InvalidUtf8 => write!(f, "text is not valid UTF-8"),
            Unfit::InvalidJson => write!(f, "value is not valid JSON"),
            Unfit::StorageClass(c) => {
                let a = if c.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                write!(f, "{a} {c} value does not fit the column's type")
            }
            Unfit::NullInKey => {
                write!(f, "NULL in a primary-key column (SQLite allows it in a rowid table, PostgreSQL does not)")
            }
        }
    }
}

fn class(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Integer(_) => "integer",
        Value::Real(_) => "real",
        Value::Text(_) => "text",
        Value::Blob(_) => "blob",
    }
}

/// Appends `s` with COPY text escaping (backslash, tab, newline, carriage return).
fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

fn utf8_text(b: &[u8]) -> Result<&[u8], Unfit> {
    if b.contains(&0) {
        return Err(Unfit::NulInText);
    }
    std::str::from_utf8(b).map_err(|_| Unfit::InvalidUtf8)?;
    Ok(b)
}

/// Shortest decimal that reads back as the same double; PostgreSQL spellings for the
/// non-finite ones. `-0.0` stays `-0`.
pub fn fmt_f64(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if f.is_infinite() {
        out.extend_from_slice(if f > 0.0 { b"Infinity" } else { b"-Infinity" });
    } else {
        let _ = write!(out, "{f:?}");
    }
}

/// Appends one field (no delimiter) for a column of type `ty`.
pub fn encode_field(out: &mut Vec<u8>, ty: PgType, v: &Value) -> Result<(), Unfit> {
    if let Value::Null = v {
        out.extend_from_slice(b"\\N");
        return Ok(());
    }
    let unfit = || Unfit::StorageClass(class(v));
    match (ty, v) {
        (PgType::BigInt, Value::Integer(i)) => {
            let _ = write!(out, "{i}");
        }
        (PgType::Double, Value::Real(f)) => fmt_f64(out, *f),
        (PgType::Double, Value::Integer(i)) if i.unsigned_abs() <= (1u64 << 53) => {
            let _ = write!(out, "{i}");
        }
        (PgType::Numeric, Value::Integer(i)) => {
            let _ = write!(out, "{i}");
        }
        (PgType::Numeric, Value::Real(f)) if f.is_finite() && !(*f == 0.0 && f.is_sign_negative()) => fmt_f64(out, *f),
        (PgType::Boolean, Value::Integer(0)) => out.push(b'f'),
        (PgType::Boolean, Value::Integer(1)) => out.push(b't'),
        (PgType::Text, Value::Text(t)) => escape_into(out, utf8_text(t)?),
        // Numbers in a text-mapped column with NUMERIC affinity (Open WebUI writes epoch
        // seconds into peewee-era DATETIME columns): their decimal text reads back as the
        // same number under that affinity.
        (PgType::Text, Value::Integer(i)) => {
            let _ = write!(out, "{i}");
        }
        (PgType::Text, Value::Real(f)) if f.is_finite() => fmt_f64(out, *f),
        (PgType::Json, Value::Text(t)) => {
            let t = utf8_text(t)?;
            serde_json::from_slice::<serde::de::IgnoredAny>(t).map_err(|_| Unfit::InvalidJson)?;
            escape_into(out, t);
        }
        (PgType::Json, Value::Integer(i)) => {
            let _ = write!(out, "{i}");
        }
        (PgType::Json, Value::Real(f)) if f.is_finite() => fmt_f64(out, *f),
        (PgType::Bytea, Value::Blob(b)) => {
            out.extend_from_slice(b"\\\\x");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
        }
        _ => return Err(unfit()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(ty: PgType, v: Value) -> Result<String, Unfit> {
        let mut out = Vec::new();
        encode_field(&mut out, ty, &v).map(|_| String::from_utf8(out).unwrap())
    }

    #[test]
    fn escapes_and_extremes() {
        assert_eq!(
            enc(PgType::Text, Value::Text(b"a\tb\nc\rd\\e\\N\\.".to_vec())).unwrap(),
            "a\\tb\\nc\\rd\\\\e\\\\N\\\\."
        );
        assert_eq!(enc(PgType::BigInt, Value::Integer(i64::MIN)).unwrap(), i64::MIN.to_string());
        assert_eq!(enc(PgType::Double, Value::Real(-0.0)).unwrap(), "-0.0");
        assert_eq!(enc(PgType::Double, Value::Real(f64::INFINITY)).unwrap(), "Infinity");
        assert_eq!(enc(PgType::Bytea, Value::Blob(vec![0, 255])).unwrap(), "\\\\x00ff");
        assert_eq!(enc(PgType::Text, Value::Null).unwrap(), "\\N");
        assert_eq!(enc(PgType::Text, Value::Text(b"a\0b".to_vec())), Err(Unfit::NulInText));
        assert_eq!(enc(PgType::Text, Value::Text(vec![0xff])), Err(Unfit::InvalidUtf8));
        assert_eq!(enc(PgType::Json, Value::Text(b"{x".to_vec())), Err(Unfit::InvalidJson));
        assert_eq!(enc(PgType::BigInt, Value::Text(b"1".to_vec())), Err(Unfit::StorageClass("text")));
        assert_eq!(enc(PgType::Boolean, Value::Integer(2)), Err(Unfit::StorageClass("integer")));
    }
}
