//! `owsyncctl move --source-path` and `owsyncctl cluster evacuate`: a tenant continues on
//! another cluster from an adopted file without a full pass; an evacuation interrupted
//! (a restored file in use) finishes on a rerun without restoring over that file.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{TestEnv, gen_db, ok, stderr, stdout};
use owsync::fixtures::{JournalMode, SchemaFlavor};

/// Keeps `db` open (as a running Open WebUI would) until killed.
fn hold_open(db: &Path) -> Child {
    let mut c = Command::new("python3")
        .args(["-c", "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1]); c.execute('select 1').fetchall(); print('open', flush=True); time.sleep(120)"])
        .arg(db)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(c.stdout.as_mut().expect("stdout")), &mut line).unwrap();
    c
}

fn admin_arg(env: &TestEnv) -> String {
    env.admin_url_file.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_tenant_continues_from_its_adopted_file() {
    let env = TestEnv::new("move_adopted").await;
    let db = env.path("webui.db");
    gen_db(&db, 3, 5, 31, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let there = env.path("other-host").join("webui.db");
    std::fs::create_dir_all(there.parent().unwrap()).unwrap();
    ok(&env.ctl(&["restore", "acme", "--to", there.to_str().unwrap(), "--adopt"]));
    let bad = env.ctl(&[
        "move",
        "acme",
        "--to-cluster",
        "host-b",
        "--source-path",
        "relative/webui.db",
        "--admin-url-file",
        &admin_arg(&env),
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    let out = ok(&env.ctl(&[
        "move",
        "acme",
        "--to-cluster",
        "host-b",
        "--source-path",
        there.to_str().unwrap(),
        "--admin-url-file",
        &admin_arg(&env),
    ]));
    assert!(out.contains(&format!("spec.source.path is now {}", there.display())), "{out}");
    let get = ok(&env.ctl(&["--cluster", "host-b", "get", "clients", "acme", "-o", "json"]));
    assert!(get.contains(there.to_str().unwrap()), "{get}");
    let out = ok(&env.ctl(&["--cluster", "host-b", "sync", "acme", "--once"]));
    assert!(out.contains("source unchanged"), "no full pass after the move: {out}");
    let c = rusqlite::Connection::open(&there).unwrap();
    c.execute_batch("UPDATE chat SET title = 'on host b' WHERE rowid = (SELECT max(rowid) FROM chat)").unwrap();
    drop(c);
    let out = ok(&env.ctl(&["--cluster", "host-b", "sync", "acme", "--once"]));
    assert!(out.lines().any(|l| l.starts_with("chat ") && l.contains("changed-pages")), "{out}");
    assert!(out.lines().all(|l| !l.contains(" full")), "{out}");
    ok(&env.ctl(&["--cluster", "host-b", "verify", "acme"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_evacuation_finishes_on_a_rerun_without_restoring_twice() {
    let env = TestEnv::new("evacuate_resume").await;
    for (i, name) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let db = env.path(&format!("{name}.db"));
        gen_db(&db, 2, 3, 40 + i as u64, SchemaFlavor::Fresh, JournalMode::Wal);
        ok(&env.ctl(&["apply", "-f", env.manifest(name, &db, "").to_str().unwrap()]));
        ok(&env.ctl(&["sync", name, "--once"]));
    }
    let root = env.path("restored");
    // An earlier run restored beta and was interrupted; its Open WebUI already runs on it.
    let beta = root.join("beta").join("webui.db");
    std::fs::create_dir_all(beta.parent().unwrap()).unwrap();
    ok(&env.ctl(&["restore", "beta", "--to", beta.to_str().unwrap()]));
    let marker = std::fs::metadata(&beta).unwrap().modified().unwrap();
    let mut holder = hold_open(&beta);
    let args = [
        "cluster",
        "evacuate",
        "test-host",
        "--to",
        "host-b",
        "--restore-root",
        root.to_str().unwrap(),
        "--admin-url-file",
    ];
    let mut argv: Vec<String> = args.iter().map(std::string::ToString::to_string).collect();
    argv.push(admin_arg(&env));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = env.ctl(&argv);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), stderr(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("in use by pid"), "{text}");
    assert!(text.contains("2 moved, 1 failed"), "{text}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    let out = env.ctl(&argv);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("clientsync/beta: adopted (restored by an earlier run), moved"), "{text}");
    assert!(text.contains("1 moved, 0 failed"), "only what was left: {text}");
    assert_eq!(std::fs::metadata(&beta).unwrap().modified().unwrap(), marker, "beta was not restored again");
    let out = ok(&env.ctl(&argv));
    assert!(out.is_empty() || !out.contains("FAILED"), "{out}");
    for name in ["alpha", "beta", "gamma"] {
        ok(&env.ctl(&["--cluster", "host-b", "verify", name]));
        let out = ok(&env.ctl(&["--cluster", "host-b", "sync", name, "--once"]));
        assert!(out.contains("source unchanged"), "{name}: {out}");
    }
}
