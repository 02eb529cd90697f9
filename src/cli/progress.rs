//! Progress of `owsyncctl sync NAME --once`: a bar on a terminal (bytes read of the
//! source's size, rows, tables done / total, rate, ETA), a line per table otherwise,
//! nothing with `-q`. All of it on stderr, so stdout keeps the summary table.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::spec::{ClientSyncSpec, table_selected};
use crate::sync::progress::Progress;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Lines,
}

impl Mode {
    /// A bar when stderr is a terminal, lines otherwise; `None` when quiet.
    pub fn detect(quiet: bool) -> Option<Mode> {
        match (quiet, std::io::stderr().is_terminal()) {
            (true, _) => None,
            (false, true) => Some(Mode::Bar),
            (false, false) => Some(Mode::Lines),
        }
    }
}

#[derive(Default)]
struct Counts {
    tables_done: usize,
    rows: u64,
    current: String,
}

pub struct CliProgress {
    mode: Mode,
    bar: ProgressBar,
    tables: usize,
    counts: Mutex<Counts>,
}

/// The source's size (database file and WAL): the bar's length, a cheap estimate of what
/// a full read covers.
fn source_size(path: &Path) -> u64 {
    let wal = crate::source::companion(path, "-wal");
    [path, wal.as_path()].iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum()
}

/// How many tables the sync will copy (a quick schema read; 0 when it cannot tell).
fn selected_tables(spec: &ClientSyncSpec) -> usize {
    let path = Path::new(&spec.source.path);
    crate::source::Source::open(path)
        .and_then(|s| crate::source::discover(&s))
        .map_or(0, |ts| ts.iter().filter(|t| table_selected(&spec.tables, &t.name)).count())
}

impl CliProgress {
    pub fn new(mode: Mode, spec: &ClientSyncSpec) -> CliProgress {
        let size = source_size(Path::new(&spec.source.path));
        let tables = selected_tables(spec);
        let bar = match mode {
            Mode::Bar => {
                let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{spinner} {elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            }
            Mode::Lines => ProgressBar::hidden(),
        };
        CliProgress { mode, bar, tables, counts: Mutex::new(Counts::default()) }
    }

    fn message(&self, c: &Counts) -> String {
        format!("tables {}/{} · {} rows · {}", c.tables_done, self.tables, c.rows, c.current)
    }

    /// Removes the bar (before the summary is printed).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for CliProgress {
    fn table_started(&self, table: &str) {
        if let Ok(mut c) = self.counts.lock() {
            c.current = table.to_string();
            self.bar.set_message(self.message(&c));
        }
    }

    fn slice(&self, _table: &str, rows: u64, bytes: u64) {
        self.bar.inc(bytes);
        if let Ok(mut c) = self.counts.lock() {
            c.rows += rows;
            self.bar.set_message(self.message(&c));
        }
    }

    fn table_done(&self, table: &str, rows: i64, error: Option<&str>) {
        let Ok(mut c) = self.counts.lock() else { return };
        c.tables_done += 1;
        match self.mode {
            Mode::Bar => self.bar.set_message(self.message(&c)),
            Mode::Lines => match error {
                None => eprintln!("table {table}: {rows} rows ({}/{} tables)", c.tables_done, self.tables),
                Some(e) => eprintln!("table {table}: failed: {e} ({}/{} tables)", c.tables_done, self.tables),
            },
        }
    }
}

/// A bar of tenants done, with ETA and the message (bytes restored), on a terminal;
/// hidden otherwise (the caller prints a line per tenant).
pub fn evacuation_bar(tenants: u64) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(tenants), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} tenants ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
