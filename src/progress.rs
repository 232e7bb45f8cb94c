//! Progress and log lines, always on stderr (stdout carries results only).
//!
//! On a terminal a progress bar shows items done, rate and ETA; when stderr is a file or a
//! pipe (CI, batch schedulers) the same facts come as a line every few seconds instead.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Writes a log line to stderr unless `quiet`.
pub fn info(quiet: bool, message: &str) {
    if !quiet {
        eprintln!("[cloakbench] {message}");
    }
}

/// Counts items done for one stage.
pub struct Progress {
    stage: String,
    unit: String,
    total: u64,
    done: u64,
    started: Instant,
    last_line: Instant,
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    pub fn new(stage: &str, total: u64, unit: &str, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            let template = format!("{{prefix}} {{bar:30}} {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}}");
            bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
            bar.set_prefix(stage.to_owned());
            bar
        });
        let now = Instant::now();
        Progress { stage: stage.into(), unit: unit.into(), total, done: 0, started: now, last_line: now, bar, quiet }
    }

    /// Records `n` more items done.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if !self.quiet && self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            eprintln!("[cloakbench] {}", self.line());
        }
    }

    /// Items per second so far.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    fn line(&self) -> String {
        let rate = self.rate();
        let eta = (self.total.saturating_sub(self.done)) as f64 / rate.max(1e-9);
        format!("{}: {}/{} {} ({}, ETA {})", self.stage, self.done, self.total, self.unit, pace(rate), duration(eta))
    }

    /// Ends the display with a summary line.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if !self.quiet {
            let secs = self.started.elapsed().as_secs_f64();
            eprintln!("[cloakbench] {}: {} {} in {secs:.1} s ({})", self.stage, self.done, self.unit, pace(self.rate()));
        }
    }
}

/// A rate as people read it: items per second when there are several a second, seconds per
/// item when each takes longer (a LowKey picture takes 5-20 s on CPU, which "0.1/s" hides).
fn pace(items_per_s: f64) -> String {
    if items_per_s >= 1.0 || items_per_s <= 0.0 { format!("{items_per_s:.1}/s") } else { format!("{:.1} s each", 1.0 / items_per_s) }
}

/// Seconds as hours and minutes once they run past a few minutes.
fn duration(secs: f64) -> String {
    let secs = secs.round() as u64;
    let minutes = (secs + 30) / 60;
    match secs {
        0..=299 => format!("{secs} s"),
        300..=5999 => format!("{minutes} min"),
        _ => format!("{} h {:02} min", minutes / 60, minutes % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_items_show_seconds_each_and_fast_ones_a_rate() {
        assert_eq!(pace(12.34), "12.3/s");
        assert_eq!(pace(1.0), "1.0/s");
        assert_eq!(pace(0.046), "21.7 s each");
        assert_eq!(pace(0.0), "0.0/s");
    }

    #[test]
    fn long_waits_read_in_minutes_and_hours() {
        assert_eq!(duration(42.4), "42 s");
        assert_eq!(duration(299.0), "299 s");
        assert_eq!(duration(330.0), "6 min");
        assert_eq!(duration(11_743.0), "3 h 16 min");
        assert_eq!(duration(7_195.0), "2 h 00 min");
    }
}
