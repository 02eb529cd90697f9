//! Reading the repository's own files from tests.

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

pub fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str::<Value>(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

pub fn clientsync_sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let text = std::fs::read_to_string(&p).unwrap();
                let docs = owsync::spec::parse_documents(&p.display().to_string(), &text).unwrap();
                for d in docs {
                    let n = owsync::spec::normalize(&d.doc, "default").unwrap_or_else(|e| panic!("{e:?}"));
                    out.push((n.metadata.name.clone(), n.spec.source.path.clone()));
                }
            }
        }
    }
    out
}
