use super::*;

const GOOD: &str = "apiVersion: owsync.io/v1alpha1
kind: ClientSync
metadata:
  name: acme-corp
spec:
  source:
    path: /data/acme/webui.db
";

#[test]
fn defaults_are_filled_in() {
    let docs = parse_documents("a.yaml", GOOD).expect("parses");
    let n = normalize(&docs[0].doc, "host-1").expect("valid");
    assert_eq!(n.metadata.cluster.as_deref(), Some("host-1"));
    assert_eq!(n.spec.target.schema.as_deref(), Some("client_acme_corp"));
    assert_eq!(n.spec.interval, "5m");
    assert!(n.spec.enabled);
    assert_eq!(n.spec.conflicts.default, Strategy::NewestWins);
    assert_eq!(n.spec.tables.include, vec!["*"]);
    assert_eq!(interval_of(&n.spec), std::time::Duration::from_secs(300));
}

#[test]
fn multi_document_lines_are_tracked() {
    let text = format!("# fleet\n{GOOD}---\n{}", GOOD.replace("acme-corp", "beta"));
    let docs = parse_documents("f.yaml", &text).expect("parses");
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].line, 1);
    assert_eq!(docs[1].line, 10);
    let bad = format!("{GOOD}---\n{}", GOOD.replace("  source:", "  bogus: 1\n  source:"));
    let e = parse_documents("f.yaml", &bad).unwrap_err().to_string();
    assert!(e.starts_with("f.yaml:14:3: spec.bogus: unknown field `bogus`"), "{e}");
}

#[test]
fn syntax_and_type_errors_name_line_column_and_path() {
    let e = parse_documents("x.yaml", &GOOD.replace("spec:", "spec:\n  enabled: maybe")).unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("x.yaml:6:12: spec.enabled: invalid boolean (got \"maybe\")"), "{s}");
    let e = parse_documents("x.yaml", "apiVersion: [a\n").unwrap_err().to_string();
    assert!(e.starts_with("x.yaml:1:"), "{e}");
    let e = parse_documents("x.yaml", &GOOD.replace("spec:", "spec:\n  deletes: shred")).unwrap_err();
    assert!(e.to_string().contains("spec.deletes: unknown variant `shred`"), "{e}");
    assert!(matches!(parse_documents("e.yaml", "# nothing\n"), Err(LoadError::Empty { .. })));
}

#[test]
fn validation_names_field_and_value() {
    let mut d = parse_documents("a", GOOD).unwrap().remove(0).doc;
    d.spec.interval = "5 parsecs".into();
    d.metadata.name = "Acme_Corp".into();
    d.spec.source.path = "relative/webui.db".into();
    let errs = normalize(&d, "h").unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert!(
        text.contains(&"spec.interval: \"5 parsecs\" is not a duration (e.g. 30s, 5m, 1h)".to_string()),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.starts_with("metadata.name: \"Acme_Corp\"")), "{text:?}");
    assert!(text.iter().any(|t| t.starts_with("spec.source.path: \"relative/webui.db\"")), "{text:?}");
    d = parse_documents("a", GOOD).unwrap().remove(0).doc;
    for (iv, ok) in [("9s", false), ("10s", true), ("60m", true), ("61m", false), ("1h", true)] {
        d.spec.interval = iv.into();
        assert_eq!(normalize(&d, "h").is_ok(), ok, "{iv}");
    }
}

#[test]
fn merge_rules_need_merge() {
    let text = GOOD.to_string()
        + "  conflicts:\n    tables:\n      chat: {strategy: merge, mergeRules: {chat: append, meta: newest_wins}}\n      config: {strategy: manual, notify: true}\n      user: {strategy: source_wins, compareField: updated_at}\n";
    let d = parse_documents("a", &text).unwrap().remove(0).doc;
    let errs = normalize(&d, "h").unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "spec.conflicts.tables.user.compareField");
}

#[test]
fn table_globs() {
    let sel = TableSelector { include: vec!["*".into()], exclude: vec!["chat_*".into()] };
    assert!(table_selected(&sel, "chat"));
    assert!(!table_selected(&sel, "chat_message"));
}

#[test]
fn yaml_round_trip() {
    let d = parse_documents("a", GOOD).unwrap().remove(0).doc;
    let n = normalize(&d, "h").unwrap();
    let y = to_yaml(&n);
    let back = parse_documents("b", &y).unwrap().remove(0).doc;
    assert_eq!(back, n);
}
