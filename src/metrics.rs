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

/// A RAPI request's method and route (the path template of `/openapi.json`, or `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

/// A lock level (`cluster`, `instance`, `node`...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabel {
    pub level: String,
}

/// A call to a node agent: the agent's address and the call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentCallLabels {
    pub agent: String,
    pub call: String,
}

/// Instances by primary node and state (`running`, `stopped`, `offline`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub node: String,
    pub state: String,
}

/// A pool (`gantry_pool_*`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

/// A lease event (`before_end`, `end`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

/// What woke a wait (`watch`, `poll`, `timeout`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByLabel {
    pub by: &'static str,
}

type RunTimes = Family<OpcodeLabel, Histogram, fn() -> Histogram>;
type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

fn run_time_histogram() -> Histogram {
    // 1 ms to about 9 hours, by factors of 4.
    Histogram::new(exponential_buckets(0.001, 4.0, 12))
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s, by factors of 4: RAPI answers, lock waits, flushes, agent calls.
    Histogram::new(exponential_buckets(0.000_05, 4.0, 10))
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
    /// Seconds from a request's arrival to its answer, by method and route.
    pub http_request_seconds: Latencies<RouteLabels>,
    /// Seconds a job waited for each lock it had to queue for, by level.
    pub lock_wait_seconds: Latencies<LevelLabel>,
    /// Seconds one flush of the database took (one group commit).
    pub flush_seconds: Histogram,
    /// Writers made durable by one flush (the group commit's batch size).
    pub flush_batch: Histogram,
    /// Seconds a call to a node agent took, by agent and call.
    pub agent_call_seconds: Latencies<AgentCallLabels>,
    /// Instances by primary node and state, counted at each scrape.
    pub instances: Family<InstanceLabels, Gauge>,
    /// Pool members ready for a checkout, counted at each scrape.
    pub pool_ready: Family<PoolLabel, Gauge>,
    /// Pool members held by a lease, counted at each scrape.
    pub pool_checked_out: Family<PoolLabel, Gauge>,
    /// Checkouts handed out.
    pub pool_checkouts: Family<PoolLabel, Counter>,
    /// Seconds from a refill's create job submission to its end, by pool.
    pub pool_refill_seconds: Family<PoolLabel, Histogram, fn() -> Histogram>,
    /// Lease events that ran (their first opcode), by event.
    pub lease_events: Family<EventLabel, Counter>,
    /// Times this master became or stopped being the leader (etcd store, `ha.rs`).
    pub leadership_changes: Counter,
    /// 1 while this master leads (executes jobs), else 0; a single master always leads.
    pub leader: Gauge,
    /// Seconds an etcd request of the leadership took (campaign, keep-alive, fenced write).
    pub etcd_request_seconds: Histogram,
    /// Times a wait on a follower looked at the job again, by what woke it (`watch`: its etcd
    /// watch heard of a change; `poll`: none heard for a while; `timeout`).
    pub follower_wait_wakeups: Family<ByLabel, Counter>,
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
        http_request_seconds: Family::new_with_constructor(latency_histogram),
        lock_wait_seconds: Family::new_with_constructor(latency_histogram),
        flush_seconds: latency_histogram(),
        flush_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
        agent_call_seconds: Family::new_with_constructor(latency_histogram),
        instances: Family::default(),
        pool_ready: Family::default(),
        pool_checked_out: Family::default(),
        pool_checkouts: Family::default(),
        pool_refill_seconds: Family::new_with_constructor(run_time_histogram),
        lease_events: Family::default(),
        leadership_changes: Counter::default(),
        leader: Gauge::default(),
        etcd_request_seconds: latency_histogram(),
        follower_wait_wakeups: Family::default(),
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
    registry.register(
        "http_request_seconds",
        "Seconds from a RAPI request's arrival to its answer, by method and route",
        m.http_request_seconds.clone(),
    );
    registry.register(
        "lock_wait_seconds",
        "Seconds a job waited for a lock it had to queue for, by lock level",
        m.lock_wait_seconds.clone(),
    );
    registry.register(
        "flush_seconds",
        "Seconds one database flush (group commit) took",
        m.flush_seconds.clone(),
    );
    registry.register(
        "flush_batch",
        "Durable writes covered by one database flush",
        m.flush_batch.clone(),
    );
    registry.register(
        "agent_call_seconds",
        "Seconds a call to a node agent took, by agent and call",
        m.agent_call_seconds.clone(),
    );
    registry.register(
        "instances",
        "Instances by primary node and state (running, stopped, offline)",
        m.instances.clone(),
    );
    registry.register(
        "pool_ready",
        "Pool members ready for a checkout",
        m.pool_ready.clone(),
    );
    registry.register(
        "pool_checked_out",
        "Pool members held by a lease",
        m.pool_checked_out.clone(),
    );
    registry.register(
        "pool_checkouts",
        "Checkouts handed out, by pool",
        m.pool_checkouts.clone(),
    );
    registry.register(
        "pool_refill_seconds",
        "Seconds from a pool refill's create job submission to its end",
        m.pool_refill_seconds.clone(),
    );
    registry.register(
        "lease_events",
        "Lease events that ran, by event",
        m.lease_events.clone(),
    );
    registry.register(
        "leadership_changes",
        "Times this master became or stopped being the leader",
        m.leadership_changes.clone(),
    );
    registry.register(
        "leader",
        "1 while this master leads (executes jobs), else 0",
        m.leader.clone(),
    );
    registry.register(
        "etcd_request_seconds",
        "Seconds an etcd request of the leadership took",
        m.etcd_request_seconds.clone(),
    );
    registry.register(
        "follower_wait_wakeups",
        "Times a wait on a follower looked at the job again, by what woke it",
        m.follower_wait_wakeups.clone(),
    );
    Metrics { registry, ..m }
});

impl Metrics {
    pub fn follower_wait_wakeup(&self, by: &'static str) {
        self.follower_wait_wakeups
            .get_or_create(&ByLabel { by })
            .inc();
    }

    pub fn lease_event(&self, event: &str) {
        self.lease_events
            .get_or_create(&EventLabel {
                event: event.into(),
            })
            .inc();
    }

    pub fn pool_checkout(&self, pool: &str) {
        self.pool_checkouts
            .get_or_create(&PoolLabel { pool: pool.into() })
            .inc();
    }
}

/// Recounts `gantry_instances` from a configuration (before a scrape is rendered): by primary
/// node and admin state, so a node's row disappears with its last instance.
pub fn count_instances(cfg: &crate::cluster::model::Config) {
    let mut counts: std::collections::HashMap<InstanceLabels, i64> = Default::default();
    for inst in cfg.instances.values() {
        let node = cfg
            .nodes
            .get(&inst.pnode)
            .map_or_else(|| inst.pnode.clone(), |n| n.name.clone());
        let state = match inst.admin_state.as_str() {
            "up" => "running",
            "offline" => "offline",
            _ => "stopped",
        };
        *counts
            .entry(InstanceLabels {
                node,
                state: state.into(),
            })
            .or_default() += 1;
    }
    METRICS.instances.clear();
    for (labels, n) in counts {
        METRICS.instances.get_or_create(&labels).set(n);
    }
    METRICS.pool_ready.clear();
    METRICS.pool_checked_out.clear();
    for pool in cfg.pools.keys() {
        let label = PoolLabel { pool: pool.clone() };
        let ready = crate::cluster::leases::ready_members(cfg, pool).len();
        METRICS.pool_ready.get_or_create(&label).set(ready as i64);
        let out = crate::cluster::leases::checked_out(cfg, pool);
        METRICS
            .pool_checked_out
            .get_or_create(&label)
            .set(out as i64);
    }
}

/// The OpenMetrics text of every metric.
pub fn render() -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &METRICS.registry);
    out
}
