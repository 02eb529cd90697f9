//! `owsyncctl verify NAME`: exit 0 equal, 1 differs, naming table, key and column.

mod common;

use common::{TestEnv, ok, small_db, stderr, stdout};

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_every_kind_of_difference() {
    let env = TestEnv::new("verify").await;
    let db = env.path("webui.db");
    small_db(&db, 11);
    ok(&env.ctl(&["apply", "-f", env.manifest("acme", &db, "").to_str().unwrap()]));
    ok(&env.ctl(&["sync", "acme", "--once"]));
    let out = env.ctl(&["verify", "acme"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("mirror equals source"), "{}", stderr(&out));

    // Tamper with one mirror value as admin.
    let admin = env.admin_pool().await;
    let id: String =
        sqlx::query_scalar("SELECT id FROM client_acme.chat ORDER BY id LIMIT 1").fetch_one(&admin).await.unwrap();
    sqlx::query("UPDATE client_acme.chat SET title = 'tampered' WHERE id = $1")
        .bind(&id)
        .execute(&admin)
        .await
        .unwrap();
    // And change the source without syncing: deletes, inserts, updates.
    let opts = owsync::fixtures::MutateOptions { ops: 60, seed: 4, ..Default::default() };
    let summary = owsync::fixtures::mutate(&db, &opts).unwrap();
    let out = env.ctl(&["verify", "acme"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("chat: row {id} differs in title")), "{text}");
    for (table, ch) in &summary.tables {
        for k in ch.deleted.iter().filter(|k| !k.starts_with('[')).take(3) {
            assert!(
                text.contains(&format!("{table}: row {k} is in the mirror but not in the source")),
                "{table} {k}\n{text}"
            );
        }
        for k in ch.inserted.iter().filter(|k| !k.starts_with('[')).take(3) {
            assert!(text.contains(&format!("{table}: row {k} is missing from the mirror")), "{table} {k}\n{text}");
        }
    }
    let json = env.ctl(&["verify", "acme", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v["tables"].as_array().unwrap().len() > 40);

    ok(&env.ctl(&["sync", "acme", "--once"]));
    let out = env.ctl(&["verify", "acme"]);
    assert_eq!(out.status.code(), Some(0), "{}\n{}", stdout(&out), stderr(&out));
}
