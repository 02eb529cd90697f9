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
        let is_md = std::path::Path::new(&origin).extension().is_some_and(|e| e.eq_ignore_ascii_case("md"));
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

// ---------------------------------------------------------------------------------------
// Every command line of the docs' code blocks parses with the real CLI definitions

/// The simple commands of a line of shell, as words: quotes removed, `#` comments
/// dropped, split at `|`, `;`, `&`, `(`, `)` and redirections (`2>&1` and the target of
/// `>` go with them). `$(...)` and `${...}` stay inside their word.
fn shell_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut cur: Option<String> = None;
    let mut quote: Option<char> = None;
    let mut depth = 0; // inside $( ) or ${ }
    let mut chars = line.chars().peekable();
    let mut redirect = false; // the next word is a redirection's target
    let end_word = |cur: &mut Option<String>, commands: &mut Vec<Vec<String>>, redirect: &mut bool| {
        if let Some(w) = cur.take()
            && !std::mem::take(redirect)
        {
            commands.last_mut().expect("a command").push(w);
        }
    };
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            match c {
                _ if c == q => quote = None,
                '\\' if q == '"' => cur.get_or_insert_default().extend(chars.next()),
                _ => cur.get_or_insert_default().push(c),
            }
            continue;
        }
        if depth > 0 {
            depth += usize::from(c == '(' || c == '{');
            depth -= usize::from(c == ')' || c == '}');
            cur.get_or_insert_default().push(c);
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                cur.get_or_insert_default();
            }
            '\\' => cur.get_or_insert_default().extend(chars.next()),
            '$' if chars.peek().is_some_and(|n| *n == '(' || *n == '{') => {
                depth = 1;
                cur.get_or_insert_default().push(c);
                cur.get_or_insert_default().extend(chars.next());
            }
            '#' if cur.is_none() => break,
            '>' | '<' => {
                if cur.as_deref().is_some_and(|w| w.chars().all(|d| d.is_ascii_digit())) {
                    cur = None; // the fd of 2>&1
                }
                end_word(&mut cur, &mut commands, &mut redirect);
                if chars.peek() == Some(&'&') {
                    chars.next();
                    while chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                } else {
                    redirect = true;
                }
            }
            '|' | ';' | '&' | '(' | ')' | '`' => {
                end_word(&mut cur, &mut commands, &mut redirect);
                commands.push(Vec::new());
            }
            c if c.is_whitespace() => end_word(&mut cur, &mut commands, &mut redirect),
            _ => cur.get_or_insert_default().push(c),
        }
    }
    end_word(&mut cur, &mut commands, &mut redirect);
    commands.retain(|c| !c.is_empty());
    commands
}

#[test]
fn shell_commands_splits_like_a_shell() {
    let cmds = shell_commands(
        r#"OWSYNC_CLUSTER=x owsyncctl get client "a b" -o json 2>&1 | jq '.x | .y' > out.json  # a comment"#,
    );
    assert_eq!(
        cmds,
        [vec!["OWSYNC_CLUSTER=x", "owsyncctl", "get", "client", "a b", "-o", "json"], vec!["jq", ".x | .y"]]
    );
    let cmds = shell_commands(r#"owsyncctl trigger "$(cat name)" --cluster ${HOST:-a}; echo $?"#);
    assert_eq!(cmds, [vec!["owsyncctl", "trigger", "$(cat name)", "--cluster", "${HOST:-a}"], vec!["echo", "$?"]]);
}

/// `cmd` with every argument that an environment variable can supply made optional: a
/// documented line may rely on `OWSYNC_CLUSTER` and the like.
fn env_may_supply(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| if a.get_env().is_some() { a.required(false) } else { a }).mut_subcommands(env_may_supply)
}

/// Parses `bin words...` with the binary's clap definition. A placeholder (`NAME`, `ID`,
/// `N`: upper case) parses as a value; where the value must be a number, as `1`.
fn parse_with_cli(bin: &str, words: &[String]) -> Result<(), clap::Error> {
    let first = parse_as_written(bin, words);
    let is_placeholder = |w: &String| w.chars().all(|c| c.is_ascii_uppercase() || c == '_');
    match first {
        Err(e)
            if matches!(e.kind(), clap::error::ErrorKind::InvalidValue | clap::error::ErrorKind::ValueValidation)
                && words.iter().any(is_placeholder) =>
        {
            let numbered: Vec<String> =
                words.iter().map(|w| if is_placeholder(w) { "1".to_string() } else { w.clone() }).collect();
            parse_as_written(bin, &numbered)
        }
        other => other,
    }
}

fn parse_as_written(bin: &str, words: &[String]) -> Result<(), clap::Error> {
    use clap::CommandFactory;
    let cmd = match bin {
        "owsyncctl" => owsync::cli::Cli::command(),
        _ => owsync::daemon_args::Args::command(),
    };
    let argv = std::iter::once(bin.to_string()).chain(words.iter().cloned());
    match env_may_supply(cmd).try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// (line, joined logical line) of every shell line in the file's code blocks: all of a
/// `sh`, `bash`, `shell`, `console` or `yaml` (CI steps) block, and the `$ ` prompt lines
/// of an untagged one (the others are diagrams); never `text`, `json` or `sql`.
fn code_block_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut block: Option<String> = None; // the open block's language
    let mut logical = String::new();
    let mut first = 0;
    for (n, raw) in text.lines().enumerate() {
        let mut t = raw.trim();
        if let Some(lang) = t.strip_prefix("```") {
            block = if block.is_some() { None } else { Some(lang.trim().to_string()) };
            continue;
        }
        let Some(lang) = &block else { continue };
        let prompt = t.strip_prefix("$ ");
        match lang.as_str() {
            "sh" | "bash" | "shell" | "console" | "yaml" => t = prompt.unwrap_or(t),
            "" if logical.is_empty() => match prompt {
                Some(p) => t = p,
                None => continue,
            },
            "" => {}
            _ => continue,
        }
        if logical.is_empty() {
            first = n + 1;
        }
        if let Some(body) = t.strip_suffix('\\') {
            logical.push_str(body);
            logical.push(' ');
        } else {
            logical.push_str(t);
            out.push((first, std::mem::take(&mut logical)));
        }
    }
    out
}

/// (line, words) of every `owsyncctl ...` / `owsyncd ...` code span in the prose (outside
/// code blocks; a span may wrap), read as a synopsis: `[`optional`]` parts included,
/// the first of `A|B` alternatives, `...` elisions dropped.
fn inline_command_spans(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut prose = String::new(); // code blocks blanked, line breaks kept
    let mut in_block = false;
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            in_block = !in_block;
        } else if !in_block {
            prose.push_str(l);
        }
        prose.push('\n');
    }
    let mut out = Vec::new();
    let mut offset = 0;
    for (k, span) in prose.split('`').enumerate() {
        let line = prose[..offset].matches('\n').count() + 1;
        offset += span.len() + 1;
        if k % 2 == 0 || !(span.starts_with("owsyncctl ") || span.starts_with("owsyncd ")) {
            continue;
        }
        let words = span
            .replace("\\|", "|")
            .split_whitespace()
            .map(|w| w.replace(['[', ']'], "").split('|').next().unwrap_or_default().to_string())
            .filter(|w| !w.is_empty() && w != "..." && w != "…")
            .collect();
        out.push((line, words));
    }
    out
}

/// Whether a code span's parse error only says it is a fragment (`owsyncctl move`,
/// `owsyncd --table-connections`): a command named without its arguments or a flag
/// without its value, not an unknown command, flag or value.
fn is_fragment(e: &clap::Error, words: &[String]) -> bool {
    use clap::error::ErrorKind::*;
    match e.kind() {
        MissingRequiredArgument | MissingSubcommand | DisplayHelpOnMissingArgumentOrSubcommand => true,
        InvalidValue => words.last().is_some_and(|w| w.starts_with('-')),
        _ => false,
    }
}

#[test]
fn every_documented_command_line_parses_with_the_real_cli() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    for rel in ["README.md", "manifests/gitops/README.md", "docker/README.md"] {
        files.push(root().join(rel));
    }
    files.sort();
    let mut failures = Vec::new();
    let mut parsed = BTreeSet::new();
    let (mut lines, mut spans) = (0, 0);
    for f in files {
        let origin = f.strip_prefix(root()).expect("under the repository").display().to_string();
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{origin}: {e}"));
        for (line, shell) in code_block_lines(&text) {
            for words in shell_commands(&shell) {
                let Some(at) = words.iter().position(|w| {
                    let base = w.rsplit('/').next().unwrap_or(w);
                    base == "owsyncctl" || base == "owsyncd"
                }) else {
                    continue;
                };
                let bin = words[at].rsplit('/').next().unwrap_or_default().to_string();
                let args = &words[at + 1..];
                if let Err(e) = parse_with_cli(&bin, args) {
                    let why = e.render().to_string().replace('\n', " ");
                    failures.push(format!("{origin}:{line}: `{bin} {}`: {why}", args.join(" ")));
                }
                parsed.insert(bin);
                lines += 1;
            }
        }
        for (line, words) in inline_command_spans(&text) {
            let (bin, args) = words.split_first().expect("a span starting with the binary");
            match parse_with_cli(bin, args) {
                Err(e) if !is_fragment(&e, &words) => {
                    let why = e.render().to_string().replace('\n', " ");
                    failures.push(format!("{origin}:{line}: `{}`: {why}", words.join(" ")));
                }
                _ => spans += 1,
            }
            parsed.insert(bin.clone());
        }
    }
    assert!(lines >= 40, "expected the guide's many command lines, checked {lines}");
    assert!(spans >= 50, "expected the guide's many inline command spans, checked {spans}");
    assert!(failures.is_empty(), "documented command lines the CLI rejects:\n{}", failures.join("\n"));
    assert_eq!(parsed.len(), 2, "both owsyncctl and owsyncd command lines are documented and checked: {parsed:?}");
}
