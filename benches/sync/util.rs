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

/// Sets TCP_NODELAY on every TCP socket this process holds, as libpq (psql) does for
/// its connections; sqlx 0.9 does not. Returns how many it set.
pub fn set_nodelay_all() -> usize {
    use std::mem::{size_of, zeroed};
    let mut n = 0;
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    for e in dir.flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if !std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")) {
            continue;
        }
        // SAFETY: plain socket option calls on a descriptor we own, with correctly sized
        // buffers; a descriptor that is not a TCP socket is skipped.
        unsafe {
            let mut ty: libc::c_int = 0;
            let mut len = size_of::<libc::c_int>() as libc::socklen_t;
            let p = (&mut ty as *mut libc::c_int).cast::<libc::c_void>();
            if libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, p, &mut len) != 0 || ty != libc::SOCK_STREAM {
                continue;
            }
            let mut addr: libc::sockaddr_storage = zeroed();
            let mut alen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            let ap = (&mut addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
            if libc::getsockname(fd, ap, &mut alen) != 0 {
                continue;
            }
            let fam = i32::from(addr.ss_family);
            if fam != libc::AF_INET && fam != libc::AF_INET6 {
                continue;
            }
            let one: libc::c_int = 1;
            let op = (&one as *const libc::c_int).cast::<libc::c_void>();
            if libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                op,
                size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
            {
                n += 1;
            }
        }
    }
    n
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
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

pub async fn count_text(conn: &mut PgConnection, sql: String) -> Result<String> {
    Ok(sqlx::query(AssertSqlSafe(sql)).fetch_one(conn).await?.get::<Option<String>, _>(0).unwrap_or_default())
}
