//! The durable job queue: submission (durable before the id is returned), scheduling by priority
//! and dependencies, cancel, priority change, wait-for-change, archiving and crash recovery.
//! The per-job runner lives in `runner.rs`.

pub mod events;
pub mod filters;
pub use filters::FilterRuleError;
pub mod idempotency;
pub mod job;
mod recovery;
mod runner;
mod store;

use crate::backends::Backend;
use crate::cluster::ClusterStore;
use crate::locking::LockManager;
use crate::metrics::METRICS;
use crate::opcodes::OpCode;
use filters::{Action, CompiledRule, FilterRule};
use job::{Job, JobId, LogEntry, Status, Timestamp};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{Notify, watch};

pub use store::{DRAIN_FILE, Store, StoreError, job_of_record, set_drain_file};

/// How `write_back` treats a job's current state.
enum Flush {
    /// Written; flushed when final (final states are always durable).
    IfFinal,
    /// Written and flushed.
    Always,
    /// Written and flushed by the caller already: neither again.
    Done,
}

#[derive(Debug, Error)]
pub enum SubmitError {
    #[error("Job queue is drained, cannot submit")]
    Drained,
    #[error("Job queue is full, needs archiving")]
    Full,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("The job queue is shutting down")]
    ShuttingDown,
    #[error("Not enough free space for new jobs in {dir} (keeping {reserve_mib} MiB in reserve)")]
    NoSpace { dir: String, reserve_mib: u64 },
    #[error("Idempotency key '{0}' was already used for a different request")]
    KeyReused(String),
}

#[derive(Debug, Error, PartialEq)]
pub enum WaitError {
    #[error("Job {0} not found")]
    NotFound(JobId),
    #[error("Unknown output fields selected: {0}")]
    UnknownField(String),
}

/// A priority outside Ganeti's three (spec jobs.md §9.3).
#[derive(Debug, Error, PartialEq)]
#[error("Invalid priority {0}, allowed are [-10, 0, 10]")]
pub struct InvalidPriority(pub i64);

#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Unfinished jobs allowed before submissions are refused (each is held in memory).
    pub hard_limit: usize,
    /// Finished jobs kept unarchived (listed by `GET /2/jobs`); past this many the oldest are
    /// archived at once, whatever their age.
    pub keep_finished: usize,
    /// Finalized jobs older than this are archived automatically.
    pub archive_age: Duration,
    /// How often automatic archiving runs.
    pub archive_interval: Duration,
    /// Refuses new jobs while the data dir's file system is nearly full (none: no check).
    pub space: Option<Arc<crate::space::SpaceGuard>>,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    /// Events kept for followers that resume (`Last-Event-ID`).
    pub event_retention: usize,
    /// How far a live follower may fall behind before it is dropped.
    pub event_buffer: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            hard_limit: 10_000,
            keep_finished: 20_000,
            archive_age: Duration::from_secs(6 * 3600),
            archive_interval: Duration::from_secs(300),
            space: None,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            event_retention: 100_000,
            event_buffer: 4096,
        }
    }
}

/// Finished jobs kept in memory for readers (they are on disk too).
const RECENT_JOBS: usize = 4096;

struct State {
    /// Unfinished jobs: the only ones memory must hold. Finished jobs are on disk.
    jobs: BTreeMap<JobId, Job>,
    /// Recently finished or read jobs, so polling clients rarely reach the disk.
    recent: lru::LruCache<JobId, Arc<Job>>,
    /// Bumped by every archiving: a job read from disk before it is not cached (it may be stale).
    archive_generation: u64,
    /// Finished jobs not yet archived.
    finished_count: usize,
    /// Durable, queued, not yet picked up: ordered by (priority, id).
    runnable: BTreeSet<(i64, JobId)>,
    /// Queued jobs a PAUSE rule holds: set aside until the rules change, so a large paused
    /// backlog costs nothing per scheduling pass.
    paused: BTreeSet<(i64, JobId)>,
    started: HashSet<JobId>,
    /// Change counters of unfinished jobs that someone waits for; the first waiter creates one
    /// and the last one to leave (or the job's end) drops it.
    versions: HashMap<JobId, watch::Sender<u64>>,
    cancels: BTreeMap<JobId, watch::Sender<bool>>,
    next_id: u64,
    closing: bool,
    /// Job filter rules in the order they are consulted.
    filters: Vec<CompiledRule>,
}

impl State {
    fn new(filters: Vec<CompiledRule>) -> State {
        State {
            jobs: BTreeMap::new(),
            recent: lru::LruCache::new(
                std::num::NonZeroUsize::new(RECENT_JOBS).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
            archive_generation: 0,
            finished_count: 0,
            runnable: BTreeSet::new(),
            paused: BTreeSet::new(),
            started: HashSet::new(),
            versions: HashMap::new(),
            cancels: BTreeMap::new(),
            next_id: 1,
            closing: false,
            filters,
        }
    }
}

struct Inner {
    store: Store,
    cluster: ClusterStore,
    backend: Arc<dyn Backend>,
    locks: LockManager,
    state: Mutex<State>,
    wake_scheduler: Notify,
    /// Too many finished jobs: archive the oldest now.
    archive_now: Notify,
    opts: QueueOptions,
    /// Scans of the archive running at once (queries over archived jobs).
    archive_scans: tokio::sync::Semaphore,
    events: events::EventHub,
}

/// What the locked part of a submission decided.
enum Admission {
    /// A retry of a keyed request: its first job.
    Reused(JobId),
    New {
        accepted: Vec<JobId>,
        replies: Vec<Result<JobId, SubmitError>>,
    },
}

/// Cheap, cloneable handle to the queue.
#[derive(Clone)]
pub struct JobQueue {
    inner: Arc<Inner>,
}

pub const CANCEL_WAIT: Duration = Duration::from_secs(44);

impl JobQueue {
    /// Opens the queue, recovers jobs left by a previous process, and starts the scheduler.
    pub async fn start(
        store: Store,
        cluster: ClusterStore,
        backend: Arc<dyn Backend>,
        opts: QueueOptions,
    ) -> Result<JobQueue, StoreError> {
        let mut filters = vec![];
        for rule in store.filter_rules()? {
            match CompiledRule::compile(rule) {
                Ok(rule) => filters.push(rule),
                Err(e) => tracing::error!("ignoring a stored filter rule: {e}"),
            }
        }
        filters::sort_rules(&mut filters);
        let mut state = State::new(filters);
        recovery::recover(&store, &mut state).await?;
        METRICS.jobs_unfinished.set(state.jobs.len() as i64);
        let queue = JobQueue {
            inner: Arc::new(Inner {
                store,
                cluster,
                backend,
                locks: LockManager::default(),
                archive_scans: tokio::sync::Semaphore::new(2),
                state: Mutex::new(state),
                wake_scheduler: Notify::new(),
                archive_now: Notify::new(),
                events: events::EventHub::new(opts.event_retention, opts.event_buffer),
                opts,
            }),
        };
        tokio::spawn(queue.clone().schedule_loop());
        tokio::spawn(queue.clone().archive_loop());
        queue.inner.wake_scheduler.notify_one();
        Ok(queue)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cluster(&self) -> &ClusterStore {
        &self.inner.cluster
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    pub async fn submit(&self, ops: Vec<OpCode>) -> Result<JobId, SubmitError> {
        self.submit_keyed(ops, None).await
    }

    /// Submits one job; with a key, a retry of the same request answers the job the first one
    /// created (and a different request under that key is refused).
    pub async fn submit_keyed(
        &self,
        ops: Vec<OpCode>,
        key: Option<idempotency::Idempotency>,
    ) -> Result<JobId, SubmitError> {
        match self.submit_jobs(vec![ops], key.as_ref()).await?.pop() {
            Some(Ok(id)) => Ok(id),
            Some(Err(e)) => Err(e),
            None => Err(SubmitError::Invalid("no job submitted".into())),
        }
    }

    /// Takes back jobs whose submission failed: from memory and, best effort, from the store.
    fn forget(&self, st: &mut State, ids: &[JobId]) {
        for id in ids {
            st.jobs.remove(id);
            if let Err(e) = self.inner.store.remove_job(*id) {
                tracing::warn!(job = %id, "could not remove the record of a refused job: {e}");
            }
        }
    }

    /// Submits jobs with consecutive ids; each element succeeds or fails on its own (§11.2).
    pub async fn submit_many(
        &self,
        jobs: Vec<Vec<OpCode>>,
    ) -> Result<Vec<Result<JobId, SubmitError>>, SubmitError> {
        self.submit_jobs(jobs, None).await
    }

    /// The remembered job of a key, if the key is known and not expired; a different request
    /// under the key is an error.
    fn keyed_job(&self, key: &idempotency::Idempotency) -> Result<Option<JobId>, SubmitError> {
        let Some(record) = self.inner.store.key_record(key)? else {
            return Ok(None);
        };
        let ttl = self.inner.opts.idempotency_ttl.as_secs();
        if record.created.saturating_add(ttl) < idempotency::now_secs() {
            return Ok(None);
        }
        if record.digest != key.digest {
            METRICS.idempotent_conflicts.inc();
            return Err(SubmitError::KeyReused(key.key.clone()));
        }
        Ok(Some(JobId(record.job)))
    }

    /// The part of a submission done under the queue lock: limits, the key, the records.
    fn admit(
        &self,
        jobs: Vec<Vec<OpCode>>,
        key: Option<&idempotency::Idempotency>,
        received: Timestamp,
    ) -> Result<Admission, SubmitError> {
        let mut accepted = vec![];
        let mut replies = Vec::with_capacity(jobs.len());
        {
            let mut st = self.state();
            if st.closing {
                return Err(SubmitError::ShuttingDown);
            }
            // Under the queue lock: concurrent retries of one key see each other.
            if let Some(key) = key
                && let Some(id) = self.keyed_job(key)?
            {
                return Ok(Admission::Reused(id));
            }
            if self.drained() {
                return Err(SubmitError::Drained);
            }
            if st.jobs.len() + jobs.len() > self.inner.opts.hard_limit {
                return Err(SubmitError::Full);
            }
            for ops in jobs {
                let id = JobId(st.next_id);
                match build_job(id, ops, received) {
                    Ok(job) => {
                        let record = key.map(|k| {
                            (
                                k,
                                idempotency::KeyRecord {
                                    job: id.0,
                                    digest: k.digest.clone(),
                                    created: idempotency::now_secs(),
                                },
                            )
                        });
                        let written = self
                            .inner
                            .store
                            .put_new_job(&job, record.as_ref().map(|(k, r)| (*k, r)));
                        if let Err(e) = written {
                            self.forget(&mut st, &accepted);
                            return Err(e.into());
                        }
                        st.next_id += 1;
                        st.jobs.insert(id, job);
                        accepted.push(id);
                        replies.push(Ok(id));
                    }
                    Err(msg) => replies.push(Err(msg)),
                }
            }
            if !accepted.is_empty()
                && !self.inner.store.counter_with_jobs()
                && let Err(e) = self.inner.store.set_next_id(st.next_id)
            {
                self.forget(&mut st, &accepted);
                return Err(e.into());
            }
        }
        Ok(Admission::New { accepted, replies })
    }

    async fn submit_jobs(
        &self,
        jobs: Vec<Vec<OpCode>>,
        key: Option<&idempotency::Idempotency>,
    ) -> Result<Vec<Result<JobId, SubmitError>>, SubmitError> {
        // Outside the state lock: a statvfs must not lengthen every submitter's critical section.
        if let Some(space) = &self.inner.opts.space
            && !space.has_room()
        {
            return Err(SubmitError::NoSpace {
                dir: space.dir().display().to_string(),
                reserve_mib: space.reserve_mib(),
            });
        }
        let received = Timestamp::now();
        let (accepted, replies) = match self.admit(jobs, key, received)? {
            Admission::Reused(id) => {
                METRICS.idempotent_hits.inc();
                // The first answer waited for durability; so does every retry.
                self.inner.store.durable().await?;
                return Ok(vec![Ok(id)]);
            }
            Admission::New { accepted, replies } => (accepted, replies),
        };
        if accepted.is_empty() {
            return Ok(replies);
        }
        if let Err(e) = self.inner.store.durable().await {
            // No id is answered for a job whose record may not be durable; its record goes too,
            // so it cannot turn up after a restart either (nor can its key).
            self.forget(&mut self.state(), &accepted);
            if let Some(k) = key {
                let _ = self.inner.store.remove_key(k);
            }
            return Err(SubmitError::Storage(e));
        }
        let mut queued = Vec::with_capacity(accepted.len());
        {
            let mut st = self.state();
            for id in accepted {
                let Some(job) = st.jobs.get(&id) else {
                    continue;
                };
                METRICS.jobs_submitted.inc();
                METRICS.jobs_unfinished.set(st.jobs.len() as i64);
                queued.push((id, op_names(job)));
                self.inner.events.job_changed(job);
                if job.status() == Status::Queued && job.start_ts.is_none() {
                    let prio = job.priority();
                    st.runnable.insert((prio, id));
                }
            }
        }
        self.inner.wake_scheduler.notify_one();
        // Logged outside the queue lock: a slow stderr must not hold up every other job.
        for (id, ops) in queued {
            tracing::info!(job = %id, ops = %ops, "job queued");
        }
        Ok(replies)
    }

    /// A job by id: unfinished (a copy), recently finished, or read from disk.
    pub fn job(&self, id: JobId) -> Option<Arc<Job>> {
        let generation = {
            let mut st = self.state();
            if let Some(job) = st.jobs.get(&id) {
                return Some(Arc::new(job.clone()));
            }
            if let Some(job) = st.recent.get(&id) {
                return Some(job.clone());
            }
            st.archive_generation
        };
        let job = match self.inner.store.stored_job(id) {
            Ok(job) => Arc::new(job?),
            Err(e) => {
                tracing::error!(job = %id, "reading a stored job failed: {e}");
                return None;
            }
        };
        let mut st = self.state();
        if st.archive_generation == generation && !st.jobs.contains_key(&id) {
            st.recent.put(id, job.clone());
        }
        Some(job)
    }

    /// A job's derived status, without copying an unfinished job.
    pub fn job_status(&self, id: JobId) -> Option<Status> {
        if let Some(job) = self.state().jobs.get(&id) {
            return Some(job.status());
        }
        self.job(id).map(|j| j.status())
    }

    /// The ids of the non-archived jobs, in order.
    pub fn job_ids(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = self.state().jobs.keys().copied().collect();
        match self.inner.store.finished_ids() {
            Ok(finished) => ids.extend(finished),
            Err(e) => tracing::error!("listing finished jobs failed: {e}"),
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Non-archived jobs in id order, mapped through `f`: unfinished ones from memory, finished
    /// ones read from disk one at a time (with their logs only when `logs` is set).
    pub async fn map_jobs<T>(&self, logs: bool, mut f: impl FnMut(&Job) -> T) -> Vec<T> {
        let mut rows: Vec<(JobId, T)> = self.state().jobs.values().map(|j| (j.id, f(j))).collect();
        let _permit = self.inner.archive_scans.acquire().await;
        let scan = || {
            self.inner
                .store
                .each_finished(logs, |j| rows.push((j.id, f(j))))
        };
        if let Err(e) = tokio::task::block_in_place(scan) {
            tracing::error!("reading finished jobs failed: {e}");
        }
        // A job that finished during the scan is in both: the first copy stays.
        rows.sort_by_key(|(id, _)| *id);
        rows.dedup_by_key(|(id, _)| *id);
        rows.into_iter().map(|(_, row)| row).collect()
    }

    /// Unfinished jobs only (they live in memory), mapped through `f`: what the engine's own
    /// loops (lease events, pool refills) look at every tick.
    pub fn map_unfinished<T>(&self, f: impl FnMut(&Job) -> T) -> Vec<T> {
        self.state().jobs.values().map(f).collect()
    }

    /// Waits until job `id` has finished, at most `timeout`; answers it then (`None`: unknown,
    /// or still running at the deadline).
    pub async fn finished(&self, id: JobId, timeout: Duration) -> Option<Arc<Job>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let fields = ["status".to_string()];
        let mut seen: Option<Value> = None;
        loop {
            let job = self.job(id)?;
            if job.is_finalized() {
                return Some(job);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let changed = self
                .wait_for_change(id, &fields, seen.as_ref(), Some(u64::MAX), left)
                .await
                .ok()?;
            if let Some((info, _)) = changed {
                seen = Some(Value::Array(info));
            }
        }
    }

    /// Maps archived jobs (those in `ids` when given) in id order, one job in memory at a time.
    /// At most two such scans run at once, so concurrent large queries cannot pile up memory.
    pub async fn map_archived<T>(
        &self,
        ids: Option<&[u64]>,
        logs: bool,
        mut f: impl FnMut(&Job) -> T,
    ) -> Vec<T> {
        let _permit = self.inner.archive_scans.acquire().await;
        let mut out = vec![];
        let scan = || {
            self.inner
                .store
                .each_archived(ids, logs, |j| out.push(f(j)))
        };
        if let Err(e) = tokio::task::block_in_place(scan) {
            tracing::error!("reading archived jobs failed: {e}");
        }
        out
    }

    /// A receiver of an unfinished job's changes; `None` once it is finished (or unknown).
    fn watch(&self, id: JobId) -> Option<watch::Receiver<u64>> {
        let mut st = self.state();
        if !st.jobs.contains_key(&id) {
            return None;
        }
        let tx = st.versions.entry(id).or_insert_with(|| watch::channel(0).0);
        Some(tx.subscribe())
    }

    /// Drops a job's change counter once nobody watches it any more.
    fn unwatch(&self, id: JobId) {
        let mut st = self.state();
        if st
            .versions
            .get(&id)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            st.versions.remove(&id);
        }
    }

    /// Read from the drain file on every call, so `gantry queue drain` applies at once.
    pub fn drained(&self) -> bool {
        self.inner.store.drain_flag().unwrap_or(false)
    }

    pub fn set_drained(&self, on: bool) -> Result<(), StoreError> {
        self.inner.store.set_drain_flag(on)
    }

    /// Cancels a job where Ganeti allows it (spec jobs.md §18.3); answers `(success, message)`.
    pub async fn cancel(&self, id: JobId) -> (bool, String) {
        enum Step {
            Reply(bool, String),
            Dequeued,
            Canceling(Option<watch::Receiver<u64>>),
            Informed(bool),
        }
        let rx = self.watch(id);
        let step = {
            let mut st = self.state();
            let st = &mut *st;
            let started = st.started.contains(&id);
            match st.jobs.get_mut(&id) {
                Some(job) if !job.is_finalized() => {
                    let idx = job.current_op().unwrap_or(0);
                    match job.ops[idx].status {
                        Status::Queued if !started => {
                            // Out of the scheduler's reach while its end is flushed (nothing
                            // puts a queued job back but a submission or a restart).
                            st.runnable.retain(|(_, j)| *j != id);
                            st.paused.retain(|(_, j)| *j != id);
                            Step::Dequeued
                        }
                        Status::Queued | Status::Waiting => {
                            job.ops[idx].status = Status::Canceling;
                            Step::Canceling(rx)
                        }
                        _ => {
                            let more = idx + 1 < job.ops.len();
                            job.cancel_at_boundary |= more;
                            Step::Informed(more)
                        }
                    }
                }
                _ => Step::Reply(false, format!("Job {id} not found in queue")),
            }
        };
        let mut version = match step {
            Step::Reply(ok, msg) => return (ok, msg),
            Step::Dequeued => {
                // Durable before anyone sees it canceled: a crash must not bring back, and
                // run, a job a poller saw canceled.
                let now = Timestamp::now();
                let cancel = |job: &mut Job| {
                    (!job.is_finalized()).then(|| {
                        for op in &mut job.ops {
                            op.status = Status::Canceled;
                            op.end = Some(now);
                        }
                        job.end_ts = Some(now);
                    })
                };
                self.end_durably(id, |_| true, cancel).await;
                return (true, format!("Dequeued job {id}"));
            }
            Step::Informed(more) => {
                if more {
                    self.write_back(id, Flush::IfFinal).await;
                }
                return (
                    false,
                    "Job no longer waiting, can't cancel (informed it anyway)".into(),
                );
            }
            Step::Canceling(rx) => {
                self.write_back(id, Flush::IfFinal).await;
                if let Some(tx) = self.state().cancels.get(&id) {
                    tx.send_replace(true);
                }
                match rx {
                    Some(rx) => rx,
                    None => return (true, "Job successfully cancelled".into()),
                }
            }
        };
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        let mut ended = false;
        loop {
            let status = self.job_status(id).filter(|s| s.is_finalized());
            if ended && status.is_none() {
                return (true, "Job will be canceled".into());
            }
            if let Some(status) = status {
                return match status {
                    Status::Canceled => (true, "Job successfully cancelled".into()),
                    s => (
                        false,
                        format!(
                            "Job exited before it could have been canceled, status {}",
                            s.constant_name()
                        ),
                    ),
                };
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Err(_) => return (true, "Job will be canceled".into()),
                // The job finished: its final status is read above.
                Ok(Err(_)) => ended = true,
                Ok(Ok(())) => {}
            }
        }
    }

    /// Changes the priority of pending opcodes (spec jobs.md §9.3).
    pub async fn change_priority(
        &self,
        id: JobId,
        prio: i64,
    ) -> Result<(bool, String), InvalidPriority> {
        if !crate::opcodes::PRIORITIES.contains(&prio) {
            return Err(InvalidPriority(prio));
        }
        {
            let mut st = self.state();
            let queued_not_started = !st.started.contains(&id);
            let Some(job) = st.jobs.get_mut(&id).filter(|j| !j.is_finalized()) else {
                return Ok((false, format!("Job {id} not found in queue")));
            };
            if job.status() == Status::Canceling {
                return Ok((false, format!("Job {id} is cancelling")));
            }
            let old = job.priority();
            let mut changed = false;
            for op in &mut job.ops {
                if matches!(op.status, Status::Queued | Status::Waiting) {
                    op.priority = prio;
                    changed = true;
                }
            }
            if !changed {
                return Ok((false, format!("Job {id} had no pending opcodes")));
            }
            if queued_not_started && st.runnable.remove(&(old, id)) {
                st.runnable.insert((prio, id));
            }
            if queued_not_started && st.paused.remove(&(old, id)) {
                st.paused.insert((prio, id));
            }
        }
        self.write_back(id, Flush::Always).await;
        self.inner.wake_scheduler.notify_one();
        Ok((
            true,
            format!("Priorities of pending opcodes for job {id} have been changed to {prio}"),
        ))
    }

    /// Long-polls for a change of `fields` or new log entries (spec jobs.md §8). `Ok(None)` is
    /// Ganeti's "nothing changed" answer.
    pub async fn wait_for_change(
        &self,
        id: JobId,
        fields: &[String],
        previous: Option<&Value>,
        previous_serial: Option<u64>,
        timeout: Duration,
    ) -> Result<Option<(Vec<Value>, Vec<LogEntry>)>, WaitError> {
        if let Some(bad) = fields
            .iter()
            .find(|f| !job::JOB_FIELDS.contains(&f.as_str()))
        {
            return Err(WaitError::UnknownField(bad.clone()));
        }
        let answer = self
            .wait_changes(id, fields, previous, previous_serial, timeout)
            .await;
        self.unwatch(id);
        answer
    }

    async fn wait_changes(
        &self,
        id: JobId,
        fields: &[String],
        previous: Option<&Value>,
        previous_serial: Option<u64>,
        timeout: Duration,
    ) -> Result<Option<(Vec<Value>, Vec<LogEntry>)>, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let look = |job: &Job| job.changes_for(fields, previous, previous_serial);
        loop {
            let rx = self.watch(id);
            let seen = self.state().jobs.get(&id).map(look);
            let changes = match seen {
                Some(changes) => changes,
                None => look(&*self.job(id).ok_or(WaitError::NotFound(id))?),
            };
            if changes.is_some() {
                return Ok(changes);
            }
            // No receiver: the job finished in between, and the next look sees it.
            let Some(mut rx) = rx else { continue };
            // A change, or the channel dropped because the job finished: look again.
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Ok(None);
            }
        }
    }

    /// Archives one finished job; false if unknown, already archived or not finished.
    pub async fn archive(&self, id: JobId) -> bool {
        let job = match self.inner.store.stored_job(id) {
            Ok(Some(j)) if j.is_finalized() && !j.archived => j,
            _ => return false,
        };
        self.archive_jobs(vec![job], None).await.0 > 0
    }

    /// Moves finished jobs to the archive, stopping at `deadline`; one flush covers the whole
    /// batch. Answers (archived, left unchecked).
    async fn archive_jobs(
        &self,
        jobs: Vec<Job>,
        deadline: Option<tokio::time::Instant>,
    ) -> (usize, usize) {
        let total = jobs.len();
        let mut done = 0;
        for (i, mut job) in jobs.into_iter().enumerate() {
            if deadline.is_some_and(|d| tokio::time::Instant::now() > d) {
                self.flush_archive(done).await;
                return (done, total - i);
            }
            job.archived = true;
            if let Err(e) = self.inner.store.archive_job(&job) {
                tracing::error!(job = %job.id, "archiving failed: {e}");
                continue;
            }
            let mut st = self.state();
            st.recent.pop(&job.id);
            st.archive_generation += 1;
            st.finished_count = st.finished_count.saturating_sub(1);
            done += 1;
        }
        self.flush_archive(done).await;
        (done, 0)
    }

    async fn flush_archive(&self, archived: usize) {
        if archived > 0
            && let Err(e) = self.inner.store.durable().await
        {
            tracing::error!("flush after archiving failed: {e}");
        }
    }

    /// Archives finished jobs older than `age` (negative: all), in id order, within `timeout`;
    /// answers `(archived, left unchecked)` like upstream's AutoArchiveJobs.
    pub async fn auto_archive(&self, age: f64, timeout: Duration) -> (usize, usize) {
        let deadline = tokio::time::Instant::now() + timeout;
        let now = Timestamp::now().as_secs_f64();
        let mut old = vec![];
        let scan = || {
            self.inner.store.each_finished(false, |j| {
                let when = j.end_ts.or(j.start_ts).map_or(0.0, |t| t.as_secs_f64());
                if age < 0.0 || now - when > age {
                    old.push(j.clone());
                }
            })
        };
        if let Err(e) = tokio::task::block_in_place(scan) {
            tracing::error!("reading finished jobs failed: {e}");
        }
        self.archive_jobs(old, Some(deadline)).await
    }

    /// Archives the oldest finished jobs while more than `keep_finished` wait, down to nine
    /// tenths of it (so a steady stream archives in batches, not one job at a time).
    async fn archive_excess(&self) -> usize {
        let keep = self.inner.opts.keep_finished;
        let count = self.state().finished_count;
        if count <= keep {
            return 0;
        }
        let excess = count - keep + keep / 10;
        let oldest = tokio::task::block_in_place(|| self.inner.store.oldest_finished(excess));
        match oldest {
            Ok(jobs) => self.archive_jobs(jobs, None).await.0,
            Err(e) => {
                tracing::error!("reading finished jobs failed: {e}");
                0
            }
        }
    }

    async fn archive_loop(self) {
        let every = self.inner.opts.archive_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let age = self.inner.opts.archive_age.as_secs_f64();
                    let (n, _) = self.auto_archive(age, Duration::from_secs(60)).await;
                    if n > 0 {
                        tracing::info!(archived = n, "archived old jobs");
                    }
                    self.sweep_keys();
                }
                _ = self.inner.archive_now.notified() => {}
            }
            let n = self.archive_excess().await;
            if n > 0 {
                tracing::debug!(archived = n, "archived the oldest finished jobs");
            }
        }
    }

    /// Changes job `id` so that nobody sees the change before it is durable, when `must_flush`
    /// (asked of the job before the change) says it must be: `change` is applied to a copy,
    /// which is written and flushed, and only then to the job in memory (then written back,
    /// waking its waiters, as `write_back`). `change` answers `None` to leave the job as it is.
    /// Answers `change`'s answer, `None` when the job is gone or was left; on a failed flush,
    /// the error, the job in memory untouched.
    async fn change_durably<T>(
        &self,
        id: JobId,
        must_flush: impl FnOnce(&Job) -> bool,
        change: impl Fn(&mut Job) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        let copy = {
            let st = self.state();
            let Some(job) = st.jobs.get(&id) else {
                return Ok(None);
            };
            if must_flush(job) {
                let mut copy = job.clone();
                if change(&mut copy).is_none() {
                    return Ok(None);
                }
                Some(copy)
            } else {
                None
            }
        };
        if let Some(copy) = &copy {
            self.inner.store.put_job(copy)?;
            self.inner.store.durable().await?;
        }
        let (answer, flush) = {
            let mut st = self.state();
            let Some(job) = st.jobs.get_mut(&id) else {
                return Ok(None);
            };
            let Some(answer) = change(job) else {
                return Ok(None);
            };
            // Unchanged since the copy (the usual case): written and flushed already.
            let done = copy.as_ref().is_some_and(|copy| copy == &*job);
            (answer, if done { Flush::Done } else { Flush::IfFinal })
        };
        self.write_back(id, flush).await;
        Ok(Some(answer))
    }

    /// `change_durably` for a change that may end the job (`ends`, asked before it): when the
    /// flush fails, the job changes in memory regardless (logged; flushed once more, as every
    /// final state), since a job that cannot end would hang its runner and its waiters.
    async fn end_durably<T>(
        &self,
        id: JobId,
        ends: impl FnOnce(&Job) -> bool,
        change: impl Fn(&mut Job) -> Option<T>,
    ) -> Option<T> {
        match self.change_durably(id, ends, &change).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(job = %id, "flushing job failed: {e}");
                self.change_durably(id, |_| false, change)
                    .await
                    .unwrap_or_default()
            }
        }
    }

    /// Writes a job's current state and wakes its waiters, flushed first as `flush` says (final
    /// states always are). A finished job leaves memory: it is on disk and in `recent`.
    async fn write_back(&self, id: JobId, flush: Flush) {
        let (job, ended) = {
            let mut st = self.state();
            let Some(job) = st.jobs.get(&id) else {
                // Already finished: its final state was written then.
                return;
            };
            if !matches!(flush, Flush::Done)
                && let Err(e) = self.inner.store.put_job(job)
            {
                tracing::error!(job = %id, "writing job failed: {e}");
            }
            if job.is_finalized() {
                let Some(job) = st.jobs.remove(&id).map(Arc::new) else {
                    return;
                };
                st.recent.put(id, job.clone());
                st.finished_count += 1;
                METRICS.jobs_unfinished.set(st.jobs.len() as i64);
                if st.finished_count > self.inner.opts.keep_finished {
                    self.inner.archive_now.notify_one();
                }
                (job, Some(st.versions.remove(&id)))
            } else {
                (Arc::new(job.clone()), None)
            }
        };
        let flushes = match flush {
            Flush::Always => true,
            Flush::IfFinal => ended.is_some(),
            Flush::Done => false,
        };
        if flushes && let Err(e) = self.inner.store.durable().await {
            tracing::error!(job = %id, "flushing job failed: {e}");
        }
        if ended.is_some() {
            log_finished(&job);
        }
        // After the flush: a follower never hears of a final state that could be lost.
        self.inner.events.job_changed(&job);
        match ended {
            // Waiters wake, find the channel gone and read the final state.
            Some(tx) => drop(tx),
            None => self.bump(id),
        }
    }

    fn bump(&self, id: JobId) {
        if let Some(tx) = self.state().versions.get(&id) {
            tx.send_modify(|v| *v += 1);
        }
    }

    async fn schedule_loop(self) {
        loop {
            self.inner.wake_scheduler.notified().await;
            let limit = self
                .inner
                .cluster
                .snapshot()
                .cluster
                .max_running_jobs
                .max(1) as usize;
            let (to_start, to_reject) = {
                let mut guard = self.state();
                if guard.closing {
                    continue;
                }
                pick_jobs(&mut guard, limit)
            };
            for id in to_start {
                tokio::spawn(runner::run_job(self.clone(), id));
            }
            for id in to_reject {
                let queue = self.clone();
                tokio::spawn(async move {
                    let (_, msg) = queue.cancel(id).await;
                    tracing::info!(job = %id, "rejected by a filter rule: {msg}");
                });
            }
        }
    }

    /// Forgets idempotency keys older than their lifetime.
    pub fn sweep_keys(&self) {
        let ttl = self.inner.opts.idempotency_ttl.as_secs();
        match self
            .inner
            .store
            .sweep_keys(idempotency::now_secs().saturating_sub(ttl))
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "forgot expired idempotency keys"),
            Err(e) => tracing::warn!("sweeping idempotency keys failed: {e}"),
        }
    }

    /// The job event stream: retained events after `since` and the live feed.
    pub fn follow_events(&self, since: Option<u64>) -> events::Subscription {
        self.inner.events.subscribe(since)
    }

    pub fn event_followers(&self) -> usize {
        self.inner.events.followers()
    }

    /// Locks held and waited for by running jobs (the lock query).
    pub fn lock_snapshot(&self) -> Vec<crate::locking::LockInfo> {
        self.inner.locks.snapshot()
    }

    /// The filter rules, in the order they are consulted.
    pub fn filter_rules(&self) -> Vec<FilterRule> {
        self.state()
            .filters
            .iter()
            .map(|r| r.rule.clone())
            .collect()
    }

    /// Inserts (no uuid) or replaces a filter rule; answers its uuid. The watermark is the highest
    /// job id allocated so far; the reason trail gets a `luxid` entry.
    pub async fn replace_filter(
        &self,
        uuid: Option<String>,
        priority: i64,
        predicates: Vec<Value>,
        action: Value,
        mut reason_trail: Vec<Value>,
    ) -> Result<String, FilterRuleError> {
        let uuid = uuid.unwrap_or_else(crate::util::new_uuid);
        {
            let mut st = self.state();
            reason_trail.push(serde_json::json!([
                "luxid",
                "",
                Timestamp::now().as_nanos() as u64
            ]));
            let rule = CompiledRule::compile(FilterRule {
                uuid: uuid.clone(),
                priority,
                watermark: st.next_id.saturating_sub(1),
                predicates,
                action,
                reason_trail,
            })?;
            self.inner.store.put_filter_rule(&rule.rule)?;
            st.filters.retain(|r| r.rule.uuid != uuid);
            st.filters.push(rule);
            filters::sort_rules(&mut st.filters);
            release_paused(&mut st);
        }
        self.inner.store.durable().await?;
        self.inner.wake_scheduler.notify_one();
        Ok(uuid)
    }

    pub async fn delete_filter(&self, uuid: &str) -> Result<(), FilterRuleError> {
        {
            let mut st = self.state();
            if !self.inner.store.delete_filter_rule(uuid)? {
                return Err(FilterRuleError::NotFound(uuid.to_string()));
            }
            st.filters.retain(|r| r.rule.uuid != uuid);
            release_paused(&mut st);
        }
        self.inner.store.durable().await?;
        self.inner.wake_scheduler.notify_one();
        Ok(())
    }

    fn job_finished(&self, id: JobId) {
        {
            let mut st = self.state();
            st.started.remove(&id);
            st.cancels.remove(&id);
        }
        self.inner.wake_scheduler.notify_one();
    }

    /// Stops starting jobs and waits up to `grace` for running ones; the rest are recovered on the
    /// next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.state().closing = true;
        let deadline = tokio::time::Instant::now() + grace;
        while !self.state().started.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(e) = self.inner.store.durable().await {
            tracing::error!("final flush failed: {e}");
        }
    }
}

/// A job's opcodes, comma separated, for log lines.
pub(crate) fn op_names(job: &Job) -> String {
    let ops: Vec<&str> = job.ops.iter().map(|o| o.input.id().as_str()).collect();
    ops.join(",")
}

/// One line per finished job, for the operator's log.
fn log_finished(job: &Job) {
    let ops: Vec<&str> = job.ops.iter().map(|o| o.input.id().as_str()).collect();
    let seconds = match (job.start_ts, job.end_ts) {
        (Some(start), Some(end)) => end.as_secs_f64() - start.as_secs_f64(),
        _ => 0.0,
    };
    let opcode = ops.first().copied().unwrap_or_default().to_string();
    METRICS
        .jobs_finished
        .get_or_create(&crate::metrics::JobLabels {
            opcode: opcode.clone(),
            status: job.status().as_str().into(),
        })
        .inc();
    METRICS
        .job_run_seconds
        .get_or_create(&crate::metrics::OpcodeLabel { opcode })
        .observe(seconds);
    tracing::info!(
        job = %job.id,
        ops = %ops.join(","),
        status = job.status().as_str(),
        seconds = format!("{seconds:.3}"),
        "job finished"
    );
}

/// Rules changed: paused jobs are judged again in the next pass.
fn release_paused(st: &mut State) {
    let paused = std::mem::take(&mut st.paused);
    st.runnable.extend(paused);
}

/// One scheduling pass: takes runnable jobs in (priority, id) order while fewer than `limit` run,
/// skipping jobs whose dependencies are not finalized and applying the filter rules and the
/// ad-hoc rate limits. Answers the jobs to start and the jobs a REJECT rule matched.
fn pick_jobs(st: &mut State, limit: usize) -> (Vec<JobId>, Vec<JobId>) {
    let mut per_rule: HashMap<String, usize> = HashMap::new();
    let mut per_bucket: HashMap<String, usize> = HashMap::new();
    for job in st.started.iter().filter_map(|id| st.jobs.get(id)) {
        if let (Action::RateLimit(_), Some(uuid)) = filters::decide(&st.filters, job) {
            *per_rule.entry(uuid.to_string()).or_default() += 1;
        }
        for (bucket, _) in filters::rate_limit_buckets(job) {
            *per_bucket.entry(bucket).or_default() += 1;
        }
    }
    let (mut to_start, mut to_reject, mut skipped) = (vec![], vec![], vec![]);
    while st.started.len() < limit {
        let Some(entry) = st.runnable.pop_first() else {
            break;
        };
        let id = entry.1;
        let Some(job) = st.jobs.get(&id) else {
            continue;
        };
        let dependencies_done = job
            .ops
            .iter()
            .flat_map(|o| o.input.depends())
            .all(|(dep, _)| {
                st.jobs
                    .get(&JobId(dep.max(0) as u64))
                    .is_none_or(|d| d.is_finalized())
            });
        let allowed = dependencies_done
            && match filters::decide(&st.filters, job) {
                (Action::Pause, _) => {
                    st.paused.insert(entry);
                    continue;
                }
                (Action::Reject, _) => {
                    to_reject.push(id);
                    false
                }
                (Action::RateLimit(n), Some(uuid)) => {
                    let running = per_rule.entry(uuid.to_string()).or_default();
                    *running < n && {
                        *running += 1;
                        true
                    }
                }
                _ => true,
            };
        let buckets = filters::rate_limit_buckets(job);
        let allowed = allowed
            && buckets
                .iter()
                .all(|(b, n)| per_bucket.get(b).copied().unwrap_or(0) < *n);
        if !allowed {
            skipped.push(entry);
            continue;
        }
        for (bucket, _) in buckets {
            *per_bucket.entry(bucket).or_default() += 1;
        }
        st.started.insert(id);
        st.cancels.insert(id, watch::channel(false).0);
        to_start.push(id);
    }
    st.runnable.extend(skipped);
    (to_start, to_reject)
}

/// Builds a job: reason trail entries, relative dependencies resolved to absolute ids.
fn build_job(id: JobId, mut ops: Vec<OpCode>, received: Timestamp) -> Result<Job, SubmitError> {
    if ops.is_empty() {
        return Err(SubmitError::Invalid(
            "A job needs at least one opcode".into(),
        ));
    }
    for (index, op) in ops.iter_mut().enumerate() {
        let mut resolved = vec![];
        for (dep, statuses) in op.depends() {
            let absolute = if dep < 0 { id.0 as i64 + dep } else { dep };
            if absolute < 1 {
                return Err(SubmitError::Invalid(format!(
                    "Unable to resolve relative job ID {dep}"
                )));
            }
            resolved.push(serde_json::json!([absolute, statuses]));
        }
        if op.get("depends").is_some() {
            op.set("depends", Value::Array(resolved));
        }
        let source = op.reason_source();
        op.append_reason(
            &source,
            &format!("job={id};index={index}"),
            received.as_nanos(),
        );
    }
    Ok(Job::new(id, ops, received))
}
