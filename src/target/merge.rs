//! What a conflict comes to: the tenant's strategy for the table applied to the source's
//! and the mirror's version of one row (both as JSON objects, column -> value). Pure.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::spec::{ConflictPolicy, MergeRule, Strategy};

/// The rules for one table: `conflicts.tables[name]`, else `conflicts.default`.
#[derive(Debug, Clone)]
pub struct Rules {
    pub strategy: Strategy,
    pub compare_field: String,
    pub merge_rules: BTreeMap<String, MergeRule>,
    pub notify: bool,
}

impl Rules {
    pub fn for_table(policy: &ConflictPolicy, table: &str) -> Rules {
        match policy.tables.get(table) {
            Some(tc) => Rules {
                strategy: tc.strategy,
                compare_field: tc.compare_field.clone().unwrap_or_else(|| "updated_at".to_string()),
                merge_rules: tc.merge_rules.clone(),
                notify: tc.notify,
            },
            None => Rules {
                strategy: policy.default,
                compare_field: "updated_at".to_string(),
                merge_rules: BTreeMap::new(),
                notify: false,
            },
        }
    }
}

pub fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::NewestWins => "newest_wins",
        Strategy::SourceWins => "source_wins",
        Strategy::TargetWins => "target_wins",
        Strategy::Merge => "merge",
        Strategy::Manual => "manual",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

/// A conflict's resolution.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// The mirror row becomes the source's version.
    Source,
    /// The mirror row stays as it is.
    Target,
    /// The mirror row becomes this merge of both (it differs from each).
    Merged(Map<String, Value>),
    /// Left as it is and recorded for review (`manual`).
    Pending,
}

impl Resolution {
    /// As `sync_metadata.conflict_log.resolution` records it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Resolution::Source => "source",
            Resolution::Target => "target",
            Resolution::Merged(_) => "merged",
            Resolution::Pending => "pending",
        }
    }
}

/// Applies `rules` to one row's two versions.
pub fn decide(rules: &Rules, source: &Map<String, Value>, target: &Map<String, Value>) -> Resolution {
    match rules.strategy {
        Strategy::SourceWins => Resolution::Source,
        Strategy::TargetWins => Resolution::Target,
        Strategy::Manual => Resolution::Pending,
        Strategy::NewestWins => match newest(&rules.compare_field, source, target) {
            Side::Source => Resolution::Source,
            Side::Target => Resolution::Target,
        },
        Strategy::Merge => {
            let merged = merge_row(rules, source, target);
            if &merged == source {
                Resolution::Source
            } else if &merged == target {
                Resolution::Target
            } else {
                Resolution::Merged(merged)
            }
        }
    }
}

/// Which version is newer by `field`: a missing or NULL value loses, ties go to the source.
pub fn newest(field: &str, source: &Map<String, Value>, target: &Map<String, Value>) -> Side {
    let present = |m: &Map<String, Value>| m.get(field).filter(|v| !v.is_null()).cloned();
    match (present(source), present(target)) {
        (None, Some(_)) => Side::Target,
        (Some(s), Some(t)) if compare(&s, &t) == Some(Ordering::Less) => Side::Target,
        _ => Side::Source,
    }
}

fn as_number(v: &Value) -> Option<Value> {
    match v {
        Value::Number(_) => Some(v.clone()),
        Value::String(s) => s.trim().parse::<serde_json::Number>().ok().map(Value::Number),
        _ => None,
    }
}

/// Orders two compare-field values: numbers (or numeric text) numerically, exactly for
/// integers (nanosecond timestamps exceed f64's precision); other text by its bytes.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(Value::Number(x)), Some(Value::Number(y))) = (as_number(a), as_number(b)) {
        return match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => Some(i.cmp(&j)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        };
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// `merge`: each column by its rule; columns without one follow the source.
pub fn merge_row(rules: &Rules, source: &Map<String, Value>, target: &Map<String, Value>) -> Map<String, Value> {
    let row_side = newest(&rules.compare_field, source, target);
    let mut out = Map::new();
    let names = source.keys().chain(target.keys().filter(|k| !source.contains_key(*k)));
    for name in names {
        let (s, t) = (source.get(name).unwrap_or(&Value::Null), target.get(name).unwrap_or(&Value::Null));
        let v = match rules.merge_rules.get(name) {
            None | Some(MergeRule::SourceWins) => s.clone(),
            Some(MergeRule::TargetWins) => t.clone(),
            Some(MergeRule::NewestWins) => match row_side {
                Side::Source => s.clone(),
                Side::Target => t.clone(),
            },
            Some(MergeRule::Append) => append(s, t),
        };
        out.insert(name.clone(), v);
    }
    out
}

/// `append`: the union of both versions, nothing lost. Objects get every key of both
/// (merged recursively: an Open WebUI chat's `history.messages` map gains the messages
/// only one side has, and a message on both sides the union of its `childrenIds`); lists
/// get the source's items and then the target's it lacks (by `id` for objects that have
/// one, by value otherwise: the chat's `messages` list); a scalar on both sides is the
/// source's. JSON held as text (a TEXT column) is merged the same way and stays text.
pub fn append(source: &Value, target: &Value) -> Value {
    match (source, target) {
        (Value::Null, t) => t.clone(),
        (s, Value::Null) => s.clone(),
        (Value::Object(s), Value::Object(t)) => {
            let mut out = s.clone();
            for (k, tv) in t {
                let merged = match out.get(k) {
                    Some(sv) => append(sv, tv),
                    None => tv.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(s), Value::Array(t)) => {
            let mut out = s.clone();
            for tv in t {
                let id = item_id(tv);
                let pos = match id {
                    Some(id) => out.iter().position(|x| item_id(x) == Some(id)),
                    None => out.iter().position(|x| x == tv),
                };
                match pos {
                    Some(i) if id.is_some() => out[i] = append(&out[i], tv),
                    Some(_) => {}
                    None => out.push(tv.clone()),
                }
            }
            Value::Array(out)
        }
        (Value::String(s), Value::String(t)) => {
            match (serde_json::from_str::<Value>(s), serde_json::from_str::<Value>(t)) {
                (Ok(sv @ (Value::Object(_) | Value::Array(_))), Ok(tv @ (Value::Object(_) | Value::Array(_)))) => {
                    Value::String(append(&sv, &tv).to_string())
                }
                _ => source.clone(),
            }
        }
        (s, _) => s.clone(),
    }
}

fn item_id(v: &Value) -> Option<&Value> {
    v.as_object().and_then(|o| o.get("id")).filter(|id| !id.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn rules(strategy: Strategy, merge: &[(&str, MergeRule)]) -> Rules {
        Rules {
            strategy,
            compare_field: "updated_at".into(),
            merge_rules: merge.iter().map(|(k, r)| (k.to_string(), *r)).collect(),
            notify: false,
        }
    }

    #[test]
    fn newest_wins_by_compare_field_ties_and_missing_values() {
        let s = obj(json!({"id": "a", "updated_at": 10}));
        let t = obj(json!({"id": "a", "updated_at": 11}));
        assert_eq!(newest("updated_at", &s, &t), Side::Target);
        assert_eq!(newest("updated_at", &t, &s), Side::Source);
        assert_eq!(newest("updated_at", &s, &s), Side::Source, "ties go to the source");
        let none = obj(json!({"id": "a", "updated_at": null}));
        assert_eq!(newest("updated_at", &none, &s), Side::Target, "NULL loses");
        assert_eq!(newest("updated_at", &s, &none), Side::Source);
        assert_eq!(newest("missing", &s, &t), Side::Source, "both missing: a tie");
        // Nanoseconds beyond f64's precision still compare exactly.
        let a = obj(json!({"t": 1_700_000_000_000_000_001_i64}));
        let b = obj(json!({"t": 1_700_000_000_000_000_002_i64}));
        assert_eq!(newest("t", &a, &b), Side::Target);
        // Numeric text compares as numbers, other text by bytes.
        let a = obj(json!({"t": "9"}));
        let b = obj(json!({"t": "10"}));
        assert_eq!(newest("t", &a, &b), Side::Target);
        let a = obj(json!({"t": "2024-05-01 10:00:00"}));
        let b = obj(json!({"t": "2024-04-30 23:00:00"}));
        assert_eq!(newest("t", &a, &b), Side::Source);
    }

    #[test]
    fn strategies_decide() {
        let s = obj(json!({"id": "a", "v": "src", "updated_at": 1}));
        let t = obj(json!({"id": "a", "v": "tgt", "updated_at": 2}));
        assert_eq!(decide(&rules(Strategy::SourceWins, &[]), &s, &t), Resolution::Source);
        assert_eq!(decide(&rules(Strategy::TargetWins, &[]), &s, &t), Resolution::Target);
        assert_eq!(decide(&rules(Strategy::NewestWins, &[]), &s, &t), Resolution::Target);
        assert_eq!(decide(&rules(Strategy::Manual, &[]), &s, &t), Resolution::Pending);
        // merge without rules follows the source.
        assert_eq!(decide(&rules(Strategy::Merge, &[]), &s, &t), Resolution::Source);
        assert_eq!(
            decide(&rules(Strategy::Merge, &[("v", MergeRule::TargetWins)]), &s, &t),
            Resolution::Merged(obj(json!({"id": "a", "v": "tgt", "updated_at": 1})))
        );
        assert_eq!(
            decide(
                &rules(Strategy::Merge, &[("v", MergeRule::NewestWins), ("updated_at", MergeRule::NewestWins)]),
                &s,
                &t
            ),
            Resolution::Target
        );
    }

    #[test]
    fn append_unions_chat_histories_by_message_id() {
        // Both sides continued the same chat from message m2.
        let base = |extra_msgs: Value, extra_list: Value, child: &str, current: &str| {
            let mut msgs = json!({
                "m1": {"id": "m1", "parentId": null, "childrenIds": ["m2"], "role": "user", "content": "hi"},
                "m2": {"id": "m2", "parentId": "m1", "childrenIds": [child], "role": "assistant", "content": "hello"},
            });
            for (k, v) in extra_msgs.as_object().unwrap() {
                msgs[k] = v.clone();
            }
            let mut list = vec![msgs["m1"].clone(), msgs["m2"].clone()];
            list.extend(extra_list.as_array().unwrap().iter().cloned());
            json!({"title": "t", "history": {"messages": msgs, "currentId": current}, "messages": list, "tags": ["a"]})
        };
        let s3 = json!({"id": "s3", "parentId": "m2", "childrenIds": [], "role": "user", "content": "from sqlite"});
        let t3 = json!({"id": "t3", "parentId": "m2", "childrenIds": [], "role": "user", "content": "from postgres"});
        let src = base(json!({"s3": s3.clone()}), json!([s3.clone()]), "s3", "s3");
        let mut tgt = base(json!({"t3": t3.clone()}), json!([t3.clone()]), "t3", "t3");
        tgt["tags"] = json!(["a", "b"]);
        let m = append(&src, &tgt);
        let msgs = m["history"]["messages"].as_object().unwrap();
        assert_eq!(msgs.keys().collect::<Vec<_>>(), ["m1", "m2", "s3", "t3"], "no message lost");
        assert_eq!(msgs["m2"]["childrenIds"], json!(["s3", "t3"]), "both branches hang off m2");
        assert_eq!(msgs["t3"]["content"], "from postgres");
        let ids: Vec<&str> = m["messages"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["m1", "m2", "s3", "t3"]);
        assert_eq!(m["history"]["currentId"], "s3", "a scalar on both sides: the source's");
        assert_eq!(m["tags"], json!(["a", "b"]));
        assert_eq!(m["title"], "t");
        // Idempotent: merging again with either side changes nothing.
        assert_eq!(append(&m, &tgt), m);
        assert_eq!(append(&m, &src), m);
    }

    #[test]
    fn append_of_lists_text_json_and_nulls() {
        assert_eq!(append(&json!([1, 2]), &json!([2, 3])), json!([1, 2, 3]));
        assert_eq!(append(&Value::Null, &json!([3])), json!([3]));
        assert_eq!(append(&json!("x"), &Value::Null), json!("x"));
        assert_eq!(append(&json!("x"), &json!("y")), json!("x"), "scalars: the source's");
        let m = append(&json!(r#"{"tags":["a"]}"#), &json!(r#"{"tags":["b"],"k":1}"#));
        assert_eq!(serde_json::from_str::<Value>(m.as_str().unwrap()).unwrap(), json!({"tags": ["a", "b"], "k": 1}));
    }

    #[test]
    fn rules_come_from_the_table_entry_or_the_default() {
        let p: ConflictPolicy = serde_json::from_value(json!({
            "default": "source_wins",
            "tables": {
                "chat": {"strategy": "merge", "mergeRules": {"chat": "append"}},
                "user": {"strategy": "newest_wins", "compareField": "last_active_at"},
            }
        }))
        .unwrap();
        let r = Rules::for_table(&p, "chat");
        assert_eq!((r.strategy, r.compare_field.as_str()), (Strategy::Merge, "updated_at"));
        assert_eq!(r.merge_rules.get("chat"), Some(&MergeRule::Append));
        assert_eq!(Rules::for_table(&p, "user").compare_field, "last_active_at");
        assert_eq!(Rules::for_table(&p, "tag").strategy, Strategy::SourceWins);
    }
}
