//! S3 requests retried after a transient fault (a 5xx, `SlowDown`, a reset connection, a body
//! cut short): object_store retries them itself and says so in a `tracing` event; this minimal
//! subscriber logs each one on stderr and counts them, so a run can say how many it needed.
//! The events name the request's URL (bucket and key) and never a credential, which travels in
//! headers.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

static RETRIED: AtomicU64 = AtomicU64::new(0);

/// How many S3 requests this process retried so far.
pub fn count() -> u64 {
    RETRIED.load(Ordering::Relaxed)
}

/// Starts logging retries (once per process; a no-op if another subscriber is installed).
pub fn log_them() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(RetryLog);
    });
}

struct RetryLog;

impl Subscriber for RetryLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("object_store") && *metadata.level() <= Level::INFO
    }

    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let text = message.0.to_lowercase();
        if text.contains("backing off") || text.contains("retry") {
            let n = RETRIED.fetch_add(1, Ordering::Relaxed) + 1;
            eprintln!("[cloakbench] S3 retry {n}: {}", message.0);
        }
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
