//! Recovery with `restore`: in place (refused while the database is open, the replaced
//! file kept aside, owner and mode kept, adopted), adopted from a file (the next sync
//! reads and writes nothing), and deleted rows brought back (`--include-deleted-since`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{TestEnv, gen_db, ok, stderr};
use owsync::fixtures::{JournalMode, SchemaFlavor};

fn count(db: &Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open(db).expect("open");
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).expect("count")
}

fn sqldiff(a: &Path, b: &Path) -> String {
    let out = Command::new("sqldiff")
        .args(["--primarykey", a.to_str().unwrap(), b.to_str().unwrap()])
        .output()
        .expect("sqldiff (Debian package sqlite3-tools; scripts/test.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn held(env: &TestEnv) -> bool {
    let admin = env.admin_pool().await;
    sqlx::query_scalar::<_, bool>(
        "SELECT held IS NOT NULL FROM sync_metadata.deletion_guard WHERE client_name = 'acme'",
    )
    .fetch_optional(&admin)
    .await
    .expect("read deletion_guard")
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn in_place_is_refused_while_open_then_replaces_keeps_the_old_file_and_adopts() {
    let env = TestEnv::new("restore_in_place").await;
    let db = env.path("webui.db");
    gen_db(&db, 5, 8, 11, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let original = env.path("original.db");
    std::fs::copy(&db, &original).expect("keep a copy of the original");
    // The volume is lost: Open WebUI created a fresh database; the guard holds.
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", db.display()));
    }
    gen_db(&db, 1, 0, 77, SchemaFlavor::Fresh, JournalMode::Wal);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(env.ctl(&["sync", "acme", "--once"]).status.code(), Some(1));
    assert!(held(&env).await);
    // Open WebUI still runs: refused, naming the process.
    let mut holder = Command::new("python3")
        .args(["-c", "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1]); c.execute('select 1 from user').fetchall(); print('open', flush=True); time.sleep(120)"])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()), &mut line).unwrap();
    let out = env.ctl(&["restore", "acme", "--in-place"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("pid {}", holder.id())) && err.contains("stop Open WebUI"), "{err}");
    assert_eq!(count(&db, "chat"), 0, "nothing was changed");
    holder.kill().unwrap();
    holder.wait().unwrap();
    // Stopped: restored in place, the fresh file kept aside, the mode kept, adopted.
    let out = env.ctl(&["restore", "acme", "--in-place"]);
    let text = ok(&out);
    assert!(text.contains("integrity_check: ok") && text.contains("adopted"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("chat ") && l.contains(" 40 ")), "row counts per table: {text}");
    let aside: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("webui.db.replaced-"))
        .collect();
    assert!(!aside.is_empty(), "the replaced file is kept: {aside:?}");
    let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the restored file keeps the replaced file's mode");
    assert_eq!(count(&db, "chat"), 40);
    let diff = sqldiff(&original, &db);
    assert!(diff.is_empty(), "restored file differs from the original:\n{}", &diff[..diff.len().min(2000)]);
    assert!(!held(&env).await, "the hold is cleared");
    // The next sync reads and writes nothing.
    let out = ok(&env.ctl(&["sync", "acme", "--once"]));
    assert!(out.contains("source unchanged"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_adopted_file_is_not_synced_again_and_later_changes_are_incremental() {
    let env = TestEnv::new("restore_adopt").await;
    let db = env.path("webui.db");
    gen_db(&db, 4, 6, 12, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let restored = env.path("restored.db");
    let out = ok(&env.ctl(&["restore", "acme", "--to", restored.to_str().unwrap(), "--adopt"]));
    assert!(out.contains("(0 rows written, 0 tombstoned"), "{out}");
    // The tenant now runs on the restored file (another host's path).
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &restored, "").to_str().unwrap()]));
    let out = ok(&env.ctl(&["sync", "acme", "--once"]));
    assert!(out.contains("source unchanged"), "adopted: nothing to read: {out}");
    let c = rusqlite::Connection::open(&restored).unwrap();
    c.execute_batch("UPDATE chat SET title = 'renamed after the move' WHERE rowid = (SELECT min(rowid) FROM chat)")
        .unwrap();
    drop(c);
    let out = ok(&env.ctl(&["sync", "acme", "--once"]));
    let chat = out.lines().find(|l| l.starts_with("chat ")).unwrap_or_default().to_string();
    assert!(chat.contains("changed-pages"), "{out}");
    assert!(!out.lines().any(|l| l.ends_with(" full")), "no full pass after adopting: {out}");
    ok(&env.ctl(&["verify", "acme"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_deleted_after_a_time_come_back() {
    let env = TestEnv::new("restore_since").await;
    let db = env.path("webui.db");
    gen_db(&db, 4, 10, 13, SchemaFlavor::Fresh, JournalMode::Wal);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let before_delete = chrono::Utc::now();
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch("DELETE FROM chat WHERE rowid IN (SELECT rowid FROM chat ORDER BY rowid LIMIT 5)").unwrap();
    // A user deleted and created again with the same email: the old row is tombstoned,
    // and brought back it would collide with the live one in the unique index on
    // lower(email): it stays out.
    c.execute_batch(
        "CREATE TEMP TABLE u AS SELECT * FROM user WHERE rowid = (SELECT min(rowid) FROM user);
         DELETE FROM user WHERE rowid = (SELECT min(rowid) FROM user);
         UPDATE u SET id = 'replacement-' || id;
         INSERT INTO user SELECT * FROM u;",
    )
    .unwrap();
    drop(c);
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let plain = env.path("plain.db");
    ok(&env.ctl(&["restore", "acme", "--to", plain.to_str().unwrap()]));
    assert_eq!(count(&plain, "chat"), 35);
    let undo = env.path("undo.db");
    let since = before_delete.to_rfc3339();
    let out = ok(&env.ctl(&["restore", "acme", "--to", undo.to_str().unwrap(), "--include-deleted-since", &since]));
    assert!(out.lines().any(|l| l.starts_with("chat ") && l.contains(" 35 ") && l.contains(" 5 ")), "{out}");
    assert!(out.contains(" deleted rows brought back"), "{out}");
    assert_eq!(count(&undo, "chat"), 40);
    assert_eq!(count(&undo, "user"), 4, "the revived user that collides with a live one stays out");
    assert!(out.lines().any(|l| l.starts_with("user ") && l.split_whitespace().last() == Some("1")), "{out}");
    let later = env.path("later.db");
    ok(&env.ctl(&["restore", "acme", "--to", later.to_str().unwrap(), "--include-deleted-since", "0s"]));
    assert_eq!(count(&later, "chat"), 35, "nothing was deleted after now");
    let bad = env.ctl(&[
        "restore",
        "acme",
        "--to",
        env.path("x.db").to_str().unwrap(),
        "--include-deleted-since",
        "yesterday-ish",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("RFC 3339"), "{}", stderr(&bad));
}
