//! The source of the job event stream: one event per job status change and per log entry, with
//! ids that only grow (they start at the process's start time in microseconds, so they also grow
//! across restarts), kept in a bounded window for clients that resume, and broadcast to
//! followers through a bounded channel (a follower that falls behind it is dropped).

use super::job::{Job, LogEntry, Status};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// What a follower may select on, per job: its opcodes and the instances and nodes they name.
#[derive(Debug, Default)]
pub struct Subjects {
    pub opcodes: Vec<String>,
    pub names: Vec<String>,
}

#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub job: u64,
    /// `status` or `log`.
    pub kind: &'static str,
    /// The job's status when the event happened.
    pub status: &'static str,
    pub subjects: Arc<Subjects>,
    /// The event's JSON, serialized once for every follower.
    pub data: String,
}

/// What the hub last published of a job, so each change is published once and in order.
struct Seen {
    ops: Vec<Status>,
    subjects: Arc<Subjects>,
}

struct HubState {
    next_id: u64,
    window: VecDeque<Arc<Event>>,
    jobs: HashMap<u64, Seen>,
}

pub struct EventHub {
    state: Mutex<HubState>,
    tx: broadcast::Sender<Arc<Event>>,
    retain: usize,
}

/// What a follower starting at `since` gets: the retained events after it, whether some it
/// asked for are gone (then it must re-read state), and the live feed from there on.
pub struct Subscription {
    pub backlog: Vec<Arc<Event>>,
    pub reset: bool,
    pub live: broadcast::Receiver<Arc<Event>>,
}

/// Status order within a job's life; a snapshot that would go back is an older one.
fn rank(s: Status) -> u8 {
    match s {
        Status::Queued => 0,
        Status::Waiting => 1,
        Status::Running => 2,
        Status::Canceling => 3,
        Status::Canceled | Status::Success | Status::Error => 4,
    }
}

fn subjects(job: &Job) -> Arc<Subjects> {
    let mut s = Subjects::default();
    for op in &job.ops {
        s.opcodes.push(op.input.id().as_str().to_string());
        for key in [
            "instance_name",
            "node_name",
            "pnode",
            "snode",
            "target_node",
        ] {
            if let Some(name) = op.input.str(key) {
                s.names.push(name.to_string());
            }
        }
    }
    Arc::new(s)
}

impl EventHub {
    /// `retain` events are kept for resuming followers; `channel` bounds how far a live follower
    /// may fall behind before it is dropped.
    pub fn new(retain: usize, channel: usize) -> EventHub {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        EventHub {
            state: Mutex::new(HubState {
                next_id: start,
                window: VecDeque::with_capacity(retain.min(1 << 16)),
                jobs: HashMap::new(),
            }),
            tx: broadcast::channel(channel.max(1)).0,
            retain: retain.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, st: &mut HubState, make: impl FnOnce(u64) -> Event) {
        let id = st.next_id;
        st.next_id += 1;
        let event = Arc::new(make(id));
        crate::metrics::METRICS.events_published.inc();
        if st.window.len() == self.retain {
            st.window.pop_front();
        }
        st.window.push_back(event.clone());
        // No follower is not an error.
        let _ = self.tx.send(event);
    }

    /// A job was written: publishes its status if it moved forward since the last event.
    pub fn job_changed(&self, job: &Job) {
        let ops: Vec<Status> = job.ops.iter().map(|o| o.status).collect();
        let mut st = self.lock();
        let subjects = match st.jobs.get(&job.id.0) {
            Some(seen) if seen.ops == ops => return,
            // A snapshot older than one already published (writers can race): not news.
            Some(seen) if seen.ops.iter().zip(&ops).any(|(a, b)| rank(*b) < rank(*a)) => return,
            Some(seen) => seen.subjects.clone(),
            None => subjects(job),
        };
        let status = job.status();
        let data = json!({
            "job_id": job.id.0,
            "status": status.as_str(),
            "opstatus": ops.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "ops": subjects.opcodes,
            "summary": job.ops.iter().map(|o| o.input.summary()).collect::<Vec<_>>(),
        });
        let job_id = job.id.0;
        self.publish(&mut st, |id| Event {
            id,
            job: job_id,
            kind: "status",
            status: status.as_str(),
            subjects: subjects.clone(),
            data: with_id(data, id),
        });
        if status.is_finalized() {
            st.jobs.remove(&job_id);
        } else {
            st.jobs.insert(job_id, Seen { ops, subjects });
        }
    }

    /// A log entry was appended to opcode `index` of `job` (called in the order of serials).
    pub fn log_entry(&self, job: &Job, index: usize, entry: &LogEntry) {
        let mut st = self.lock();
        let subjects = match st.jobs.get(&job.id.0) {
            Some(seen) => seen.subjects.clone(),
            None => subjects(job),
        };
        let data = json!({
            "job_id": job.id.0,
            "opcode_index": index,
            "serial": entry.0,
            "timestamp": entry.1,
            "log_type": entry.2,
            "message": entry.3,
        });
        let job_id = job.id.0;
        let status = job.status().as_str();
        self.publish(&mut st, |id| Event {
            id,
            job: job_id,
            kind: "log",
            status,
            subjects,
            data: with_id(data, id),
        });
    }

    pub fn subscribe(&self, since: Option<u64>) -> Subscription {
        let st = self.lock();
        // Subscribed under the lock: nothing published after the backlog is missed.
        let live = self.tx.subscribe();
        let (backlog, reset) = match since {
            None => (vec![], false),
            Some(since) => {
                let oldest = st.window.front().map_or(st.next_id, |e| e.id);
                let backlog = st.window.iter().filter(|e| e.id > since).cloned().collect();
                (backlog, since + 1 < oldest)
            }
        };
        Subscription {
            backlog,
            reset,
            live,
        }
    }

    /// Followers connected now.
    pub fn followers(&self) -> usize {
        self.tx.receiver_count()
    }
}

fn with_id(mut data: Value, id: u64) -> String {
    data["event_id"] = json!(id);
    data.to_string()
}
