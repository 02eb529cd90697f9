//! owsyncctl: the operator's command line. A thin main over `owsync::cli`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("OWSYNC_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    owsync::cli::run(owsync::cli::Cli::parse()).await
}
