//! Every connection owsync opens is set up for its work: TCP_NODELAY on the socket (sqlx
//! sets it since 0.9.1; without it each COPY's CopyDone waited ~40 ms for a delayed ACK),
//! lz4 TOAST compression and no JIT (`store::session`).

mod common;

use std::os::fd::RawFd;

use common::TestEnv;

/// The peer port of a connected TCP socket; `None` for any other descriptor.
fn peer_port(fd: RawFd) -> Option<u16> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: out-pointers to locals of the sizes passed; a non-socket fd only errs.
    let ok = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&raw mut ty).cast(), &raw mut len) };
    if ok != 0 || ty != libc::SOCK_STREAM {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data, large enough for any address family.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut alen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: addr/alen describe a writable sockaddr_storage.
    if unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &raw mut alen) } != 0 {
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

fn nodelay(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: out-pointers to locals of the sizes passed.
    let ok = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw mut v).cast(), &raw mut len) };
    ok == 0 && v != 0
}

/// This process's TCP sockets connected to `port`, each with whether it has TCP_NODELAY.
fn sockets_towards(port: u16) -> Vec<bool> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| peer_port(fd) == Some(port))
        .map(nodelay)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn owsync_sessions_have_nodelay_lz4_and_no_jit() {
    let env = TestEnv::new("session_setup").await;
    let port = common::pg().port();
    let pool = owsync::store::connect(&env.sync_url, "test-session", 2).await.expect("connect");
    let mut a = pool.acquire().await.expect("a connection");
    let mut b = pool.acquire().await.expect("a second connection");
    let sockets = sockets_towards(port);
    assert!(sockets.len() >= 2, "owsync's two connections to port {port}: {sockets:?}");
    assert!(sockets.iter().all(|&d| d), "every socket towards PostgreSQL has TCP_NODELAY: {sockets:?}");
    for conn in [&mut a, &mut b] {
        let jit: String = sqlx::query_scalar("SHOW jit").fetch_one(&mut **conn).await.expect("SHOW jit");
        assert_eq!(jit, "off");
        let lz4: String =
            sqlx::query_scalar("SHOW default_toast_compression").fetch_one(&mut **conn).await.expect("SHOW");
        assert_eq!(lz4, "lz4", "Debian's PostgreSQL is built with lz4");
    }
}
