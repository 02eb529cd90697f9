//! The network half of `doctor`: what kind of endpoint the URL names, DNS, TCP, the
//! connection (with a clear cause when it fails), TLS, the server and session semantics.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

use super::Report;
use crate::store;

fn is_unix_socket(opts: &PgConnectOptions) -> bool {
    opts.get_socket().is_some() || opts.get_host().starts_with('/')
}

fn is_local(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What the host and port say about the endpoint: Supabase's direct connection, its
/// session or transaction pooler, or plain PostgreSQL; a transaction pooler fails.
pub fn classify(host: &str, port: u16, user: &str) -> (super::Status, String) {
    use super::Status::{Fail, Ok, Warn};
    let host = host.to_ascii_lowercase();
    let fix = "use port 5432 (Supabase's session pooler, or the direct connection) instead of 6543";
    if host.ends_with(".pooler.supabase.com") {
        if port == 6543 {
            return (
                Fail,
                format!("Supabase transaction pooler (Supavisor, port 6543): owsyncd cannot work through it; {fix}"),
            );
        }
        let mut msg = format!("Supabase session pooler (Supavisor, session mode on port {port}): supported over IPv4");
        if !user.contains('.') {
            msg.push_str(&format!(
                "; but the user {user:?} has no project ref: the pooler needs <role>.<project-ref>, e.g. sync_service.abcdefgh"
            ));
            return (Warn, msg);
        }
        return (Ok, msg);
    }
    if host.starts_with("db.") && host.ends_with(".supabase.co") {
        if port == 6543 {
            return (Fail, format!("Supabase's dedicated pooler in transaction mode (port 6543): {fix}"));
        }
        return (
            Ok,
            "Supabase direct connection (IPv6 only unless the project has the IPv4 add-on; from an IPv4-only \
             network use the session pooler, <region>.pooler.supabase.com:5432)"
                .into(),
        );
    }
    (Ok, format!("PostgreSQL at {host}:{port} (not a Supabase endpoint)"))
}

pub fn endpoint(r: &mut Report, url: &str, opts: &PgConnectOptions) {
    r.ok(
        "url",
        format!(
            "user {}, database {}, sslmode {:?}",
            opts.get_username(),
            opts.get_database().unwrap_or("(the user's name)"),
            opts.get_ssl_mode()
        ),
    );
    if is_unix_socket(opts) {
        r.ok("endpoint", format!("Unix socket {}", opts.get_host()));
    } else {
        let (status, msg) = classify(opts.get_host(), opts.get_port(), opts.get_username());
        r.push("endpoint", status, msg);
    }
    if let Some(why) = store::transaction_pooler_hint(url) {
        r.fail("pooler", format!("{why}. {}", store::POOLER_FIX));
    }
}

/// DNS over IPv6 and IPv4, then a TCP connect to each address in the order a client
/// tries them: the first that answers is the one owsyncd uses.
pub async fn resolve(r: &mut Report, opts: &PgConnectOptions, timeout: Duration) {
    if is_unix_socket(opts) {
        r.skip("dns", "Unix socket: no DNS or TCP");
        return;
    }
    let (host, port) = (opts.get_host(), opts.get_port());
    let addrs: Vec<SocketAddr> = if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                r.fail("dns", format!("cannot resolve {host}: {e} (check the host name; is DNS reachable?)"));
                return;
            }
            Err(_) => {
                r.fail("dns", format!("resolving {host} took longer than {timeout:?}"));
                return;
            }
        }
    };
    let list = |v6: bool| {
        let v: Vec<String> = addrs.iter().filter(|a| a.is_ipv6() == v6).map(|a| a.ip().to_string()).collect();
        if v.is_empty() { "none".to_string() } else { v.join(", ") }
    };
    let (v6, v4) = (list(true), list(false));
    if addrs.is_empty() {
        r.fail("dns", format!("{host} has no IPv6 (AAAA) or IPv4 (A) address"));
        return;
    }
    r.ok("dns", format!("{host}: IPv6 {v6}; IPv4 {v4}"));
    let mut tried = Vec::new();
    for a in addrs.iter().take(6) {
        let t = Instant::now();
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a)).await {
            Ok(Ok(_)) => {
                let family = if a.is_ipv6() { "IPv6" } else { "IPv4" };
                let before = if tried.is_empty() { String::new() } else { format!(" (after {})", tried.join("; ")) };
                r.ok("tcp", format!("{a} answers in {} ms: connections use {family}{before}", t.elapsed().as_millis()));
                return;
            }
            Ok(Err(e)) => tried.push(format!("{a}: {e}")),
            Err(_) => tried.push(format!("{a}: no answer within {timeout:?}")),
        }
    }
    let v6_only = addrs.iter().all(std::net::SocketAddr::is_ipv6);
    let hint = if v6_only {
        " (the host has only IPv6 addresses: this machine needs an IPv6 route; for Supabase's direct connection, \
         or use the session pooler on port 5432, which has IPv4)"
    } else {
        " (is the server running and listening on this port? a firewall?)"
    };
    r.fail("tcp", format!("no address answers on port {port}: {}{hint}", tried.join("; ")));
}

/// Why a connection failed, in words an operator can act on (never the password).
pub fn explain(e: &sqlx::Error, opts: &PgConnectOptions) -> String {
    let (host, port, user) = (opts.get_host(), opts.get_port(), opts.get_username());
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                format!("connection refused by {host}:{port}: nothing listens there (wrong port? server down?)")
            }
            std::io::ErrorKind::TimedOut => {
                format!("connection to {host}:{port} timed out (a firewall dropping packets?)")
            }
            _ => format!("network error talking to {host}:{port}: {io}"),
        },
        sqlx::Error::Tls(t) => format!(
            "TLS failed with {host}:{port}: {t} (check sslmode in the URL: Supabase needs sslmode=require; \
             verify-full also needs the CA via sslrootcert)"
        ),
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default().to_string();
            let msg = d.message().to_string();
            match code.as_str() {
                "28P01" => format!(
                    "authentication failed for user {user}: the password is wrong (check the URL file; the server \
                     said: {msg})"
                ),
                "28000" if msg.contains("no encryption") || msg.contains("SSL off") => {
                    format!("the server requires TLS for this user and address: add sslmode=require to the URL ({msg})")
                }
                "28000" => format!("user {user} may not connect from here: {msg} (pg_hba.conf)"),
                "3D000" => format!("{msg}: check the database name in the URL"),
                "53300" => format!("{msg}: the server (or pooler) has no free connection slots"),
                _ if msg.contains("Tenant or user not found") => format!(
                    "{msg}: Supabase's pooler needs the user as <role>.<project-ref> (e.g. sync_service.abcdefgh)"
                ),
                _ => format!("the server refused the connection: {msg} (SQLSTATE {code})"),
            }
        }
        other => format!("cannot connect to {host}:{port}: {other}"),
    }
}

pub async fn connect(r: &mut Report, opts: &PgConnectOptions, timeout: Duration) -> Option<PgConnection> {
    let t = Instant::now();
    match tokio::time::timeout(timeout, opts.connect()).await {
        Ok(Ok(c)) => {
            r.ok("connect", format!("connected as {} in {} ms", opts.get_username(), t.elapsed().as_millis()));
            Some(c)
        }
        Ok(Err(e)) => {
            r.fail("connect", explain(&e, opts));
            None
        }
        Err(_) => {
            r.fail(
                "connect",
                format!(
                    "no PostgreSQL answer from {}:{} within {timeout:?} (a firewall, an overloaded pooler, or \
                     an IPv6-only host reached from an IPv4-only network)",
                    opts.get_host(),
                    opts.get_port()
                ),
            );
            None
        }
    }
}

/// The server's version and the connection's TLS (simple protocol only: works through
/// any pooler).
pub async fn server(r: &mut Report, c: &mut PgConnection, opts: &PgConnectOptions) {
    let q = "SELECT current_setting('server_version'), current_user::text, \
             (SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()), \
             (SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()), \
             (SELECT cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid())";
    let row = match sqlx::raw_sql(q).fetch_one(&mut *c).await {
        Ok(row) => row,
        Err(e) => {
            r.fail("server", format!("cannot read the server version: {e}"));
            return;
        }
    };
    let get = |i: usize| row.try_get::<Option<String>, _>(i).ok().flatten();
    let version = get(0).unwrap_or_default();
    let major: u32 = version.split(['.', ' ']).next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major >= 13 {
        r.ok("server", format!("PostgreSQL {version}, logged in as {}", get(1).unwrap_or_default()));
    } else {
        r.warn("server", format!("PostgreSQL {version}: owsync is tested with PostgreSQL 13 and newer"));
    }
    let pooled = opts.get_host().to_ascii_lowercase().contains("pooler");
    let via = if pooled { " (as the server sees it: this is the pooler's link to PostgreSQL)" } else { "" };
    match (get(2).as_deref(), get(3), get(4)) {
        (Some("true"), v, cipher) => {
            r.ok("tls", format!("on: {} {}{via}", v.unwrap_or_default(), cipher.unwrap_or_default()));
        }
        _ if is_unix_socket(opts) || is_local(opts.get_host()) => {
            r.ok("tls", "off (a local connection: nothing crosses the network)");
        }
        _ => r.warn(
            "tls",
            format!(
                "off{via}: the password and data cross the network unencrypted; add sslmode=require \
                 (or verify-full) to the URL"
            ),
        ),
    }
}

/// Session semantics through whatever is in between (the store's own probe); `false`
/// means a transaction-mode pooler.
pub async fn session_pooling(r: &mut Report, opts: &PgConnectOptions, timeout: Duration) -> bool {
    let pool = match PgPoolOptions::new().max_connections(2).acquire_timeout(timeout).connect_with(opts.clone()).await {
        Ok(p) => p,
        Err(e) => {
            r.fail("session", format!("a second connection failed: {}", explain(&e, opts)));
            return false;
        }
    };
    let res = store::check_session_pooling(&pool).await;
    pool.close().await;
    match res {
        Ok(()) => {
            r.ok("session", "session semantics hold (a direct connection or a session-mode pooler)");
            true
        }
        Err(e) => {
            r.fail("session", e.to_string());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::classify;

    #[test]
    fn supabase_endpoints() {
        let (s, m) = classify("db.abcdefgh.supabase.co", 5432, "sync_service");
        assert_eq!(s, Status::Ok);
        assert!(m.contains("direct connection"), "{m}");
        let (s, m) = classify("aws-0-eu-central-1.pooler.supabase.com", 5432, "sync_service.abcdefgh");
        assert_eq!(s, Status::Ok);
        assert!(m.contains("session pooler"), "{m}");
        let (s, m) = classify("aws-0-eu-central-1.pooler.supabase.com", 5432, "sync_service");
        assert_eq!(s, Status::Warn);
        assert!(m.contains("project ref"), "{m}");
        let (s, m) = classify("aws-0-eu-central-1.pooler.supabase.com", 6543, "sync_service.abcdefgh");
        assert_eq!(s, Status::Fail);
        assert!(m.contains("transaction pooler") && m.contains("5432"), "{m}");
        assert_eq!(classify("db.abcdefgh.supabase.co", 6543, "x").0, Status::Fail);
        let (s, m) = classify("pg.internal", 5432, "sync_service");
        assert_eq!(s, Status::Ok);
        assert!(m.contains("not a Supabase"), "{m}");
    }
}
