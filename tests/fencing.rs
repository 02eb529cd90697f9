//! One writer, proven with the real binaries: a leader frozen with SIGSTOP in the middle
//! of a sync, past its lease, loses it to the standby, which takes over (greater epoch)
//! and syncs; the source changes; the old leader is thawed with SIGCONT, and nothing it
//! does afterwards lands: no sync_jobs, client_status, table_state, events or mirror
//! row (an audit trigger on every one of those tables records the writing session of
//! each committed statement), its log shows it stepped down, and sampling both
//! `/health` all along never shows two leaders at once.
//! Run with `--nocapture` to see the measured figures.

mod common;

use common::jobs::strip_ansi;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::compare::mirror_diff;
use common::daemon::{Daemon, eventually};
use common::{TestEnv, gen_db, ok};
use owsync::fixtures::{JournalMode, MutateOptions, SchemaFlavor, mutate};
use sqlx::{PgPool, Row};

const FLAGS: [&str; 6] = ["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"];
const TENANT: &str = "fence";
const SCHEMA: &str = "client_fence";

#[derive(Debug, Clone)]
struct Sample {
    node: &'static str,
    sent: Instant,
    answered: Instant,
    leader: Option<bool>,
}

async fn health(d_port: u16) -> Option<bool> {
    let url = format!("http://127.0.0.1:{d_port}/health");
    let r = reqwest::Client::new().get(url).timeout(Duration::from_millis(1500)).send().await.ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    v["is_leader"].as_bool()
}

/// Samples both replicas' `/health` concurrently, round after round, until stopped.
fn sample_health(
    a: u16,
    b: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<[Sample; 2]>> {
    tokio::spawn(async move {
        let mut rounds = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let sent = Instant::now();
            let one = |node: &'static str, port: u16| async move {
                let leader = health(port).await;
                Sample { node, sent, answered: Instant::now(), leader }
            };
            let (sa, sb) = tokio::join!(one("node-a", a), one("node-b", b));
            rounds.push([sa, sb]);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        rounds
    })
}

/// Records every committed write statement on the tables a leader writes, with the
/// writing session's application_name (`owsyncd/<instance>/<node>`), in its transaction.
async fn install_audit(admin: &PgPool) {
    let setup = [
        "CREATE SCHEMA fencing_audit",
        "CREATE TABLE fencing_audit.writes (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp(),
             app text NOT NULL, tbl text NOT NULL, op text NOT NULL)",
        "CREATE FUNCTION fencing_audit.note() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
             SET search_path = pg_catalog AS $$
         BEGIN
             INSERT INTO fencing_audit.writes (app, tbl, op)
             VALUES (current_setting('application_name'), TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP);
             RETURN NULL;
         END $$",
    ];
    for s in setup {
        sqlx::raw_sql(sqlx::AssertSqlSafe(s)).execute(admin).await.expect("audit setup");
    }
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_type = 'BASE TABLE' AND (table_schema = $1 OR (table_schema = 'sync_metadata' AND table_name IN
             ('sync_jobs', 'client_status', 'table_state', 'events', 'sync_requests')))",
    )
    .bind(SCHEMA)
    .fetch_all(admin)
    .await
    .unwrap();
    assert!(tables.len() > 10, "mirror tables not there yet: {tables:?}");
    for (s, t) in &tables {
        let sql = format!(
            "CREATE TRIGGER fencing_audit AFTER INSERT OR UPDATE OR DELETE ON \"{s}\".\"{t}\"
             FOR EACH STATEMENT EXECUTE FUNCTION fencing_audit.note()"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(admin).await.expect("create audit trigger");
    }
}

/// Audit rows written by `node`'s sessions: (id, table, op, at).
async fn audit_of(admin: &PgPool, node: &str) -> Vec<(i64, String, String, DateTime<Utc>)> {
    sqlx::query_as("SELECT id, tbl, op, at FROM fencing_audit.writes WHERE app LIKE $1 ORDER BY id")
        .bind(format!("owsyncd/%/{node}"))
        .fetch_all(admin)
        .await
        .unwrap()
}

async fn lease(admin: &PgPool) -> (String, i64, DateTime<Utc>) {
    let r = sqlx::query("SELECT leader_id, epoch, acquired_at FROM sync_metadata.leader_election")
        .fetch_one(admin)
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

async fn heartbeat(admin: &PgPool, node: &str) -> Option<(DateTime<Utc>, bool)> {
    sqlx::query_as("SELECT last_heartbeat, is_leader FROM sync_metadata.hosts WHERE node_id = $1")
        .bind(node)
        .fetch_optional(admin)
        .await
        .unwrap()
}

async fn db_now(admin: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()").fetch_one(admin).await.unwrap()
}

fn snapshot(src: &Path, to: &Path) {
    let c = rusqlite::Connection::open(src).unwrap();
    c.execute("VACUUM INTO ?1", [to.to_str().unwrap()]).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_leader_writes_nothing_after_the_takeover() {
    let env = TestEnv::new("fencing").await;
    let admin = env.admin_pool().await;
    let sync_pool = env.sync_pool().await;
    let db = env.path("webui.db");
    // Big enough that a sync takes a while, so the leader is frozen in the middle of one.
    gen_db(&db, 150, 20, 404, SchemaFlavor::Fresh, JournalMode::Wal);
    let m = env.manifest(TENANT, &db, "");
    std::fs::write(&m, std::fs::read_to_string(&m).unwrap().replace("interval: 10s", "interval: 60m")).unwrap();
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));

    let a = Daemon::start(&env, "node-a", &FLAGS);
    a.wait_up(Duration::from_secs(20)).await;
    let admin_r = &admin;
    eventually(Duration::from_secs(60), "node-a's first sync", || async move {
        common::jobs::jobs(admin_r, TENANT)
            .await
            .iter()
            .any(|j| j.leader == "node-a" && j.status == "succeeded")
            .then_some(())
    })
    .await;
    let b = Daemon::start(&env, "node-b", &FLAGS);
    b.wait_up(Duration::from_secs(20)).await;
    let (holder, epoch_a, _) = lease(&admin).await;
    assert_eq!(holder, "node-a");
    install_audit(&admin).await;

    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_health(a.port, b.port, stop_sampling.clone());

    // Work for node-a, then freeze it in the middle of that sync.
    // Enough work that the (incremental, two tables at once) sync is still running when
    // node-a is frozen.
    mutate(&db, &MutateOptions { ops: 1500, seed: 1, ..Default::default() }).unwrap();
    ok(&env.ctl(&["trigger", TENANT]));
    eventually(Duration::from_secs(20), "node-a's triggered sync running", || async move {
        let js = common::jobs::jobs(admin_r, TENANT).await;
        js.iter().any(|j| j.leader == "node-a" && j.status == "running").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await; // into the sync's table transactions
    let frozen_running =
        common::jobs::jobs(&admin, TENANT).await.iter().any(|j| j.leader == "node-a" && j.status == "running");
    a.signal(libc::SIGSTOP);
    let t_stop = Instant::now();
    println!("node-a frozen (SIGSTOP) {} its sync", if frozen_running { "in the middle of" } else { "just after" });

    // node-b takes over once the lease has lapsed, with a greater epoch, and syncs.
    let br = &b;
    eventually(Duration::from_secs(15), "node-b leads", || async move { br.is_leader().await.then_some(()) }).await;
    let takeover = t_stop.elapsed();
    let (holder, epoch_b, takeover_at) = lease(&admin).await;
    assert_eq!(holder, "node-b");
    assert!(epoch_b > epoch_a, "epoch {epoch_a} -> {epoch_b}");
    eventually(Duration::from_secs(60), "node-b's sync", || async move {
        let js = common::jobs::jobs(admin_r, TENANT).await;
        js.iter().any(|j| j.leader == "node-b" && j.epoch == epoch_b && j.status == "succeeded").then_some(())
    })
    .await;
    let synced_by_b = t_stop.elapsed();
    let (diffs, n) = mirror_diff(&sync_pool, SCHEMA, &db).await;
    assert!(diffs.is_empty(), "node-b's sync left differences: {:?}", &diffs[..diffs.len().min(5)]);
    assert!(n > 1000, "compared only {n} rows");
    println!("FIGURE SIGSTOP -> standby leads: {takeover:?}; -> standby synced: {synced_by_b:?}");

    // Everything node-a committed, as of now (it is frozen: nothing of it can commit
    // while it stays frozen, and its sessions were ended on takeover).
    let before_thaw = audit_of(&admin, "node-a").await;
    // The source changes: there is work to do for whoever still thinks it leads.
    let snap = env.path("before-thaw.db");
    snapshot(&db, &snap);
    mutate(&db, &MutateOptions { ops: 200, seed: 2, ..Default::default() }).unwrap();

    a.signal(libc::SIGCONT);
    let t_cont = Instant::now();
    let cont_at = db_now(&admin).await;
    let ar = &a;
    eventually(Duration::from_secs(10), "node-a's log: stepped down", || async move {
        ar.log_text().contains("stepping down").then_some(())
    })
    .await;
    let stepped_down = t_cont.elapsed();
    // Let node-a run on for a while as a standby: its heartbeat, written 2 s after it
    // was thawed, shows it is alive and not leading.
    eventually(Duration::from_secs(15), "node-a's standby heartbeat", || async move {
        let hb = heartbeat(admin_r, "node-a").await;
        hb.filter(|(at, leader)| *at > cont_at + chrono::Duration::seconds(2) && !leader).map(|_| ())
    })
    .await;
    assert!(!a.is_leader().await, "node-a claims to lead");
    assert!(b.is_leader().await, "node-b no longer leads");
    assert_eq!(lease(&admin).await.1, epoch_b, "the lease changed hands again");

    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = sampler.await.unwrap();

    // 1. node-a's sessions committed nothing after the takeover.
    let after = audit_of(&admin, "node-a").await;
    let late: Vec<_> = after.iter().filter(|w| !before_thaw.contains(w)).collect();
    assert!(late.is_empty(), "node-a wrote after losing the lease: {late:#?}");
    let last_a_write = before_thaw.last().map(|w| w.3);
    assert!(last_a_write.is_none_or(|t| t < takeover_at), "node-a wrote at {last_a_write:?}, after {takeover_at}");
    // 2. The mirror holds none of the change made before the thaw (node-b has not synced
    // since: interval 60m): it still equals the snapshot.
    let (diffs, _) = mirror_diff(&sync_pool, SCHEMA, &snap).await;
    assert!(diffs.is_empty(), "the mirror changed after the thaw: {:?}", &diffs[..diffs.len().min(5)]);
    // 3. sync_jobs: node-a started nothing after the takeover; its frozen run was closed
    // by node-b (abandoned), not finished by node-a.
    let js = common::jobs::jobs(&admin, TENANT).await;
    for j in js.iter().filter(|j| j.epoch == epoch_a) {
        assert!(j.started < takeover_at, "a run of epoch {epoch_a} started after the takeover: {j:?}");
        assert!(
            j.status == "abandoned" || j.finished.is_some_and(|f| f < takeover_at),
            "a run of epoch {epoch_a} ended after the takeover: {j:?}"
        );
    }
    assert!(js.iter().all(|j| j.status != "running" || j.epoch == epoch_b), "{js:#?}");
    // 4. table_state: no watermark was written under node-a's epoch after the takeover;
    // node-b rewrote those of the tables it synced (a table whose pages did not change
    // since node-a's last committed pass needs no write, and keeps node-a's state, which
    // was committed with its rows before the takeover).
    let states: Vec<(String, Option<i64>, DateTime<Utc>)> =
        sqlx::query_as("SELECT table_name, epoch, updated_at FROM sync_metadata.table_state WHERE client_name = $1")
            .bind(TENANT)
            .fetch_all(&admin)
            .await
            .unwrap();
    assert!(states.len() > 10);
    for (t, e, at) in &states {
        match *e {
            Some(e) if e == epoch_b => assert!(*at >= takeover_at, "table_state of {t} at {at}"),
            Some(e) if e == epoch_a => assert!(*at < takeover_at, "table_state of {t} written by node-a at {at}"),
            other => panic!("table_state of {t} has epoch {other:?}, neither node-a's nor node-b's"),
        }
    }
    // When node-a's sync had ended just before the freeze, node-b finds every page as
    // recorded and rightly writes no state; frozen in the middle, node-b redoes the rest.
    if frozen_running {
        assert!(states.iter().any(|(_, e, _)| *e == Some(epoch_b)), "node-b synced no table");
    }
    // 5. No event of node-a after the takeover.
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_metadata.events WHERE node_id = 'node-a' AND created_at >= $1")
            .bind(takeover_at)
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(events, 0, "node-a recorded events after the takeover");
    // 6. node-a's log says why it stopped, and that the sync it was frozen in was
    // dropped (fail-stop), not run to its end.
    let log = strip_ansi(&a.log_text());
    assert!(log.contains("stepping down") && log.contains("lost the lease"), "log of node-a:\n{log}");
    if frozen_running {
        let (abandoned, aborted) = (count_lines(&log, "abandoning the sync"), aborted_reconcilers(&log));
        assert!(abandoned + aborted >= 1, "the frozen sync was not dropped; log of node-a:\n{log}");
    }
    assert!(!log.contains("lost the lease during sync"), "a sync ran to its end; log of node-a:\n{log}");
    // 7. Never two leaders at once: no round where both said so, and once node-b said so,
    // node-a never did in an answer to a request sent after that.
    let both: Vec<_> = rounds.iter().filter(|r| r[0].leader == Some(true) && r[1].leader == Some(true)).collect();
    assert!(both.is_empty(), "two leaders in one round: {both:#?}");
    let b_first =
        rounds.iter().flatten().filter(|s| s.node == "node-b" && s.leader == Some(true)).map(|s| s.answered).min();
    let b_first = b_first.expect("node-b never said it leads");
    let a_late: Vec<_> =
        rounds.iter().flatten().filter(|s| s.node == "node-a" && s.leader == Some(true) && s.sent > b_first).collect();
    assert!(a_late.is_empty(), "node-a said it leads after node-b did: {a_late:#?}");
    let a_silent = rounds.iter().filter(|r| r[0].leader.is_none()).count();
    println!(
        "health: {} rounds, node-a unanswered in {a_silent} (frozen); node-a's writes before the freeze: {}",
        rounds.len(),
        before_thaw.len()
    );
    println!("FIGURE SIGCONT -> node-a logged its step-down: {stepped_down:?}");
    let (_, took_over) = log_line(&strip_ansi(&b.log_text()), "took the lease over");
    println!("node-b: {took_over}");

    // And the system goes on: node-b syncs the change when asked.
    ok(&env.ctl(&["trigger", TENANT]));
    let (pool, src) = (&sync_pool, &db);
    eventually(Duration::from_secs(30), "node-b syncs the change", || async move {
        mirror_diff(pool, SCHEMA, src).await.0.is_empty().then_some(())
    })
    .await;
}

fn log_line(log: &str, needle: &str) -> (bool, String) {
    match log.lines().find(|l| l.contains(needle)) {
        Some(l) => (true, l.to_string()),
        None => (false, format!("(no line with {needle:?})")),
    }
}

/// Fail-stop without a standby and without freezing anything: the lease row is locked
/// (as a stalled database or network would stall renewals) while three tenants sync;
/// once the renew deadline passes the leader aborts every reconciler at once: each
/// in-flight sync is dropped (it is left `running` and closed as `abandoned` by the
/// next term), none runs to its end. When the lock goes, the leader starts a new term
/// (greater epoch) and every mirror converges.
#[tokio::test(flavor = "multi_thread")]
async fn missing_the_renew_deadline_aborts_every_in_flight_sync() {
    let env = TestEnv::new("fencing_fail_stop").await;
    let admin = env.admin_pool().await;
    let sync_pool = env.sync_pool().await;
    let names = ["t1", "t2", "t3"];
    for (i, n) in names.iter().enumerate() {
        let db = env.path(&format!("{n}.db"));
        gen_db(&db, 40, 30, 500 + i as u64, SchemaFlavor::Fresh, JournalMode::Wal);
        let m = env.manifest(n, &db, "");
        std::fs::write(&m, std::fs::read_to_string(&m).unwrap().replace("interval: 10s", "interval: 60m")).unwrap();
        ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    }
    // Three syncs at once, each with its two table connections: a budget of 8 (the
    // control session, the pool's bookkeeping connection and six sync connections).
    let flags = [&FLAGS[..], &["--max-connections", "8"]].concat();
    let a = Daemon::start(&env, "node-a", &flags);
    a.wait_up(Duration::from_secs(20)).await;
    let admin_r = &admin;
    let count = |status: &'static str| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(DISTINCT client_name) FROM sync_metadata.sync_jobs WHERE status = $1",
        )
        .bind(status)
        .fetch_one(admin_r)
        .await
        .unwrap()
    };
    eventually(Duration::from_secs(60), "every tenant's first sync", || async move {
        (count("succeeded").await == 3).then_some(())
    })
    .await;
    let (_, epoch_before, _) = lease(&admin).await;
    for n in names {
        let db = env.path(&format!("{n}.db"));
        mutate(&db, &MutateOptions { ops: 100, seed: 7, ..Default::default() }).unwrap();
        // VACUUM renumbers every page: the syncs are full passes again, long enough to be
        // caught in flight (an incremental pass of 100 changes is over too soon).
        rusqlite::Connection::open(&db).unwrap().execute_batch("VACUUM").unwrap();
    }
    // All three at once, so that their syncs overlap.
    let env_r = &env;
    std::thread::scope(|s| {
        for n in names {
            s.spawn(move || ok(&env_r.ctl(&["trigger", n])));
        }
    });
    let ar = &a;
    let seen = std::sync::Mutex::new(Vec::new());
    let seen_r = &seen;
    let waited = tokio::time::timeout(Duration::from_secs(20), async move {
        eventually(Duration::from_secs(25), "three syncs running", || async move {
            let n = count("running").await;
            seen_r.lock().unwrap().push(n);
            (n == 3).then_some(())
        })
        .await;
    })
    .await;
    if waited.is_err() {
        let tail: String = ar.log_text().lines().rev().take(40).collect::<Vec<_>>().join("\n");
        panic!(
            "three syncs were never running at once (counts seen {:?}); node-a's log ends:\n{tail}",
            seen.lock().unwrap()
        );
    }
    let in_flight: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, client_name FROM sync_metadata.sync_jobs WHERE status = 'running'")
            .fetch_all(&admin)
            .await
            .unwrap();
    // Stall the renewals: hold the lease row's lock.
    let mut blocker = admin.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM sync_metadata.leader_election FOR UPDATE").execute(&mut *blocker).await.unwrap();
    let t = Instant::now();
    let ar = &a;
    eventually(Duration::from_secs(10), "node-a steps down", || async move {
        ar.log_text().contains("stepping down").then_some(())
    })
    .await;
    let stepped_down = t.elapsed();
    assert!(!a.is_leader().await);
    blocker.rollback().await.unwrap();

    // Every in-flight sync was dropped at once: by the aborted leader task, or (the same
    // instant; a reconciler may be counted by both) by its own deadline check; none ran
    // on to its fence.
    let log = strip_ansi(&a.log_text());
    let (abandoned, aborted) = (count_lines(&log, "abandoning the sync"), aborted_reconcilers(&log));
    assert!(abandoned + aborted >= 3, "not every in-flight sync was dropped; log:\n{log}");
    let when = |needle: &str| -> Vec<DateTime<Utc>> {
        log.lines().filter(|l| l.contains(needle)).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect()
    };
    let stops: Vec<DateTime<Utc>> =
        [when("abandoning the sync"), when("leader aborted"), when("stepping down")].concat();
    let spread = *stops.iter().max().unwrap() - *stops.iter().min().unwrap();
    assert!(spread < chrono::Duration::milliseconds(300), "the stop took {spread}; log:\n{log}");
    assert!(!log.contains("lost the lease during sync"), "a sync ran to its end; log:\n{log}");

    // A new term; the dropped runs closed as abandoned, never finished by their term.
    eventually(Duration::from_secs(30), "every tenant synced in the new term", || async move {
        let (_, e, _) = lease(admin_r).await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT client_name) FROM sync_metadata.sync_jobs WHERE status = 'succeeded' AND epoch = $1",
        )
        .bind(e)
        .fetch_one(admin_r)
        .await
        .unwrap();
        (e > epoch_before && n == 3).then_some(())
    })
    .await;
    for (id, name) in &in_flight {
        let (status, epoch): (String, i64) =
            sqlx::query_as("SELECT status, epoch FROM sync_metadata.sync_jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&admin)
                .await
                .unwrap();
        assert_eq!((status.as_str(), epoch), ("abandoned", epoch_before), "the run of {name} in flight");
    }
    for n in names {
        let (diffs, _) = mirror_diff(&sync_pool, &format!("client_{n}"), &env.path(&format!("{n}.db"))).await;
        assert!(diffs.is_empty(), "{n}: {:?}", &diffs[..diffs.len().min(5)]);
    }
    println!(
        "FIGURE renewals stalled -> leader stepped down, 3 in-flight syncs dropped: {stepped_down:?} (renew deadline 2s)"
    );
}

fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// From the leader's "leader aborted: aborting all reconcilers reconcilers=N" line.
fn aborted_reconcilers(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("leader aborted"))
        .filter_map(|l| l.split("reconcilers=").nth(1)?.split_whitespace().next()?.parse::<usize>().ok())
        .sum()
}
