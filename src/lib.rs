//! owsync: keeps Open WebUI tenants' SQLite databases mirrored into PostgreSQL,
//! declaratively, like a Kubernetes controller.

pub mod devpg;
pub mod fixtures;
pub mod spec;
