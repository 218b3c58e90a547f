//! Counters for operators, served at `GET /metrics` in the OpenMetrics text format (what
//! Prometheus scrapes). One registry per process, filled by the rooms that count.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

pub struct Metrics {
    registry: Registry,
    /// Keyed submissions answered with the job an earlier request created.
    pub idempotent_hits: Counter,
    /// Keys presented with a different request (answered 422).
    pub idempotent_conflicts: Counter,
    /// Jobs created.
    pub jobs_submitted: Counter,
    /// Events the job event hub published.
    pub events_published: Counter,
    /// Events written to followers of the event stream, all followers together.
    pub events_sent: Counter,
    /// Followers of the event stream connected now.
    pub event_followers: Gauge,
    /// Followers dropped for falling too far behind.
    pub event_follower_drops: Counter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("gantry");
    let m = Metrics {
        registry: Registry::default(),
        idempotent_hits: Counter::default(),
        idempotent_conflicts: Counter::default(),
        jobs_submitted: Counter::default(),
        events_published: Counter::default(),
        events_sent: Counter::default(),
        event_followers: Gauge::default(),
        event_follower_drops: Counter::default(),
    };
    registry.register(
        "idempotent_hits",
        "Keyed submissions answered with an earlier request's job",
        m.idempotent_hits.clone(),
    );
    registry.register(
        "idempotent_conflicts",
        "Idempotency keys presented with a different request",
        m.idempotent_conflicts.clone(),
    );
    registry.register("jobs_submitted", "Jobs created", m.jobs_submitted.clone());
    registry.register(
        "events_published",
        "Job events published to the event stream",
        m.events_published.clone(),
    );
    registry.register(
        "events_sent",
        "Job events written to event stream followers",
        m.events_sent.clone(),
    );
    registry.register(
        "event_followers",
        "Event stream followers connected",
        m.event_followers.clone(),
    );
    registry.register(
        "event_follower_drops",
        "Event stream followers dropped for falling behind",
        m.event_follower_drops.clone(),
    );
    Metrics { registry, ..m }
});

/// The OpenMetrics text of every metric.
pub fn render() -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &METRICS.registry);
    out
}
