//! owsync: keeps Open WebUI tenants' SQLite databases mirrored into PostgreSQL,
//! declaratively, like a Kubernetes controller.
//!
//! # The data flow
//!
//! ```text
//! ClientSync YAML --cli::apply--> spec (types, validation; no I/O) --> store::specs (a row)
//!        owsyncd: controller::election (lease, epoch) --> controller::leader (one runner
//!        per tenant) --> controller::runner (slots, per-tenant lock, lease-lost stop)
//!        --> controller::reconcile --> sync::drift::sync_rechecking --> sync::sync_tenant;
//!        controller::policy (requeue)
//!            sync: guard (hold?) --> source (walk pages, read slices) --> target (COPY,
//!                  upsert, tombstones) --> store (table_state, quarantine) per table, fenced
//!        controller::record --> store::status, store::jobs (status, runs, events)
//! recovery: restore (mirror -> SQLite file), cli::restore (adopt, in place), cli::evacuate
//! ```
//!
//! # The guarantees and where they live
//!
//! - **A stale leader writes nothing**: every `sync_metadata` write that must be fenced
//!   goes through [`store::FencedTx`], whose commit checks the lease epoch under the lease
//!   row's lock; the epoch grows with each term ([`store::lease`]).
//! - **The mirror is every tenant's backup**: [`sync::guard`] holds a sync that would
//!   tombstone too much or that finds another database at the path, before anything is
//!   written, and each table's transaction stops at its tombstone limit; tombstoned rows
//!   stay restorable ([`restore`]).
//! - **Nothing lost, nothing altered**: values go through `target::encode` (exact
//!   round trip) or into the quarantine with a reason ([`store::quarantine`]); [`verify`]
//!   proves a mirror equals its source.
//! - **Open WebUI is never slowed down**: [`source`] opens read-only, reads in short keyset
//!   slices and never checkpoints; the page walk reads pages without a lock.
//! - **Cost follows change**: [`source::pages`] compares page states with the recorded
//!   ones, so a sync re-reads only the rows of changed pages; an unchanged source is
//!   skipped by its fingerprint.
//! - **A host's credentials reach only that host**: per-cluster login roles and row-level
//!   security in the migrations ([`store::migrate`], [`store::roles`]).

pub mod api;
pub mod cli;
pub mod controller;
pub mod daemon_args;
pub mod devpg;
pub mod fixtures;
pub mod metrics;
pub mod restore;
pub mod source;
pub mod spec;
pub mod sql;
pub mod store;
pub mod sync;
pub mod target;
pub mod verify;
