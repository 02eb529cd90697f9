//! Crash safety: `kill -9` of a syncing process at random points, 20 times, with the
//! source changing in between; afterwards the mirror equals the source and no table's
//! recorded state is ahead of (or behind) the rows committed with it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::compare::mirror_diff;
use common::{TestEnv, gen_db, ok};
use owsync::fixtures::{JournalMode, SchemaFlavor};
use sqlx::Row;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_points_never_leaves_a_half_applied_table() {
    let env = TestEnv::new("crash").await;
    let db = env.path("webui.db");
    gen_db(&db, 30, 20, 17, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    // How long one full sync takes here, to spread the kills over it.
    let t = Instant::now();
    ok(&env.ctl(&["sync", "acme", "--once", "--full"]));
    let full = t.elapsed();
    println!("one full sync: {:.2}s", full.as_secs_f64());
    let mut killed_mid_run = 0;
    let mut i = 0u64;
    while killed_mid_run < 20 && i < 40 {
        i += 1;
        owsync::fixtures::mutate(
            &db,
            &owsync::fixtures::MutateOptions { ops: 30, seed: 100 + i, ..Default::default() },
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_owsyncctl"))
            .args(["sync", "acme", "--once", "--full"])
            .env("OWSYNC_DATABASE_URL_FILE", &env.url_file)
            .env("OWSYNC_CLUSTER", &env.cluster)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let at = Duration::from_millis(rand::random_range(20..(full.as_millis() as u64 * 4 / 5).max(40)));
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
    }
    println!("{killed_mid_run} of {i} kills landed mid-sync");
    assert!(killed_mid_run >= 20, "only {killed_mid_run} of {i} kills landed during a sync");

    // Every table's recorded state matches the rows committed with it.
    let admin = env.admin_pool().await;
    let states = sqlx::query(
        "SELECT table_name, rows FROM sync_metadata.table_state WHERE client_name = 'acme' AND source_ddl IS NOT NULL",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(states.len() > 40);
    for s in &states {
        let (t, rows): (String, i64) = (s.get(0), s.get(1));
        let sql = format!("SELECT count(*) FROM client_acme.\"{t}\" WHERE NOT _owsync_deleted");
        let live: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&admin).await.unwrap();
        assert_eq!(live, rows, "table {t}: state says {rows} rows, the mirror has {live} live rows");
    }
    // One more (uninterrupted) sync converges.
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let (diffs, n) = mirror_diff(&env.sync_pool().await, "client_acme", &db).await;
    assert!(diffs.is_empty(), "{} differences: {:#?}", diffs.len(), &diffs[..diffs.len().min(10)]);
    assert!(n > 3000);
}
