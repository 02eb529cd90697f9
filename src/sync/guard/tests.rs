use super::*;
use crate::fixtures::{self, CreateOptions};
use crate::spec::TableSelector;

fn counted(table: &str, live: i64, remaining: i64) -> Counted {
    Counted { table: table.into(), live, remaining: Some(remaining) }
}

fn seen(tables: Vec<Counted>) -> Observed {
    Observed { tables, ..Default::default() }
}

#[test]
fn holds_more_than_the_share_of_a_table_with_enough_rows() {
    let g = DeletionGuard::default();
    assert!(decide(&g, &seen(vec![counted("chat", 100, 50)])).is_none(), "exactly half is allowed");
    let p = decide(&g, &seen(vec![counted("chat", 100, 49), counted("user", 5, 4)])).expect("held");
    assert_eq!(p.reason, Reason::MassDeletion);
    assert_eq!(p.tables, vec![HeldTable { table: "chat".into(), live: 100, remaining: 49 }]);
    // Under minRows only emptying counts; growth never holds.
    assert!(decide(&g, &seen(vec![counted("tag", 19, 1), counted("chat", 10, 500)])).is_none());
    let strict = DeletionGuard { max_share: 0.1, min_rows: 5, ..DeletionGuard::default() };
    assert!(decide(&strict, &seen(vec![counted("tag", 19, 17)])).is_some());
}

#[test]
fn holds_an_emptied_table_unless_told_not_to() {
    let g = DeletionGuard::default();
    let p = decide(&g, &seen(vec![counted("memory", 1, 0)])).expect("held");
    assert_eq!(p.tables[0].deleting(), 1);
    let lax = DeletionGuard { hold_emptied: false, ..DeletionGuard::default() };
    assert!(decide(&lax, &seen(vec![counted("memory", 1, 0)])).is_none());
    let off = DeletionGuard { enabled: false, ..DeletionGuard::default() };
    assert!(decide(&off, &seen(vec![counted("chat", 1000, 0)])).is_none());
    // A table gone from the source is not tombstoned by a sync: not counted.
    assert!(decide(&g, &seen(vec![Counted { table: "old".into(), live: 50, remaining: None }])).is_none());
}

#[test]
fn another_database_is_held_even_without_deletions() {
    let g = DeletionGuard::default();
    let mut s = seen(vec![counted("chat", 3, 3)]);
    s.anchored = vec!["alembic_version".into(), "chat".into(), "user".into()];
    s.foreign = vec!["chat".into(), "user".into()];
    let p = decide(&g, &s).expect("held");
    assert_eq!(p.reason, Reason::SourceReplaced);
    assert!(p.tables.is_empty());
    assert!(p.message("acme", "/data/webui.db").contains("2 of 3 tables"), "{}", p.message("acme", "/x"));
    s.foreign = vec!["chat".into()];
    assert!(decide(&g, &s).is_none(), "one table of three without its sampled rows is a normal delete");
}

#[test]
fn an_approval_covers_the_deletions_seen_and_no_more() {
    let g = DeletionGuard::default();
    let approved = decide(&g, &seen(vec![counted("chat", 100, 10)])).expect("held");
    let same = decide(&g, &seen(vec![counted("chat", 100, 10)])).expect("held");
    assert!(same.covered_by(&approved));
    let fewer = decide(&g, &seen(vec![counted("chat", 100, 20)])).expect("held");
    assert!(fewer.covered_by(&approved));
    let more = decide(&g, &seen(vec![counted("chat", 100, 9)])).expect("held");
    assert!(!more.covered_by(&approved), "one more deleted row is not approved");
    let other = decide(&g, &seen(vec![counted("chat", 100, 10), counted("user", 40, 0)])).expect("held");
    assert!(!other.covered_by(&approved), "another table is not approved");
    let mut replaced = seen(vec![counted("chat", 100, 10)]);
    replaced.anchored = vec!["chat".into()];
    replaced.foreign = vec!["chat".into()];
    let replaced = decide(&g, &replaced).expect("held");
    assert!(!replaced.covered_by(&approved), "a mass deletion's approval does not cover another database");
    assert!(approved.covered_by(&replaced));
}

fn create(path: &Path, users: u32, chats: u32, seed: u64) {
    let opts = CreateOptions { users, chats_per_user: chats, seed, force: true, ..CreateOptions::default() };
    fixtures::create(path, &opts).expect("create fixture");
}

/// Table -> rows of a fixture, as a sync would have recorded them.
fn recorded(path: &Path) -> BTreeMap<String, i64> {
    fixtures::table_counts(path).expect("count").into_iter().map(|(t, n)| (t, n as i64)).collect()
}

#[test]
fn a_fresh_open_webui_database_at_the_path_is_another_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("webui.db");
    create(&p, 5, 10, 7);
    let all = TableSelector::default();
    let before = observe(&p, &all, &recorded(&p), &Anchors::new()).expect("observe");
    assert!(before.anchors.get("chat").is_some_and(|k| k.len() == ANCHORS_PER_TABLE as usize), "{:?}", before.anchors);
    assert!(before.anchors.contains_key("user"));
    let rows = recorded(&p);
    // The same database, unchanged: nothing to hold.
    let same = observe(&p, &all, &rows, &before.anchors).expect("observe");
    assert!(same.foreign.is_empty(), "{:?}", same.foreign);
    assert!(decide(&DeletionGuard::default(), &same).is_none());
    // Open WebUI started on an empty volume: one admin, no chats.
    create(&p, 1, 0, 99);
    let fresh = observe(&p, &all, &rows, &before.anchors).expect("observe");
    let plan = decide(&DeletionGuard::default(), &fresh).expect("a fresh database is held");
    assert_eq!(plan.reason, Reason::SourceReplaced, "{plan:?}");
    assert!(plan.tables.iter().any(|t| t.table == "chat" && t.remaining == 0), "{plan:?}");
    assert!(plan.foreign.contains(&"chat".to_string()) && plan.foreign.contains(&"user".to_string()), "{plan:?}");
}

#[test]
fn deleting_most_chats_of_the_same_database_is_a_mass_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("webui.db");
    create(&p, 4, 10, 3);
    let all = TableSelector::default();
    let rows = recorded(&p);
    let anchors = observe(&p, &all, &rows, &Anchors::new()).expect("observe").anchors;
    let c = rusqlite::Connection::open(&p).expect("open");
    c.execute_batch("DELETE FROM chat WHERE rowid % 4 <> 0").expect("delete");
    drop(c);
    let seen = observe(&p, &all, &rows, &anchors).expect("observe");
    let plan = decide(&DeletionGuard::default(), &seen).expect("held");
    assert_eq!(plan.reason, Reason::MassDeletion, "{plan:?}");
    // chat_message (and shared chats) go with their chats.
    let chat = plan.tables.iter().find(|t| t.table == "chat").expect("chat held");
    assert_eq!((chat.live, chat.remaining), (40, 10), "{plan:?}");
    assert!(plan.tables.iter().all(|t| t.table == "chat" || t.table.contains("chat")), "{plan:?}");
}

#[test]
fn limits_follow_the_policy_and_an_approval() {
    let g = DeletionGuard::default();
    let s = seen(vec![counted("chat", 100, 100), counted("tag", 5, 5), counted("empty", 0, 0)]);
    let l = limits(&g, &s, None);
    assert_eq!(l.get("chat"), Some(&50));
    assert_eq!(l.get("tag"), Some(&4), "under minRows: anything but emptying");
    assert!(!l.contains_key("empty"));
    let lax = DeletionGuard { hold_emptied: false, ..DeletionGuard::default() };
    assert_eq!(limits(&lax, &s, None).get("tag"), Some(&5));
    let approved = exceeded("chat", 100, 70);
    assert_eq!(limits(&g, &s, Some(&approved)).get("chat"), Some(&70));
    let off = DeletionGuard { enabled: false, ..DeletionGuard::default() };
    assert!(limits(&off, &s, None).is_empty());
}
