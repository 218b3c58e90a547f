//! What the engine does by itself (issue 17): lease events at their time and pool refills. Both
//! only look at the configuration and submit ordinary jobs, so every effect is a job that is
//! durable, visible in `/2/jobs` and survives a crash like any other.
//!
//! **Invariant:** an event's job is submitted with an idempotency key naming the lease, the
//! event and its time, so a restart that finds the event not yet recorded gets the job the
//! first submission created instead of a second one: each event runs once.

mod leases;
mod pools;

use crate::jobqueue::JobQueue;
use std::time::Duration;

/// How often the loops look at the configuration.
const TICK: Duration = Duration::from_millis(500);

/// Starts the lease and pool loops; they run until the process ends.
pub fn start(queue: JobQueue) {
    let mut lease_engine = leases::LeaseEngine::new(queue.clone());
    let mut pool_engine = pools::PoolEngine::new(queue);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            lease_engine.tick().await;
            pool_engine.tick().await;
        }
    });
}

/// Says a repeated refusal (a drained or full queue refuses every tick) once a minute, not
/// twice a second.
#[derive(Default)]
struct Quiet {
    said: std::collections::HashMap<String, std::time::Instant>,
}

impl Quiet {
    fn warn(&mut self, what: &str, message: std::fmt::Arguments) {
        let now = std::time::Instant::now();
        let due = self
            .said
            .get(what)
            .is_none_or(|t| now.duration_since(*t) >= Duration::from_secs(60));
        if due {
            self.said.insert(what.to_string(), now);
            tracing::warn!("{what}: {message}");
        }
    }
}

/// A reason-trail entry `[source, text, now in ns]`.
fn reason(source: &str, text: &str) -> serde_json::Value {
    let ns = crate::jobqueue::job::Timestamp::now().as_nanos() as u64;
    serde_json::json!([[source, text, ns]])
}
