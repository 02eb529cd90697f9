//! Multi-document YAML loading with errors that name file:line:column and the field path.

use std::fmt;

use serde::Serialize;

use super::types::ClientSync;

/// A `ClientSync` read from a YAML stream, with where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    /// File name (or `-` for stdin) as the user gave it.
    pub file: String,
    /// 1-based line of the document's first line in the file.
    pub line: usize,
    pub doc: ClientSync,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("{}", fmt_yaml(.file, *.line, *.column, .path.as_ref(), .message, .value.as_ref()))]
    Yaml {
        file: String,
        line: usize,
        column: usize,
        /// Field path such as `spec.interval`, when the error is about a field.
        path: Option<String>,
        message: String,
        /// The offending text, when it could be cut out of the input.
        value: Option<String>,
    },
    #[error("{file}: no ClientSync documents found")]
    Empty { file: String },
    #[error(
        "{file}:{line}: unsupported kind {kind}: owsyncctl applies only kind {want} (apiVersion {api})",
        want = super::types::KIND,
        api = super::types::API_VERSION
    )]
    UnsupportedKind { file: String, line: usize, kind: String },
}

/// The `kind` of a document that is not a ClientSync, with the line (in the chunk,
/// 0-based) that names it; `None` when it names none or is not a mapping.
fn other_kind(chunk: &str) -> Option<(usize, String)> {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: Option<String>,
    }
    let kind = serde_saphyr::from_str::<Kind>(chunk).ok()?.kind?;
    if kind == super::types::KIND {
        return None;
    }
    let line = chunk.lines().position(|l| l.starts_with("kind:")).unwrap_or(0);
    Some((line, kind))
}

fn fmt_yaml(
    source: &str,
    line: usize,
    column: usize,
    path: Option<&String>,
    message: &str,
    value: Option<&String>,
) -> String {
    let mut s = format!("{source}:{line}:{column}: ");
    if let Some(p) = path {
        s.push_str(p);
        s.push_str(": ");
    }
    s.push_str(message);
    if let Some(v) = value {
        s.push_str(&format!(" (got {v:?})"));
    }
    s
}

/// Splits a YAML stream at its `---` document markers, keeping each chunk's first line.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let is_marker =
            |m: &str| line.strip_prefix(m).is_some_and(|rest| rest.trim().is_empty() || rest.starts_with([' ', '\t']));
        if is_marker("---") || is_marker("...") {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            // Content after `--- ` on the same line belongs to the new document.
            if let Some(rest) = line.strip_prefix("---") {
                let rest = rest.trim_start();
                if !rest.is_empty() && !rest.starts_with('#') {
                    start = i + 1;
                    cur.push_str(&" ".repeat(line.len() - rest.len()));
                    cur.push_str(rest);
                }
            }
            continue;
        }
        cur.push_str(line);
    }
    docs.push((start, cur));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines().any(|l| {
                let t = l.trim();
                !t.is_empty() && !t.starts_with('#')
            })
        })
        .collect()
}

/// Parses every document of a YAML stream into a `ClientSync`. Stops at the first
/// document that does not parse, naming its line, column and field path.
pub fn parse_documents(source: &str, text: &str) -> Result<Vec<Document>, LoadError> {
    let mut out = Vec::new();
    for (first_line, chunk) in split_documents(text) {
        let mut path = None;
        let res = serde_saphyr::with_deserializer_from_str(&chunk, |de| {
            serde_path_to_error::deserialize::<_, ClientSync>(de).map_err(|e| {
                let p = e.path().to_string();
                if p != "." {
                    path = Some(p);
                }
                e.into_inner()
            })
        });
        match res {
            Ok(doc) => out.push(Document { file: source.to_string(), line: first_line, doc }),
            Err(e) => {
                if let Some((at, kind)) = other_kind(&chunk) {
                    // Another kind's fields would be reported as ClientSync's (`missing field spec`).
                    return Err(LoadError::UnsupportedKind { file: source.to_string(), line: first_line + at, kind });
                }
                let (line, column, value) = match e.location() {
                    Some(loc) => {
                        let span = loc.span();
                        let value = match (span.byte_offset(), span.byte_len()) {
                            (Some(o), Some(l)) if l > 0 => chunk.get(o as usize..(o + l) as usize).map(str::to_string),
                            _ => None,
                        };
                        (loc.line() as usize + first_line - 1, loc.column() as usize, value)
                    }
                    None => (first_line, 1, None),
                };
                let msg = e.without_snippet().to_string();
                let message = match msg.rfind(" at line ") {
                    Some(i) => msg[..i].to_string(),
                    None => msg,
                };
                return Err(LoadError::Yaml { file: source.to_string(), line, column, path, message, value });
            }
        }
    }
    if out.is_empty() {
        return Err(LoadError::Empty { file: source.to_string() });
    }
    Ok(out)
}

/// Renders a value as YAML.
pub fn to_yaml<T: Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}

impl fmt::Display for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{} clientsync/{}", self.file, self.line, self.doc.metadata.name)
    }
}
