//! Progress and log lines, always on stderr (stdout carries results only).
//!
//! On a terminal a progress bar shows items done, rate and ETA; when stderr is a file or a
//! pipe (CI, batch schedulers) the same facts come as a line every few seconds instead.

use std::collections::VecDeque;
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
    recent: RecentPace,
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
        Progress { stage: stage.into(), unit: unit.into(), total, done: 0, started: now, last_line: now, recent: RecentPace::default(), bar, quiet }
    }

    /// Records `n` more items done.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        } else if !self.quiet && self.last_line.elapsed() >= Duration::from_secs(5) {
            self.last_line = Instant::now();
            let rate = self.recent.record(self.started.elapsed(), self.done);
            eprintln!("[cloakbench] {}", self.line(rate));
        }
    }

    /// Items per second so far.
    pub fn rate(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// A progress line at `rate` items per second.
    fn line(&self, rate: f64) -> String {
        let left = self.total.saturating_sub(self.done);
        let eta = if rate > 0.0 { duration(left as f64 / rate) } else { "unknown".into() };
        format!("{}: {}/{} {} ({}, ETA {eta})", self.stage, self.done, self.total, self.unit, pace(rate))
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

/// How far back the pace of a progress line looks: long enough to smooth over a few slow
/// items, short enough that the ETA follows a machine that got busier or freer. (The rate since
/// the stage began kept a LowKey cloak's ETA at 3 hours for minutes after a build beside it
/// ended, when the pace had gone back to one picture in 6 s: 50 minutes.)
const PACE_WINDOW: Duration = Duration::from_secs(180);

/// Items done at the moments progress lines were written, back to one at least
/// [`PACE_WINDOW`] old.
struct RecentPace {
    samples: VecDeque<(Duration, u64)>,
}

impl Default for RecentPace {
    fn default() -> RecentPace {
        RecentPace { samples: VecDeque::from([(Duration::ZERO, 0)]) }
    }
}

impl RecentPace {
    /// Records `done` items at `at` (since the start) and returns the items per second over
    /// the window.
    fn record(&mut self, at: Duration, done: u64) -> f64 {
        self.samples.push_back((at, done));
        while self.samples.len() > 2 && at.saturating_sub(self.samples[1].0) >= PACE_WINDOW {
            self.samples.pop_front();
        }
        let (since, done_then) = self.samples[0];
        done.saturating_sub(done_then) as f64 / at.saturating_sub(since).as_secs_f64().max(1e-9)
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
    fn the_pace_follows_the_last_minutes_not_the_whole_stage() {
        let mut recent = RecentPace::default();
        let mut rate = 0.0;
        // 10 minutes at 1 item/s, then 5 minutes at one item every 10 s, a line every 5 s.
        for t in (5..=900).step_by(5) {
            let done = if t <= 600 { t } else { 600 + (t - 600) / 10 };
            rate = recent.record(Duration::from_secs(t), done);
        }
        assert!((0.09..=0.12).contains(&rate), "recent pace {rate}, where the whole stage's is 0.7/s");
        assert!(recent.samples.len() <= 40, "only the window is kept: {}", recent.samples.len());
        let mut fresh = RecentPace::default();
        assert_eq!(fresh.record(Duration::from_secs(10), 5), 0.5, "before the window fills, the pace since the start");
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
