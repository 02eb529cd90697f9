//! Small helpers: shell-outs, SQL execution, TCP_NODELAY, number formatting.

use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use owsync::source::Value;
use owsync::target::fmt_f64;
use sqlx::{AssertSqlSafe, PgConnection, Row};

pub fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn exec(conn: &mut PgConnection, sql: String) -> Result<u64> {
    let r = sqlx::raw_sql(AssertSqlSafe(sql.clone()))
        .execute(conn)
        .await
        .with_context(|| format!("SQL: {}", sql.chars().take(200).collect::<String>()))?;
    Ok(r.rows_affected())
}

pub async fn count(conn: &mut PgConnection, sql: String) -> Result<i64> {
    Ok(sqlx::query(AssertSqlSafe(sql)).fetch_one(conn).await?.get(0))
}

pub fn sql_lit(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => {
            let mut b = Vec::new();
            fmt_f64(&mut b, *f);
            String::from_utf8_lossy(&b).into_owned()
        }
        Value::Text(t) => format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''")),
        Value::Blob(b) => format!("'\\x{}'::bytea", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

pub fn fmt_s(x: Option<f64>) -> String {
    x.map_or("—".into(), |v| if v < 10.0 { format!("{v:.2}") } else { format!("{v:.1}") })
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { v[n / 2] } else { f64::midpoint(v[n / 2 - 1], v[n / 2]) }
}

pub async fn count_text(conn: &mut PgConnection, sql: String) -> Result<String> {
    Ok(sqlx::query(AssertSqlSafe(sql)).fetch_one(conn).await?.get::<Option<String>, _>(0).unwrap_or_default())
}
