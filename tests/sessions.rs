//! owsync's PostgreSQL sessions (`store::session`): every pooled connection has
//! TCP_NODELAY on its socket (sqlx 0.9.0 does not set it) and writes TOAST values with
//! lz4, and what a sync writes into the mirror is stored lz4-compressed.

mod common;

use common::{TestEnv, gen_db, ok};
use owsync::fixtures::{JournalMode, SchemaFlavor};

/// TCP_NODELAY of every TCP socket of this process connected to `port`.
fn nodelay_of_sockets_towards(port: u16) -> Vec<bool> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        // SAFETY: socket option calls with correctly sized buffers; errors skip the fd.
        unsafe {
            let mut addr: libc::sockaddr_storage = std::mem::zeroed();
            let mut alen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            if libc::getpeername(fd, (&raw mut addr).cast(), &raw mut alen) != 0
                || i32::from(addr.ss_family) != libc::AF_INET
            {
                continue;
            }
            let sin = &*(&raw const addr).cast::<libc::sockaddr_in>();
            if u16::from_be(sin.sin_port) != port {
                continue;
            }
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw mut v).cast(), &raw mut len);
            out.push(v != 0);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn pooled_sessions_have_nodelay_lz4_and_no_jit_and_the_mirror_is_lz4() {
    let env = TestEnv::new("sessions").await;
    let port = common::pg().port();
    let pool = env.sync_pool().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.acquire().await.unwrap());
    }
    for c in &mut held {
        let method: String = sqlx::query_scalar("SHOW default_toast_compression").fetch_one(&mut **c).await.unwrap();
        assert_eq!(method, "lz4");
        let jit: String = sqlx::query_scalar("SHOW jit").fetch_one(&mut **c).await.unwrap();
        assert_eq!(jit, "off", "no JIT compilation for owsync's few-row statements");
    }
    let sockets = nodelay_of_sockets_towards(port);
    assert!(sockets.len() >= 3, "expected the pool's 3 connections among {sockets:?}");
    assert!(sockets.iter().all(|&d| d), "every socket towards PostgreSQL has TCP_NODELAY: {sockets:?}");
    drop(held);

    let db = env.path("webui.db");
    gen_db(&db, 4, 10, 9, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let methods: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT pg_column_compression(chat), count(*) FROM client_acme.chat GROUP BY 1 ORDER BY 1 NULLS LAST",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        methods.iter().any(|(m, n)| m.as_deref() == Some("lz4") && *n > 0),
        "compressed chat JSON in the mirror is lz4: {methods:?}"
    );
    assert!(methods.iter().all(|(m, _)| m.as_deref() != Some("pglz")), "no pglz value: {methods:?}");
}
