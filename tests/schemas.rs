//! The checked-in JSON Schemas are what the Rust types generate, and every example
//! manifest is valid.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn checked_in_schemas_are_current() {
    for (kind, file) in owsync::spec::SCHEMA_FILES {
        let path = root().join("crds-like-schemas").join(file);
        let want = serde_json::to_string_pretty(&owsync::spec::json_schema(kind).expect("schema")).unwrap() + "\n";
        if std::env::var_os("OWSYNC_UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is stale: regenerate it with `OWSYNC_UPDATE_SCHEMAS=1 cargo test --test schemas` (or `owsyncctl schema {kind} > {}`)",
            path.display(),
            path.display()
        );
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn example_manifests_are_valid() {
    let mut files = Vec::new();
    yaml_files(&root().join("manifests"), &mut files);
    let mut clientsyncs = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        if !text.contains("kind: ClientSync") {
            continue; // monitoring rules and the like
        }
        let docs = owsync::spec::parse_documents(&f.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"));
        for d in docs {
            owsync::spec::normalize(&d.doc, "example-host")
                .unwrap_or_else(|e| panic!("{}:{}: {:?}", d.file, d.line, e));
            clientsyncs += 1;
        }
    }
    assert!(clientsyncs >= 5, "expected the example manifests, found {clientsyncs} ClientSyncs");
}
