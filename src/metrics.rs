//! Counters for operators, served at `GET /metrics` in the OpenMetrics text format (what
//! Prometheus scrapes). One registry per process, filled by the rooms that count.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

/// A finished job's first opcode and final status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub opcode: String,
    pub status: String,
}

/// An opcode, for run times.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpcodeLabel {
    pub opcode: String,
}

/// An HTTP answer's status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

type RunTimes = Family<OpcodeLabel, Histogram, fn() -> Histogram>;

fn run_time_histogram() -> Histogram {
    // 1 ms to about 9 hours, by factors of 4.
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

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
    /// Jobs that ended, by first opcode and final status.
    pub jobs_finished: Family<JobLabels, Counter>,
    /// Seconds from a job's start to its end, by first opcode.
    pub job_run_seconds: RunTimes,
    /// Jobs queued, waiting or running now.
    pub jobs_unfinished: Gauge,
    /// RAPI answers by HTTP status code.
    pub http_responses: Family<CodeLabel, Counter>,
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
        jobs_finished: Family::default(),
        job_run_seconds: Family::new_with_constructor(run_time_histogram),
        jobs_unfinished: Gauge::default(),
        http_responses: Family::default(),
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
    registry.register(
        "jobs_finished",
        "Jobs that ended, by first opcode and final status",
        m.jobs_finished.clone(),
    );
    registry.register(
        "job_run_seconds",
        "Seconds from a job's start to its end, by first opcode",
        m.job_run_seconds.clone(),
    );
    registry.register(
        "jobs_unfinished",
        "Jobs queued, waiting or running",
        m.jobs_unfinished.clone(),
    );
    registry.register(
        "http_responses",
        "RAPI answers by HTTP status code",
        m.http_responses.clone(),
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
