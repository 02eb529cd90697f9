//! owsync: keeps Open WebUI tenants' SQLite databases mirrored into PostgreSQL,
//! declaratively, like a Kubernetes controller.

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
