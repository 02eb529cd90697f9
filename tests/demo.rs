//! The README's first command: `owsyncctl demo --exit-after-sync` (what
//! `scripts/demo.sh --exit-after-sync` runs after building) reaches Synced and prints
//! the tenant and its mirrored row counts, with every SQLite row in PostgreSQL.

use std::process::Command;
use std::time::Instant;

#[test]
fn demo_syncs_and_exits() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_owsyncctl"))
        .args(["demo", "--exit-after-sync", "--listen", &listen, "--users", "6", "--chats-per-user", "4"])
        .output()
        .expect("run owsyncctl demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    println!("demo reached Synced and exited in {:.1}s", t.elapsed().as_secs_f64());
    assert!(stdout.contains("clientsync/acme-corp created"), "{stdout}");
    assert!(stdout.contains("phase Synced"), "{stdout}");
    let header = stdout.lines().find(|l| l.starts_with("NAME")).expect("get clients table");
    assert!(header.contains("PHASE") && header.contains("LAST-SYNC"), "{header}");
    let row = stdout.lines().find(|l| l.starts_with("acme-corp")).expect("acme-corp row");
    assert!(row.contains("Synced"), "{row}");
    let total = stdout.lines().find(|l| l.starts_with("TOTAL")).expect("TOTAL row");
    let nums: Vec<&str> = total.split_whitespace().skip(1).collect();
    assert_eq!(nums.len(), 2, "{total}");
    assert_eq!(nums[0], nums[1], "SQLite and PostgreSQL totals differ: {total}");
    assert!(nums[0].parse::<u64>().unwrap() > 300, "{total}");
}
