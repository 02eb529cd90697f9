//! Per-connection set-up of owsync's PostgreSQL sessions, run once when the pool opens a
//! connection: TCP_NODELAY on its socket, lz4 TOAST compression, no JIT.
//!
//! TCP_NODELAY: sqlx 0.9.0 no longer sets it (transact-rs/sqlx#4335, fixed by #4336 after
//! 0.9.0). Without it every `COPY ... FROM STDIN` waits for the server's delayed ACK
//! before its small CopyDone leaves (Nagle): about 40 ms per COPY, measured 44 ms against
//! 0.2 ms with it (BENCHMARKS.md). sqlx exposes no socket, so on Linux the connection's
//! socket is found among the process's descriptors: every TCP socket connected to the
//! server's port gets TCP_NODELAY (idempotent; the other connections of the pool are
//! PostgreSQL's too, and want it as well). Remove this once the sqlx release with #4336
//! is in Cargo.lock.
//!
//! lz4: `default_toast_compression = lz4` (PostgreSQL >= 14, a per-session setting that
//! needs no privilege) makes the values owsync writes compress with lz4 instead of pglz,
//! which is most of PostgreSQL's ingest cost for Open WebUI's chat JSON (the mirror's
//! columns keep the default method, so this applies to whatever owsync writes). A server
//! built without lz4 rejects the setting; the session then keeps pglz.
//!
//! No JIT (`jit = off`, a per-session setting): owsync's statements touch few rows each,
//! but the planner cannot know how few rows a range of rowids holds, so a tombstone pass
//! over 1,000 changed ranges was estimated at 1.5 M cost units, past `jit_above_cost`,
//! and spent 294 ms compiling for 6 ms of work (100k chats, `auto_explain`).

use sqlx::PgConnection;
use tracing::debug;

/// Sets up a new connection to a server listening on `port` (TCP) or a Unix socket.
pub async fn prepare(conn: &mut PgConnection, port: u16) {
    let tagged = set_nodelay_towards(port);
    debug!(port, sockets = tagged, "TCP_NODELAY set on PostgreSQL sockets");
    if let Err(e) = sqlx::raw_sql("SET default_toast_compression = lz4").execute(&mut *conn).await {
        debug!(error = %e, "server refuses lz4 TOAST compression; keeping pglz");
    }
    if let Err(e) = sqlx::raw_sql("SET jit = off").execute(&mut *conn).await {
        debug!(error = %e, "server refuses jit = off");
    }
}

/// Sets TCP_NODELAY on every TCP socket of this process whose peer port is `port`;
/// returns how many it set. Descriptors that are not such sockets are left alone.
#[cfg(target_os = "linux")]
pub fn set_nodelay_towards(port: u16) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return 0 };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&fd| peer_port(fd) == Some(port) && set_nodelay(fd))
        .count()
}

#[cfg(not(target_os = "linux"))]
pub fn set_nodelay_towards(_port: u16) -> usize {
    0
}

/// The peer port of a connected TCP socket; `None` for anything else.
#[cfg(target_os = "linux")]
fn peer_port(fd: i32) -> Option<u16> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is a plain integer (a closed or non-socket fd only yields an error), and
    // the out-pointers point to locals of the sizes passed.
    let ok = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&raw mut ty).cast(), &raw mut len) };
    if ok != 0 || ty != libc::SOCK_STREAM {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data, large enough for any address family.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut alen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: addr/alen describe a writable sockaddr_storage.
    let ok = unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &raw mut alen) };
    if ok != 0 {
        return None;
    }
    let port_be = match i32::from(addr.ss_family) {
        // SAFETY: the family says which sockaddr the storage holds.
        libc::AF_INET => unsafe { (*(&raw const addr).cast::<libc::sockaddr_in>()).sin_port },
        // SAFETY: as above.
        libc::AF_INET6 => unsafe { (*(&raw const addr).cast::<libc::sockaddr_in6>()).sin6_port },
        _ => return None,
    };
    Some(u16::from_be(port_be))
}

#[cfg(target_os = "linux")]
fn set_nodelay(fd: i32) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: a valid pointer to a c_int of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nodelay(fd: i32) -> bool {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let ok =
            unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw mut v).cast(), &raw mut len) };
        ok == 0 && v != 0
    }

    #[test]
    fn sets_nodelay_only_on_sockets_towards_the_port() {
        use std::os::fd::AsRawFd;
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to_a = std::net::TcpStream::connect(a.local_addr().unwrap()).unwrap();
        let to_b = std::net::TcpStream::connect(b.local_addr().unwrap()).unwrap();
        assert!(!nodelay(to_a.as_raw_fd()) && !nodelay(to_b.as_raw_fd()));
        assert!(set_nodelay_towards(a.local_addr().unwrap().port()) >= 1);
        assert!(nodelay(to_a.as_raw_fd()), "the socket towards the port gets TCP_NODELAY");
        assert!(!nodelay(to_b.as_raw_fd()), "a socket towards another port is left alone");
        assert_eq!(peer_port(a.as_raw_fd()), None, "a listening socket has no peer");
    }
}
