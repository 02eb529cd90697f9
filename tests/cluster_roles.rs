//! One login role per host cluster (`owsyncctl cluster add-role`, migration 0015): with
//! host A's role and password, nothing of host B can be read or written (specs, status,
//! lease, jobs, events, state, table_state, quarantine, conflict log, deletion guard,
//! every other table with a cluster_name, and B's mirror tables), whatever the session
//! sets (`SET app.current_host_id`, `set_config`, `SET ROLE`), through provision_table,
//! and through a session-mode PgBouncer; while each statement of the same kind on A's own
//! rows works (the controls that show a denial is about the cluster). And A's role syncs
//! A's tenant end to end: apply, sync --once, owsyncd, verify, restore.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::bouncer::{Bouncer, BouncerSpec};
use common::daemon::{Daemon, eventually};
use common::{TestEnv, free_port, ok, pg, small_db, stderr, stdout};
use sqlx::{Connection, PgConnection, PgPool};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A cluster's role: its name, password and URL file.
struct Role {
    cluster: String,
    name: String,
    password: String,
    url: String,
    url_file: PathBuf,
}

/// `owsyncctl cluster add-role` as admin; asserts the password is never printed.
fn add_role(env: &TestEnv, cluster: &str, password: &str) -> Output {
    let f = env.path(&format!("pw-{cluster}-{}", free_port()));
    std::fs::write(&f, format!("{password}\n")).unwrap();
    let o = env.ctl(&[
        "cluster",
        "add-role",
        cluster,
        "--password-file",
        s(&f),
        "--admin-url-file",
        s(&env.admin_url_file),
    ]);
    let text = stdout(&o) + &stderr(&o);
    assert!(!text.contains(password), "add-role printed the password: {text}");
    o
}

fn role(env: &TestEnv, cluster: &str) -> Role {
    let password = format!("pw-{cluster}-9f3a");
    let out = ok(&add_role(env, cluster, &password));
    let name = out.trim().to_string();
    assert_eq!(name, format!("owsync_{}", cluster.replace('-', "_")), "add-role prints the role's name alone");
    let url = format!("postgres://{name}:{password}@127.0.0.1:{}/{}", pg().port(), env.db);
    let url_file = env.path(&format!("url-{cluster}"));
    std::fs::write(&url_file, &url).unwrap();
    Role { cluster: cluster.into(), name, password, url, url_file }
}

/// owsyncctl as a cluster's role.
fn ctl_as(r: &Role, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_owsyncctl"))
        .args(args)
        .env_remove("OWSYNC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("OWSYNC_DATABASE_URL_FILE", &r.url_file)
        .env("OWSYNC_CLUSTER", &r.cluster)
        .output()
        .expect("run owsyncctl")
}

/// A row for `table` of cluster `c`, named `n`: one INSERT per table that keys rows by
/// cluster_name (the test fails on a table it has none for, so new tables get covered).
fn insert(table: &str, c: &str, n: &str) -> Option<String> {
    let v = match table {
        "hosts" => format!("(cluster_name, node_id) VALUES ('{c}', '{n}')"),
        "leader_election" => format!(
            "(cluster_name, leader_id, holder_instance, expires_at) VALUES ('{c}', '{n}', gen_random_uuid(), now() + interval '1 hour')"
        ),
        "client_specs" => format!(
            "(cluster_name, name, spec, enabled) VALUES ('{c}', '{n}', '{{\"target\": {{\"schema\": \"client_{}\"}}}}', false)",
            n.replace('-', "_")
        ),
        "client_status" => format!("(cluster_name, name) VALUES ('{c}', '{n}')"),
        "state" => format!("(cluster_name, key, value) VALUES ('{c}', '{n}', '1')"),
        "sync_jobs" => format!(
            "(id, cluster_name, client_name, leader_id, epoch) VALUES (gen_random_uuid(), '{c}', '{n}', '{n}', 1)"
        ),
        "sync_requests" => format!("(id, cluster_name, client_name) VALUES (gen_random_uuid(), '{c}', '{n}')"),
        "conflict_log" => format!(
            "(cluster_name, client_name, table_name, row_key, strategy, resolution) VALUES ('{c}', '{n}', 'chat', '\"1\"', 'manual', 'pending')"
        ),
        "events" => format!("(cluster_name, client_name, reason, message) VALUES ('{c}', '{n}', 'Seed', '{n}')"),
        "table_state" => format!("(cluster_name, client_name, table_name) VALUES ('{c}', '{n}', 'chat')"),
        "quarantine" => format!(
            "(cluster_name, client_name, table_name, row_key, column_name, storage_class, reason) VALUES ('{c}', '{n}', 'chat', 'k', 'v', 'text', 'seed')"
        ),
        "inventories" => format!("(cluster_name, id) VALUES ('{c}', '{n}')"),
        "deletion_guard" => format!("(cluster_name, client_name) VALUES ('{c}', '{n}')"),
        "cluster_roles" => format!("(role_name, cluster_name) VALUES ('{n}', '{c}')"),
        _ => return None,
    };
    Some(format!("INSERT INTO sync_metadata.{table} {v}"))
}

/// Tables only the admin may touch at all (every statement refused, for every cluster).
const ADMIN_ONLY: &[&str] = &["cluster_roles"];

async fn try_sql(c: &mut PgConnection, sql: &str) -> Result<u64, (String, String)> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut *c).await {
        Ok(r) => Ok(r.rows_affected()),
        Err(sqlx::Error::Database(e)) => Err((e.code().unwrap_or_default().to_string(), e.message().to_string())),
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// Runs `sql` in a transaction that is rolled back (nothing sticks, controls included).
async fn attempt(c: &mut PgConnection, sql: &str) -> Result<u64, (String, String)> {
    let mut tx = c.begin().await.unwrap();
    let r = try_sql(&mut tx, sql).await;
    tx.rollback().await.unwrap();
    r
}

async fn count(c: &mut PgConnection, sql: &str) -> Result<i64, (String, String)> {
    let mut tx = c.begin().await.unwrap();
    let r = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&mut *tx).await;
    tx.rollback().await.unwrap();
    r.map_err(|e| match e {
        sqlx::Error::Database(e) => (e.code().unwrap_or_default().to_string(), e.message().to_string()),
        e => panic!("{sql}: {e}"),
    })
}

/// What the attack battery needs to know.
struct World {
    a: String,
    b: String,
    tables: Vec<String>,
    mirror_b: Vec<String>,
    mirror_a: Vec<String>,
    b_role: String,
}

/// Tallies and prints every check, for the closing note.
#[derive(Default)]
struct Tally {
    denied: usize,
    empty: usize,
    controls: usize,
}

impl Tally {
    #[track_caller]
    fn denied(&mut self, via: &str, sql: &str, r: Result<u64, (String, String)>) {
        match r {
            Err((code, msg)) => {
                assert_eq!(code, "42501", "{via}: {sql}: {msg}");
                println!("NEGATIVE CHECK ({via}) denied {code}: {sql}: {msg}");
                self.denied += 1;
            }
            Ok(n) => panic!("{via}: host A was allowed ({n} rows): {sql}"),
        }
    }
    #[track_caller]
    fn nothing(&mut self, via: &str, sql: &str, r: Result<u64, (String, String)>) {
        match r {
            Ok(0) => {
                println!("NEGATIVE CHECK ({via}) no rows: {sql}");
                self.empty += 1;
            }
            Ok(n) => panic!("{via}: host A reached {n} of host B's rows: {sql}"),
            Err((code, msg)) => {
                assert_eq!(code, "42501", "{via}: {sql}: {msg}");
                println!("NEGATIVE CHECK ({via}) denied {code}: {sql}: {msg}");
                self.denied += 1;
            }
        }
    }
    #[track_caller]
    fn works(&mut self, via: &str, sql: &str, r: Result<u64, (String, String)>) {
        assert!(r.is_ok(), "{via}: control failed (A's own rows must work): {sql}: {r:?}");
        self.controls += 1;
    }
}

/// Every cross-host read and write, on one session of A's role already set up by `via`.
/// `switched`: the session did SET ROLE owsync_cluster, whose members' mirrors are granted
/// to each member itself, so even A's own mirror is refused then.
async fn battery(c: &mut PgConnection, w: &World, via: &str, switched: bool, t: &mut Tally) {
    let (a, b) = (w.a.as_str(), w.b.as_str());
    for table in &w.tables {
        let q = format!("sync_metadata.{table}");
        let admin_only = ADMIN_ONLY.contains(&table.as_str());
        let read_b = format!("SELECT count(*) FROM {q} WHERE cluster_name = '{b}'");
        t.nothing(via, &read_b, count(c, &read_b).await.map(|n| n as u64));
        let evil = insert(table, b, "evil").unwrap();
        t.denied(via, &evil, attempt(c, &evil).await);
        let upd = format!("UPDATE {q} SET cluster_name = cluster_name WHERE cluster_name = '{b}'");
        t.nothing(via, &upd, attempt(c, &upd).await);
        let steal = format!("UPDATE {q} SET cluster_name = '{b}' WHERE cluster_name = '{a}'");
        t.denied(via, &steal, attempt(c, &steal).await);
        let del = format!("DELETE FROM {q} WHERE cluster_name = '{b}'");
        t.denied(via, &del, attempt(c, &del).await);
        let own = format!("{} ON CONFLICT DO NOTHING", insert(table, a, "own").unwrap());
        let read_a = format!("SELECT count(*) FROM {q} WHERE cluster_name = '{a}'");
        if admin_only {
            t.denied(via, &own, attempt(c, &own).await);
            t.denied(via, &read_a, count(c, &read_a).await.map(|n| n as u64));
        } else {
            t.works(via, &own, attempt(c, &own).await);
            let n = count(c, &read_a).await.expect("A reads its own rows");
            assert!(n > 0, "{via}: A sees none of its own {table} rows");
            t.controls += 1;
        }
    }
    for m in &w.mirror_b {
        let q = owsync::sql::qualified("client_beta", m);
        for sql in [
            format!("SELECT count(*) FROM {q}"),
            format!("UPDATE {q} SET _owsync_deleted = true"),
            format!("INSERT INTO {q} DEFAULT VALUES"),
            format!("DELETE FROM {q}"),
        ] {
            t.denied(via, &sql, attempt(c, &sql).await);
        }
    }
    for m in &w.mirror_a {
        let sql = format!(
            "UPDATE {} SET _owsync_deleted = _owsync_deleted WHERE false",
            owsync::sql::qualified("client_alpha", m)
        );
        if switched {
            t.denied(via, &sql, attempt(c, &sql).await);
        } else {
            t.works(via, &sql, attempt(c, &sql).await);
        }
    }
    let cols = r#"'[{"name": "id", "type": "text"}, {"name": "v", "type": "text"}]'::jsonb, ARRAY['id']"#;
    for sql in [
        format!("SELECT sync_metadata.provision_table('client_beta', 'extra', {cols})"),
        format!("SELECT sync_metadata.provision_table('client_beta', 'chat', {cols})"),
        "SELECT sync_metadata.provision_conflict_tracking('client_beta', 'chat')".to_string(),
        format!("SELECT sync_metadata.grant_mirror('client_beta', '{a}', NULL)"),
        format!("SELECT sync_metadata.grant_cluster_mirrors('{b}')"),
        "SELECT sync_metadata.caller_cluster()".to_string(),
        format!(
            "SELECT set_config('app.current_host_id', '{b}', false); DROP POLICY cluster_role_isolation ON sync_metadata.client_specs"
        ),
        "ALTER TABLE sync_metadata.client_specs DISABLE ROW LEVEL SECURITY".to_string(),
        format!("SET ROLE {}", owsync::sql::quote_ident(&w.b_role)),
        "SET ROLE sync_service".to_string(),
        format!("SET SESSION AUTHORIZATION {}", owsync::sql::quote_ident(&w.b_role)),
        format!("GRANT USAGE ON SCHEMA client_beta TO {}", owsync::sql::quote_ident(&w.b_role)),
    ] {
        t.denied(via, &sql, attempt(c, &sql).await);
    }
    let own = format!("SELECT sync_metadata.provision_table('client_alpha', 'extra', {cols})");
    t.works(via, &own, attempt(c, &own).await);
    let bound: Option<String> =
        sqlx::query_scalar("SELECT sync_metadata.session_cluster()").fetch_one(&mut *c).await.unwrap();
    assert_eq!(bound.as_deref(), Some(a), "{via}");
}

/// The session set-ups an attacker with A's password might try first.
fn modes(b: &str) -> Vec<(String, Vec<String>)> {
    vec![
        ("plain".into(), vec![]),
        (format!("SET app.current_host_id = '{b}'"), vec![format!("SET app.current_host_id = '{b}'")]),
        (
            format!("set_config('app.current_host_id', '{b}')"),
            vec![format!("SELECT set_config('app.current_host_id', '{b}', false)")],
        ),
        (
            "SET ROLE owsync_cluster + SET app.current_host_id".into(),
            vec!["SET ROLE owsync_cluster".into(), format!("SET app.current_host_id = '{b}'")],
        ),
    ]
}

async fn attack(url: &str, w: &World, route: &str, t: &mut Tally) {
    for (mode, setup) in modes(&w.b) {
        let mut c = PgConnection::connect(url).await.expect("connect as A's role");
        for sql in &setup {
            try_sql(&mut c, sql).await.unwrap_or_else(|e| panic!("{route}: {sql}: {e:?}"));
        }
        let switched = setup.iter().any(|q| q.starts_with("SET ROLE"));
        battery(&mut c, w, &format!("{route}, {mode}"), switched, t).await;
        // And within a transaction, as owsync's own sessions set it (SET LOCAL).
        let mut tx = c.begin().await.unwrap();
        sqlx::query("SELECT set_config('app.current_host_id', $1, true)").bind(&w.b).execute(&mut *tx).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_metadata.client_specs WHERE cluster_name = $1")
            .bind(&w.b)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0, "{route}, {mode}: SET LOCAL app.current_host_id showed B's specs");
        tx.rollback().await.unwrap();
        t.empty += 1;
        c.close().await.unwrap();
    }
}

/// Everything of cluster `b` (every cluster table's rows, B's mirror), as admin.
async fn fingerprint(admin: &PgPool, tables: &[String], mirror: &[String], b: &str) -> String {
    let mut out = String::new();
    for t in tables {
        let q = format!(
            "SELECT coalesce(string_agg(x::text, '|' ORDER BY x::text), '') FROM sync_metadata.{t} x WHERE cluster_name = $1"
        );
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(q)).bind(b).fetch_one(admin).await.unwrap();
        out.push_str(&format!("{t}: {v}\n"));
    }
    for m in mirror {
        let q = format!(
            "SELECT coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {} x",
            owsync::sql::qualified("client_beta", m)
        );
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(q)).fetch_one(admin).await.unwrap();
        out.push_str(&format!("client_beta.{m}: {v}\n"));
    }
    out
}

async fn tables_of(admin: &PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1")
        .bind(schema)
        .fetch_all(admin)
        .await
        .unwrap()
}

/// Clusters A and B with a role each, each with a tenant synced by its own role
/// (`sync --once`), and a seeded row of each in every cluster table.
async fn two_hosts(prefix: &str) -> (TestEnv, Role, Role) {
    let env = TestEnv::new(prefix).await;
    let (a, b) =
        (role(&env, &format!("{prefix}-a").replace('_', "-")), role(&env, &format!("{prefix}-b").replace('_', "-")));
    for (r, tenant, seed) in [(&a, "alpha", 31), (&b, "beta", 32)] {
        let db = env.path(&format!("{tenant}.db"));
        small_db(&db, seed);
        let m = env.manifest(tenant, &db, "");
        assert_eq!(ok(&ctl_as(r, &["apply", "-f", s(&m)])), format!("clientsync/{tenant} created\n"));
        let out = ok(&ctl_as(r, &["sync", tenant, "--once"]));
        assert!(out.contains(&format!("clientsync/{tenant} synced")), "{out}");
    }
    (env, a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn host_a_role_reaches_nothing_of_host_b() {
    let (env, a, b) = two_hosts("roles_neg").await;
    let admin = env.admin_pool().await;
    let mut conn = admin.acquire().await.unwrap();
    let tables = owsync::store::cluster::cluster_tables(&mut conn).await.unwrap();
    drop(conn);
    for want in [
        "client_specs",
        "client_status",
        "leader_election",
        "sync_jobs",
        "events",
        "state",
        "table_state",
        "quarantine",
        "conflict_log",
        "deletion_guard",
        "hosts",
        "sync_requests",
        "inventories",
        "cluster_roles",
    ] {
        assert!(tables.iter().any(|t| t == want), "{want} is not among {tables:?}");
    }
    for t in &tables {
        for c in [&a.cluster, &b.cluster] {
            let sql = insert(t, c, &format!("seed-{c}"))
                .unwrap_or_else(|| panic!("no INSERT for new cluster table {t}: add it here"));
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{sql} ON CONFLICT DO NOTHING"))).execute(&admin).await.unwrap();
        }
        for c in [&a.cluster, &b.cluster] {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM sync_metadata.{t} WHERE cluster_name = $1"
            )))
            .bind(c)
            .fetch_one(&admin)
            .await
            .unwrap();
            assert!(n > 0, "cluster {c} has no {t} rows to protect");
        }
    }
    let (mirror_b, mirror_a) = (tables_of(&admin, "client_beta").await, tables_of(&admin, "client_alpha").await);
    assert!(mirror_b.len() >= 10 && mirror_b.iter().any(|m| m == "chat"), "{mirror_b:?}");
    let before = fingerprint(&admin, &tables, &mirror_b, &b.cluster).await;
    let w = World {
        a: a.cluster.clone(),
        b: b.cluster.clone(),
        tables: tables.clone(),
        mirror_b: mirror_b.clone(),
        mirror_a,
        b_role: b.name.clone(),
    };

    let mut t = Tally::default();
    attack(&a.url, &w, "direct", &mut t).await;
    let bouncer = Bouncer::start_with(&BouncerSpec {
        pool_mode: "session",
        port: free_port(),
        server_port: pg().port(),
        users: vec![(a.name.clone(), a.password.clone())],
        tls: None,
    });
    let pooled = format!("postgres://{}:{}@127.0.0.1:{}/{}", a.name, a.password, bouncer.port, env.db);
    attack(&pooled, &w, "session PgBouncer", &mut t).await;
    assert!(bouncer.log().contains("login attempt"), "nothing went through pgbouncer:\n{}", bouncer.log());

    // owsyncctl itself, as A's role, pointed at B.
    let out = ok(&ctl_as(&a, &["--cluster", &b.cluster, "get", "clients"]));
    assert!(!out.contains("beta"), "A's role listed B's tenant: {out}");
    let m = env.manifest("evil", &env.path("beta.db"), "");
    let o = ctl_as(&a, &["--cluster", &b.cluster, "apply", "-f", s(&m)]);
    assert_eq!(o.status.code(), Some(1), "A's role applied a spec into B: {}", stdout(&o));
    let o = ctl_as(&a, &["--cluster", &b.cluster, "sync", "beta", "--once", "--force"]);
    assert_ne!(o.status.code(), Some(0), "A's role synced B's tenant: {}", stdout(&o));
    println!(
        "NEGATIVE CHECK (owsyncctl) get/apply/sync --once --cluster {} as {}: nothing seen, refused",
        b.cluster, a.name
    );

    assert_eq!(fingerprint(&admin, &tables, &mirror_b, &b.cluster).await, before, "A's role changed B's rows");
    let evil: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM sync_metadata.client_specs WHERE name IN ('evil', 'own'))
              + (SELECT count(*) FROM pg_class WHERE relname = 'extra')",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(evil, 0, "something an attempt wrote stuck");
    println!(
        "FIGURE cross-host checks as {} against cluster {}: {} denied (42501), {} saw no rows, {} controls on its own rows worked",
        a.name, b.cluster, t.denied, t.empty, t.controls
    );
    assert!(t.denied > 200 && t.controls > 50, "too few checks ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_role_syncs_its_tenant_end_to_end() {
    let mut env = TestEnv::new("roles_pos").await;
    env.cluster = "roles-pos-a".into();
    let a = role(&env, &env.cluster.clone());
    env.url_file = a.url_file.clone();
    let db = env.path("webui.db");
    small_db(&db, 41);
    assert_eq!(ok(&env.ctl(&["apply", "-f", s(&env.manifest("acme", &db, ""))])), "clientsync/acme created\n");
    assert!(ok(&env.ctl(&["sync", "acme", "--once"])).contains("clientsync/acme synced"));
    let admin = env.admin_pool().await;
    let grants: (bool, bool) = sqlx::query_as(
        "SELECT has_schema_privilege($1, 'client_acme', 'USAGE'), has_schema_privilege('sync_service', 'client_acme', 'USAGE')",
    )
    .bind(&a.name)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(grants, (true, false), "a mirror the role provisioned is granted to it, not to sync_service");

    let flags = ["--lease-duration", "4s", "--renew-deadline", "3s", "--retry-period", "500ms"];
    let d = Daemon::start(&env, "node-a", &flags);
    d.wait_up(Duration::from_secs(20)).await;
    let dr = &d;
    eventually(Duration::from_secs(15), "owsyncd leads as the cluster role", || async move {
        dr.is_leader().await.then_some(())
    })
    .await;
    owsync::fixtures::mutate(&db, &owsync::fixtures::MutateOptions { ops: 30, seed: 5, ..Default::default() }).unwrap();
    ok(&env.ctl(&["trigger", "acme"]));
    let role_pool = owsync::store::connect(&a.url, "test-role", 2).await.unwrap();
    let (p, dbp) = (&role_pool, &db);
    eventually(Duration::from_secs(30), "owsyncd syncs the change as the cluster role", || async move {
        common::compare::mirror_diff(p, "client_acme", dbp).await.0.is_empty().then_some(())
    })
    .await;
    let out = ok(&env.ctl(&["verify", "acme"]));
    assert!(!out.is_empty(), "verify printed nothing");
    let restored = env.path("restored.db");
    let out = ok(&env.ctl(&["restore", "acme", "--to", s(&restored)]));
    assert!(out.contains("clientsync/acme restored to"), "{out}");
    let diff = Command::new("sqldiff").args(["--primarykey", s(&db), s(&restored)]).output().expect("sqldiff");
    assert!(
        diff.status.success() && diff.stdout.is_empty(),
        "restore differs:\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    assert!(!d.log_text().contains(&a.password), "owsyncd logged the password");
    println!("POSITIVE CHECK {} applied, synced --once, ran owsyncd, verified and restored clientsync/acme", a.name);
}

#[tokio::test(flavor = "multi_thread")]
async fn add_role_rotates_refuses_foreign_roles_and_follows_moves() {
    let env = TestEnv::new("roles_cli").await;
    let admin = env.admin_pool().await;
    // sync_service's mirror of a tenant of cluster roles-cli-a, before the role exists.
    let db = env.path("webui.db");
    small_db(&db, 51);
    let m = env.manifest("old", &db, "");
    ok(&env.ctl(&["--cluster", "roles-cli-a", "apply", "-f", s(&m)]));
    ok(&env.ctl(&["--cluster", "roles-cli-a", "sync", "old", "--once"]));
    let a = role(&env, "roles-cli-a");
    let b = role(&env, "roles-cli-b");
    let usage = |r: String| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT has_schema_privilege($1, 'client_old', 'USAGE')")
                .bind(r)
                .fetch_one(&admin)
                .await
                .unwrap()
        }
    };
    assert!(usage(a.name.clone()).await, "add-role grants the cluster's existing mirrors");
    assert!(!usage(b.name.clone()).await);
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM client_old.chat WHERE current_user = '{}'",
        a.name
    )))
    .fetch_one(&owsync::store::connect(&a.url, "t", 1).await.unwrap())
    .await
    .unwrap();
    assert!(n > 0, "A's role reads its existing mirror");

    // Again: the same role, a new password; the old one no longer logs in.
    let o = add_role(&env, "roles-cli-a", "pw-rotated-44d1");
    assert_eq!(ok(&o).trim(), a.name);
    assert!(stderr(&o).contains("password set"), "{}", stderr(&o));
    assert!(PgConnection::connect(&a.url).await.is_err(), "the old password still works");
    let rotated = a.url.replace(&a.password, "pw-rotated-44d1");
    PgConnection::connect(&rotated).await.expect("the new password works").close().await.unwrap();

    // A role that is not owsync's is refused, and so is a name bound to another cluster.
    sqlx::raw_sql(
        "DO $$ BEGIN CREATE ROLE owsync_roles_cli_c LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    .execute(&admin)
    .await
    .unwrap();
    let o = add_role(&env, "roles-cli-c", "pw-c-0000");
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("not an owsync cluster role"), "{}", stderr(&o));
    let o = env.ctl(&["cluster", "add-role", "roles-cli-a", "--password-file", "/nonexistent"]);
    assert_ne!(o.status.code(), Some(0));
    let o = add_role(&env, "Not_A_Label", "pw-x-0000");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    // A move takes the mirror's grants to the new cluster's role; the old one loses them.
    let mv = ["--cluster", "roles-cli-a", "move", "old", "--to-cluster", "roles-cli-b", "--admin-url-file"];
    let mut args = mv.to_vec();
    args.push(s(&env.admin_url_file));
    ok(&env.ctl(&args));
    assert!(usage(b.name.clone()).await, "the moved mirror is granted to B's role");
    assert!(!usage(a.name.clone()).await, "A's role kept the moved mirror");
    println!("NEGATIVE CHECK after move: {} has no USAGE on client_old, {} has", a.name, b.name);
}

/// Every table with a cluster_name that a cluster role can reach has row-level security
/// and a policy for owsync_cluster keyed on the session's role, never on a setting.
#[tokio::test(flavor = "multi_thread")]
async fn every_cluster_table_has_a_role_keyed_policy() {
    let env = TestEnv::new("roles_cover").await;
    let admin = env.admin_pool().await;
    let rows: Vec<(String, bool, bool, Option<String>)> = sqlx::query_as(
        "SELECT k.relname::text, k.relrowsecurity,
                has_table_privilege('owsync_cluster', k.oid, 'SELECT'),
                (SELECT string_agg(pg_get_expr(p.polqual, p.polrelid) || ' / ' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '-'), '; ')
                   FROM pg_policy p WHERE p.polrelid = k.oid AND 'owsync_cluster'::regrole = ANY (p.polroles))
         FROM pg_class k JOIN pg_attribute a ON a.attrelid = k.oid AND a.attname = 'cluster_name'
         WHERE k.relnamespace = 'sync_metadata'::regnamespace AND k.relkind IN ('r', 'p') ORDER BY 1",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(rows.len() >= 15, "{rows:?}");
    for (t, rls, reachable, policy) in &rows {
        println!("COVERAGE {t}: rls {rls}, reachable {reachable}, policy {policy:?}");
        if !reachable {
            assert_eq!(t, "cluster_roles", "{t} is unreachable for cluster roles: grant it in a migration");
            continue;
        }
        assert!(rls, "{t}: row-level security is off");
        let p = policy.as_deref().unwrap_or_else(|| panic!("{t}: no policy for owsync_cluster"));
        assert!(p.contains("session_cluster()") && !p.contains("current_setting"), "{t}: {p}");
    }
}
