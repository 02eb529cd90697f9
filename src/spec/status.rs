//! The controller-owned half of the resource: status, conditions (pure types).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    #[default]
    Pending,
    Syncing,
    Synced,
    Degraded,
    Suspended,
    Failed,
    /// The deletion guard holds the tenant's syncs (condition `DeletionsHeld`): the mirror
    /// is kept as it was until the source comes back or an operator approves or restores.
    Held,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Syncing => "Syncing",
            Phase::Synced => "Synced",
            Phase::Degraded => "Degraded",
            Phase::Suspended => "Suspended",
            Phase::Failed => "Failed",
            Phase::Held => "Held",
        }
    }

    pub fn parse(s: &str) -> Phase {
        match s {
            "Syncing" => Phase::Syncing,
            "Synced" => Phase::Synced,
            "Degraded" => Phase::Degraded,
            "Suspended" => Phase::Suspended,
            "Failed" => Phase::Failed,
            "Held" => Phase::Held,
            _ => Phase::Pending,
        }
    }
}

/// A Kubernetes-style condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub last_transition_time: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TableStatus {
    pub rows: i64,
    #[serde(default)]
    pub quarantined: i64,
    /// Rows changed both in the source and in PostgreSQL, counted over the tenant's syncs
    /// (each one is in `sync_metadata.conflict_log`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub conflicts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSyncStatus {
    pub observed_generation: i64,
    pub phase: Phase,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sync_time: Option<DateTime<Utc>>,
    /// Humantime duration of the last sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_duration: Option<String>,
    #[serde(default)]
    pub consecutive_failures: i32,
    #[serde(default)]
    pub tables: BTreeMap<String, TableStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl ClientSyncStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Sets a condition; `lastTransitionTime` changes only when its status changes.
    pub fn set_condition(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: &str,
        generation: i64,
        now: DateTime<Utc>,
    ) {
        let status = if status { "True" } else { "False" }.to_string();
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now;
                }
                c.status = status;
                c.reason = reason.to_string();
                c.message = message.to_string();
                c.observed_generation = Some(generation);
            }
            None => self.conditions.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message: message.to_string(),
                observed_generation: Some(generation),
                last_transition_time: now,
            }),
        }
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &i64) -> bool {
    *n == 0
}
