//! One canonical byte form per value, so a SQLite value and its mirror can be compared
//! (and hashed) whatever each side's text spelling: `1e300` vs `1e+300`, `t` vs `true`.

use crate::source::Value;
use crate::target::{PgType, fmt_f64};

/// The canonical form of a double.
fn float(f: f64) -> Vec<u8> {
    let mut out = Vec::new();
    fmt_f64(&mut out, f);
    out
}

/// A source value as it should appear in a column of type `ty`; values the column cannot
/// hold get a form no mirror value has, so they show up as differences.
pub fn source(ty: PgType, v: &Value) -> Option<Vec<u8>> {
    Some(match (ty, v) {
        (_, Value::Null) => return None,
        (PgType::BigInt | PgType::Numeric | PgType::Json | PgType::Text, Value::Integer(i)) => {
            i.to_string().into_bytes()
        }
        (PgType::Text, Value::Real(f)) if f.is_finite() => float(*f),
        (PgType::Double, Value::Integer(i)) => float(*i as f64),
        (PgType::Double | PgType::Numeric | PgType::Json, Value::Real(f)) => float(*f),
        (PgType::Boolean, Value::Integer(0)) => b"f".to_vec(),
        (PgType::Boolean, Value::Integer(1)) => b"t".to_vec(),
        (PgType::Text | PgType::Json, Value::Text(t)) => t.clone(),
        (PgType::Bytea, Value::Blob(b)) => b.clone(),
        (_, other) => format!("\u{0}unfit {other:?}").into_bytes(),
    })
}

/// A mirror value, read as PostgreSQL's text output of a column of type `ty`.
pub fn mirror(ty: PgType, text: Option<&str>) -> Option<Vec<u8>> {
    let t = text?;
    Some(match ty {
        PgType::Double => match t {
            "Infinity" => float(f64::INFINITY),
            "-Infinity" => float(f64::NEG_INFINITY),
            "NaN" => float(f64::NAN),
            _ => t.parse::<f64>().map_or_else(|_| t.as_bytes().to_vec(), float),
        },
        PgType::Numeric if t.contains(['.', 'e', 'E']) => {
            t.parse::<f64>().map_or_else(|_| t.as_bytes().to_vec(), float)
        }
        PgType::Boolean => match t {
            "true" | "t" => b"t".to_vec(),
            "false" | "f" => b"f".to_vec(),
            _ => t.as_bytes().to_vec(),
        },
        PgType::Bytea => match t.strip_prefix("\\x").map(decode_hex) {
            Some(Some(b)) => b,
            _ => t.as_bytes().to_vec(),
        },
        _ => t.as_bytes().to_vec(),
    })
}

fn decode_hex(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok()).collect()
}

/// A 16-byte digest of a row's canonical columns.
pub fn row_hash<'a>(cols: impl Iterator<Item = &'a Option<Vec<u8>>>) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for c in cols {
        match c {
            None => h.update([0u8]),
            Some(b) => {
                h.update([1u8]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
        }
    }
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

/// A printable key from canonical key columns.
pub fn key_text(parts: &[Option<Vec<u8>>]) -> String {
    parts
        .iter()
        .map(|p| p.as_ref().map_or("NULL".to_string(), |b| String::from_utf8_lossy(b).into_owned()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_agree() {
        assert_eq!(source(PgType::Double, &Value::Real(1e300)), mirror(PgType::Double, Some("1e+300")));
        assert_eq!(source(PgType::Double, &Value::Real(-0.0)), mirror(PgType::Double, Some("-0")));
        assert_eq!(source(PgType::Boolean, &Value::Integer(1)), mirror(PgType::Boolean, Some("true")));
        assert_eq!(source(PgType::Bytea, &Value::Blob(vec![0, 255])), mirror(PgType::Bytea, Some("\\x00ff")));
        assert_eq!(source(PgType::Json, &Value::Integer(5)), mirror(PgType::Json, Some("5")));
        assert_ne!(source(PgType::BigInt, &Value::Text(b"5".to_vec())), mirror(PgType::BigInt, Some("5")));
        assert_eq!(source(PgType::Text, &Value::Null), mirror(PgType::Text, None));
    }
}
