//! Durable job storage (in sled, through `kv::Kv`): unfinished, finished and archived jobs in three trees (so a
//! restart reads only the unfinished ones), log entries as their own records, the id counter,
//! filter rules; and the drain flag, which is a file in the data dir (as upstream keeps it in the queue dir) so an admin
//! can set it while the server runs: `gantry queue drain`, or just creating the file.

use super::filters::FilterRule;
use super::idempotency::{Idempotency, KeyRecord};
use super::job::{Job, JobId, LogEntry};
use crate::kv::{Database, Kv, Write};
use crate::storage::StorageError;
use std::sync::Arc;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Clone)]
pub struct Store {
    db: Database,
    kv: Arc<dyn Kv>,
    /// sled: the file in the data dir; a replicated store: none, the flag is a record of the
    /// store (every master sees the same flag).
    drain_file: Option<std::path::PathBuf>,
    /// The replicated store's flag as last read, and when.
    drained: Arc<std::sync::Mutex<Option<(std::time::Instant, bool)>>>,
}

/// How long a drain flag read from a replicated store is trusted.
const DRAIN_FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Jobs not yet finalized: the only ones loaded at start-up.
const JOBS: &str = "jobs";
/// Finalized jobs not yet archived (listed by `GET /2/jobs`).
const FINISHED: &str = "finished";
const ARCHIVE: &str = "archive";
const META: &str = "meta";
const FILTERS: &str = "filters";
/// One record per log entry: key = job id, serial (both big-endian), value =
/// `[opcode index, entry]`.
const LOGS: &str = "joblog";
/// Idempotency keys: user NUL key → `KeyRecord`.
const KEYS: &str = "idempotency";

const NEXT_ID: &[u8] = b"next_job_id";
/// The storage layout's version: absent in data dirs of the first layout, where finished jobs
/// shared the `jobs` tree with unfinished ones.
const LAYOUT: &[u8] = b"layout";
const LAYOUT_VERSION: u64 = 2;
/// The drain flag's record on a replicated store.
const DRAINED: &[u8] = b"drained";
/// The drain flag's file name in the data dir.
pub const DRAIN_FILE: &str = "queue-drained";

fn key(id: JobId) -> [u8; 8] {
    id.0.to_be_bytes()
}

/// The job a record of tree `tree` belongs to (a job, finished or archived, or one of its log
/// entries); `None` for every other record. For a follower watching the records change.
pub fn job_of_record(tree: &str, key: &[u8]) -> Option<JobId> {
    if ![JOBS, FINISHED, ARCHIVE, LOGS].contains(&tree) {
        return None;
    }
    let id: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(JobId(u64::from_be_bytes(id)))
}

impl Store {
    pub fn open(db: impl Into<Database>) -> Result<Store, StoreError> {
        let db = db.into();
        Ok(Store {
            kv: db.kv(),
            drain_file: db.data_dir().map(|dir| dir.join(DRAIN_FILE)),
            drained: Arc::default(),
            db,
        })
    }

    /// Waits until everything written before this call is on stable storage.
    pub async fn durable(&self) -> Result<(), StoreError> {
        Ok(self.db.durable().await?)
    }

    /// Every value of `tree` (with key prefix `prefix`), in key order, until `visit` says stop.
    fn each(
        &self,
        tree: &str,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut failure = None;
        self.kv.scan(tree, prefix, &mut |k, v| match visit(k, v) {
            Ok(go_on) => Ok(go_on),
            Err(e) => {
                failure = Some(e);
                Ok(false)
            }
        })?;
        failure.map_or(Ok(()), Err)
    }

    /// Writes a job into the tree its state belongs to; a job that just finished moves from the
    /// unfinished tree to the finished one atomically.
    pub fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        let bytes = encode(job)?;
        let k = key(job.id);
        if job.archived {
            self.kv.apply_blind(&[Write::Put(ARCHIVE, &k, &bytes)])?;
        } else if job.is_finalized() {
            self.kv
                .apply_blind(&[Write::Delete(JOBS, &k), Write::Put(FINISHED, &k, &bytes)])?;
        } else {
            self.kv.apply_blind(&[Write::Put(JOBS, &k, &bytes)])?;
        }
        Ok(())
    }

    /// Writes a new job, with the idempotency key that created it, in one transaction: after a
    /// crash both exist or neither does. On a replicated store the id counter moves in the same
    /// transaction (one round trip per job; `counter_with_jobs`).
    pub fn put_new_job(
        &self,
        job: &Job,
        keyed: Option<(&Idempotency, &KeyRecord)>,
    ) -> Result<(), StoreError> {
        let bytes = encode(job)?;
        let k = key(job.id);
        let next = (job.id.0 + 1).to_be_bytes();
        let record = match keyed {
            Some((idem, record)) => Some((
                idem.store_key(),
                serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            )),
            None => None,
        };
        let mut writes = vec![Write::Put(JOBS, &k, &bytes)];
        if let Some((store_key, rec)) = &record {
            writes.push(Write::Put(KEYS, store_key, rec));
        }
        if self.counter_with_jobs() {
            writes.push(Write::Put(META, NEXT_ID, &next));
        }
        self.kv.apply_blind(&writes)?;
        Ok(())
    }

    /// Whether `put_new_job` moves the id counter itself. On sled a job is one insert and the
    /// submitter writes the counter once per submission; on etcd each write is a round trip.
    pub fn counter_with_jobs(&self) -> bool {
        self.drain_file.is_none()
    }

    pub fn key_record(&self, key: &Idempotency) -> Result<Option<KeyRecord>, StoreError> {
        match self.kv.get(KEYS, &key.store_key())? {
            Some(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            None => Ok(None),
        }
    }

    pub fn remove_key(&self, key: &Idempotency) -> Result<(), StoreError> {
        self.kv.apply(&[Write::Delete(KEYS, &key.store_key())])?;
        Ok(())
    }

    /// Forgets keys created before `cutoff` (seconds since the epoch); answers how many.
    pub fn sweep_keys(&self, cutoff: u64) -> Result<usize, StoreError> {
        let mut expired = vec![];
        self.each(KEYS, b"", |k, v| {
            if serde_json::from_slice::<KeyRecord>(v).map_or(true, |r| r.created < cutoff) {
                expired.push(k.to_vec());
            }
            Ok(true)
        })?;
        for k in &expired {
            self.kv.apply(&[Write::Delete(KEYS, k)])?;
        }
        Ok(expired.len())
    }

    /// Deletes a live job's record (a submission that was refused after its record was written).
    pub fn remove_job(&self, id: JobId) -> Result<(), StoreError> {
        self.kv.apply(&[Write::Delete(JOBS, &key(id))])?;
        Ok(())
    }

    /// Moves a finished job to the archive tree, atomically.
    pub fn archive_job(&self, job: &Job) -> Result<(), StoreError> {
        let bytes = encode(job)?;
        let k = key(job.id);
        self.kv
            .apply_blind(&[Write::Delete(FINISHED, &k), Write::Put(ARCHIVE, &k, &bytes)])?;
        Ok(())
    }

    /// A job wherever it is (unfinished, finished or archived), with its log: what a master
    /// that does not run the queue reads. The trees are read in the order a job moves through
    /// them, so a job moving meanwhile is still found.
    pub fn any_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        match self.kv.get(JOBS, &key(id))? {
            Some(bytes) => Ok(Some(self.with_logs(decode(&bytes)?)?)),
            None => self.stored_job(id),
        }
    }

    /// A finished or archived job with its log, read from disk.
    pub fn stored_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        for tree in [FINISHED, ARCHIVE] {
            if let Some(bytes) = self.kv.get(tree, &key(id))? {
                return Ok(Some(self.with_logs(decode(&bytes)?)?));
            }
        }
        Ok(None)
    }

    /// Calls `f` with each archived job in id order (only those in `ids` when given), one at a
    /// time: memory stays bounded by one job, however large the archive. Log entries are read
    /// only when `logs` is set.
    pub fn each_archived(
        &self,
        ids: Option<&[u64]>,
        logs: bool,
        f: impl FnMut(&Job),
    ) -> Result<(), StoreError> {
        self.each_in(ARCHIVE, ids, logs, f)
    }

    /// Like `each_archived`, over the finished (not archived) jobs.
    pub fn each_finished(&self, logs: bool, f: impl FnMut(&Job)) -> Result<(), StoreError> {
        self.each_in(FINISHED, None, logs, f)
    }

    fn each_in(
        &self,
        tree: &str,
        ids: Option<&[u64]>,
        logs: bool,
        mut f: impl FnMut(&Job),
    ) -> Result<(), StoreError> {
        let load = |bytes: &[u8]| -> Result<Job, StoreError> {
            let job = decode(bytes)?;
            if logs { self.with_logs(job) } else { Ok(job) }
        };
        match ids {
            Some(ids) => {
                for id in ids {
                    if let Some(bytes) = self.kv.get(tree, &key(JobId(*id)))? {
                        f(&load(&bytes)?);
                    }
                }
            }
            None => self.each(tree, b"", |_, v| {
                f(&load(v)?);
                Ok(true)
            })?,
        }
        Ok(())
    }

    /// The ids of finished jobs, in order, without decoding their records.
    pub fn finished_ids(&self) -> Result<Vec<JobId>, StoreError> {
        let mut ids = vec![];
        self.each(FINISHED, b"", |k, _| {
            ids.push(JobId(id_of(k)));
            Ok(true)
        })?;
        Ok(ids)
    }

    /// The `n` finished jobs with the lowest ids (archived first when there are too many).
    pub fn oldest_finished(&self, n: usize) -> Result<Vec<Job>, StoreError> {
        let mut jobs = vec![];
        if n == 0 {
            return Ok(jobs);
        }
        self.each(FINISHED, b"", |_, v| {
            jobs.push(decode(v)?);
            Ok(jobs.len() < n)
        })?;
        Ok(jobs)
    }

    /// How many finished jobs wait for archiving (counted once at start-up; the queue keeps
    /// the count after that).
    pub fn finished_count(&self) -> usize {
        self.kv.count(FINISHED).unwrap_or(0)
    }

    /// The jobs a restart must look at: those not finalized.
    pub fn unfinished_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let mut jobs = vec![];
        self.each(JOBS, b"", |_, v| {
            jobs.push(decode(v)?);
            Ok(true)
        })?;
        jobs.into_iter().map(|j| self.with_logs(j)).collect()
    }

    /// Brings a data dir of the first layout to this one: finished jobs leave the unfinished
    /// tree. Each move is atomic and the layout mark is written last, so an interrupted
    /// migration just runs again. Answers how many jobs moved.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        let version = self
            .kv
            .get(META, LAYOUT)?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes));
        if version.is_some_and(|v| v >= LAYOUT_VERSION) {
            return Ok(0);
        }
        let mut done = vec![];
        self.each(JOBS, b"", |_, v| {
            let job = decode(v)?;
            if job.is_finalized() {
                done.push(job);
            }
            Ok(true)
        })?;
        for job in &done {
            self.put_job(job)?;
        }
        self.kv
            .apply(&[Write::Put(META, LAYOUT, &LAYOUT_VERSION.to_be_bytes())])?;
        Ok(done.len())
    }

    /// Reads every record (`gantry check-db`): answers (unfinished, finished, archived jobs, log
    /// entries) or the first record that does not decode.
    pub fn check(&self) -> Result<(usize, usize, usize, usize), StoreError> {
        let unfinished = self.unfinished_jobs()?.len();
        let mut finished = 0;
        self.each_finished(true, |_| finished += 1)?;
        let mut archived = 0;
        self.each_archived(None, true, |_| archived += 1)?;
        let logs = self.kv.count(LOGS)?;
        self.next_id()?;
        self.filter_rules()?;
        Ok((unfinished, finished, archived, logs))
    }

    /// Appends one log entry of opcode `index` of job `id` (made durable by the next flush).
    pub fn put_log(&self, id: JobId, index: usize, entry: &LogEntry) -> Result<(), StoreError> {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&key(id));
        k[8..].copy_from_slice(&entry.0.to_be_bytes());
        let bytes =
            serde_json::to_vec(&(index, entry)).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.kv.apply_blind(&[Write::Put(LOGS, &k, &bytes)])?;
        Ok(())
    }

    /// Adds the separately stored log entries to a job read from its record.
    fn with_logs(&self, mut job: Job) -> Result<Job, StoreError> {
        let id = job.id;
        self.each(LOGS, &key(id), |_, bytes| {
            let (index, entry): (usize, LogEntry) = serde_json::from_slice(bytes)
                .map_err(|e| StoreError::Corrupt(format!("log entry of job {id}: {e}")))?;
            if let Some(op) = job.ops.get_mut(index) {
                job.log_size.0 += 1;
                job.log_size.1 += entry.3.to_string().len();
                op.log.push(entry);
            }
            Ok(true)
        })?;
        Ok(job)
    }

    /// The highest job id in any tree (the counter may lag behind it in old data dirs).
    pub fn max_stored_id(&self) -> Result<u64, StoreError> {
        let mut max = 0;
        for tree in [JOBS, FINISHED, ARCHIVE] {
            if let Some(k) = self.kv.last_key(tree)? {
                max = max.max(id_of(&k));
            }
        }
        Ok(max)
    }

    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self
            .kv
            .get(META, NEXT_ID)?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1))
    }

    pub fn set_next_id(&self, next: u64) -> Result<(), StoreError> {
        self.kv
            .apply_blind(&[Write::Put(META, NEXT_ID, &next.to_be_bytes())])?;
        Ok(())
    }

    /// On a replicated store the flag is read at most once a second (every submission asks).
    pub fn drain_flag(&self) -> Result<bool, StoreError> {
        if let Some(file) = &self.drain_file {
            return Ok(file.exists());
        }
        let mut cached = self.drained.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((read, on)) = *cached
            && read.elapsed() < DRAIN_FRESH
        {
            return Ok(on);
        }
        let on = self.kv.get(META, DRAINED)?.is_some();
        *cached = Some((std::time::Instant::now(), on));
        Ok(on)
    }

    pub fn set_drain_flag(&self, on: bool) -> Result<(), StoreError> {
        match &self.drain_file {
            Some(file) => set_drain_file(file, on).map_err(|e| StoreError::Corrupt(e.to_string())),
            None => {
                *self.drained.lock().unwrap_or_else(|e| e.into_inner()) = None;
                let write = if on {
                    Write::Put(META, DRAINED, b"1")
                } else {
                    Write::Delete(META, DRAINED)
                };
                self.kv.apply(&[write])?;
                Ok(())
            }
        }
    }
}

impl Store {
    pub fn filter_rules(&self) -> Result<Vec<FilterRule>, StoreError> {
        let mut rules = vec![];
        self.each(FILTERS, b"", |_, v| {
            rules.push(serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(e.to_string()))?);
            Ok(true)
        })?;
        Ok(rules)
    }

    pub fn put_filter_rule(&self, rule: &FilterRule) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rule).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.kv
            .apply_blind(&[Write::Put(FILTERS, rule.uuid.as_bytes(), &bytes)])?;
        Ok(())
    }

    /// Answers whether the rule existed.
    pub fn delete_filter_rule(&self, uuid: &str) -> Result<bool, StoreError> {
        let removed = self.kv.apply(&[Write::Delete(FILTERS, uuid.as_bytes())])?;
        Ok(removed.first().copied().unwrap_or(false))
    }
}

fn id_of(k: &[u8]) -> u64 {
    u64::from_be_bytes(k.try_into().unwrap_or([0; 8]))
}

fn encode(job: &Job) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(job).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<Job, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Creates or removes the drain file durably (the file, then its directory, are synced).
pub fn set_drain_file(path: &std::path::Path, on: bool) -> std::io::Result<()> {
    if on {
        std::fs::File::create(path)?.sync_all()?;
    } else if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
