//! `owsyncctl apply --prune` (ApplySet-style inventories) with the real binary against a
//! real PostgreSQL: it deletes only tenants that a previous apply of the same inventory
//! recorded and the current files no longer have; never tenants applied without an
//! inventory, from another inventory, or of another cluster; `--dry-run` changes nothing.

mod common;

use std::path::{Path, PathBuf};

use common::{TestEnv, ok, stderr, stdout};
use sqlx::PgPool;

fn doc(name: &str, cluster: &str) -> String {
    format!(
        "apiVersion: owsync.io/v1alpha1\nkind: ClientSync\nmetadata:\n  name: {name}\n  cluster: {cluster}\n  labels: {{team: a}}\nspec:\n  enabled: true\n  source:\n    path: /data/{name}/webui.db\n"
    )
}

fn put(dir: &Path, name: &str, cluster: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, doc(name, cluster)).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// (cluster, name, deleted, inventory) of every spec row.
async fn specs(admin: &PgPool) -> Vec<(String, String, bool, Option<String>)> {
    sqlx::query_as(
        "SELECT cluster_name, name, deleted_at IS NOT NULL, applied_by_inventory
         FROM sync_metadata.client_specs ORDER BY cluster_name, name",
    )
    .fetch_all(admin)
    .await
    .unwrap()
}

async fn deleted(admin: &PgPool) -> Vec<String> {
    specs(admin).await.into_iter().filter(|r| r.2).map(|r| format!("{}/{}", r.0, r.1)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_only_what_its_own_inventory_no_longer_has() {
    let env = TestEnv::new("prune").await;
    let admin = env.admin_pool().await;
    let repo = env.path("checkout-1/hosts/test-host");
    for n in ["t1", "t2", "t3"] {
        put(&repo, n, "test-host");
    }
    let out = ok(&env.ctl(&["apply", "-f", s(&repo)]));
    assert_eq!(out, "clientsync/t1 created\nclientsync/t2 created\nclientsync/t3 created\n");
    // Others with the same labels: a single file, stdin (no inventory), an explicit
    // inventory, and the same names in another cluster applied from a same-named directory.
    let solo = put(&env.path("elsewhere"), "solo", "test-host");
    ok(&env.ctl(&["apply", "-f", s(&solo)]));
    ok(&env.ctl_stdin(&["apply", "-f", "-"], Some(&doc("piped", "test-host"))));
    let team = env.path("team");
    put(&team, "b1", "test-host");
    ok(&env.ctl(&["apply", "-f", s(&team), "--inventory", "team-b"]));
    let other = env.path("other-repo/test-host");
    let mut text = doc("t3", "other-host").replace("webui.db\n", "webui.db\n  target:\n    schema: client_t3_other\n");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("t3.yaml"), &text).unwrap();
    text = doc("o1", "other-host");
    std::fs::write(other.join("o1.yaml"), &text).unwrap();
    ok(&env.ctl(&["apply", "-f", s(&other)]));
    let inv: Vec<(String, String)> = specs(&admin).await.into_iter().map(|r| (r.1, r.3.unwrap_or_default())).collect();
    assert_eq!(
        inv,
        [
            ("o1", "test-host"),
            ("t3", "test-host"),
            ("b1", "team-b"),
            ("piped", ""),
            ("solo", "solo.yaml"),
            ("t1", "test-host"),
            ("t2", "test-host"),
            ("t3", "test-host")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );

    // t3 leaves Git; the pipeline's checkout lives somewhere else: the default inventory is
    // the directory's name, not its path.
    let ci = env.path("ci-checkout/hosts/test-host");
    for n in ["t1", "t2"] {
        put(&ci, n, "test-host");
    }
    let before = specs(&admin).await;
    // What a pull request's CI shows: no change without --prune, the prune with it.
    let o = env.ctl(&["diff", "-f", s(&ci)]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = env.ctl(&["diff", "--prune", "-f", s(&ci)]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let d = stdout(&o);
    assert!(d.starts_with("--- live/clientsync/t3\n+++ pruned/clientsync/t3 (inventory test-host)\n"), "{d}");
    assert!(d.contains("\n-  name: t3\n") && !d.contains("clientsync/t1"), "{d}");
    assert!(!d.lines().any(|l| l.starts_with('+') && !l.starts_with("+++")), "{d}");
    let out = ok(&env.ctl(&["apply", "--prune", "--dry-run", "-f", s(&ci)]));
    assert_eq!(
        out,
        "clientsync/t1 unchanged (dry run)\nclientsync/t2 unchanged (dry run)\n\
         clientsync/t3 pruned (dry run) (inventory test-host, was enabled; its mirror is kept)\n\
         inventory test-host of cluster test-host: 2 tenants (dry run)\n"
    );
    assert_eq!(specs(&admin).await, before, "--dry-run changed something");
    let out = ok(&env.ctl(&["apply", "--prune", "-f", s(&ci)]));
    assert!(out.contains("clientsync/t3 pruned (inventory test-host"), "{out}");
    assert_eq!(deleted(&admin).await, ["test-host/t3"]);
    let members: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(members) FROM sync_metadata.inventories WHERE cluster_name = 'test-host' AND id = 'test-host'",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(members, ["t1", "t2"]);
    // A second run prunes nothing; an inventory with no members prunes nothing of others.
    let out = ok(&env.ctl(&["apply", "--prune", "-f", s(&ci)]));
    assert!(!out.contains("pruned"), "{out}");
    let empty = env.path("new-inv");
    put(&empty, "n1", "test-host");
    let out = ok(&env.ctl(&["apply", "--prune", "-f", s(&empty), "--inventory", "fresh"]));
    assert_eq!(out, "clientsync/n1 created\ninventory fresh of cluster test-host: 1 tenants\n");
    assert_eq!(deleted(&admin).await, ["test-host/t3"]);

    // Another inventory prunes its own: b1 removed from team-b's directory, b2 added.
    std::fs::remove_file(team.join("b1.yaml")).unwrap();
    put(&team, "b2", "test-host");
    let out = ok(&env.ctl(&["apply", "--prune", "-f", s(&team), "--inventory", "team-b"]));
    assert!(out.contains("clientsync/b2 created") && out.contains("clientsync/b1 pruned"), "{out}");
    assert_eq!(deleted(&admin).await, ["test-host/b1", "test-host/t3"]);

    // A label selector narrows the inventory's prune (it never widens it).
    std::fs::write(team.join("b3.yaml"), doc("b3", "test-host").replace("team: a", "team: z")).unwrap();
    ok(&env.ctl(&["apply", "-f", s(&team), "--inventory", "team-b"]));
    std::fs::remove_file(team.join("b2.yaml")).unwrap();
    std::fs::remove_file(team.join("b3.yaml")).unwrap();
    put(&team, "b4", "test-host");
    let out = ok(&env.ctl(&["apply", "--prune", "-l", "team=z", "-f", s(&team), "--inventory", "team-b"]));
    assert!(out.contains("clientsync/b3 pruned") && !out.contains("clientsync/b2 pruned"), "{out}");
    assert_eq!(deleted(&admin).await, ["test-host/b1", "test-host/b3", "test-host/t3"]);
    let out = ok(&env.ctl(&["apply", "--prune", "--selector", "team=nobody", "-f", s(&team), "--inventory", "team-b"]));
    assert!(!out.contains("pruned"), "{out}");

    // stdin needs an explicit inventory to prune; an invalid document prunes nothing.
    let o = env.ctl_stdin(&["apply", "--prune", "-f", "-"], Some(&doc("piped", "test-host")));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("needs --inventory"), "{}", stderr(&o));
    std::fs::write(ci.join("t2.yaml"), doc("t2", "test-host").replace("enabled: true", "enabled: maybe")).unwrap();
    std::fs::remove_file(ci.join("t1.yaml")).unwrap();
    let o = env.ctl(&["apply", "--prune", "-f", s(&ci)]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert_eq!(deleted(&admin).await, ["test-host/b1", "test-host/b3", "test-host/t3"]);
    // Untouched throughout: the other cluster's t3 and o1, solo and piped.
    let live: Vec<String> =
        specs(&admin).await.into_iter().filter(|r| !r.2).map(|r| format!("{}/{}", r.0, r.1)).collect();
    for want in [
        "other-host/o1",
        "other-host/t3",
        "test-host/piped",
        "test-host/solo",
        "test-host/t1",
        "test-host/b2",
        "test-host/b4",
    ] {
        assert!(live.contains(&want.to_string()), "{want} missing from {live:?}");
    }
}
