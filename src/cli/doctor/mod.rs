//! `owsyncctl doctor`: checks, step by step, that a database URL is usable by owsyncd
//! (the seed's deploy script did this by hand): the endpoint (Supabase direct connection,
//! session or transaction pooler), DNS over IPv6 and IPv4, TCP, the connection itself,
//! TLS and the server version, session semantics, the schema version, and the role's
//! privileges (missing ones fail, excess ones warn). Exit 0 usable, 1 not. The URL is
//! only ever printed redacted.

mod budget;
mod net;
mod role;

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::common::{CliError, Global, Output};
use crate::sql::redact_url;
use crate::store;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// How long to wait for DNS, for each TCP attempt and for the connection.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
            Status::Skip => "-",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub status: Status,
    pub message: String,
}

/// The checks so far, in order.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, check: &'static str, status: Status, message: impl Into<String>) {
        self.checks.push(Check { check, status, message: message.into() });
    }
    pub fn ok(&mut self, check: &'static str, message: impl Into<String>) {
        self.push(check, Status::Ok, message);
    }
    pub fn warn(&mut self, check: &'static str, message: impl Into<String>) {
        self.push(check, Status::Warn, message);
    }
    pub fn fail(&mut self, check: &'static str, message: impl Into<String>) {
        self.push(check, Status::Fail, message);
    }
    pub fn skip(&mut self, check: &'static str, message: impl Into<String>) {
        self.push(check, Status::Skip, message);
    }
    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }
    pub fn usable(&self) -> bool {
        self.count(Status::Fail) == 0
    }
    pub fn verdict(&self) -> String {
        let (fails, warns) = (self.count(Status::Fail), self.count(Status::Warn));
        if let Some(first) = self.checks.iter().find(|c| c.status == Status::Fail) {
            return format!(
                "NOT usable by owsyncd: {fails} check(s) failed, {warns} warning(s); first: {}: {}",
                first.check, first.message
            );
        }
        if warns > 0 {
            return format!("usable by owsyncd, with {warns} warning(s)");
        }
        "usable by owsyncd".to_string()
    }
}

#[derive(Serialize)]
struct Answer<'a> {
    url: &'a str,
    usable: bool,
    verdict: String,
    checks: &'a [Check],
}

pub async fn doctor(g: &Global, a: DoctorArgs) -> Result<ExitCode, CliError> {
    let url = g.database_url()?;
    let shown = redact_url(&url);
    let mut r = Report::default();
    run(&mut r, &url, &g.cluster, a.timeout).await;
    let usable = r.usable();
    match g.output {
        Output::Json | Output::Yaml => {
            let answer = Answer { url: &shown, usable, verdict: r.verdict(), checks: &r.checks };
            let text = if g.output == Output::Json {
                serde_json::to_string_pretty(&answer).map_err(|e| CliError::msg(e.to_string()))?
            } else {
                serde_saphyr::to_string(&answer).map_err(|e| CliError::msg(e.to_string()))?
            };
            println!("{text}");
        }
        Output::Table | Output::Wide => {
            println!("owsyncctl doctor {shown}");
            for c in &r.checks {
                println!("{} {}: {}", c.status.mark(), c.check, c.message);
            }
            println!("{} verdict: {}", if usable { "✓" } else { "✗" }, r.verdict());
        }
    }
    Ok(if usable { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Every check, in order; a failure skips only what depends on it.
pub async fn run(r: &mut Report, url: &str, cluster: &str, timeout: Duration) {
    let opts = match store::connect_options(url, "owsyncctl-doctor") {
        Ok(o) => o,
        Err(store::StoreError::Connect { url: shown, source }) => {
            r.fail("url", format!("{shown} is not a usable PostgreSQL URL: {source}"));
            return;
        }
        Err(e) => {
            r.fail("url", e.to_string());
            return;
        }
    };
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
        r.fail("url", "the URL must start with postgres:// or postgresql://");
        return;
    }
    net::endpoint(r, url, &opts);
    net::resolve(r, &opts, timeout).await;
    let Some(mut conn) = net::connect(r, &opts, timeout).await else {
        r.skip("checks", "server, session, schema and privilege checks need a connection");
        return;
    };
    net::server(r, &mut conn, &opts).await;
    budget::connections(r, &mut conn).await;
    if !net::session_pooling(r, &opts, timeout).await {
        r.skip("checks", "schema and privilege checks are not reliable through a transaction-mode pooler");
        let _ = sqlx::Connection::close(conn).await;
        return;
    }
    if role::migrations(r, &mut conn).await {
        role::privileges(r, &mut conn, cluster).await;
    } else {
        r.skip("privileges", "need the sync_metadata schema (run `owsyncctl migrate` first)");
    }
    let _ = sqlx::Connection::close(conn).await;
}
