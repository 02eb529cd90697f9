//! While PostgreSQL is down, the endpoints that need it answer 503 within about a second
//! (not after the pool's 10 s acquire timeout). Its own test binary: it stops the server.

mod common;

use std::time::{Duration, Instant};

use common::TestEnv;
use common::daemon::{Daemon, eventually};

async fn timed_status(d: &Daemon, path: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = reqwest::Client::new().get(d.url(path)).timeout(Duration::from_secs(30)).send().await;
    (r.map_or(0, |r| r.status().as_u16()), t.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_and_clients_answer_503_within_a_second_while_postgres_is_down() {
    let env = TestEnv::new("db_down").await;
    let d = Daemon::start(&env, "node-a", &[]);
    d.wait_up(Duration::from_secs(20)).await;
    let dr = &d;
    eventually(Duration::from_secs(20), "ready", || async move {
        (timed_status(dr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    common::pg().stop().expect("stop PostgreSQL");
    for path in ["/readyz", "/api/v1/clients", "/api/v1/clients/acme"] {
        let (status, took) = timed_status(&d, path).await;
        assert_eq!(status, 503, "{path} while PostgreSQL is down");
        assert!(took < Duration::from_millis(2500), "{path} took {took:?}");
    }
    common::pg().start_again().expect("start PostgreSQL again");
    eventually(Duration::from_secs(30), "ready again", || async move {
        (timed_status(dr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
}
