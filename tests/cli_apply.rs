//! The declarative command line as an operator (and a GitOps pipeline) uses it: `apply`,
//! `diff`, `get`, `describe`, `delete` and `schema`, run as the real `owsyncctl` process
//! against a real PostgreSQL. Every check looks at the output text, the exit code and
//! what is (or is not) in `sync_metadata.client_specs` afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{TestEnv, free_port, ok, stderr, stdout};
use sqlx::PgPool;

/// One ClientSync document; `meta` and `spec` are extra lines (indented by the caller).
fn doc_full(name: &str, meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: owsync.io/v1alpha1\nkind: ClientSync\nmetadata:\n  name: {name}\n{meta}spec:\n  source:\n    path: /data/{name}/webui.db\n{spec}"
    )
}

fn doc(name: &str, spec: &str) -> String {
    doc_full(name, "", spec)
}

fn write(env: &TestEnv, rel: &str, text: &str) -> PathBuf {
    let p = env.path(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("owsyncctl killed by a signal")
}

/// Asserts the exit code and returns stderr.
#[track_caller]
fn fails(o: &Output, want: i32) -> String {
    assert_eq!(code(o), want, "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    stderr(o)
}

/// (cluster, name, generation, spec, labels, enabled, deleted, updated_at) of every row.
type SpecRow = (String, String, i64, serde_json::Value, serde_json::Value, bool, bool, String);

async fn rows(admin: &PgPool) -> Vec<SpecRow> {
    sqlx::query_as(
        "SELECT cluster_name, name, generation, spec, labels, enabled, deleted_at IS NOT NULL, updated_at::text
         FROM sync_metadata.client_specs ORDER BY cluster_name, name",
    )
    .fetch_all(admin)
    .await
    .expect("read client_specs")
}

async fn row(admin: &PgPool, name: &str) -> SpecRow {
    rows(admin).await.into_iter().find(|r| r.1 == name).unwrap_or_else(|| panic!("no row {name}"))
}

fn names(rows: &[SpecRow]) -> Vec<&str> {
    rows.iter().map(|r| r.1.as_str()).collect()
}

/// `owsyncctl` with a database URL file of our choosing (and no database at all for `schema`).
fn raw_ctl(url_file: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_owsyncctl"))
        .args(args)
        .current_dir(cwd)
        .env_remove("OWSYNC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("OWSYNC_DATABASE_URL_FILE", url_file)
        .env("OWSYNC_CLUSTER", "test-host")
        .output()
        .expect("spawn owsyncctl")
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_reads_a_file_a_fleet_a_directory_and_stdin() {
    let env = TestEnv::new("cli_apply_sources").await;
    let admin = env.admin_pool().await;

    let solo = write(&env, "solo.yaml", &doc("solo", "  interval: 30s\n"));
    assert_eq!(ok(&env.ctl(&["apply", "-f", s(&solo)])), "clientsync/solo created\n");
    let (cluster, _, generation, spec, labels, enabled, deleted, _) = row(&admin, "solo").await;
    assert_eq!((cluster.as_str(), generation, enabled, deleted), ("test-host", 1, true, false));
    assert_eq!(spec["interval"], "30s");
    assert_eq!(spec["source"]["path"], "/data/solo/webui.db");
    assert_eq!(spec["target"]["schema"], "client_solo", "default schema is client_ + name");
    assert_eq!(labels, serde_json::json!({}));

    let fleet_text = format!(
        "# a fleet of three\n{}---\n{}---\n{}",
        doc("fleet-a", ""),
        doc("fleet-b", "  enabled: false\n"),
        doc("fleet-c", "  target:\n    schema: client_custom_c\n")
    );
    let fleet = write(&env, "fleet.yaml", &fleet_text);
    assert_eq!(
        ok(&env.ctl(&["apply", "-f", s(&fleet)])),
        "clientsync/fleet-a created\nclientsync/fleet-b created\nclientsync/fleet-c created\n"
    );
    assert_eq!(row(&admin, "fleet-a").await.3["interval"], "5m", "interval defaults to 5m");
    assert!(!row(&admin, "fleet-b").await.5, "fleet-b is disabled");
    assert_eq!(row(&admin, "fleet-c").await.3["target"]["schema"], "client_custom_c");

    // A directory: *.yaml and *.yml only; a subdirectory only with -R.
    write(&env, "dir/d-one.yaml", &doc("d-one", ""));
    write(&env, "dir/d-two.yml", &doc("d-two", ""));
    write(&env, "dir/notes.txt", "not: [yaml");
    write(&env, "dir/sub/d-three.yaml", &doc("d-three", ""));
    let dir = env.path("dir");
    assert_eq!(ok(&env.ctl(&["apply", "-f", s(&dir)])), "clientsync/d-one created\nclientsync/d-two created\n");
    assert!(!names(&rows(&admin).await).contains(&"d-three"), "no recursion without -R");
    assert_eq!(
        ok(&env.ctl(&["apply", "-R", "-f", s(&dir)])),
        "clientsync/d-one unchanged\nclientsync/d-two unchanged\nclientsync/d-three created\n"
    );

    let out = env.ctl_stdin(&["apply", "-f", "-"], Some(&doc("piped", "  interval: 90s\n")));
    assert_eq!(ok(&out), "clientsync/piped created\n");
    assert_eq!(row(&admin, "piped").await.3["interval"], "1m 30s", "interval is stored normalised");

    // Several -f at once: everything already there.
    let out = ok(&env.ctl(&["apply", "-f", s(&solo), "-f", s(&fleet)]));
    assert_eq!(out.lines().filter(|l| l.ends_with(" unchanged")).count(), 4, "{out}");
    let all = rows(&admin).await;
    assert_eq!(names(&all), ["d-one", "d-three", "d-two", "fleet-a", "fleet-b", "fleet-c", "piped", "solo"]);
    assert!(all.iter().all(|r| r.2 == 1 && r.0 == "test-host"), "{all:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn generation_bumps_only_when_the_normalised_spec_changes() {
    let env = TestEnv::new("cli_apply_generation").await;
    let admin = env.admin_pool().await;
    let f = env.path("gen.yaml");
    let apply = |text: String, extra: &[&str]| {
        std::fs::write(&f, text).unwrap();
        let mut args = vec!["apply", "-f", s(&f)];
        args.extend_from_slice(extra);
        ok(&env.ctl(&args))
    };
    let json_generation = || {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&env.ctl(&["get", "clients", "gen", "-o", "json"]))).unwrap();
        v["metadata"]["generation"].as_i64().unwrap()
    };

    assert_eq!(apply(doc("gen", "  interval: 1m\n"), &[]), "clientsync/gen created\n");
    let first = row(&admin, "gen").await;
    assert_eq!(first.2, 1);
    assert_eq!(apply(doc("gen", "  interval: 1m\n"), &[]), "clientsync/gen unchanged\n");
    // Spelled differently, but the same normalised spec (defaults written out, 60s == 1m).
    let explicit = "  enabled: true\n  interval: 60s\n  target:\n    schema: client_gen\n  tables:\n    include: [\"*\"]\n    exclude: []\n  deletes: tombstone\n  conflicts:\n    default: newest_wins\n";
    assert_eq!(apply(doc("gen", explicit), &[]), "clientsync/gen unchanged\n");
    assert_eq!(row(&admin, "gen").await, first, "unchanged writes nothing, not even updated_at");
    assert_eq!(json_generation(), 1);

    assert_eq!(apply(doc("gen", "  interval: 2m\n"), &[]), "clientsync/gen configured\n");
    let r = row(&admin, "gen").await;
    assert_eq!((r.2, r.3["interval"].as_str()), (2, Some("2m")));
    assert_eq!(json_generation(), 2);

    let labelled = doc_full("gen", "  labels:\n    tier: gold\n", "  interval: 2m\n");
    assert_eq!(apply(labelled.clone(), &[]), "clientsync/gen configured\n");
    let r = row(&admin, "gen").await;
    assert_eq!((r.2, &r.4), (2, &serde_json::json!({"tier": "gold"})), "a label is not the spec");
    assert_eq!(apply(labelled.clone(), &[]), "clientsync/gen unchanged\n");
    assert_eq!(apply(doc("gen", "  enabled: false\n  interval: 2m\n"), &[]).trim(), "clientsync/gen configured");
    assert_eq!(row(&admin, "gen").await.2, 3);
    assert_eq!(apply(labelled, &[]), "clientsync/gen configured\n");
    let before = rows(&admin).await;
    assert_eq!(before[0].2, 4);

    // --dry-run: the same outcome words, and nothing written.
    let dry = apply(doc_full("gen", "  labels:\n    tier: gold\n", "  interval: 3m\n"), &["--dry-run"]);
    assert_eq!(dry, "clientsync/gen configured (dry run)\n");
    let dry = apply(
        format!("{}---\n{}", doc("gen-new", ""), doc_full("gen", "  labels:\n    tier: gold\n", "  interval: 2m\n")),
        &["--dry-run"],
    );
    assert_eq!(dry, "clientsync/gen-new created (dry run)\nclientsync/gen unchanged (dry run)\n");
    assert_eq!(rows(&admin).await, before, "--dry-run wrote something");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_exits_1_names_the_problem_and_applies_nothing() {
    let env = TestEnv::new("cli_apply_bad").await;
    let admin = env.admin_pool().await;
    let keep = write(&env, "keep.yaml", &doc("keep", "  interval: 30s\n"));
    ok(&env.ctl(&["apply", "-f", s(&keep)]));
    let before = rows(&admin).await;
    assert_eq!(names(&before), ["keep"]);

    // Every bad document comes third, after two valid ones (and changes `keep` too).
    let prefix = format!("{}---\n{}---\n", doc("good-1", ""), doc("keep", "  interval: 45s\n"));
    let p = prefix.lines().count();
    let long = "a".repeat(64);
    let long_want = format!("metadata.name: \"{long}\" is not a DNS-1123 label");
    let rel = doc("bad", "").replace("/data/bad/webui.db", "relative/webui.db");
    let v1 = doc("bad", "").replace("v1alpha1", "v1").replace("kind: ClientSync", "kind: Tenant");
    // (what, the bad document, wanted text; `@N:` is its Nth line in bad.yaml)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("unclosed quote", doc("bad", "").replace("name: bad", "name: \"bad"), vec!["@4:9: ", "unclosed quote"]),
        ("indentation", doc("bad", "   interval: 10s\n"), vec!["@8:4: ", "did not find expected key"]),
        ("unknown field", doc("bad", "  bogus: 1\n"), vec!["@8:3: spec.bogus: unknown field `bogus`"]),
        ("unknown field", doc_full("bad", "  namespace: x\n", ""), vec!["@5:3: metadata.namespace: unknown field"]),
        ("bool", doc("bad", "  enabled: maybe\n"), vec!["@8:12: spec.enabled: invalid boolean (got \"maybe\")"]),
        ("sequence", doc("bad", "  interval: [1]\n"), vec!["@8:13: spec.interval: expected string"]),
        (
            "duration",
            doc("bad", "  interval: 5 parsecs\n"),
            vec!["@1: clientsync/bad: spec.interval: \"5 parsecs\" is not a"],
        ),
        ("too short", doc("bad", "  interval: 5s\n"), vec!["spec.interval: \"5s\" must be between 10s and 60m"]),
        ("too long", doc("bad", "  interval: 2h\n"), vec!["spec.interval: \"2h\" must be between 10s and 60m"]),
        ("bad name", doc("Acme_Corp", ""), vec!["metadata.name: \"Acme_Corp\" is not a DNS-1123 label"]),
        ("long name", doc(&long, ""), vec![&long_want]),
        ("relative path", rel, vec!["spec.source.path: \"relative/webui.db\" must be an absolute path"]),
        (
            "schema",
            doc("bad", "  target:\n    schema: public\n"),
            vec!["spec.target.schema: \"public\" must match client_"],
        ),
        ("schema", doc("bad", "  target:\n    schema: client_Bad-1\n"), vec!["spec.target.schema: \"client_Bad-1\""]),
        ("apiVersion", v1, vec!["apiVersion: \"owsync.io/v1\" is not supported", "kind: \"Tenant\" is not supported"]),
        (
            "duplicate",
            doc("good-1", "  interval: 20s\n"),
            vec!["@1: clientsync/good-1 (cluster test-host) appears more than once"],
        ),
        ("all at once", doc("Two_Bad", "  interval: 5 parsecs\n"), vec!["problems", "\"Two_Bad\"", "\"5 parsecs\""]),
    ];
    let f = env.path("bad.yaml");
    for (what, bad, wants) in &cases {
        std::fs::write(&f, format!("{prefix}{bad}")).unwrap();
        // Run in the file's directory so that the message names it as given: bad.yaml.
        let o = raw_ctl(&env.url_file, env.dir.path(), &["apply", "-f", "bad.yaml"]);
        let err = fails(&o, 1);
        assert_eq!(stdout(&o), "", "{what}");
        assert!(err.contains("nothing was applied"), "{what}: {err}");
        for w in wants {
            let w = match w.strip_prefix('@').and_then(|r| r.split_once(':')) {
                Some((n, rest)) => format!("bad.yaml:{}:{rest}", p + n.parse::<usize>().unwrap()),
                None => w.to_string(),
            };
            assert!(err.contains(&w), "{what}: want {w:?} in:\n{err}");
        }
        // The whole stream is rejected: diff says so too (exit 2), and dry runs agree.
        fails(&env.ctl(&["diff", "-f", s(&f)]), 2);
        fails(&env.ctl(&["apply", "--dry-run", "-f", s(&f)]), 1);
        assert_eq!(rows(&admin).await, before, "{what}: something was applied");
    }

    let valid = write(&env, "cases/valid.yaml", &doc("good-3", ""));
    let other: Vec<(&str, Output, &str)> = vec![
        (
            "comment only",
            env.ctl(&["apply", "-f", s(&write(&env, "e.yaml", "# nothing\n---\n"))]),
            "e.yaml: no ClientSync documents found",
        ),
        (
            "empty file",
            env.ctl(&["apply", "-f", s(&write(&env, "e2.yaml", ""))]),
            "e2.yaml: no ClientSync documents found",
        ),
        ("empty stdin", env.ctl_stdin(&["apply", "-f", "-"], Some("")), "-: no ClientSync documents found"),
        ("missing file", env.ctl(&["apply", "-f", s(&env.path("nope.yaml"))]), "no such file or directory"),
        (
            "no yaml in dir",
            env.ctl(&["apply", "-f", &s(&write(&env, "empty/x.txt", "x")).replace("/x.txt", "")]),
            "no YAML files found",
        ),
        (
            "second file bad",
            env.ctl(&["apply", "-f", s(&valid), "-f", s(&env.path("e2.yaml"))]),
            "no ClientSync documents",
        ),
    ];
    for (what, o, want) in other {
        let err = fails(&o, 1);
        assert!(err.contains(want), "{what}: want {want:?} in:\n{err}");
        assert_eq!(stdout(&o), "", "{what}");
        assert_eq!(rows(&admin).await, before, "{what}: something was applied");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_prints_a_unified_diff_and_exits_0_1_or_2() {
    let env = TestEnv::new("cli_diff").await;
    let admin = env.admin_pool().await;
    let f = write(&env, "d.yaml", &doc("d", "  interval: 30s\n"));

    // Not there yet: everything is an addition.
    let o = env.ctl(&["diff", "-f", s(&f)]);
    fails(&o, 1);
    let out = stdout(&o);
    assert!(out.starts_with("--- live/clientsync/d\n+++ desired/clientsync/d\n@@"), "{out}");
    for want in ["+apiVersion: owsync.io/v1alpha1", "+  name: d", "+  cluster: test-host", "+  interval: 30s"] {
        assert!(out.lines().any(|l| l == want), "want {want:?} in:\n{out}");
    }
    assert!(!out.lines().skip(2).any(|l| l.starts_with('-')), "{out}");
    assert!(rows(&admin).await.is_empty(), "diff wrote something");

    ok(&env.ctl(&["apply", "-f", s(&f)]));
    let o = env.ctl(&["diff", "-f", s(&f)]);
    assert_eq!((code(&o), stdout(&o).as_str(), stderr(&o).as_str()), (0, "", ""));

    // One changed, one new, one equal: only the first two show.
    let fleet = format!("{}---\n{}---\n{}", doc("d", "  interval: 40s\n"), doc("e", ""), doc("d2", ""));
    ok(&env.ctl(&["apply", "-f", s(&write(&env, "d2.yaml", &doc("d2", "")))]));
    let f2 = write(&env, "fleet.yaml", &fleet);
    let o = env.ctl(&["diff", "-f", s(&f2)]);
    fails(&o, 1);
    let out = stdout(&o);
    for want in [
        "--- live/clientsync/d",
        "+++ desired/clientsync/d",
        "-  interval: 30s",
        "+  interval: 40s",
        "--- live/clientsync/e",
        "+++ desired/clientsync/e",
        "+  name: e",
    ] {
        assert!(out.lines().any(|l| l == want), "want {want:?} in:\n{out}");
    }
    assert!(!out.contains("clientsync/d2"), "{out}");
    let changed: Vec<&str> =
        out.lines().filter(|l| l.starts_with(['-', '+']) && !l.starts_with("---") && !l.starts_with("+++")).collect();
    assert_eq!(changed.iter().filter(|l| l.starts_with('-')).count(), 1, "{out}");
    let r = rows(&admin).await;
    assert_eq!(names(&r), ["d", "d2"]);
    assert_eq!(r[0].3["interval"], "30s", "diff wrote something");

    // Invalid input: exit 2, with the same message apply gives.
    let bad = write(&env, "bad.yaml", &doc("d", "  interval: 5 parsecs\n"));
    let err = fails(&env.ctl(&["diff", "-f", s(&bad)]), 2);
    assert!(err.contains("spec.interval: \"5 parsecs\" is not a duration"), "{err}");
    let err = fails(&env.ctl(&["diff", "-f", s(&env.path("missing.yaml"))]), 2);
    assert!(err.contains("no such file"), "{err}");
}

/// A URL file pointing at a closed port.
fn unreachable_url_file(env: &TestEnv) -> PathBuf {
    let url = format!("postgres://sync_service:pw@127.0.0.1:{}/nowhere", free_port());
    write(env, "unreachable-url", &url)
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_database_exits_2_for_diff_and_1_for_apply() {
    let env = TestEnv::new("cli_unreachable").await;
    let url = unreachable_url_file(&env);
    let f = write(&env, "u.yaml", &doc("u", ""));
    let o = raw_ctl(&url, Path::new("/"), &["diff", "-f", s(&f)]);
    let err = fails(&o, 2);
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
    assert!(!err.contains(":pw@"), "the password leaked: {err}");
    let err = fails(&raw_ctl(&url, Path::new("/"), &["apply", "-f", s(&f)]), 1);
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
}

/// BUG: a closed port gives "pool timed out while waiting for an open connection" after
/// the 10 s acquire timeout (sqlx retries ECONNREFUSED until then), hiding the cause.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_database_error_names_the_cause_at_once() {
    let env = TestEnv::new("cli_unreachable_cause").await;
    let url = unreachable_url_file(&env);
    let f = write(&env, "u.yaml", &doc("u", ""));
    let t = std::time::Instant::now();
    let err = fails(&raw_ctl(&url, Path::new("/"), &["diff", "-f", s(&f)]), 2);
    assert!(err.to_lowercase().contains("refused"), "the cause is not named: {err}");
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "took {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn get_describe_and_delete() {
    let env = TestEnv::new("cli_get").await;
    let admin = env.admin_pool().await;
    let fleet =
        format!("{}---\n{}", doc_full("alpha", "  labels:\n    tier: gold\n", "  interval: 10s\n"), doc("beta", ""));
    ok(&env.ctl(&["apply", "-f", s(&write(&env, "fleet.yaml", &fleet))]));

    let out = ok(&env.ctl(&["get", "clients"]));
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAME", "ENABLED", "PHASE", "LAST-SYNC", "LAG", "CONFLICTS", "AGE"], "{out}");
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[1][..4], ["alpha", "true", "Pending", "-"], "{out}");
    assert_eq!(lines[2][0], "beta", "{out}");
    let out = ok(&env.ctl(&["get", "clients", "-o", "wide"]));
    assert!(out.lines().next().unwrap().ends_with("INTERVAL   SCHEMA         SOURCE"), "{out}");
    assert!(out.contains("10s") && out.contains("client_alpha") && out.contains("/data/alpha/webui.db"), "{out}");
    let out = ok(&env.ctl(&["get", "client", "beta"]));
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("beta "), "{out}");

    let v: serde_json::Value = serde_json::from_str(&ok(&env.ctl(&["get", "clients", "alpha", "-o", "json"]))).unwrap();
    assert_eq!(v["apiVersion"], "owsync.io/v1alpha1");
    assert_eq!(v["kind"], "ClientSync");
    assert_eq!(v["metadata"]["name"], "alpha");
    assert_eq!(v["metadata"]["cluster"], "test-host");
    assert_eq!(v["metadata"]["generation"], 1);
    assert_eq!(v["metadata"]["labels"]["tier"], "gold");
    assert_eq!(v["spec"]["interval"], "10s");
    let v: serde_json::Value = serde_json::from_str(&ok(&env.ctl(&["get", "clients", "-o", "json"]))).unwrap();
    let items: Vec<&str> =
        v["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(items, ["alpha", "beta"]);

    // get -o yaml can be applied back, unchanged.
    let yaml = ok(&env.ctl(&["get", "clients", "-o", "yaml"]));
    assert!(yaml.contains("generation: 1") && yaml.contains("\n---\n"), "{yaml}");
    let back = write(&env, "back.yaml", &yaml);
    assert_eq!(ok(&env.ctl(&["apply", "-f", s(&back)])), "clientsync/alpha unchanged\nclientsync/beta unchanged\n");
    assert_eq!(code(&env.ctl(&["diff", "-f", s(&back)])), 0);

    let o = env.ctl(&["get", "clients", "nope"]);
    assert!(fails(&o, 1).contains("clientsync/nope not found"));
    assert_eq!(stdout(&o), "");

    let out = ok(&env.ctl(&["describe", "client", "alpha"]));
    for want in [
        "Name:         alpha",
        "Cluster:      test-host",
        "Labels:       tier=gold",
        "Generation:   1",
        "Spec:",
        "  interval: 10s",
        "  source:",
        "Status:       <none>",
        "Events:",
        "  <none>",
    ] {
        assert!(out.lines().any(|l| l.starts_with(want)), "want {want:?} in:\n{out}");
    }
    sqlx::query(
        "INSERT INTO sync_metadata.client_status (cluster_name, name, observed_generation, phase, conditions, consecutive_failures)
         VALUES ('test-host', 'alpha', 1, 'Synced', $1, 0)",
    )
    .bind(serde_json::json!([{"type": "Ready", "status": "True", "reason": "SyncSucceeded", "message": "mirrored 3 tables", "lastTransitionTime": "2025-01-01T00:00:00Z"}]))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query("INSERT INTO sync_metadata.events (cluster_name, client_name, reason, message, node_id) VALUES ('test-host', 'alpha', 'Synced', 'wrote 42 rows', 'node-a')")
        .execute(&admin)
        .await
        .unwrap();
    let out = ok(&env.ctl(&["describe", "client", "alpha"]));
    for want in [
        "Phase:                Synced",
        "Observed Generation:  1",
        "SyncSucceeded",
        "mirrored 3 tables",
        "wrote 42 rows",
        "node-a",
    ] {
        assert!(out.contains(want), "want {want:?} in:\n{out}");
    }
    assert!(!out.contains("Status:       <none>"), "{out}");
    assert!(fails(&env.ctl(&["describe", "client", "nope"]), 1).contains("clientsync/nope not found"));

    // delete refuses while enabled.
    let err = fails(&env.ctl(&["delete", "client", "alpha"]), 1);
    assert!(err.contains("enabled") && err.contains("--force"), "{err}");
    let a = row(&admin, "alpha").await;
    assert!(!a.6 && a.5, "refused delete changed the row: {a:?}");
    ok(&env.ctl(&["get", "clients", "alpha"]));
    let out = ok(&env.ctl(&["delete", "client", "alpha", "--force"]));
    assert!(out.starts_with("clientsync/alpha deleted"), "{out}");
    assert!(fails(&env.ctl(&["get", "clients", "alpha"]), 1).contains("not found"));
    assert!(fails(&env.ctl(&["delete", "client", "alpha"]), 1).contains("not found"));
    // Or disable it first.
    ok(&env.ctl(&["apply", "-f", s(&write(&env, "beta-off.yaml", &doc("beta", "  enabled: false\n")))]));
    assert!(ok(&env.ctl(&["delete", "client", "beta"])).starts_with("clientsync/beta deleted"));
    let o = env.ctl(&["get", "clients"]);
    assert_eq!((code(&o), stdout(&o).as_str()), (0, ""));
    assert!(stderr(&o).contains("No clientsyncs found"), "{}", stderr(&o));
    let o = env.ctl(&["get", "clients", "-o", "json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&ok(&o)).unwrap()["items"], serde_json::json!([]));
    // A deleted tenant can be applied again: created, and visible again.
    assert_eq!(ok(&env.ctl(&["apply", "-f", s(&back)])), "clientsync/alpha created\nclientsync/beta created\n");
    let out = ok(&env.ctl(&["get", "clients"]));
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(rows(&admin).await.iter().all(|r| !r.6 && r.5), "re-created rows are live and enabled");
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_prints_the_json_schema() {
    let nowhere = Path::new("/nonexistent/url-file");
    let o = raw_ctl(nowhere, Path::new("/"), &["schema"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&o)).expect("schema is JSON");
    assert_eq!(v["title"], "ClientSync");
    assert_eq!(v["required"], serde_json::json!(["apiVersion", "kind", "metadata", "spec"]));
    assert_eq!(v["additionalProperties"], false, "unknown fields are rejected");
    let interval = &v["$defs"]["ClientSyncSpec"]["properties"]["interval"];
    assert_eq!((interval["type"].as_str(), interval["default"].as_str()), (Some("string"), Some("5m")), "{v:#}");
    assert_eq!(ok(&raw_ctl(nowhere, Path::new("/"), &["schema", "ClientSync"])), stdout(&o));
    let o = raw_ctl(nowhere, Path::new("/"), &["schema", "Bogus"]);
    assert!(fails(&o, 1).contains("unknown kind"), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
}

/// BUG: nothing stops two tenants from mirroring into one schema, not even two clusters'
/// tenants of the same name (both default to client_<name>): each sync then overwrites and
/// tombstones the other's rows. Each way in is tried; all that get through are reported.
#[tokio::test(flavor = "multi_thread")]
async fn two_clientsyncs_cannot_share_a_mirror_schema() {
    let env = TestEnv::new("cli_schema_clash").await;
    let admin = env.admin_pool().await;
    ok(&env.ctl(&["apply", "-f", s(&write(&env, "x.yaml", &doc("x", "")))]));
    let before = rows(&admin).await;
    let pq = |n: &str| doc(n, "  target:\n    schema: client_pq\n");
    let attempts = [
        ("another tenant, same cluster", vec![], doc("y", "  target:\n    schema: client_x\n")),
        ("two tenants in one apply", vec![], format!("{}---\n{}", pq("p"), pq("q"))),
        ("same name, another cluster", vec!["--cluster", "other-host"], doc("x", "")),
    ];
    let mut got_through = Vec::new();
    for (what, global, text) in attempts {
        let f = write(&env, "clash.yaml", &text);
        let mut args = global.clone();
        args.extend(["apply", "-f", s(&f)]);
        let o = env.ctl(&args);
        let err = stderr(&o);
        if code(&o) != 1 || !err.contains("spec.target.schema") || rows(&admin).await != before {
            got_through.push(format!("{what}: exit {:?}, stdout {:?}, stderr {err:?}", code(&o), stdout(&o)));
            sqlx::query("DELETE FROM sync_metadata.client_specs WHERE name <> 'x' OR cluster_name <> 'test-host'")
                .execute(&admin)
                .await
                .unwrap();
        }
    }
    assert!(got_through.is_empty(), "schema clashes accepted:\n{}", got_through.join("\n"));
}

/// Issue 16: a directory's other files are skipped, each named in a warning (Markdown and
/// hidden files silently), and a document of another kind is refused by its kind, not by
/// the ClientSync field it lacks.
#[tokio::test(flavor = "multi_thread")]
async fn other_files_are_named_and_other_kinds_refused() {
    let env = TestEnv::new("cli_apply_other").await;
    let admin = env.admin_pool().await;
    write(&env, "host/t-one.yaml", &doc("t-one", ""));
    write(&env, "host/tenants/t-two.json", r#"{"apiVersion": "owsync.io/v1alpha1", "kind": "ClientSync"}"#);
    write(&env, "host/notes.txt", "not: [yaml");
    write(&env, "host/README.md", "# prod-host-1\n");
    write(&env, "host/.gitkeep", "");
    let dir = env.path("host");
    let o = env.ctl(&["apply", "-R", "-f", s(&dir)]);
    assert_eq!(ok(&o), "clientsync/t-one created\n");
    let err = stderr(&o);
    for skipped in ["tenants/t-two.json", "notes.txt"] {
        assert!(
            err.contains(&format!("{skipped}: skipped: apply reads *.yaml and *.yml files only")),
            "{skipped}: {err}"
        );
    }
    assert_eq!(err.lines().count(), 2, "README.md and .gitkeep are skipped silently: {err}");

    // A ConfigMap, alone and as the second document of a file: named by file, line and
    // kind, with the supported kind; nothing applied.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: b\n";
    let alone = write(&env, "cm.yaml", cm);
    let err = fails(&env.ctl(&["apply", "-f", s(&alone)]), 1);
    assert!(err.contains("cm.yaml:2: unsupported kind ConfigMap: owsyncctl applies only kind ClientSync"), "{err}");
    assert!(!err.contains("missing field"), "{err}");
    let first = doc("t-three", "");
    let mixed = write(&env, "host/mixed.yaml", &format!("{first}---\n{cm}"));
    let err = fails(&env.ctl(&["apply", "-R", "-f", s(&dir)]), 1);
    let line = first.lines().count() + 3;
    assert!(err.contains(&format!("mixed.yaml:{line}: unsupported kind ConfigMap")), "{err}");
    let diff = env.ctl(&["diff", "-f", s(&mixed)]);
    assert!(fails(&diff, 2).contains("unsupported kind ConfigMap"), "diff exits 2 on it too");
    assert_eq!(names(&rows(&admin).await), ["t-one"], "nothing applied");
}
