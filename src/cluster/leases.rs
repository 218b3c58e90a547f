//! Leases and pools as stored in the configuration (gantry extensions, issue 17). A lease binds
//! instances to a window and names what happens before and at its end; it may hold back
//! capacity on one node for its window. A pool is an instance template kept at a ready size;
//! its members carry the tag `gantry:pool:<name>`, and a member is checked out when a lease
//! holds it. Everything here is data and arithmetic: the jobs that change it are in
//! `cmdlib::lease`, the engine that submits event and refill jobs in `automation`.

use super::model::{Config, Instance, Params, instance_memory, instance_vcpus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What runs at a lease's `before_end` time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BeforeEndAction {
    None,
    Notify,
    Shutdown,
    Snapshot,
}

/// What runs at a lease's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndAction {
    Remove,
    Shutdown,
}

/// Capacity held back on one node (chosen when the lease is created) while the window is open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub group: String,
    pub node: String,
    /// MiB.
    pub memory: u64,
    pub vcpus: u64,
    /// MiB.
    pub disk: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub name: String,
    pub owner: String,
    /// Seconds since the epoch.
    pub start: f64,
    pub end: f64,
    /// When the before-end action runs (absolute), if any.
    pub before_end: Option<f64>,
    pub before_end_action: BeforeEndAction,
    pub on_end: EndAction,
    pub instances: Vec<String>,
    pub reservation: Option<Reservation>,
    /// The pool a checkout took the instance from.
    pub pool: Option<String>,
    /// Free-form key/value tags (vmpooler's VM tags).
    pub tags: BTreeMap<String, String>,
    /// Events that ran: event name → the job that ran it.
    pub done: BTreeMap<String, u64>,
    pub ctime: f64,
}

pub const BEFORE_END: &str = "before_end";
pub const END: &str = "end";

impl Lease {
    /// The events due at `now`, in the order they must run. The end waits for a pending
    /// before-end event unless `before_end_submitted` says its job exists already.
    pub fn due(&self, now: f64, before_end_submitted: bool) -> Vec<&'static str> {
        let mut due = vec![];
        let wants_before = self.before_end.is_some()
            && self.before_end_action != BeforeEndAction::None
            && !self.done.contains_key(BEFORE_END);
        if wants_before && self.before_end.is_some_and(|t| now >= t) {
            due.push(BEFORE_END);
        }
        if now >= self.end && (!wants_before || before_end_submitted || !due.is_empty()) {
            due.push(END);
        }
        due
    }

    /// The time an event is scheduled for (part of its job's idempotency key, so an event
    /// moved by an extension is a new event).
    pub fn event_time(&self, event: &str) -> f64 {
        match event {
            BEFORE_END => self.before_end.unwrap_or(self.end),
            _ => self.end,
        }
    }

    fn holds_window(&self, now: f64) -> bool {
        self.start <= now && now < self.end
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A pool's own record; its members are found by tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub name: String,
    pub size: u64,
    /// An instance create body (`/2/instances` version 1) without the name.
    pub template: Params,
    /// Default checkout lifetime, seconds.
    pub lifetime: u64,
    /// Checkouts handed out so far.
    pub checkouts: u64,
    /// On-demand requests waiting for or holding instances of this pool.
    pub requests: BTreeMap<String, PoolRequest>,
    pub ctime: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolRequest {
    pub id: String,
    pub requester: String,
    pub count: u64,
    pub lifetime: Option<u64>,
    /// Instances handed to the request so far.
    pub granted: Vec<String>,
    pub ctime: f64,
}

impl PoolRequest {
    pub fn missing(&self) -> u64 {
        self.count.saturating_sub(self.granted.len() as u64)
    }
}

/// vmpooler's default lifetime: 12 hours.
pub const DEFAULT_LIFETIME: u64 = 12 * 3600;

pub fn pool_tag(pool: &str) -> String {
    format!("gantry:pool:{pool}")
}

pub fn user_tag(user: &str) -> String {
    format!("gantry:user:{user}")
}

/// The reason-trail source of a lease's jobs; a create carrying it may use the lease's reservation.
pub fn lease_source(lease: &str) -> String {
    format!("gantry:lease:{lease}")
}

/// The instances some lease holds.
fn leased(cfg: &Config) -> std::collections::HashSet<&str> {
    cfg.leases
        .values()
        .flat_map(|l| l.instances.iter().map(String::as_str))
        .collect()
}

/// The lease holding an instance, if any.
pub fn lease_of<'a>(cfg: &'a Config, instance: &str) -> Option<&'a Lease> {
    cfg.leases
        .values()
        .find(|l| l.instances.iter().any(|i| i == instance))
}

/// A pool's members that no lease holds and that are up: what a checkout can hand out now,
/// oldest first.
pub fn ready_members<'a>(cfg: &'a Config, pool: &str) -> Vec<&'a Instance> {
    let tag = pool_tag(pool);
    let leased = leased(cfg);
    let mut ready: Vec<&Instance> = cfg
        .instances
        .values()
        .filter(|i| i.meta.tags.contains(&tag) && !i.forthcoming)
        .filter(|i| i.admin_state == super::model::AdminState::Up)
        .filter(|i| !leased.contains(i.name.as_str()))
        .collect();
    ready.sort_by(|a, b| {
        a.meta
            .ctime
            .total_cmp(&b.meta.ctime)
            .then(a.name.cmp(&b.name))
    });
    ready
}

/// A pool as the API shows it: its record with live counts.
pub fn pool_json(cfg: &Config, pool: &Pool) -> serde_json::Value {
    let mut v = serde_json::to_value(pool).unwrap_or_default();
    v["ready"] = serde_json::json!(ready_members(cfg, &pool.name).len());
    v["checked_out"] = serde_json::json!(checked_out(cfg, &pool.name));
    v
}

/// A pool's members a lease holds (checked out).
pub fn checked_out(cfg: &Config, pool: &str) -> usize {
    let tag = pool_tag(pool);
    let leased = leased(cfg);
    cfg.instances
        .values()
        .filter(|i| i.meta.tags.contains(&tag) && leased.contains(i.name.as_str()))
        .count()
}

/// Capacity on `node` that creations outside lease `own` may not take at `now`: every open
/// reservation on the node less what its own instances there already use.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct HeldBack {
    pub memory: u64,
    pub vcpus: u64,
    pub disk: u64,
}

pub fn held_back(cfg: &Config, node: &str, now: f64, own: Option<&str>) -> HeldBack {
    let mut held = HeldBack::default();
    for lease in cfg.leases.values() {
        let Some(r) = &lease.reservation else {
            continue;
        };
        if r.node != node || !lease.holds_window(now) || own == Some(lease.name.as_str()) {
            continue;
        }
        let used = lease
            .instances
            .iter()
            .filter_map(|name| cfg.instances.get(name))
            .filter(|i| i.pnode == node);
        let (mut mem, mut cpu, mut disk) = (0u64, 0u64, 0u64);
        for inst in used {
            mem += instance_memory(cfg, inst);
            cpu += instance_vcpus(cfg, inst);
            disk += inst.disks.iter().map(|d| d.size).sum::<u64>();
        }
        held.memory += r.memory.saturating_sub(mem);
        held.vcpus += r.vcpus.saturating_sub(cpu);
        held.disk += r.disk.saturating_sub(disk);
    }
    held
}

/// The most other leases hold back on `node` at any moment of the window `[start, end)`: what a
/// new reservation for that window must leave room for. Holdings change only when a lease
/// starts or ends, so the window's start and every other lease's start inside it are the
/// moments to look at.
pub fn held_back_during(cfg: &Config, node: &str, start: f64, end: f64) -> HeldBack {
    let mut moments = vec![start];
    moments.extend(
        cfg.leases
            .values()
            .map(|l| l.start)
            .filter(|t| *t > start && *t < end),
    );
    moments
        .into_iter()
        .map(|t| held_back(cfg, node, t, None))
        .fold(HeldBack::default(), |a, b| HeldBack {
            memory: a.memory.max(b.memory),
            vcpus: a.vcpus.max(b.vcpus),
            disk: a.disk.max(b.disk),
        })
}

/// The name after `source` (`gantry:lease:`, `gantry:pool:`) in a reason trail's first entry
/// from that source: which lease or pool a job is for.
fn named_in_reason(reason: Option<&serde_json::Value>, source: &str) -> Option<String> {
    reason?.as_array()?.iter().find_map(|entry| {
        entry
            .get(0)?
            .as_str()?
            .strip_prefix(source)
            .map(String::from)
    })
}

/// The lease a reason trail names (`gantry:lease:<name>` as an entry's source).
pub fn lease_in_reason(reason: Option<&serde_json::Value>) -> Option<String> {
    named_in_reason(reason, "gantry:lease:")
}

/// The pool a reason trail names (`gantry:pool:<name>`): a refill or a grant of that pool.
pub fn pool_in_reason(reason: Option<&serde_json::Value>) -> Option<String> {
    named_in_reason(reason, "gantry:pool:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(before: Option<f64>, action: BeforeEndAction) -> Lease {
        Lease {
            name: "l".into(),
            owner: "u".into(),
            start: 0.0,
            end: 100.0,
            before_end: before,
            before_end_action: action,
            on_end: EndAction::Remove,
            instances: vec![],
            reservation: None,
            pool: None,
            tags: BTreeMap::new(),
            done: BTreeMap::new(),
            ctime: 0.0,
        }
    }

    #[test]
    fn before_end_runs_first_and_end_waits_for_it() {
        let l = lease(Some(90.0), BeforeEndAction::Shutdown);
        assert!(l.due(50.0, false).is_empty());
        assert_eq!(l.due(95.0, false), vec![BEFORE_END]);
        // Both due at once: in order.
        assert_eq!(l.due(100.0, false), vec![BEFORE_END, END]);
        let mut ran = l.clone();
        ran.done.insert(BEFORE_END.into(), 7);
        assert_eq!(ran.due(100.0, false), vec![END]);
        // Its job exists (submitted, not yet run): the end may follow.
        assert_eq!(l.due(100.0, true), vec![BEFORE_END, END]);
    }

    #[test]
    fn no_before_end_event_without_an_action() {
        let l = lease(Some(90.0), BeforeEndAction::None);
        assert!(l.due(95.0, false).is_empty());
        assert_eq!(l.due(100.0, false), vec![END]);
    }

    #[test]
    fn a_later_reservation_inside_the_window_counts() {
        let mut cfg = crate::cluster::initial_config(&crate::cluster::InitOptions::default());
        let node = cfg.nodes.keys().next().unwrap().clone();
        let mut later = lease(None, BeforeEndAction::None);
        later.name = "later".into();
        later.start = 50.0;
        later.reservation = Some(Reservation {
            group: "default".into(),
            node: node.clone(),
            memory: 1024,
            vcpus: 1,
            disk: 0,
        });
        cfg.leases.insert("later".into(), later);
        // At 10 nothing is held; during [10, 60) the later lease holds 1024 from 50 on.
        assert_eq!(held_back(&cfg, &node, 10.0, None).memory, 0);
        assert_eq!(held_back_during(&cfg, &node, 10.0, 60.0).memory, 1024);
        assert_eq!(held_back_during(&cfg, &node, 10.0, 40.0).memory, 0);
        assert_eq!(held_back_during(&cfg, &node, 100.0, 200.0).memory, 0);
    }

    #[test]
    fn reason_names_the_lease() {
        let r = serde_json::json!([["gnt:client", "x", 1], ["gantry:lease:night", "end", 2]]);
        assert_eq!(lease_in_reason(Some(&r)).as_deref(), Some("night"));
        assert_eq!(lease_in_reason(None), None);
    }
}
