//! Syncs that follow the WAL (issue 13): with a follower registered for the tenant, as
//! owsyncd does, a sync reads only the pages the follower names; after every sync the
//! mirror equals the source, whatever the writer did between (random Open WebUI writes,
//! checkpoints of every mode, a small `wal_autocheckpoint`, VACUUM, the writer closing).
//! `OWSYNC_FOLLOW_ROUNDS` (default 12) and `OWSYNC_FOLLOW_SEED` pick the run.

mod common;

use common::compare::mirror_diff;
use common::{TestEnv, gen_db, ok};
use owsync::fixtures::{JournalMode, MutateOptions, SchemaFlavor, mutate};
use owsync::sync::{SyncJob, sync_tenant};
use rand::{Rng, SeedableRng};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A connection that, like Open WebUI's, has read the database: it holds the WAL open, so
/// other connections closing do not delete it.
fn open_writer(db: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db).expect("open");
    c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())).expect("read");
    c
}

/// Something a writer does between two syncs besides Open WebUI's own writes.
fn disturb(rng: &mut rand_chacha::ChaCha8Rng, writer: &mut Option<rusqlite::Connection>, db: &std::path::Path) {
    let c = writer.get_or_insert_with(|| open_writer(db));
    let sql = match rng.random_range(0..10) {
        0 => "PRAGMA wal_checkpoint(PASSIVE)",
        1 => "PRAGMA wal_checkpoint(FULL)",
        2 => "PRAGMA wal_checkpoint(RESTART)",
        3 => "PRAGMA wal_checkpoint(TRUNCATE)",
        4 => "PRAGMA wal_autocheckpoint=20",
        5 if rng.random_bool(0.3) => "VACUUM",
        6 => {
            // The last connection closes: the WAL is checkpointed and deleted.
            *writer = None;
            return;
        }
        _ => return,
    };
    c.query_row(sql, [], |_| Ok(())).or_else(|_| c.execute_batch(sql)).expect(sql);
}

/// Every recorded page state of the tenant `fol` (base and delta) is what a full walk of
/// the source makes now (nothing writes while it is checked).
async fn recorded_states_are_full_walks(admin: &sqlx::PgPool, db: &std::path::Path, at: &str) {
    use owsync::source::pages;
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT table_name, pages, pages_delta FROM sync_metadata.table_state
         WHERE client_name = 'fol' AND pages IS NOT NULL",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    let src = owsync::source::Source::open(db).unwrap();
    for r in rows {
        let (table, base, delta): (String, Vec<u8>, Option<Vec<u8>>) = (r.get(0), r.get(1), r.get(2));
        let target = owsync::sql::qualified("client_fol", &table);
        let recorded = match delta {
            Some(d) => pages::delta::apply(&base, &d, &target).unwrap_or_else(|| panic!("{at}: {table}'s delta")),
            None => base,
        };
        let mut walked =
            pages::walk(&src, &table, false).unwrap().unwrap_or_else(|| panic!("{at}: walk {table}")).state;
        walked.sort();
        assert!(recorded == walked.encode(&target), "{at}: {table}'s recorded page state is not a full walk's");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn followed_syncs_keep_the_mirror_equal_to_the_source() {
    let seed = env_u64("OWSYNC_FOLLOW_SEED").unwrap_or_else(|| rand::rng().random());
    let rounds = env_u64("OWSYNC_FOLLOW_ROUNDS").unwrap_or(12);
    eprintln!("OWSYNC_FOLLOW_SEED={seed} OWSYNC_FOLLOW_ROUNDS={rounds}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let env = TestEnv::new("followed").await;
    let db = env.path("webui.db");
    gen_db(&db, 10, 6, 3, SchemaFlavor::Fresh, JournalMode::Wal);
    // Random writes may empty a small table: the deletion guard would hold such a sync.
    let m = env.manifest("fol", &db, "  deletionGuard:\n    enabled: false\n");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    // Open WebUI keeps a connection open: the WAL stays between syncs.
    let mut writer = Some(open_writer(&db));
    let pool = env.sync_pool().await;
    let admin = env.admin_pool().await;
    let spec = owsync::store::specs::get(&pool, &env.cluster, "fol").await.unwrap().spec;
    let job = SyncJob {
        pool: &pool,
        cluster: &env.cluster,
        client: "fol",
        spec: &spec,
        fence: None,
        options: Default::default(),
    };
    // Polled between syncs, as owsyncd's follower task does.
    let handle = owsync::source::follow::register(&db);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (h, stop) = (handle.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                h.lock().unwrap().follower.poll().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    sync_tenant(&job).await.unwrap();
    let mut followed = 0;
    for round in 0..rounds {
        let ops = rng.random_range(1..40);
        mutate(&db, &MutateOptions { ops, seed: seed ^ round, ..Default::default() }).expect("mutate");
        if rng.random_bool(0.4) {
            disturb(&mut rng, &mut writer, &db);
        }
        writer.get_or_insert_with(|| open_writer(&db));
        // Another process writes chat's table_state (as `forget` does): the page state this
        // process kept from its last sync is no longer the recorded one and must not be used.
        let forgotten = rng.random_bool(0.2);
        if forgotten {
            sqlx::query(
                "UPDATE sync_metadata.table_state SET pages = NULL, pages_delta = NULL
                 WHERE client_name = 'fol' AND table_name = 'chat'",
            )
            .execute(&admin)
            .await
            .unwrap();
        }
        let r = sync_tenant(&job).await.unwrap();
        assert!(r.failed.is_empty(), "seed {seed}, round {round}: {:?}", r.failed);
        if forgotten {
            assert_eq!(r.tables["chat"].capture, "full", "seed {seed}, round {round}: a kept state was used");
        }
        let (diffs, _) = mirror_diff(&pool, "client_fol", &db).await;
        assert!(diffs.is_empty(), "seed {seed}, round {round}: {diffs:#?}");
        recorded_states_are_full_walks(&admin, &db, &format!("seed {seed}, round {round}")).await;
        let chat = &r.tables["chat"];
        if chat.capture == "followed" {
            followed += 1;
        }
        let (lost, losses) = {
            let f = handle.lock().unwrap();
            (f.follower.last_lost, f.follower.losses)
        };
        eprintln!(
            "round {round}: chat {} ({} pages read, {} rows read); follower lost track {losses} times, last {lost:?}",
            chat.capture, chat.pages_read, chat.rows_read
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.join().unwrap();
    assert!(followed * 3 >= rounds, "seed {seed}: only {followed} of {rounds} syncs followed the WAL");
}

/// owsyncd follows each tenant's WAL between syncs: with `watch: true`, the syncs after
/// the first read only what changed (its log says how many tables were followed).
#[tokio::test(flavor = "multi_thread")]
async fn owsyncd_follows_the_wal_between_syncs() {
    use common::daemon::{Daemon, eventually};
    use std::time::Duration;
    let env = TestEnv::new("followd").await;
    let pool = env.sync_pool().await;
    let db = env.path("webui.db");
    gen_db(&db, 6, 4, 17, SchemaFlavor::Fresh, JournalMode::Wal);
    let _writer = open_writer(&db);
    let m = env.manifest("fold", &db, "  watch: true\n");
    std::fs::write(&m, std::fs::read_to_string(&m).unwrap().replace("interval: 10s", "interval: 60m")).unwrap();
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    let d = Daemon::start(&env, "node-a", &[]);
    d.wait_up(Duration::from_secs(20)).await;
    ok(&env.ctl(&["wait", "client/fold", "--for", "condition=Synced", "--timeout", "30s"]));
    for round in 0..4u64 {
        mutate(&db, &MutateOptions { ops: 10, seed: 300 + round, ..Default::default() }).unwrap();
        let (p, src) = (&pool, &db);
        eventually(Duration::from_secs(10), &format!("round {round}: the mirror converges"), || async move {
            mirror_diff(p, "client_fold", src).await.0.is_empty().then_some(())
        })
        .await;
    }
    let log = d.log_text();
    let followed = log.lines().filter(|l| l.contains("sync finished") && !l.contains("followed=0")).count();
    eprintln!("{followed} syncs followed the WAL");
    assert!(followed >= 2, "syncs that followed the WAL: {followed}; log:\n{log}");
}
