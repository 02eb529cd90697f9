//! The HA compose file, checked without a Docker engine: the primary and secondary on
//! 9443/9444, secrets as files only, environment the binaries really read, every tenant
//! of the GitOps host mounted read-only at its source path, and the `dev` profile.

mod common;

use common::repo::{clientsync_sources, read, root, yaml};

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const COMPOSE: &str = "docker/docker-compose.sync-ha.yml";
const OWSYNCD_SERVICES: [&str; 2] = ["owsync-primary", "owsync-secondary"];
const GITOPS_HOSTS: &str = "manifests/gitops/hosts";

// ---------------------------------------------------------------------------------------
// Compose

/// Compose's interpolation with an empty environment: `${X:-d}` and `${X-d}` give `d`,
/// `${X:?msg}` (required) gives `<X>`, `${X}` gives "", `$$` gives `$`.
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').unwrap_or_else(|| panic!("unterminated ${{ in {s:?}"));
            let expr = &body[..end];
            let name_end = expr.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(expr.len());
            let (name, op) = expr.split_at(name_end);
            let value = if let Some(d) = op.strip_prefix(":-").or_else(|| op.strip_prefix('-')) {
                interpolate(d)
            } else if op.starts_with(":?") || op.starts_with('?') {
                format!("<{name}>")
            } else {
                assert!(op.is_empty(), "unsupported interpolation ${{{expr}}} in {s:?}");
                String::new()
            };
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn interpolate_all(v: &mut Value) {
    match v {
        Value::String(s) => *s = interpolate(s),
        Value::Array(a) => a.iter_mut().for_each(interpolate_all),
        Value::Object(o) => o.values_mut().for_each(interpolate_all),
        _ => {}
    }
}

fn compose() -> Value {
    let mut v = yaml(COMPOSE);
    interpolate_all(&mut v);
    v
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    let s = &c["services"][name];
    assert!(s.is_object(), "{COMPOSE}: no service {name}");
    s
}

/// A service's environment as a map (list or mapping syntax).
fn environment(s: &Value) -> BTreeMap<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match &s["environment"] {
        Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
        Value::Array(a) => a
            .iter()
            .map(|e| {
                let e = e.as_str().expect("environment entry");
                let (k, v) = e.split_once('=').unwrap_or((e, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment: unexpected {other}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// The secrets a service references (short or long syntax).
fn service_secrets(s: &Value) -> Vec<String> {
    s["secrets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Value::String(n) => n.clone(),
                    o => o["source"].as_str().expect("secret source").to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `(host port, container port)` of each published port.
fn ports(s: &Value) -> Vec<(u16, u16)> {
    s["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| match p {
                    Value::String(p) => {
                        let parts: Vec<&str> = p.rsplitn(3, ':').collect();
                        let container = parts[0].split('/').next().unwrap().parse().expect("container port");
                        let host = parts.get(1).expect("a host port").parse().expect("host port");
                        (host, container)
                    }
                    o => (
                        o["published"]
                            .as_str()
                            .map_or_else(|| o["published"].as_u64().unwrap() as u16, |s| s.parse().unwrap()),
                        o["target"].as_u64().expect("target") as u16,
                    ),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `(source, target, read_only)` of each volume (short or long syntax).
fn volumes(s: &Value) -> Vec<(String, String, bool)> {
    s["volumes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| match v {
                    Value::String(v) => {
                        let parts: Vec<&str> = v.split(':').collect();
                        let ro = parts.get(2).is_some_and(|m| m.split(',').any(|o| o == "ro"));
                        (parts[0].to_string(), parts.get(1).unwrap_or(&parts[0]).to_string(), ro)
                    }
                    o => (
                        o["source"].as_str().unwrap_or_default().to_string(),
                        o["target"].as_str().expect("volume target").to_string(),
                        o["read_only"].as_bool().unwrap_or(false),
                    ),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `--flag` in a service's command, or of its env variable.
fn setting(s: &Value, flag: &str, env: &str) -> Option<String> {
    let cmd = strings(&s["command"]);
    cmd.iter()
        .position(|a| a == flag)
        .and_then(|i| cmd.get(i + 1).cloned())
        .or_else(|| cmd.iter().find_map(|a| a.strip_prefix(&format!("{flag}=")).map(String::from)))
        .or_else(|| environment(s).get(env).cloned())
}

fn healthcheck_text(s: &Value) -> String {
    match &s["healthcheck"]["test"] {
        Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" "),
        Value::String(t) => t.clone(),
        other => panic!("healthcheck.test: unexpected {other}"),
    }
}

#[test]
fn compose_runs_an_ha_pair_on_9443_and_9444() {
    let c = compose();
    let mut node_ids = BTreeSet::new();
    let mut clusters = BTreeSet::new();
    let mut host_ports = Vec::new();
    for name in OWSYNCD_SERVICES {
        let s = service(&c, name);
        assert!(s["profiles"].is_null(), "{name} must run without a profile");
        let image = s["image"].as_str().unwrap_or_default();
        assert!(!image.is_empty() || s["build"].is_object(), "{name}: no image or build");
        if s["build"].is_object() {
            let df = s["build"]["dockerfile"].as_str().expect("build.dockerfile");
            let ctx = s["build"]["context"].as_str().expect("build.context");
            assert!(root().join("docker").join(ctx).join(df).is_file(), "{name}: build {ctx}/{df} does not exist");
        }
        let restart = s["restart"].as_str().unwrap_or("no");
        assert!(["always", "unless-stopped"].contains(&restart), "{name}: restart policy {restart:?}");
        node_ids.insert(setting(s, "--node-id", "OWSYNC_NODE_ID").unwrap_or_else(|| panic!("{name}: no node id")));
        clusters.insert(setting(s, "--cluster", "OWSYNC_CLUSTER").unwrap_or_else(|| panic!("{name}: no cluster")));
        let listen = setting(s, "--listen", "OWSYNC_LISTEN").unwrap_or_else(|| panic!("{name}: no listen address"));
        let listen_port: u16 = listen.rsplit(':').next().unwrap().parse().expect("listen port");
        assert!(!listen.starts_with("127.0.0.1"), "{name}: listening on loopback is unreachable from the host");
        let p = ports(s);
        assert_eq!(p.len(), 1, "{name}: one published port, got {p:?}");
        assert_eq!(p[0].1, listen_port, "{name}: publishes container port {} but owsyncd listens on {listen}", p[0].1);
        host_ports.push(p[0].0);
        let hc = healthcheck_text(s);
        assert!(hc.contains("/healthz"), "{name}: healthcheck {hc:?} does not probe /healthz");
        assert!(hc.contains(&format!(":{listen_port}/")), "{name}: healthcheck {hc:?} is not on port {listen_port}");
        assert!(s["healthcheck"]["disable"].as_bool() != Some(true), "{name}: healthcheck disabled");
        let grace = s["stop_grace_period"].as_str().unwrap_or("10s");
        let grace = humantime::parse_duration(grace).expect("stop_grace_period");
        assert!(grace.as_secs() >= 30, "{name}: stop_grace_period {grace:?} leaves SIGTERM's drain too little time");
    }
    assert_eq!(host_ports, vec![9443, 9444], "primary on 9443, secondary on 9444 (the seed's ports)");
    assert_eq!(node_ids.len(), 2, "the replicas need distinct node ids: {node_ids:?}");
    assert_eq!(clusters.len(), 1, "both replicas belong to one cluster: {clusters:?}");
    assert!(clusters.contains("<OWSYNC_CLUSTER>"), "the cluster must be required from the environment: {clusters:?}");
}

#[test]
fn compose_secrets_are_files_and_never_values() {
    let c = compose();
    let defined: BTreeMap<String, Value> =
        c["secrets"].as_object().expect("top-level secrets").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (name, def) in &defined {
        assert!(def["file"].is_string(), "secret {name} must come from a file, not {def}");
    }
    let mut used = BTreeSet::new();
    for (name, s) in c["services"].as_object().unwrap() {
        let secrets = service_secrets(s);
        for sec in &secrets {
            assert!(defined.contains_key(sec), "service {name} uses undefined secret {sec}");
            used.insert(sec.clone());
        }
        for (k, v) in environment(s) {
            let upper = k.to_ascii_uppercase();
            let secretish = ["URL", "PASSWORD", "TOKEN", "SECRET", "KEY", "DSN"].iter().any(|w| upper.contains(w));
            if upper.ends_with("_FILE") {
                let file = v.strip_prefix("/run/secrets/").unwrap_or_else(|| {
                    panic!("service {name}: {k}={v} is not a Docker secret path (/run/secrets/NAME)")
                });
                assert!(
                    secrets.iter().any(|s| s == file),
                    "service {name}: {k} points at secret {file} it does not get"
                );
            } else {
                assert!(!secretish, "service {name}: {k} looks like a secret passed as a value; use {k}_FILE");
            }
            assert!(!v.contains("://") || !v.contains('@'), "service {name}: {k} holds a URL with credentials");
        }
        for a in strings(&s["command"]) {
            assert!(!a.contains("://"), "service {name}: a URL in argv ({a})");
            assert!(
                !["--database-url", "--admin-url", "--api-token"].contains(&a.as_str()),
                "service {name}: secret flag {a} in argv (use the *_FILE variable)"
            );
        }
    }
    for name in OWSYNCD_SERVICES {
        let s = service(&c, name);
        let env = environment(s);
        assert!(env.contains_key("OWSYNC_DATABASE_URL_FILE"), "{name}: OWSYNC_DATABASE_URL_FILE");
        assert!(env.contains_key("OWSYNC_API_TOKEN_FILE"), "{name}: OWSYNC_API_TOKEN_FILE");
        for forbidden in ["OWSYNC_DATABASE_URL", "DATABASE_URL"] {
            assert!(!env.contains_key(forbidden), "{name}: {forbidden} passes the URL as a value");
        }
    }
    let unused: Vec<_> = defined.keys().filter(|k| !used.contains(*k)).collect();
    assert!(unused.is_empty(), "secrets defined but used by no service: {unused:?}");
}

/// Every `[env: NAME]` a binary's `--help` shows.
fn env_names(bin: &str, args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(bin).args(args).arg("--help").output().expect("run --help");
    assert!(out.status.success(), "{bin} {args:?} --help failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split("[env: ").skip(1).map(|rest| rest.split(['=', ']']).next().unwrap().trim().to_string()).collect()
}

#[test]
fn compose_environment_is_what_the_binaries_read() {
    let c = compose();
    let daemon = env_names(env!("CARGO_BIN_EXE_owsyncd"), &[]);
    let migrate = env_names(env!("CARGO_BIN_EXE_owsyncctl"), &["migrate"]);
    let entrypoint = read("docker/entrypoint.sh");
    let owsyncd_src = read("src/bin/owsyncd.rs");
    // Read outside clap: the log filter (owsyncd) and the entrypoint's own switches.
    let other = |k: &str| owsyncd_src.contains(&format!("\"{k}\"")) || entrypoint.contains(k);
    for name in OWSYNCD_SERVICES {
        for k in environment(service(&c, name)).keys() {
            assert!(daemon.contains(k) || other(k), "{name}: owsyncd does not read {k} (it reads {daemon:?})");
        }
    }
    for k in environment(service(&c, "migrate")).keys() {
        assert!(migrate.contains(k) || other(k), "migrate: `owsyncctl migrate` does not read {k} ({migrate:?})");
    }
}

/// ClientSync source paths of every manifest under `dir`.
#[test]
fn compose_mounts_tenant_data_read_only_at_their_source_paths() {
    let c = compose();
    let mut lists = Vec::new();
    for name in OWSYNCD_SERVICES {
        let s = service(&c, name);
        assert_eq!(s["read_only"].as_bool(), Some(true), "{name}: root filesystem should be read-only");
        let vols = volumes(s);
        assert!(!vols.is_empty(), "{name}: no tenant data mounted");
        for (src, target, ro) in &vols {
            assert!(*ro, "{name}: {src}:{target} must be mounted read-only (:ro)");
        }
        lists.push(vols);
    }
    assert_eq!(lists[0], lists[1], "both replicas must see the same tenants (whichever leads syncs them all)");
    // Every tenant of the host this file deploys has its database under a mount.
    let sources = clientsync_sources(&root().join(GITOPS_HOSTS).join("prod-host-1"));
    assert!(sources.len() >= 3, "expected prod-host-1's tenants, found {sources:?}");
    for (tenant, path) in sources {
        assert!(
            lists[0].iter().any(|(_, target, _)| Path::new(&path).starts_with(target)),
            "tenant {tenant}: {path} is under no mount of {COMPOSE}"
        );
    }
}

#[test]
fn compose_dev_profile_has_postgres_and_a_one_shot_migrate() {
    let c = compose();
    let pg = service(&c, "postgres");
    assert!(strings(&pg["profiles"]).contains(&"dev".to_string()), "postgres belongs in the dev profile only");
    assert!(pg["image"].as_str().unwrap_or_default().starts_with("postgres:"), "postgres image");
    assert!(healthcheck_text(pg).contains("pg_isready"), "postgres healthcheck");
    let pg_env = environment(pg);
    assert!(pg_env.contains_key("POSTGRES_PASSWORD_FILE") && !pg_env.contains_key("POSTGRES_PASSWORD"));
    for (_, port) in ports(pg) {
        assert_eq!(port, 5432);
    }
    for p in pg["ports"].as_array().into_iter().flatten() {
        assert!(p.as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "dev PostgreSQL on loopback only: {p}");
    }

    let m = service(&c, "migrate");
    assert!(strings(&m["profiles"]).contains(&"dev".to_string()), "migrate runs in the dev profile");
    assert_eq!(strings(&m["command"]).first().map(String::as_str), Some("migrate"), "migrate: command");
    assert_eq!(m["restart"].as_str(), Some("no"), "migrate is one-shot");
    assert!(service_secrets(m).contains(&"owsync_admin_url".to_string()), "migrate needs the admin URL secret");
    assert_eq!(environment(m).get("OWSYNC_ADMIN_URL_FILE").map(String::as_str), Some("/run/secrets/owsync_admin_url"));
    assert_eq!(m["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));
    assert_eq!(m["depends_on"]["postgres"]["required"].as_bool(), Some(false), "postgres is optional (prod)");
    for name in OWSYNCD_SERVICES {
        let d = &service(&c, name)["depends_on"]["migrate"];
        assert_eq!(d["condition"].as_str(), Some("service_completed_successfully"), "{name} waits for migrate");
        assert_eq!(d["required"].as_bool(), Some(false), "{name}: migrate must stay optional outside dev");
    }
}

// ---------------------------------------------------------------------------------------
// Monitoring: every metric and label the dashboard and the alerts use is exported
