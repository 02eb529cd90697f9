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
    /// Longer than any PostgreSQL value can be (1 GB less a byte).
    TooLarge,
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
            Unfit::TooLarge => write!(f, "value is longer than PostgreSQL's limit of 1 GB"),
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

/// Appends `s` with COPY text escaping (backslash, tab, newline, carriage return): the
/// runs between those bytes are copied whole (chat JSON is megabytes of them).
fn escape_into(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + s.len() / 16);
    let mut rest = s;
    // Carriage returns are rare: look for the next one only after passing the last.
    let mut next_cr = memchr::memchr(b'\r', rest);
    loop {
        let special = memchr::memchr3(b'\\', b'\t', b'\n', rest);
        let i = match (special, next_cr) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(match rest[i] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[i + 1..];
        next_cr = match next_cr {
            Some(c) if c == i => memchr::memchr(b'\r', rest),
            Some(c) => Some(c - i - 1),
            None => None,
        };
    }
    out.extend_from_slice(rest);
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

/// A source value as its mapped column takes it, before it is written out in one of
/// COPY's formats (`write_text`, `write_binary`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    Null,
    /// An integer into `bigint`.
    Int(i64),
    /// A double into `double precision`.
    Float(f64),
    /// An integer into `double precision` (exactly representable: |i| <= 2^53).
    IntAsFloat(i64),
    Bool(bool),
    /// UTF-8 text without NUL into `text` or `json` (validated JSON there).
    Text(&'a [u8]),
    /// A number spelled out in decimal, into `text`, `json` or `numeric`.
    IntText(i64),
    FloatText(f64),
    /// Bytes into `bytea`.
    Bytes(&'a [u8]),
}

/// PostgreSQL's largest value (a varlena's 30-bit length): 1 GB less a byte.
const MAX_VALUE: usize = (1 << 30) - 1;

fn within_limit(len: usize) -> Result<(), Unfit> {
    if len > MAX_VALUE { Err(Unfit::TooLarge) } else { Ok(()) }
}

/// Decides how `v` goes into a column of type `ty`, or why it cannot as it is.
pub fn fit(ty: PgType, v: &Value) -> Result<Field<'_>, Unfit> {
    let unfit = || Unfit::StorageClass(class(v));
    if let Value::Text(b) | Value::Blob(b) = v {
        within_limit(b.len())?;
    }
    Ok(match (ty, v) {
        (_, Value::Null) => Field::Null,
        (PgType::BigInt, Value::Integer(i)) => Field::Int(*i),
        (PgType::Double, Value::Real(f)) => Field::Float(*f),
        (PgType::Double, Value::Integer(i)) if i.unsigned_abs() <= (1u64 << 53) => Field::IntAsFloat(*i),
        (PgType::Numeric, Value::Integer(i)) => Field::IntText(*i),
        (PgType::Numeric, Value::Real(f)) if f.is_finite() && !(*f == 0.0 && f.is_sign_negative()) => {
            Field::FloatText(*f)
        }
        (PgType::Boolean, Value::Integer(0)) => Field::Bool(false),
        (PgType::Boolean, Value::Integer(1)) => Field::Bool(true),
        (PgType::Text, Value::Text(t)) => Field::Text(utf8_text(t)?),
        // Numbers in a text-mapped column with NUMERIC affinity (Open WebUI writes epoch
        // seconds into peewee-era DATETIME columns): their decimal text reads back as the
        // same number under that affinity.
        (PgType::Text | PgType::Json, Value::Integer(i)) => Field::IntText(*i),
        (PgType::Text | PgType::Json, Value::Real(f)) if f.is_finite() => Field::FloatText(*f),
        (PgType::Json, Value::Text(t)) => {
            let t = utf8_text(t)?;
            serde_json::from_slice::<serde::de::IgnoredAny>(t).map_err(|_| Unfit::InvalidJson)?;
            Field::Text(t)
        }
        (PgType::Bytea, Value::Blob(b)) => Field::Bytes(b),
        _ => return Err(unfit()),
    })
}

/// Appends `f` as a COPY text field (no delimiter).
pub fn write_text(out: &mut Vec<u8>, f: Field<'_>) {
    match f {
        Field::Null => out.extend_from_slice(b"\\N"),
        Field::Int(i) | Field::IntAsFloat(i) | Field::IntText(i) => {
            let _ = write!(out, "{i}");
        }
        Field::Float(x) | Field::FloatText(x) => fmt_f64(out, x),
        Field::Bool(b) => out.push(if b { b't' } else { b'f' }),
        Field::Text(t) => escape_into(out, t),
        Field::Bytes(b) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.reserve(3 + 2 * b.len());
            out.extend_from_slice(b"\\\\x");
            for &byte in b {
                out.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
            }
        }
    }
}

/// Appends `f` as a COPY binary field (its length, then its bytes in the column type's
/// binary form: <https://www.postgresql.org/docs/current/sql-copy.html>, "Binary Format").
/// A column of type `numeric` has no binary form here: tables with one are copied as text
/// (`MirrorTable::copy_binary`).
pub fn write_binary(out: &mut Vec<u8>, f: Field<'_>) {
    let at = out.len();
    match f {
        Field::Null => {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return;
        }
        Field::Int(i) => {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&i.to_be_bytes());
            return;
        }
        Field::Float(x) => {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&x.to_bits().to_be_bytes());
            return;
        }
        Field::IntAsFloat(i) => {
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&(i as f64).to_bits().to_be_bytes());
            return;
        }
        Field::Bool(b) => {
            out.extend_from_slice(&1i32.to_be_bytes());
            out.push(u8::from(b));
            return;
        }
        // Text, json and bytea take their bytes as they are; a number's decimal text.
        Field::Text(b) | Field::Bytes(b) => {
            out.extend_from_slice(&0i32.to_be_bytes());
            out.extend_from_slice(b);
        }
        Field::IntText(i) => {
            out.extend_from_slice(&0i32.to_be_bytes());
            let _ = write!(out, "{i}");
        }
        Field::FloatText(x) => {
            out.extend_from_slice(&0i32.to_be_bytes());
            fmt_f64(out, x);
        }
    }
    // At most `MAX_VALUE` bytes (`fit`), so the length fits an i32.
    let len = i32::try_from(out.len() - at - 4).unwrap_or(i32::MAX);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends one field (no delimiter) for a column of type `ty` in COPY text.
pub fn encode_field(out: &mut Vec<u8>, ty: PgType, v: &Value) -> Result<(), Unfit> {
    write_text(out, fit(ty, v)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(ty: PgType, v: Value) -> Result<String, Unfit> {
        let mut out = Vec::new();
        encode_field(&mut out, ty, &v).map(|()| String::from_utf8(out).unwrap())
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

    fn bin(ty: PgType, v: Value) -> Result<Vec<u8>, Unfit> {
        let mut out = Vec::new();
        fit(ty, &v).map(|f| write_binary(&mut out, f)).map(|()| out)
    }

    fn field(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn binary_fields_are_length_and_the_type_s_binary_form() {
        assert_eq!(bin(PgType::BigInt, Value::Integer(i64::MIN)).unwrap(), field(&i64::MIN.to_be_bytes()));
        assert_eq!(bin(PgType::Double, Value::Real(-0.0)).unwrap(), field(&(-0.0f64).to_bits().to_be_bytes()));
        assert_eq!(bin(PgType::Double, Value::Integer(-3)).unwrap(), field(&(-3.0f64).to_bits().to_be_bytes()));
        assert_eq!(bin(PgType::Boolean, Value::Integer(1)).unwrap(), field(&[1]));
        assert_eq!(bin(PgType::Text, Value::Null).unwrap(), (-1i32).to_be_bytes());
        assert_eq!(bin(PgType::Text, Value::Text(b"\\N\t".to_vec())).unwrap(), field(b"\\N\t"));
        assert_eq!(bin(PgType::Text, Value::Text(Vec::new())).unwrap(), field(b""));
        assert_eq!(bin(PgType::Text, Value::Integer(-42)).unwrap(), field(b"-42"));
        assert_eq!(bin(PgType::Json, Value::Real(2.5)).unwrap(), field(b"2.5"));
        assert_eq!(bin(PgType::Bytea, Value::Blob(vec![0, 255])).unwrap(), field(&[0, 255]));
        assert_eq!(within_limit(MAX_VALUE), Ok(()));
        assert_eq!(within_limit(MAX_VALUE + 1), Err(Unfit::TooLarge));
        // The same values are unfit in either format.
        assert_eq!(bin(PgType::Json, Value::Text(b"{x".to_vec())), Err(Unfit::InvalidJson));
        assert_eq!(bin(PgType::Text, Value::Text(b"a\0b".to_vec())), Err(Unfit::NulInText));
    }

    #[test]
    fn escaping_matches_byte_by_byte_escaping() {
        fn slow(s: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            for &b in s {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(b),
                }
            }
            out
        }
        let alphabet = b"ab\\\t\n\r\"{}";
        let mut seed = 7u64;
        for len in 0..300 {
            let s: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    alphabet[(seed >> 33) as usize % alphabet.len()]
                })
                .collect();
            let mut fast = Vec::new();
            escape_into(&mut fast, &s);
            assert_eq!(fast, slow(&s), "{:?}", String::from_utf8_lossy(&s));
        }
        let blob: Vec<u8> = (0..=255).collect();
        let hex: String = blob.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(enc(PgType::Bytea, Value::Blob(blob)).unwrap(), format!("\\\\x{hex}"));
    }
}
