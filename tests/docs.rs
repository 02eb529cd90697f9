//! The operator guide, the GitOps layout and the CI example name only commands and
//! flags that exist (checked against the binaries' `--help`), their links resolve, and
//! every GitOps host applies and then diffs clean.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo::{clientsync_sources, root};

const GITOPS_HOSTS: &str = "manifests/gitops/hosts";

// ---------------------------------------------------------------------------------------
// Documentation and CI snippets name only commands and flags that exist
/// Subcommands and long/short flags of `owsyncctl <path...>` from its --help.
fn help(bin: &str, path: &[String]) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(bin).args(path).arg("--help").output().expect("--help");
    assert!(out.status.success(), "{bin} {path:?} --help failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut subs = BTreeSet::new();
    let mut flags = BTreeSet::new();
    let mut in_commands = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if !line.starts_with(' ') {
            in_commands = false;
        }
        let t = line.trim_start();
        if in_commands && let Some(w) = t.split_whitespace().next() {
            subs.insert(w.to_string());
        }
        if t.starts_with('-') {
            for w in t.split([' ', ',']).filter(|w| w.starts_with('-')) {
                flags.insert(w.split(['=', '<']).next().unwrap().to_string());
            }
        }
    }
    (subs, flags)
}

/// Checks a command line like `owsyncctl apply -R -f dir --dry-run`.
fn check_command(bin_name: &str, words: &[String], origin: &str) {
    let bin = match bin_name {
        "owsyncctl" => env!("CARGO_BIN_EXE_owsyncctl"),
        _ => env!("CARGO_BIN_EXE_owsyncd"),
    };
    let mut path: Vec<String> = Vec::new();
    let (mut subs, mut flags) = help(bin, &path);
    for w in words {
        if w.starts_with('-') {
            let flag = w.split('=').next().unwrap();
            assert!(flags.contains(flag), "{origin}: `{bin_name} {}` has no flag {flag}", path.join(" "));
        } else if subs.contains(w) {
            path.push(w.clone());
            (subs, flags) = help(bin, &path);
        }
    }
    if bin_name == "owsyncctl" {
        assert!(!path.is_empty(), "{origin}: `owsyncctl {}` names no subcommand", words.join(" "));
    }
}

/// `owsyncctl ...` / `owsyncd ...` invocations in a line of shell.
fn invocations(line: &str) -> Vec<(String, Vec<String>)> {
    let line = line.split(" #").next().unwrap();
    let mut out = Vec::new();
    for bin in ["owsyncctl", "owsyncd"] {
        for (i, _) in line.match_indices(bin) {
            let before = line[..i].chars().last();
            let after = line[i + bin.len()..].chars().next();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '/' || c == '_' || c == '.')
                || after != Some(' ')
            {
                continue;
            }
            let rest = &line[i + bin.len()..];
            let end = rest.find(['|', ';', '&', ')', '`', '>', '<']).unwrap_or(rest.len());
            let words: Vec<String> = rest[..end].split_whitespace().map(|w| w.trim_matches('"').to_string()).collect();
            if words.first().is_some_and(|w| w == "..." || w == "…") {
                continue; // a placeholder: "owsyncctl ..."
            }
            out.push((bin.to_string(), words));
        }
    }
    out
}

#[test]
fn docs_and_ci_name_only_commands_and_flags_that_exist() {
    let mut files: Vec<PathBuf> = Vec::new();
    let docs = root().join("docs");
    for e in std::fs::read_dir(&docs).expect("docs/") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|e| e == "md") {
            files.push(p);
        }
    }
    assert!(files.len() >= 3, "the operator guide is missing: {files:?}");
    for rel in ["manifests/gitops/README.md", "manifests/gitops/ci/github-actions.yml", "docker/README.md"] {
        files.push(root().join(rel));
    }
    for d in std::fs::read_dir(root().join(GITOPS_HOSTS)).unwrap() {
        files.push(d.unwrap().path().join("README.md"));
    }
    let mut checked = 0;
    for f in files {
        let origin = f.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{origin}: {e}"));
        let is_md = origin.ends_with(".md");
        // Units to check, each with its line and whether it describes a plan: joined shell
        // lines of code blocks (and of the CI file), and prose paragraphs (or list items)
        // for their inline `owsyncctl ...` spans.
        let mut units: Vec<(usize, String, bool)> = Vec::new();
        let mut in_block = false;
        let mut planned_section = false; // under a heading that says "planned"/"not built"
        let mut logical = String::new();
        let mut para = String::new();
        let mut para_line = 0;
        let says_planned = |t: &str| t.contains("planned") || t.contains("not built");
        let flush = |para: &mut String, line: usize, section: bool, units: &mut Vec<(usize, String, bool)>| {
            if !para.is_empty() {
                let planned = section || says_planned(para);
                for (k, span) in para.split('`').enumerate() {
                    if k % 2 == 1 && (span.starts_with("owsyncctl ") || span.starts_with("owsyncd ")) {
                        units.push((line, span.to_string(), planned));
                    }
                }
                para.clear();
            }
        };
        for (n, raw) in text.lines().enumerate() {
            let t = raw.trim();
            if is_md && t.starts_with("```") {
                flush(&mut para, para_line, planned_section, &mut units);
                in_block = !in_block;
                continue;
            }
            if !is_md || in_block {
                if let Some(body) = t.strip_suffix('\\') {
                    logical.push_str(body);
                    logical.push(' ');
                    continue;
                }
                logical.push_str(t);
                let line = std::mem::take(&mut logical);
                if !line.starts_with('#') {
                    let planned = planned_section || says_planned(&line);
                    units.push((n + 1, line, planned));
                }
                continue;
            }
            let item = t.starts_with("* ")
                || t.starts_with("- ")
                || t.split_once(". ").is_some_and(|(d, _)| d.parse::<u32>().is_ok());
            if t.is_empty() || t.starts_with('#') || t.starts_with('|') || item {
                flush(&mut para, para_line, planned_section, &mut units);
            }
            if t.starts_with('#') {
                let h = t.to_ascii_lowercase();
                planned_section = says_planned(&h);
                continue;
            }
            if !t.is_empty() {
                if para.is_empty() {
                    para_line = n + 1;
                }
                para.push_str(t);
                para.push(' ');
                if t.starts_with('|') {
                    flush(&mut para, para_line, planned_section, &mut units);
                }
            }
        }
        flush(&mut para, para_line, planned_section, &mut units);
        for (line, unit, planned) in units {
            if planned {
                continue;
            }
            for (bin, words) in invocations(&unit) {
                check_command(&bin, &words, &format!("{origin}:{line}"));
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "expected the guide's many command lines, checked {checked}");
}

// ---------------------------------------------------------------------------------------
// GitOps layout: applies, then diffs clean

#[tokio::test(flavor = "multi_thread")]
async fn gitops_hosts_apply_and_then_diff_clean() {
    let env = common::TestEnv::new("gitops").await;
    let hosts = root().join(GITOPS_HOSTS);
    let mut names: Vec<_> = std::fs::read_dir(&hosts).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    assert!(names.len() >= 2, "a directory per host");
    for dir in names {
        let host = dir.file_name().unwrap().to_str().unwrap().to_string();
        let d = dir.to_str().unwrap();
        let files = clientsync_sources(&dir);
        let diff = env.ctl(&["diff", "-R", "-f", d, "--cluster", &host]);
        assert_eq!(diff.status.code(), Some(1), "{host}: diff before apply shows changes: {}", common::stderr(&diff));
        let dry = common::ok(&env.ctl(&["apply", "-R", "-f", d, "--cluster", &host, "--dry-run"]));
        assert_eq!(dry.matches("created").count(), files.len(), "{host}: dry run\n{dry}");
        let applied = common::ok(&env.ctl(&["apply", "-R", "-f", d, "--cluster", &host]));
        assert_eq!(applied.matches("created").count(), files.len(), "{host}: apply\n{applied}");
        let diff = env.ctl(&["diff", "-R", "-f", d, "--cluster", &host]);
        assert_eq!(diff.status.code(), Some(0), "{host}: diff after apply: {}", common::stdout(&diff));
        let again = common::ok(&env.ctl(&["apply", "-R", "-f", d, "--cluster", &host]));
        assert_eq!(again.matches("unchanged").count(), files.len(), "{host}: re-apply\n{again}");
        let list = common::ok(&env.ctl(&["get", "clients", "--cluster", &host, "-o", "json"]));
        for (tenant, _) in &files {
            assert!(list.contains(&format!("\"{tenant}\"")), "{host}: {tenant} missing from get clients:\n{list}");
        }
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn docs_links_resolve() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(root().join("manifests/gitops/README.md"));
    files.push(root().join("docker/README.md"));
    let anchors_of = |p: &Path| -> BTreeSet<String> {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let mut in_block = false;
        let mut out = BTreeSet::new();
        for l in text.lines() {
            if l.trim_start().starts_with("```") {
                in_block = !in_block;
            } else if !in_block && l.starts_with('#') {
                out.insert(anchor(l.trim_start_matches('#')));
            }
        }
        out
    };
    let mut checked = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap();
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (file, frag) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() { f.clone() } else { f.parent().unwrap().join(file) };
            assert!(path.exists(), "{}: link to {target}: no such file", f.display());
            if !frag.is_empty() {
                assert!(anchors_of(&path).contains(frag), "{}: link to {target}: no such heading", f.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "expected the guide's cross references, checked {checked}");
}
