//! Lease events: at a lease's before-end time and at its end, one job each. The job's first
//! opcode (`OP_GANTRY_LEASE_EVENT`) records the event in the lease; the others are the action.

use super::reason;
use crate::cluster::leases::{self, BEFORE_END, BeforeEndAction, END, EndAction, Lease};
use crate::cluster::model::Config;
use crate::jobqueue::JobQueue;
use crate::jobqueue::idempotency::Idempotency;
use crate::jobqueue::job::JobId;
use crate::opcodes::{OpCode, OpId};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// The user name the engine's keyed submissions are filed under (no users-file name has a colon).
const KEY_USER: &str = "gantry:lease";

pub struct LeaseEngine {
    queue: JobQueue,
    /// Event keys submitted by this process → their lease and job.
    submitted: HashMap<String, (String, JobId)>,
    quiet: super::Quiet,
}

impl LeaseEngine {
    pub fn new(queue: JobQueue) -> LeaseEngine {
        LeaseEngine {
            queue,
            submitted: HashMap::new(),
            quiet: super::Quiet::default(),
        }
    }

    pub async fn tick(&mut self) {
        let cfg = self.queue.cluster().snapshot();
        let now = crate::util::now_f64();
        self.submitted
            .retain(|_, (lease, _)| cfg.leases.contains_key(lease));
        for lease in cfg.leases.values() {
            let before_key = event_key(lease, BEFORE_END);
            let mut before_job = lease
                .done
                .get(BEFORE_END)
                .map(|j| JobId(*j))
                .or_else(|| self.submitted.get(&before_key).map(|(_, job)| *job));
            for event in lease.due(now, before_job.is_some()) {
                let key = event_key(lease, event);
                if self.submitted.contains_key(&key) {
                    continue;
                }
                let after = if event == END { before_job } else { None };
                match self.submit(&cfg, lease, event, &key, after).await {
                    Ok(id) => {
                        self.submitted.insert(key, (lease.name.clone(), id));
                        if event == BEFORE_END {
                            before_job = Some(id);
                        }
                    }
                    Err(e) => {
                        let what = format!("lease {} {event}", lease.name);
                        self.quiet
                            .warn(&what, format_args!("not submitted (retried): {e}"));
                        break;
                    }
                }
            }
        }
    }

    async fn submit(
        &self,
        cfg: &Config,
        lease: &Lease,
        event: &str,
        key: &str,
        after: Option<JobId>,
    ) -> Result<JobId, String> {
        let mut ops = event_ops(cfg, lease, event).map_err(|e| e.0)?;
        if let (Some(first), Some(before)) = (ops.first_mut(), after) {
            first.set(
                "depends",
                json!([[before.0, ["success", "error", "canceled"]]]),
            );
        }
        let idem = Idempotency {
            user: KEY_USER.into(),
            key: key.into(),
            digest: key.into(),
        };
        let id = self
            .queue
            .submit_keyed(ops, Some(idem))
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(lease = %lease.name, event, job = %id, "lease event job");
        Ok(id)
    }
}

/// Names one event of one lease at its current time: a lease extended after the event was
/// submitted has a new key, so its event runs again at the new time.
fn event_key(lease: &Lease, event: &str) -> String {
    format!("{}:{event}:{:.3}", lease.name, lease.event_time(event))
}

fn op(
    id: OpId,
    source: &str,
    event: &str,
    pairs: &[(&str, Value)],
) -> Result<OpCode, crate::opcodes::ValidationError> {
    let mut params: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    params.insert("reason".into(), reason(source, event));
    OpCode::build(id, params)
}

/// The event's job: the record first, then the action on each of the lease's instances that
/// still exists.
fn event_ops(
    cfg: &Config,
    lease: &Lease,
    event: &str,
) -> Result<Vec<OpCode>, crate::opcodes::ValidationError> {
    let source = leases::lease_source(&lease.name);
    let mut ops = vec![op(
        OpId::GantryLeaseEvent,
        &source,
        event,
        &[("lease_name", json!(lease.name)), ("event", json!(event))],
    )?];
    let existing = lease
        .instances
        .iter()
        .filter_map(|name| cfg.instances.get(name));
    for inst in existing {
        let name = json!(inst.name);
        let action = match (event, lease.before_end_action, lease.on_end) {
            (BEFORE_END, BeforeEndAction::Shutdown, _) | (END, _, EndAction::Shutdown) => {
                Some((OpId::InstanceShutdown, vec![("instance_name", name)]))
            }
            (BEFORE_END, BeforeEndAction::Snapshot, _) => Some((
                OpId::BackupExport,
                vec![
                    ("instance_name", name),
                    ("target_node", json!(inst.pnode)),
                    ("mode", json!("local")),
                    ("shutdown", json!(false)),
                ],
            )),
            (END, _, EndAction::Remove) => {
                Some((OpId::InstanceRemove, vec![("instance_name", name)]))
            }
            _ => None,
        };
        if let Some((id, pairs)) = action {
            ops.push(op(id, &source, event, &pairs)?);
        }
    }
    Ok(ops)
}
