//! The `ClientSync` resource: types, defaults, validation, YAML loading and JSON Schema.
//! Pure: no I/O happens here (callers read files and pass their text in).

mod load;
mod status;
mod types;
mod validate;

pub use load::{Document, LoadError, parse_documents, to_yaml};
pub use status::*;
pub use types::*;
pub use validate::{
    FieldError, MAX_INTERVAL, MIN_INTERVAL, default_schema, interval_of, is_dns_label, normalize, parse_interval,
    table_selected,
};

/// The JSON Schema of a kind, generated from the Rust types.
pub fn json_schema(kind: &str) -> Option<serde_json::Value> {
    match kind.to_ascii_lowercase().as_str() {
        "clientsync" | "clientsyncs" => {
            let schema = schemars::schema_for!(ClientSync);
            serde_json::to_value(schema).ok()
        }
        _ => None,
    }
}

/// Kinds with a schema, as `(kind, file name under crds-like-schemas/)`.
pub const SCHEMA_FILES: &[(&str, &str)] = &[("ClientSync", "clientsync.schema.json")];

#[cfg(test)]
mod tests;
