//! `owsyncctl sync NAME --once` shows progress: a bar on a terminal (run here under a
//! pseudo-terminal with `script`), a line per table without one, nothing with `-q`.

mod common;

use std::process::Command;

use common::{TestEnv, gen_db, ok, stderr};
use owsync::fixtures::{JournalMode, SchemaFlavor};

fn tables_in(db: &std::path::Path) -> usize {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'", [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_is_a_line_per_table_without_a_terminal_and_nothing_when_quiet() {
    let env = TestEnv::new("progress").await;
    let db = env.path("webui.db");
    gen_db(&db, 4, 30, 3, SchemaFlavor::Fresh, JournalMode::Wal);
    let n = tables_in(&db);
    let m = env.manifest("big", &db, "");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));

    let out = env.ctl(&["sync", "big", "--once"]);
    ok(&out);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("table ")).collect();
    assert_eq!(lines.len(), n, "one line per table:\n{err}");
    assert!(lines.last().unwrap().ends_with(&format!("({n}/{n} tables)")), "{err}");
    let chats: i64 = 4 * 30;
    assert!(lines.iter().any(|l| l.starts_with(&format!("table chat: {chats} rows ("))), "{err}");

    let out = env.ctl(&["sync", "big", "--once", "--full", "-q"]);
    ok(&out);
    assert!(!stderr(&out).contains("table "), "quiet: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_is_a_bar_on_a_terminal() {
    let env = TestEnv::new("progress_tty").await;
    let db = env.path("webui.db");
    gen_db(&db, 4, 30, 4, SchemaFlavor::Fresh, JournalMode::Wal);
    let m = env.manifest("tty", &db, "");
    ok(&env.ctl(&["apply", "-f", m.to_str().unwrap()]));
    // `script` gives the command a pseudo-terminal and copies what it draws to stdout.
    let cmd = format!("{} sync tty --once", env!("CARGO_BIN_EXE_owsyncctl"));
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("OWSYNC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("OWSYNC_DATABASE_URL_FILE", &env.url_file)
        .env("OWSYNC_CLUSTER", &env.cluster)
        .env("TERM", "xterm")
        .output()
        .expect("run script(1)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("clientsync/tty synced"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("table ")), "a terminal gets the bar, not lines:\n{text}");
    assert!(text.contains(" rows · ") && text.contains("tables "), "no bar drawn:\n{text}");
}
