//! Milliseconds spent in each step of a piece of a sync, for the debug log.

use std::time::Instant;

/// The steps of one piece of work and how long each took.
pub(super) struct Phases {
    last: Instant,
    done: Vec<(&'static str, f64)>,
}

impl Phases {
    pub(super) fn new() -> Phases {
        Phases { last: Instant::now(), done: Vec::new() }
    }

    pub(super) fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.done.push((step, (now - self.last).as_secs_f64() * 1e3));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, ms)) in self.done.iter().enumerate() {
            write!(f, "{}{step} {ms:.1}", if i > 0 { ", " } else { "" })?;
        }
        Ok(())
    }
}
