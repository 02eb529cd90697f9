//! SQL text helpers. Every identifier that reaches SQL text goes through [`quote_ident`];
//! every value is bound as a parameter.

/// Quotes a PostgreSQL identifier: wraps it in double quotes and doubles any inside.
/// `user` becomes `"user"`, `a"b` becomes `"a""b"`.
pub fn quote_ident(ident: &str) -> String {
    let mut s = String::with_capacity(ident.len() + 2);
    s.push('"');
    for c in ident.chars() {
        if c == '"' {
            s.push('"');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// A connection string with its password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let mut out = url.to_string();
    if let Some(at) = rest[..authority_end].rfind('@')
        && let Some(colon) = rest[..at].find(':')
    {
        let start = scheme_end + 3 + colon + 1;
        out.replace_range(start..scheme_end + 3 + at, "***");
    }
    // password=... in the query string
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let parts: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", parts.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified("client_x", "group"), "\"client_x\".\"group\"");
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("postgres://sync_service:s3cr%40t@db:5432/postgres?sslmode=require"),
            "postgres://sync_service:***@db:5432/postgres?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@h/db?password=x&a=b"), "postgres://u@h/db?password=***&a=b");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
