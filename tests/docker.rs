//! The Dockerfile and its entrypoint, checked without a Docker engine: a multi-stage,
//! non-root build with a HEALTHCHECK that runs CI's release build and copies everything
//! Cargo needs, and an entrypoint that never puts a secret in argv or the environment.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::repo::{read, root};

/// The release build CI runs and the Dockerfile must run.
const BUILD_COMMAND: &str = "cargo build --release --locked --bins";

// ---------------------------------------------------------------------------------------
// Dockerfile and entrypoint

/// Dockerfile instructions with continuation lines joined: `(INSTRUCTION, rest)`.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in read("docker/Dockerfile").lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (ins, rest) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        out.push((ins.to_ascii_uppercase(), rest.split_whitespace().collect::<Vec<_>>().join(" ")));
        cur.clear();
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_healthcheck_and_ci_build() {
    let ins = dockerfile();
    let froms: Vec<_> = ins.iter().enumerate().filter(|(_, (i, _))| i == "FROM").collect();
    assert!(froms.len() >= 2, "multi-stage: at least a build and a runtime stage");
    let build_stage = froms[0].1.1.split_whitespace().last().unwrap().to_string();
    let last_from = froms.last().unwrap().0;
    let runtime = &ins[last_from..];
    assert!(
        runtime.iter().any(|(i, r)| i == "COPY" && r.contains(&format!("--from={build_stage}"))),
        "the runtime stage copies the binaries from the build stage {build_stage:?}"
    );
    assert!(!runtime.iter().any(|(i, r)| i == "RUN" && r.contains("cargo")), "no toolchain in the runtime stage");
    let user = runtime.iter().rev().find(|(i, _)| i == "USER").map(|(_, r)| r.clone()).expect("a USER");
    let uid = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&uid), "runtime user must not be root: {user}");
    let hc = runtime.iter().find(|(i, _)| i == "HEALTHCHECK").map(|(_, r)| r.clone()).expect("a HEALTHCHECK");
    assert!(hc.contains("CMD") && hc.contains("/healthz"), "HEALTHCHECK must probe /healthz: {hc}");
    let build: Vec<_> = ins[..last_from].iter().filter(|(i, r)| i == "RUN" && r.contains("cargo build")).collect();
    assert_eq!(build.len(), 1, "one cargo build in the build stage");
    assert!(build[0].1.contains(BUILD_COMMAND), "the build stage must run `{BUILD_COMMAND}`: {}", build[0].1);
    let entry = runtime.iter().find(|(i, _)| i == "ENTRYPOINT").map(|(_, r)| r.clone()).expect("ENTRYPOINT");
    assert!(entry.starts_with('['), "exec-form ENTRYPOINT (signals reach owsyncd): {entry}");
    assert!(
        runtime.iter().any(|(i, r)| i == "COPY" && r.contains("docker/entrypoint.sh")),
        "the entrypoint is copied in"
    );
}

/// Paths cargo needs to load Cargo.toml: every explicitly declared target's source
/// (`[[bench]]`, `[[test]]`, `[[example]]`, `[[bin]]`, `[lib]`) and a build script.
/// Cargo refuses the whole manifest, even for `--bins`, when one of them is missing.
fn manifest_paths(manifest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut finish = |section: &str, fields: &mut BTreeMap<String, String>| {
        let name = fields.get("name").cloned().unwrap_or_default();
        let default = match section {
            "[[bench]]" => Some(format!("benches/{name}.rs")),
            "[[test]]" => Some(format!("tests/{name}.rs")),
            "[[example]]" => Some(format!("examples/{name}.rs")),
            "[[bin]]" => Some(format!("src/bin/{name}.rs")),
            "[lib]" => Some("src/lib.rs".to_string()),
            _ => None,
        };
        if let Some(d) = default {
            out.push(fields.get("path").cloned().unwrap_or(d));
        }
        if section == "[package]"
            && let Some(b) = fields.get("build")
            && b != "false"
        {
            out.push(b.clone());
        }
        fields.clear();
    };
    for line in manifest.lines() {
        let t = line.split('#').next().unwrap().trim();
        if t.starts_with('[') {
            finish(&section, &mut fields);
            section = t.to_string();
        } else if let Some((k, v)) = t.split_once('=') {
            fields.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
        }
    }
    finish(&section, &mut fields);
    if root().join("build.rs").exists() {
        out.push("build.rs".into());
    }
    out
}

#[test]
fn docker_build_needs_nothing_but_what_it_copies() {
    // What the build stage copies into the image (sources of COPY without --from).
    let ins = dockerfile();
    let last_from = ins.iter().rposition(|(i, _)| i == "FROM").unwrap();
    let copies: Vec<String> = ins[..last_from]
        .iter()
        .filter(|(i, r)| i == "COPY" && !r.contains("--from="))
        .flat_map(|(_, r)| {
            let words: Vec<String> = r.split_whitespace().filter(|w| !w.starts_with("--")).map(String::from).collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    for c in &copies {
        assert!(root().join(c).exists(), "the Dockerfile copies {c}, which does not exist: the build would fail");
    }
    let copied = |p: &str| copies.iter().any(|c| Path::new(p).starts_with(c.trim_end_matches('/')));
    for needed in ["Cargo.toml", "Cargo.lock", "src"] {
        assert!(copied(needed), "the Dockerfile does not copy {needed}");
    }
    // .cargo/config.toml sets LIBSQLITE3_FLAGS (the sqlite_dbpage virtual table the sync needs).
    if root().join(".cargo/config.toml").exists() {
        assert!(copied(".cargo/config.toml"), "the Dockerfile does not copy .cargo (add `COPY .cargo ./.cargo`)");
    }
    let manifest = read("Cargo.toml");
    for key in ["[workspace]", "path = \"../"] {
        assert!(!manifest.contains(key), "Cargo.toml has {key:?}: the Dockerfile's build context needs updating");
    }
    for p in manifest_paths(&manifest) {
        assert!(
            copied(&p),
            "Cargo.toml needs {p} (cargo refuses the manifest without it, even for --bins), \
             but the Dockerfile's build stage does not copy it: add `COPY {} ./{}`",
            p.split('/').next().unwrap(),
            p.split('/').next().unwrap()
        );
    }
    // Files the sources embed must be inside src/.
    let mut stack = vec![root().join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for mac in ["include_str!(\"", "include_bytes!(\""] {
                for part in text.split(mac).skip(1) {
                    let rel = part.split('"').next().unwrap();
                    let target = p.parent().unwrap().join(rel);
                    let target = target.canonicalize().unwrap_or_else(|_| panic!("{}: {rel} missing", p.display()));
                    assert!(
                        target.starts_with(root().join("src").canonicalize().unwrap()),
                        "{} embeds {rel}, outside src/ (the image build would not have it)",
                        p.display()
                    );
                }
            }
        }
    }
    // `--locked` fails when Cargo.lock is stale (resolution only, for this platform: offline).
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "--offline", "--quiet", "--depth", "0"])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "Cargo.lock is not current, so `{BUILD_COMMAND}` fails: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn entrypoint_never_puts_secrets_in_argv() {
    let text = read("docker/entrypoint.sh");
    let code: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    for l in &code {
        assert!(!l.contains("$(cat") && !l.contains("`cat"), "entrypoint reads a secret into a value: {l}");
        assert!(!l.contains("$(<"), "entrypoint reads a secret into a value: {l}");
        for flag in ["--database-url ", "--database-url=", "--admin-url ", "--admin-url=", "--api-token "] {
            assert!(!l.contains(flag), "entrypoint passes a secret flag: {l}");
        }
    }
    assert!(code.iter().any(|l| l.contains("exec owsyncd")), "the entrypoint execs owsyncd (PID 1 gets SIGTERM)");

    // And by behaviour: fake binaries record their argv and environment.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let record = dir.path().join("record");
    for b in ["owsyncd", "owsyncctl"] {
        let script =
            format!("#!/bin/sh\n{{ echo \"argv: {b} $*\"; env | sed 's/^/env: /'; }} >> '{}'\n", record.display());
        let p = bin.join(b);
        std::fs::write(&p, script).unwrap();
        std::process::Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    }
    let password = "s3cret-pw-9c1f";
    let url = format!("postgresql://sync_service:{password}@db.example:5432/postgres");
    let url_file = dir.path().join("database_url");
    std::fs::write(&url_file, &url).unwrap();
    let admin_file = dir.path().join("admin_url");
    std::fs::write(&admin_file, format!("postgresql://postgres:{password}-admin@db.example:5432/postgres")).unwrap();
    let token_file = dir.path().join("api_token");
    std::fs::write(&token_file, "tok-2b7e\n").unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let mut cmd = Command::new("sh");
        cmd.arg(root().join("docker/entrypoint.sh"))
            .args(args)
            .env_clear()
            .env("PATH", &path)
            .env("OWSYNC_DATABASE_URL_FILE", &url_file)
            .env("OWSYNC_API_TOKEN_FILE", &token_file)
            .env("OWSYNC_ADMIN_URL_FILE", &admin_file);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(&["--node-id", "openwebui-sync-primary"], &[]);
    assert!(out.status.success(), "entrypoint failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["migrate"], &[]);
    assert!(out.status.success(), "entrypoint migrate failed: {}", String::from_utf8_lossy(&out.stderr));
    let rec = std::fs::read_to_string(&record).unwrap();
    assert!(rec.contains("argv: owsyncd --node-id openwebui-sync-primary"), "{rec}");
    assert!(rec.contains("argv: owsyncctl migrate"), "{rec}");
    for secret in [password, "tok-2b7e"] {
        assert!(!rec.contains(secret), "a secret reached argv or the environment:\n{rec}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(password), "the entrypoint printed a secret: {stderr}");
    // A URL passed as a value is refused, naming the fix, and not echoed.
    let out = run(&[], &[("OWSYNC_DATABASE_URL", &url)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("OWSYNC_DATABASE_URL_FILE"), "{stderr}");
    assert!(!stderr.contains(password), "{stderr}");
    // A missing secret file names itself.
    let out = run(&[], &[("OWSYNC_DATABASE_URL_FILE", "/nonexistent/secret")]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/nonexistent/secret"));
}
