//! What following the WAL saves (issue 13 item 5, a measurement, not part of CI: run with
//! `cargo test --release --test followed_costs -- --ignored --nocapture`). One tenant of
//! `OWSYNC_COSTS_CHATS` chats (default 10,000: 225 MB), in one run: syncs of `--changed`
//! (`OWSYNC_COSTS_CHANGED`, default 1,000) changed chats, alternately with the tenant's
//! WAL followed and with no follower (the walk of every leaf), and the CPU time of each.

mod common;

use std::time::{Duration, Instant};

use common::compare::mirror_diff;
use common::{TestEnv, gen_db, ok};
use owsync::fixtures::{JournalMode, MutateOptions, OpKind, SchemaFlavor, mutate};
use owsync::sync::{SyncJob, SyncReport, sync_tenant};

const CHAT_OPS: [OpKind; 10] = owsync::fixtures::CHAT_CHANGING_OPS;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// This process's CPU time (user + system).
fn cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

struct Run {
    secs: f64,
    cpu: f64,
    pages: u64,
    captures: String,
}

async fn timed(job: &SyncJob<'_>) -> (SyncReport, Run) {
    let (t, c) = (Instant::now(), cpu());
    let r = sync_tenant(job).await.unwrap();
    let run = Run {
        secs: t.elapsed().as_secs_f64(),
        cpu: cpu().checked_sub(c).unwrap().as_secs_f64(),
        pages: r.tables.values().map(|t| t.pages_read).sum(),
        captures: format!("chat {}, chat_message {}", r.tables["chat"].capture, r.tables["chat_message"].capture),
    };
    (r, run)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run by hand (see the module doc)"]
async fn following_the_wal_costs_what_changed() {
    let chats = env_u64("OWSYNC_COSTS_CHATS", 10_000);
    let changed = env_u64("OWSYNC_COSTS_CHANGED", 1_000) as u32;
    let rounds = env_u64("OWSYNC_COSTS_ROUNDS", 3);
    let env = TestEnv::new("costs").await;
    let db = env.path("webui.db");
    gen_db(&db, (chats / 100).max(1) as u32, 100.min(chats as u32), 42, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("costs", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "costs", "--once"]));
    // Open WebUI's connection: the WAL stays between syncs.
    let writer = rusqlite::Connection::open(&db).unwrap();
    writer.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(())).unwrap();
    // A first commit after the checkpointed file: the WAL has a header from here on (a
    // snapshot of a WAL without one cannot be placed by a follower).
    mutate(&db, &MutateOptions { ops: 1, seed: 1, only: Some(CHAT_OPS.to_vec()), ..Default::default() }).unwrap();
    let pool = env.sync_pool().await;
    let spec = owsync::store::specs::get(&pool, &env.cluster, "costs").await.unwrap().spec;
    let job = SyncJob {
        pool: &pool,
        cluster: &env.cluster,
        client: "costs",
        spec: &spec,
        fence: None,
        options: Default::default(),
    };
    let (mut fol, mut walk) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let follow = round % 2 == 0;
        let handle = follow.then(|| owsync::source::follow::register(&db));
        if follow {
            // A sync that walks and records what the next one follows on from (an unchanged
            // source would be skipped without a walk).
            sync_tenant(&job.full()).await.unwrap();
        }
        let poll = handle.clone();
        let opts = MutateOptions { ops: changed, seed: 7 + round, only: Some(CHAT_OPS.to_vec()), ..Default::default() };
        let muts = tokio::task::spawn_blocking({
            let db = db.clone();
            move || {
                // Written in bursts of 10 ops (~100 pages), the follower reading between them as
                // owsyncd's does every 200 ms: a follower that lets more than a WAL generation
                // (wal_autocheckpoint, 1,000 pages) be written between two reads loses track.
                for i in 0..u64::from(opts.ops / 10) {
                    let o = MutateOptions { ops: 10, seed: opts.seed * 1000 + i, ..opts.clone() };
                    mutate(&db, &o).unwrap();
                    if let Some(h) = &poll {
                        h.lock().unwrap().follower.poll().unwrap();
                    }
                }
            }
        });
        muts.await.unwrap();
        let (r, run) = timed(&job).await;
        if let Some(h) = &handle {
            let f = h.lock().unwrap();
            eprintln!("follower: lost track {} times, last {:?}", f.follower.losses, f.follower.last_lost);
        }
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        eprintln!(
            "round {round}: {} {:.3} s, cpu {:.3} s, {} pages read ({})",
            if follow { "followed" } else { "walked" },
            run.secs,
            run.cpu,
            run.pages,
            run.captures
        );
        if follow {
            fol.push(run);
            owsync::source::follow::unregister(&db);
        } else {
            walk.push(run);
        }
    }
    let (diffs, _) = mirror_diff(&pool, "client_costs", &db).await;
    assert!(diffs.is_empty(), "{diffs:#?}");
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (fs, ws) = (med(&mut fol.iter().map(|r| r.secs).collect()), med(&mut walk.iter().map(|r| r.secs).collect()));
    let (fc, wc) = (med(&mut fol.iter().map(|r| r.cpu).collect()), med(&mut walk.iter().map(|r| r.cpu).collect()));
    let (fp, wp) = (fol.iter().map(|r| r.pages).sum::<u64>(), walk.iter().map(|r| r.pages).sum::<u64>());
    println!(
        "FIGURE {chats} chats, {changed} mutate ops on chats per sync, {rounds} rounds each: followed {fs:.3} s (cpu {fc:.3} s), \
         walk of every leaf {ws:.3} s (cpu {wc:.3} s): {:.2}x the time, {:.2}x the CPU; pages read {fp} vs {wp}",
        fs / ws,
        fc / wc
    );
}
