//! How one sync's outcome changes a tenant's status: phase, conditions (`Ready`,
//! `Reconciling`, `Degraded`, `Stalled`), failures and the next sync time. Pure, so the
//! rules are unit-tested; `lastTransitionTime` moves only when a condition's status does
//! (`ClientSyncStatus::set_condition`).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::spec::{ClientSyncStatus, Phase};
use crate::sync::drift::Drift;

/// What a sync came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Every selected table synced.
    Succeeded { tables: usize, elapsed: Duration },
    /// Some tables failed (named in `message`); the others synced.
    Degraded { message: String },
    /// The sync as a whole failed.
    Failed { message: String },
    /// The deletion guard held the sync: nothing was written (`sync::guard`).
    Held { reason: &'static str, message: String },
}

fn short(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// A sync of `generation` starts (shown for first syncs and new generations, which can
/// take long).
pub fn syncing(st: &mut ClientSyncStatus, generation: i64, now: DateTime<Utc>) {
    st.phase = Phase::Syncing;
    let msg = format!("syncing generation {generation}");
    st.set_condition("Reconciling", true, "Syncing", &msg, generation, now);
}

/// A run that ended, as its conditions are computed from it.
#[derive(Debug, Clone)]
pub struct Ended<'a> {
    pub outcome: &'a Outcome,
    pub generation: i64,
    pub now: DateTime<Utc>,
    /// Consecutive failures including this run (0 after a success or a hold).
    pub failures: u32,
    /// The failures after which the tenant is `Stalled`.
    pub stall_after: i32,
    /// When the next sync comes.
    pub delay: Duration,
}

/// A disabled tenant (`spec.enabled: false`): phase `Suspended`, `Ready` False, no next sync.
pub fn suspended(st: &mut ClientSyncStatus, generation: i64, now: DateTime<Utc>) {
    st.phase = Phase::Suspended;
    st.observed_generation = generation;
    st.next_sync_time = None;
    st.set_condition("Ready", false, "Suspended", "spec.enabled is false", generation, now);
}

/// Records how a run ended.
pub fn record(st: &mut ClientSyncStatus, run: &Ended<'_>) {
    let &Ended { outcome, generation, now, failures, stall_after, delay } = run;
    st.observed_generation = generation;
    st.consecutive_failures = failures.min(i32::MAX as u32) as i32;
    let (error, reason) = match outcome {
        Outcome::Succeeded { tables, elapsed } => {
            st.phase = Phase::Synced;
            st.last_sync_time = Some(now);
            st.last_error = None;
            let msg = format!("synced {tables} tables in {}", short(*elapsed));
            st.set_condition("Ready", true, "SyncSucceeded", &msg, generation, now);
            st.set_condition("Degraded", false, "AllTablesSynced", "every selected table synced", generation, now);
            st.set_condition("Stalled", false, "Progressing", "syncs succeed", generation, now);
            st.set_condition("Reconciling", false, "Idle", "waiting for the next sync", generation, now);
            if st.condition("DeletionsHeld").is_some() {
                st.set_condition("DeletionsHeld", false, "NoneHeld", "no deletions are held", generation, now);
            }
            st.next_sync_time = chrono::Duration::from_std(delay).ok().map(|d| now + d);
            return;
        }
        Outcome::Held { reason, message } => {
            held(st, reason, message, generation, now);
            st.next_sync_time = chrono::Duration::from_std(delay).ok().map(|d| now + d);
            return;
        }
        Outcome::Degraded { message } => {
            st.phase = Phase::Degraded;
            st.set_condition("Degraded", true, "TablesFailed", message, generation, now);
            (message, "TablesFailed")
        }
        Outcome::Failed { message } => {
            st.phase = Phase::Failed;
            (message, "SyncFailed")
        }
    };
    st.last_error = Some(error.clone());
    st.set_condition("Ready", false, reason, error, generation, now);
    let plural = if failures == 1 { "" } else { "s" };
    if st.consecutive_failures >= stall_after {
        let msg = format!(
            "{failures} consecutive failure{plural}, retrying with backoff (next in {}); last: {error}",
            short(delay)
        );
        st.set_condition("Stalled", true, "RepeatedFailures", &msg, generation, now);
    } else {
        let msg = format!("{failures} consecutive failure{plural}; retrying in {}", short(delay));
        st.set_condition("Stalled", false, "Retrying", &msg, generation, now);
    }
    let msg = format!("retrying in {}", short(delay));
    st.set_condition("Reconciling", false, "BackingOff", &msg, generation, now);
    st.next_sync_time = chrono::Duration::from_std(delay).ok().map(|d| now + d);
}

/// A held sync: phase `Held`, `DeletionsHeld` True with the guard's reason and message,
/// `Ready` False. Not a failure: no backoff, no `Stalled` (the hold waits for an operator
/// or for the source to come back, and is re-checked every interval).
fn held(st: &mut ClientSyncStatus, reason: &str, message: &str, generation: i64, now: DateTime<Utc>) {
    st.phase = Phase::Held;
    st.last_error = Some(message.to_string());
    st.set_condition("DeletionsHeld", true, reason, message, generation, now);
    st.set_condition("Ready", false, "DeletionsHeld", message, generation, now);
    st.set_condition(
        "Reconciling",
        false,
        "Held",
        "waiting for the source to come back or an approval",
        generation,
        now,
    );
}

/// `ConflictsPending`: True while `pending` of the tenant's conflicts wait for review
/// (`manual` tables), with the commands that resolve them; False once none do. Not added
/// to a tenant that never had one.
pub fn conflicts_pending(st: &mut ClientSyncStatus, client: &str, pending: i64, generation: i64, now: DateTime<Utc>) {
    if pending > 0 {
        let plural = if pending == 1 { " waits" } else { "s wait" };
        let msg = format!(
            "{pending} conflict{plural} for review: `owsyncctl conflicts list {client}`, then \
             `owsyncctl conflicts resolve ID --use source|target`"
        );
        st.set_condition("ConflictsPending", true, "ManualReview", &msg, generation, now);
    } else if st.condition("ConflictsPending").is_some() {
        st.set_condition("ConflictsPending", false, "NonePending", "no conflict waits for review", generation, now);
    }
}

/// The `SchemaDrift=True` reason and message for `drifts` (not empty).
fn drift_summary(schema: &str, drifts: &[Drift]) -> (&'static str, String) {
    let reason = match drifts.first().map(Drift::reason) {
        Some(r) if drifts.iter().all(|d| d.reason() == r) => r,
        _ => "SchemaChanged",
    };
    const SHOWN: usize = 5;
    let mut msg: Vec<String> = drifts.iter().take(SHOWN).map(|d| d.message(schema)).collect();
    if drifts.len() > SHOWN {
        msg.push(format!("and {} more", drifts.len() - SHOWN));
    }
    (reason, format!("the mirror cannot follow the source; the sync goes on with the rest: {}", msg.join("; ")))
}

/// Records the schema drift a sync found (`schema`: the tenant's mirror schema).
/// Returns the new status when `SchemaDrift` turned True or back to False (an event).
pub fn drift(
    st: &mut ClientSyncStatus,
    schema: &str,
    drifts: &[Drift],
    generation: i64,
    now: DateTime<Utc>,
) -> Option<bool> {
    let before = st.condition("SchemaDrift").map(|c| c.status == "True");
    if drifts.is_empty() {
        st.set_condition("SchemaDrift", false, "InSync", "the mirror follows the source's schema", generation, now);
        return (before == Some(true)).then_some(false);
    }
    let (reason, msg) = drift_summary(schema, drifts);
    st.set_condition("SchemaDrift", true, reason, &msg, generation, now);
    (before != Some(true)).then_some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::schedule::Schedule;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn cond<'a>(st: &'a ClientSyncStatus, ty: &str) -> (&'a str, &'a str, DateTime<Utc>) {
        let c = st.condition(ty).unwrap_or_else(|| panic!("no {ty} condition: {st:#?}"));
        (c.status.as_str(), c.reason.as_str(), c.last_transition_time)
    }

    #[test]
    fn conflicts_pending_names_the_count_and_the_commands() {
        let mut st = ClientSyncStatus::default();
        conflicts_pending(&mut st, "acme", 0, 1, t(0));
        assert!(st.condition("ConflictsPending").is_none(), "not added while there never was one");
        conflicts_pending(&mut st, "acme", 2, 1, t(5));
        assert_eq!(cond(&st, "ConflictsPending"), ("True", "ManualReview", t(5)));
        let msg = &st.condition("ConflictsPending").unwrap().message;
        assert!(msg.contains("2 conflicts wait") && msg.contains("owsyncctl conflicts list acme"), "{msg}");
        assert!(msg.contains("conflicts resolve ID --use source|target"), "{msg}");
        conflicts_pending(&mut st, "acme", 0, 1, t(9));
        assert_eq!(cond(&st, "ConflictsPending"), ("False", "NonePending", t(9)));
    }

    /// The status through a run of outcomes, as the runner records them.
    #[test]
    fn conditions_follow_outcomes_and_transition_times_move_only_on_status_changes() {
        let mut st = ClientSyncStatus::default();
        let mut sched = Schedule::new(Duration::from_secs(300), 0);
        let ok = Outcome::Succeeded { tables: 12, elapsed: Duration::from_millis(1234) };
        let degraded = Outcome::Degraded { message: "1 of 12 tables failed: chat: NUL in text".into() };
        let failed = Outcome::Failed { message: "tenant x: cannot open /data/x/webui.db".into() };
        let mut apply = |st: &mut ClientSyncStatus, o: &Outcome, now: i64| {
            let delay = match o {
                Outcome::Succeeded { .. } => sched.succeeded(),
                _ => sched.failed(0.0),
            };
            let run =
                Ended { outcome: o, generation: 3, now: t(now), failures: sched.failures(), stall_after: 5, delay };
            record(st, &run);
        };

        syncing(&mut st, 3, t(0));
        assert_eq!(st.phase, Phase::Syncing);
        assert_eq!(cond(&st, "Reconciling").0, "True");
        apply(&mut st, &ok, 10);
        assert_eq!(st.phase, Phase::Synced);
        assert_eq!(st.observed_generation, 3);
        assert_eq!(cond(&st, "Ready"), ("True", "SyncSucceeded", t(10)));
        assert_eq!(cond(&st, "Degraded"), ("False", "AllTablesSynced", t(10)));
        assert_eq!(cond(&st, "Stalled"), ("False", "Progressing", t(10)));
        assert_eq!(cond(&st, "Reconciling"), ("False", "Idle", t(10)));
        assert_eq!(st.next_sync_time, Some(t(310)));
        assert_eq!(st.last_sync_time, Some(t(10)));
        assert!(st.condition("Ready").unwrap().message.contains("12 tables in 1s 234ms"), "{st:#?}");

        // A second success changes no transition time.
        apply(&mut st, &ok, 310);
        assert_eq!(cond(&st, "Ready").2, t(10));
        assert_eq!(cond(&st, "Degraded").2, t(10));

        // Some tables fail: Degraded, not Ready, one failure, backoff 5 s.
        apply(&mut st, &degraded, 620);
        assert_eq!(st.phase, Phase::Degraded);
        assert_eq!(cond(&st, "Degraded"), ("True", "TablesFailed", t(620)));
        assert_eq!(cond(&st, "Ready"), ("False", "TablesFailed", t(620)));
        assert_eq!(cond(&st, "Stalled"), ("False", "Retrying", t(10)));
        assert_eq!(st.consecutive_failures, 1);
        assert_eq!(st.next_sync_time, Some(t(625)));
        assert_eq!(st.last_error.as_deref(), Some("1 of 12 tables failed: chat: NUL in text"));
        assert_eq!(st.last_sync_time, Some(t(310)), "a degraded run is not a successful sync");

        // Then the whole sync fails, four times: Stalled at the fifth failure.
        for (i, now) in [630, 640, 660, 700].into_iter().enumerate() {
            apply(&mut st, &failed, now);
            assert_eq!(st.phase, Phase::Failed);
            assert_eq!(st.consecutive_failures, i as i32 + 2);
            assert_eq!(cond(&st, "Ready"), ("False", "SyncFailed", t(620)), "status unchanged: same transition time");
            assert_eq!(cond(&st, "Degraded").0, "True", "a failed run says nothing about tables");
        }
        assert_eq!(cond(&st, "Stalled"), ("True", "RepeatedFailures", t(700)));
        let msg = &st.condition("Stalled").unwrap().message;
        assert!(msg.contains("5 consecutive failures") && msg.contains("cannot open"), "{msg}");
        assert_eq!(st.next_sync_time, Some(t(780)), "fifth failure: 80 s");

        // It stays Stalled while failures go on, and its transition time stays.
        apply(&mut st, &failed, 780);
        assert_eq!(cond(&st, "Stalled"), ("True", "RepeatedFailures", t(700)));
        assert!(st.condition("Stalled").unwrap().message.contains("6 consecutive failures"));

        // One success resets everything.
        apply(&mut st, &ok, 1000);
        assert_eq!(st.phase, Phase::Synced);
        assert_eq!(st.consecutive_failures, 0);
        assert_eq!(st.last_error, None);
        assert_eq!(cond(&st, "Ready"), ("True", "SyncSucceeded", t(1000)));
        assert_eq!(cond(&st, "Degraded"), ("False", "AllTablesSynced", t(1000)));
        assert_eq!(cond(&st, "Stalled"), ("False", "Progressing", t(1000)));
        assert_eq!(st.next_sync_time, Some(t(1300)));
        // And the backoff starts over at 5 s.
        apply(&mut st, &failed, 1300);
        assert_eq!(st.next_sync_time, Some(t(1305)));
        assert_eq!(cond(&st, "Stalled"), ("False", "Retrying", t(1000)));
    }

    #[test]
    fn a_disabled_tenant_is_suspended_with_no_next_sync() {
        let mut st = ClientSyncStatus::default();
        let ok = Outcome::Succeeded { tables: 3, elapsed: Duration::from_secs(1) };
        let run = Ended {
            outcome: &ok,
            generation: 1,
            now: t(0),
            failures: 0,
            stall_after: 5,
            delay: Duration::from_secs(60),
        };
        record(&mut st, &run);
        assert_eq!(st.next_sync_time, Some(t(60)));
        suspended(&mut st, 2, t(10));
        assert_eq!(st.phase, Phase::Suspended);
        assert_eq!(st.observed_generation, 2);
        assert_eq!(st.next_sync_time, None);
        assert_eq!(cond(&st, "Ready"), ("False", "Suspended", t(10)));
        assert_eq!(st.last_sync_time, Some(t(0)), "the last sync stays shown");
    }

    #[test]
    fn schema_drift_turns_true_with_what_to_do_and_false_when_fixed() {
        let mut st = ClientSyncStatus::default();
        assert_eq!(drift(&mut st, "client_a", &[], 1, t(0)), None, "no drift at first: no event");
        assert_eq!(cond(&st, "SchemaDrift"), ("False", "InSync", t(0)));
        let dropped = Drift::ColumnDropped { table: "chat".into(), column: "summary".into() };
        assert_eq!(drift(&mut st, "client_a", std::slice::from_ref(&dropped), 1, t(10)), Some(true));
        assert_eq!(cond(&st, "SchemaDrift"), ("True", "ColumnDropped", t(10)));
        let msg = &st.condition("SchemaDrift").unwrap().message;
        assert!(msg.contains("table chat, column summary") && msg.contains("DROP COLUMN"), "{msg}");
        // Still drifting, now two kinds: no new event, same transition time.
        let gone = Drift::TableDropped { table: "old".into() };
        assert_eq!(drift(&mut st, "client_a", &[dropped, gone], 1, t(20)), None);
        assert_eq!(cond(&st, "SchemaDrift"), ("True", "SchemaChanged", t(10)));
        // Fixed: False again, with an event.
        assert_eq!(drift(&mut st, "client_a", &[], 1, t(30)), Some(false));
        assert_eq!(cond(&st, "SchemaDrift"), ("False", "InSync", t(30)));
    }
}
