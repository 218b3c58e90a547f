//! The job record: opcodes with their statuses, results and logs, and the fields clients read.

use crate::opcodes::OpCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Opcode and job statuses: the same seven words (spec jobs.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Waiting,
    Canceling,
    Running,
    Canceled,
    Success,
    Error,
}

impl Status {
    pub fn is_finalized(self) -> bool {
        matches!(self, Status::Canceled | Status::Success | Status::Error)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Waiting => "waiting",
            Status::Canceling => "canceling",
            Status::Running => "running",
            Status::Canceled => "canceled",
            Status::Success => "success",
            Status::Error => "error",
        }
    }

    /// Upstream's constant name, used in some cancel replies (`JOB_STATUS_SUCCESS`).
    pub fn constant_name(self) -> String {
        format!("JOB_STATUS_{}", self.as_str().to_uppercase())
    }
}

/// `[seconds, microseconds]` since the epoch (spec jobs.md §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp(pub u64, pub u32);

impl Timestamp {
    pub fn now() -> Timestamp {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_secs(), d.subsec_micros())
    }

    pub fn as_nanos(self) -> u128 {
        self.0 as u128 * 1_000_000_000 + self.1 as u128 * 1000
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 + self.1 as f64 / 1e6
    }
}

/// `[serial, ts, type, message]` (spec jobs.md §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry(pub u64, pub Timestamp, pub String, pub Value);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedOp {
    pub input: OpCode,
    pub status: Status,
    pub result: Value,
    /// Kept in memory; on disk each entry is its own record (`Store::put_log`), so a long log
    /// never rewrites the job. Older job records carry it inline and still load.
    #[serde(default, skip_serializing)]
    pub log: Vec<LogEntry>,
    pub priority: i64,
    pub start: Option<Timestamp>,
    pub exec: Option<Timestamp>,
    pub end: Option<Timestamp>,
}

impl QueuedOp {
    pub fn new(input: OpCode) -> QueuedOp {
        let priority = input.priority();
        QueuedOp {
            input,
            status: Status::Queued,
            result: Value::Null,
            log: vec![],
            priority,
            start: None,
            exec: None,
            end: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub ops: Vec<QueuedOp>,
    pub received_ts: Timestamp,
    pub start_ts: Option<Timestamp>,
    pub end_ts: Option<Timestamp>,
    #[serde(default)]
    pub archived: bool,
    /// A cancel that arrived while an opcode ran: applied at the next opcode boundary (§18.3).
    #[serde(default)]
    pub cancel_at_boundary: bool,
    /// Log entries and bytes of messages so far, for the per-job cap (not stored: recounted).
    #[serde(skip)]
    pub log_size: (usize, usize),
}

/// Every field `/2/query/job` knows (spec jobs.md §2.1).
pub const JOB_FIELDS: &[&str] = &[
    "id",
    "status",
    "priority",
    "archived",
    "ops",
    "opstatus",
    "opresult",
    "oplog",
    "opstart",
    "opexec",
    "opend",
    "oppriority",
    "summary",
    "received_ts",
    "start_ts",
    "end_ts",
];

pub const ERROR_MSG_CANCELED: &str = "Job canceled by request";

impl Job {
    pub fn new(id: JobId, ops: Vec<OpCode>, received_ts: Timestamp) -> Job {
        Job {
            id,
            ops: ops.into_iter().map(QueuedOp::new).collect(),
            received_ts,
            start_ts: None,
            end_ts: None,
            archived: false,
            cancel_at_boundary: false,
            log_size: (0, 0),
        }
    }

    /// Derived exactly as upstream's `CalcStatus` (spec jobs.md §3.2); never stored.
    pub fn status(&self) -> Status {
        let mut status = Status::Queued;
        let mut all_success = true;
        for op in &self.ops {
            if op.status == Status::Success {
                continue;
            }
            all_success = false;
            match op.status {
                Status::Queued => {}
                Status::Waiting => status = Status::Waiting,
                Status::Running => status = Status::Running,
                s @ (Status::Canceling | Status::Canceled | Status::Error) => {
                    status = s;
                    break;
                }
                Status::Success => unreachable!(),
            }
        }
        if all_success { Status::Success } else { status }
    }

    pub fn is_finalized(&self) -> bool {
        self.status().is_finalized()
    }

    /// Minimum priority over unfinished opcodes; 0 once all are final.
    pub fn priority(&self) -> i64 {
        self.ops
            .iter()
            .filter(|o| !o.status.is_finalized())
            .map(|o| o.priority)
            .min()
            .unwrap_or(0)
    }

    /// Index of the first opcode that is not finalized.
    pub fn current_op(&self) -> Option<usize> {
        self.ops.iter().position(|o| !o.status.is_finalized())
    }

    pub fn next_log_serial(&self) -> u64 {
        self.ops
            .iter()
            .filter_map(|o| o.log.last().map(|e| e.0))
            .max()
            .unwrap_or(0)
            + 1
    }

    pub fn log_entries_after(&self, serial: u64) -> Vec<&LogEntry> {
        let mut all: Vec<&LogEntry> = self
            .ops
            .iter()
            .flat_map(|o| o.log.iter())
            .filter(|e| e.0 > serial)
            .collect();
        all.sort_by_key(|e| e.0);
        all
    }

    /// What a waiter on `fields` who saw `previous` and log entries up to `serial` is told now:
    /// the fields and the newer log entries, or `None` while nothing changed for it (a
    /// finished job always answers).
    pub fn changes_for(
        &self,
        fields: &[String],
        previous: Option<&Value>,
        serial: Option<u64>,
    ) -> Option<(Vec<Value>, Vec<LogEntry>)> {
        let info: Vec<Value> = fields.iter().filter_map(|f| self.field(f)).collect();
        let logs: Vec<LogEntry> = self
            .log_entries_after(serial.unwrap_or(0))
            .into_iter()
            .cloned()
            .collect();
        let changed = previous != Some(&Value::Array(info.clone()));
        (self.is_finalized() || changed || !logs.is_empty()).then_some((info, logs))
    }

    /// Marks opcodes from `from` on as finished with `status`/`result` and ends the job.
    pub fn finalize_rest(&mut self, from: usize, status: Status, result: Value, now: Timestamp) {
        for op in self.ops.iter_mut().skip(from) {
            if !op.status.is_finalized() {
                op.status = status;
                op.result = result.clone();
            }
        }
        self.end_ts = Some(now);
    }

    /// The value of one job field, `None` for an unknown field name.
    pub fn field(&self, name: &str) -> Option<Value> {
        let ts = |t: &Option<Timestamp>| json!(t);
        let per_op =
            |f: &dyn Fn(&QueuedOp) -> Value| Value::Array(self.ops.iter().map(f).collect());
        Some(match name {
            "id" => json!(self.id.0),
            "status" => json!(self.status().as_str()),
            "priority" => json!(self.priority()),
            "archived" => json!(self.archived),
            "ops" => per_op(&|o| o.input.to_public_json()),
            "opstatus" => per_op(&|o| json!(o.status.as_str())),
            "opresult" => per_op(&|o| o.result.clone()),
            "oplog" => per_op(&|o| json!(o.log)),
            "opstart" => per_op(&|o| ts(&o.start)),
            "opexec" => per_op(&|o| ts(&o.exec)),
            "opend" => per_op(&|o| ts(&o.end)),
            "oppriority" => per_op(&|o| json!(o.priority)),
            "summary" => per_op(&|o| json!(o.input.summary())),
            "received_ts" => json!(self.received_ts),
            "start_ts" => ts(&self.start_ts),
            "end_ts" => ts(&self.end_ts),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_with(statuses: &[Status]) -> Job {
        let op = OpCode::from_json(&json!({"OP_ID": "OP_TEST_DELAY", "duration": 1})).unwrap();
        let mut job = Job::new(JobId(1), vec![op; statuses.len()], Timestamp::now());
        for (o, s) in job.ops.iter_mut().zip(statuses) {
            o.status = *s;
        }
        job
    }

    #[test]
    fn status_derivation_matches_upstream() {
        use Status::*;
        let cases: &[(&[Status], Status)] = &[
            (&[Success, Queued], Queued),
            (&[Success, Error, Error], Error),
            (&[Success, Canceled], Canceled),
            (&[Waiting, Queued], Waiting),
            (&[Running, Queued], Running),
            (&[Canceling, Queued], Canceling),
            (&[Success, Success], Success),
            (&[Queued, Queued], Queued),
            (&[Error, Success], Error),
        ];
        for (ops, want) in cases {
            assert_eq!(job_with(ops).status(), *want, "{ops:?}");
        }
        assert!(!Canceling.is_finalized());
        assert_eq!(Waiting.constant_name(), "JOB_STATUS_WAITING");
    }

    #[test]
    fn priority_is_minimum_of_unfinished() {
        let mut job = job_with(&[Status::Success, Status::Queued]);
        job.ops[0].priority = -10;
        job.ops[1].priority = 10;
        assert_eq!(job.priority(), 10);
        job.ops[1].status = Status::Success;
        assert_eq!(job.priority(), 0);
    }

    #[test]
    fn timestamps_and_logs_serialize_as_arrays() {
        let e = LogEntry(3, Timestamp(10, 5), "message".into(), json!("hi"));
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!([3, [10, 5], "message", "hi"])
        );
    }
}
