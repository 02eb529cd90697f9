use super::*;
use std::time::Instant;

async fn select_one(url: &str) -> std::result::Result<i32, sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let one: i32 = sqlx::query_scalar("select 1").fetch_one(&mut conn).await?;
    conn.close().await?;
    Ok(one)
}

#[test]
fn is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<TempPostgres>();
}

#[tokio::test(flavor = "multi_thread")]
async fn start_create_connect_restart_drop() {
    let t0 = Instant::now();
    let pg = TempPostgres::start(Options::default()).expect("start");
    eprintln!("TempPostgres::start took {:?} (port {})", t0.elapsed(), pg.port());
    assert!(pg.is_running());

    let a = pg.create_database("My-Test").expect("create db a");
    let b = pg.create_database("My-Test").expect("create db b");
    assert_ne!(a, b);
    assert!(a.starts_with("my_test_"), "{a}");
    for db in [&a, &b] {
        assert_eq!(select_one(&pg.admin_url(db)).await.expect("select 1"), 1);
    }
    let wrong = pg.admin_url(&a).replace(pg.admin_password(), "wrong");
    assert!(select_one(&wrong).await.is_err(), "wrong password accepted");

    // The password must not be in any process's argv.
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let argv = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let argv = String::from_utf8_lossy(&argv);
        assert!(!argv.contains(pg.admin_password()), "password in argv: {argv}");
    }

    let port = pg.port();
    pg.stop().expect("stop");
    assert!(!pg.is_running());
    assert!(select_one(&pg.admin_url(&a)).await.is_err());
    pg.stop().expect("stop again is a no-op");
    pg.start_again().expect("start again");
    assert_eq!(pg.port(), port);
    assert_eq!(select_one(&pg.admin_url(&a)).await.expect("after start"), 1);

    pg.kill_immediately().expect("kill");
    assert!(select_one(&pg.admin_url(&b)).await.is_err());
    pg.restart().expect("restart after crash");
    assert_eq!(select_one(&pg.admin_url(&b)).await.expect("after restart"), 1);

    let root = pg.data_dir().parent().unwrap().to_path_buf();
    assert!(pg.data_dir().join("PG_VERSION").is_file());
    drop(pg);
    assert!(!root.exists(), "{} still exists after drop", root.display());
}

#[test]
fn watchdog_cleans_up_after_owner_dies() {
    let pg = TempPostgres::start(Options::default().setting("max_connections", "20")).expect("start");
    assert_eq!(pg.execute("postgres", "show max_connections").unwrap().trim(), "20");
    let root = pg.data_dir().parent().unwrap().to_path_buf();
    // A stand-in owner process that we can kill.
    let mut owner = Command::new("sleep").arg("60").spawn().expect("spawn sleep");
    let mut watchdog = pg.spawn_watchdog(owner.id()).expect("watchdog");
    owner.kill().unwrap();
    owner.wait().unwrap();
    watchdog.wait().expect("watchdog exits");
    assert!(!root.exists(), "{} still exists", root.display());
    assert!(!pg.is_running());
    drop(pg); // must not fail when everything is already gone
}

#[test]
fn bad_bin_dir_error_says_how_to_install() {
    let opts = Options { bin_dir: Some("/nonexistent".into()), ..Options::default() };
    let err = TempPostgres::start(opts).unwrap_err().to_string();
    assert!(err.contains("apt-get install -y postgresql"), "{err}");
}
