//! Runs one job: its opcodes in order, each through dependencies, name expansion, locks, checks
//! and execution (spec jobs.md §4.2), recording every transition.

use super::job::{ERROR_MSG_CANCELED, Job, JobId, LogEntry, Status, Timestamp};
use super::{JobQueue, SubmitError};
use crate::backends::BoxFuture;
use crate::cmdlib::{self, Ctx, Feedback, JobSubmitter, OpError};
use crate::opcodes::OpCode;
use futures_util::FutureExt;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::Instrument;

enum Outcome {
    Success(Value),
    Failed(Value),
    Canceled,
}

pub(super) async fn run_job(queue: JobQueue, id: JobId) {
    let cancel = queue.state().cancels.get(&id).map(|tx| tx.subscribe());
    let Some(mut cancel) = cancel else {
        queue.job_finished(id);
        return;
    };
    loop {
        let Some((idx, op)) = start_next_op(&queue, id).await else {
            break;
        };
        let span = tracing::info_span!("opcode", job = %id, op = op.id().as_str(), index = idx);
        let outcome = run_op(&queue, id, idx, op, &mut cancel)
            .instrument(span)
            .await;
        if !finish_op(&queue, id, idx, outcome).await {
            break;
        }
    }
    queue.job_finished(id);
}

/// Marks the next opcode `waiting`; `None` when the job is done (or canceled at a boundary).
/// A cancel that ends the job here is durable before anyone sees it (as every job end).
async fn start_next_op(queue: &JobQueue, id: JobId) -> Option<(usize, OpCode)> {
    let now = Timestamp::now();
    let next = |job: &mut Job| {
        let idx = job.current_op()?;
        if cancel_due(job).is_some() {
            if job.ops[idx].status == Status::Canceling {
                job.ops[idx].end = Some(now);
            }
            job.finalize_rest(idx, Status::Canceled, json!(ERROR_MSG_CANCELED), now);
            return Some(None);
        }
        let op = &mut job.ops[idx];
        op.status = Status::Waiting;
        op.start.get_or_insert(now);
        job.start_ts.get_or_insert(now);
        Some(Some((idx, job.ops[idx].input.clone())))
    };
    let ends = |job: &Job| cancel_due(job).is_some();
    queue.end_durably(id, ends, next).await.flatten()
}

/// The opcode at which a cancel ends the job now, if one does: asked while an earlier opcode
/// ran (at this boundary), or while this one waited.
fn cancel_due(job: &Job) -> Option<usize> {
    let idx = job.current_op()?;
    let status = job.ops[idx].status;
    let at_boundary = job.cancel_at_boundary && idx > 0 && status == Status::Queued;
    (at_boundary || status == Status::Canceling).then_some(idx)
}

/// What upstream's logical unit writes back into its opcode (resolved UUIDs, computed
/// defaults); only for the record, so a bug there must not wedge the job. Computed outside the
/// queue lock: the configuration lock is never waited for under it.
fn recorded(op: &OpCode, cluster: &crate::cluster::ClusterStore) -> Vec<(&'static str, Value)> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cmdlib::recorded_params(op, &cluster.snapshot())
    }))
    .unwrap_or_default()
}

/// Writes recorded parameters into the job's opcode (persisted with its next change).
fn record(queue: &JobQueue, id: JobId, idx: usize, params: Vec<(&'static str, Value)>) {
    if let Some(job) = queue.state().jobs.get_mut(&id) {
        for (name, value) in params {
            job.ops[idx].input.set(name, value);
        }
    }
}

/// The opcode's `running` state: its recorded parameters and when it started executing.
/// Answers the seconds it waited, for the queue and the locks, since it was picked up.
fn mark_running(
    job: &mut Job,
    idx: usize,
    recorded: &[(&'static str, Value)],
    now: Timestamp,
) -> f64 {
    let op = &mut job.ops[idx];
    for (name, value) in recorded {
        op.input.set(name, value.clone());
    }
    op.status = Status::Running;
    op.exec = Some(now);
    op.start
        .map_or(0.0, |t| now.as_secs_f64() - t.as_secs_f64())
}

async fn run_op(
    queue: &JobQueue,
    id: JobId,
    idx: usize,
    op: OpCode,
    cancel: &mut watch::Receiver<bool>,
) -> Outcome {
    if let Some(outcome) = check_dependencies(queue, id, &op, cancel).await {
        return outcome;
    }
    let cluster = queue.cluster().clone();
    let mut plan = match cmdlib::plan(&op, &cluster.snapshot()) {
        Ok(p) => p,
        Err(e) => {
            // Upstream resolves names before its checks fail: the record shows them too.
            record(queue, id, idx, recorded(&op, &cluster));
            return Outcome::Failed(e.to_json());
        }
    };
    let priority = op.priority();
    // Lock lists computed from the configuration are re-checked once held (spec opcodes.md §1.5).
    let held = loop {
        let held = tokio::select! {
            held = queue.inner.locks.acquire(&plan, priority, id.0) => held,
            _ = cancel.wait_for(|c| *c) => return Outcome::Canceled,
        };
        match cmdlib::plan(&op, &cluster.snapshot()) {
            Ok(again) if again == plan => break held,
            Ok(again) => plan = again,
            Err(e) => return Outcome::Failed(e.to_json()),
        }
    };
    if *cancel.borrow() {
        return Outcome::Canceled;
    }
    let recorded = recorded(&op, &cluster);
    let now = Timestamp::now();
    // The job is `running` on disk before anyone can see it running, and before the opcode
    // touches anything: a master that dies from here on leaves it `running`, which recovery
    // ends as an unclean shutdown instead of running it again (as upstream writes the job
    // file before the opcode starts). A dry run touches nothing: run again, it answers the same.
    let dry_run = op.dry_run();
    let marked = queue
        .change_durably(
            id,
            |_| !dry_run,
            |job| {
                (job.ops[idx].status != Status::Canceling)
                    .then(|| mark_running(job, idx, &recorded, now))
            },
        )
        .await;
    let waited = match marked {
        Ok(Some(waited)) => waited,
        Ok(None) => return Outcome::Canceled,
        Err(e) => {
            return Outcome::Failed(
                OpError::exec(format!("Cannot record the job as running: {e}")).to_json(),
            );
        }
    };
    // Logged outside the queue lock: a slow stderr must not hold up every other job.
    tracing::info!(
        job = %id,
        opcode = op.id().as_str(),
        index = idx,
        waited = format!("{waited:.3}"),
        "job running"
    );
    let ctx = Ctx {
        op,
        job_id: id.0,
        cluster,
        backend: queue.backend().clone(),
        feedback: feedback_sink(queue.clone(), id, idx),
        jobs: Arc::new(queue.clone()),
    };
    // A panicking logical unit is a bug, but it must not wedge the job or its locks: the
    // opcode fails with the panic's text and the locks are released below as usual.
    let result = std::panic::AssertUnwindSafe(cmdlib::execute(&ctx))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(OpError::exec(panic_text(panic.as_ref()))));
    // What the opcode reserved is now in the configuration, or was never used.
    ctx.cluster.release(id.0);
    drop(held);
    match result {
        Ok(v) => Outcome::Success(v),
        Err(e) => {
            tracing::info!("opcode failed: {}", e);
            Outcome::Failed(e.to_json())
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("Internal error: the opcode's worker panicked: {text}")
}

/// Evaluates `depends` (spec jobs.md §10); `None` means every dependency is satisfied.
async fn check_dependencies(
    queue: &JobQueue,
    id: JobId,
    op: &OpCode,
    cancel: &mut watch::Receiver<bool>,
) -> Option<Outcome> {
    let exec_error = |msg: String| Some(Outcome::Failed(json!(["OpExecError", [msg]])));
    for (dep, wanted) in op.depends() {
        let dep_id = JobId(dep.max(0) as u64);
        if dep_id == id {
            return exec_error("Job can't depend on itself".into());
        }
        let final_status = loop {
            let rx = queue.watch(dep_id);
            let status = queue.job_status(dep_id);
            match status {
                None => return exec_error(format!("Dependency error: Job {dep_id} not found")),
                Some(s) if s.is_finalized() => break s,
                Some(_) => {}
            }
            // No receiver means the job finished in between: the next look sees it.
            let Some(mut rx) = rx else { continue };
            let canceled = tokio::select! {
                _ = rx.changed() => false,
                _ = cancel.wait_for(|c| *c) => true,
            };
            drop(rx);
            queue.unwatch(dep_id);
            if canceled {
                return Some(Outcome::Canceled);
            }
        };
        let accepted = if wanted.is_empty() {
            matches!(final_status, Status::Success | Status::Error)
        } else {
            wanted.iter().any(|w| w == final_status.as_str())
        };
        if final_status == Status::Canceled && !accepted {
            return Some(Outcome::Canceled);
        }
        if !accepted {
            return exec_error(format!(
                "Dependency job {dep_id} finished with status '{}', not one of '{}' as required",
                final_status.as_str(),
                wanted.join(", ")
            ));
        }
    }
    None
}

/// Records an opcode's outcome; returns whether the job goes on to its next opcode. A final
/// state is durable before anyone can see it: a poller, or a dependent job acting on it (spec
/// jobs.md §14.3), never sees an end that a crash could take back.
async fn finish_op(queue: &JobQueue, id: JobId, idx: usize, outcome: Outcome) -> bool {
    let now = Timestamp::now();
    let ends = |job: &Job| !matches!(outcome, Outcome::Success(_)) || idx + 1 == job.ops.len();
    let record = |job: &mut Job| Some(record_outcome(job, idx, &outcome, now));
    queue.end_durably(id, ends, record).await.unwrap_or(false)
}

/// Writes an opcode's outcome into the job; whether the job goes on to its next opcode.
fn record_outcome(job: &mut Job, idx: usize, outcome: &Outcome, now: Timestamp) -> bool {
    let op = &mut job.ops[idx];
    op.end = Some(now);
    match outcome {
        Outcome::Success(v) => {
            op.status = Status::Success;
            op.result = v.clone();
            if idx + 1 == job.ops.len() {
                job.end_ts = Some(now);
            }
            idx + 1 < job.ops.len()
        }
        Outcome::Failed(err) => {
            op.status = Status::Error;
            op.result = err.clone();
            let preceding = json!(["OpExecError", ["Preceding opcode failed"]]);
            job.finalize_rest(idx + 1, Status::Error, preceding, now);
            false
        }
        Outcome::Canceled => {
            job.finalize_rest(idx, Status::Canceled, json!(ERROR_MSG_CANCELED), now);
            false
        }
    }
}

/// The feedback channel handed to opcodes: appends log entries and wakes waiters at once.
/// A job's log is capped (entries and message bytes), so no opcode can fill the disk through
/// its log; past the cap one marker entry says so and later messages are dropped.
pub const MAX_LOG_ENTRIES: usize = 10_000;
pub const MAX_LOG_BYTES: usize = 8 << 20;
pub const LOG_TRUNCATED: &str = "*** log truncated: this job wrote more than gantry keeps ***";

fn feedback_sink(queue: JobQueue, id: JobId, idx: usize) -> Feedback {
    Arc::new(move |kind: &str, message: Value| {
        let entry = {
            let mut st = queue.state();
            let Some(job) = st.jobs.get_mut(&id) else {
                return;
            };
            let (entries, bytes) = job.log_size;
            if entries > MAX_LOG_ENTRIES || bytes > MAX_LOG_BYTES {
                return;
            }
            let size = message.to_string().len();
            let (kind, message) = if entries == MAX_LOG_ENTRIES || bytes + size > MAX_LOG_BYTES {
                ("message", Value::String(LOG_TRUNCATED.into()))
            } else {
                (kind, message)
            };
            // Past the cap either way: the marker is the last entry.
            job.log_size = if kind == "message" && message == LOG_TRUNCATED {
                (MAX_LOG_ENTRIES + 1, bytes)
            } else {
                (entries + 1, bytes + size)
            };
            let entry = LogEntry(
                job.next_log_serial(),
                Timestamp::now(),
                kind.to_string(),
                message,
            );
            job.ops[idx].log.push(entry.clone());
            // Under the queue lock: followers get a job's entries in serial order.
            queue.inner.events.log_entry(job, idx, &entry);
            entry
        };
        if let Err(e) = queue.inner.store.put_log(id, idx, &entry) {
            tracing::warn!(job = %id, "writing log entry failed: {e}");
        }
        queue.bump(id);
    })
}

impl JobSubmitter for JobQueue {
    fn submit_jobs(&self, jobs: Vec<Vec<OpCode>>) -> BoxFuture<'_, Result<Vec<Value>, OpError>> {
        Box::pin(async move {
            match self.submit_many(jobs).await {
                Ok(replies) => Ok(replies
                    .into_iter()
                    .map(|r| match r {
                        Ok(id) => json!([true, id.0]),
                        Err(e) => json!([false, e.to_string()]),
                    })
                    .collect()),
                Err(SubmitError::Drained) => Err(OpError::exec("Queue drained")),
                Err(e) => Err(OpError::exec(e.to_string())),
            }
        })
    }
}
