//! Readers of the mirror are never blocked by a sync: re-syncing an existing table takes
//! no ACCESS EXCLUSIVE lock (provision_table alters a table only to add a missing column).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestEnv, gen_db, ok};
use owsync::fixtures::{JournalMode, SchemaFlavor};

#[tokio::test(flavor = "multi_thread")]
async fn reads_of_the_mirror_do_not_wait_for_a_sync() {
    let env = TestEnv::new("readers").await;
    let db = env.path("webui.db");
    gen_db(&db, 40, 30, 5, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));

    let pool = env.sync_pool().await;
    let mut sync = Command::new(env!("CARGO_BIN_EXE_owsyncctl"))
        .args(["sync", "acme", "--once", "--full"])
        .env("OWSYNC_DATABASE_URL_FILE", &env.url_file)
        .env("OWSYNC_CLUSTER", &env.cluster)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut worst = Duration::ZERO;
    let mut reads = 0;
    while sync.try_wait().unwrap().is_none() {
        for table in ["chat", "chat_message", "user"] {
            let t = Instant::now();
            let sql = format!("SELECT count(*) FROM (SELECT 1 FROM client_acme.\"{table}\" LIMIT 1) x");
            let _: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.unwrap();
            worst = worst.max(t.elapsed());
            reads += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sync.wait().unwrap().success());
    println!("{reads} reads during a full re-sync, worst {:.1} ms", worst.as_secs_f64() * 1000.0);
    assert!(reads >= 10, "the sync ended too fast to observe ({reads} reads)");
    assert!(worst < Duration::from_millis(200), "a read of the mirror waited {worst:?} for the sync");
}
