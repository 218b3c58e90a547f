//! Durable job storage in sled: live jobs, archived jobs, the id counter, filter rules; and the
//! drain flag, which is a file in the data dir (as upstream keeps it in the queue dir) so an admin
//! can set it while the server runs: `gantry queue drain`, or just creating the file.

use super::filters::FilterRule;
use super::idempotency::{Idempotency, KeyRecord};
use super::job::{Job, JobId, LogEntry};
use crate::storage::{GroupCommit, StorageError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Flush(#[from] StorageError),
}

#[derive(Clone)]
pub struct Store {
    commit: GroupCommit,
    jobs: sled::Tree,
    archive: sled::Tree,
    meta: sled::Tree,
    filters: sled::Tree,
    /// One record per log entry: key = job id, serial (both big-endian), value =
    /// `[opcode index, entry]`.
    logs: sled::Tree,
    /// Idempotency keys: user NUL key → `KeyRecord`.
    keys: sled::Tree,
    drain_file: std::path::PathBuf,
}

const NEXT_ID: &[u8] = b"next_job_id";
/// The drain flag's file name in the data dir.
pub const DRAIN_FILE: &str = "queue-drained";

fn key(id: JobId) -> [u8; 8] {
    id.0.to_be_bytes()
}

impl Store {
    pub fn open(commit: &GroupCommit) -> Result<Store, StoreError> {
        let db = commit.db();
        Ok(Store {
            jobs: db.open_tree("jobs")?,
            archive: db.open_tree("archive")?,
            meta: db.open_tree("meta")?,
            filters: db.open_tree("filters")?,
            logs: db.open_tree("joblog")?,
            keys: db.open_tree("idempotency")?,
            drain_file: commit.data_dir().join(DRAIN_FILE),
            commit: commit.clone(),
        })
    }

    /// Waits until everything written before this call is on stable storage.
    pub async fn durable(&self) -> Result<(), StoreError> {
        Ok(self.commit.durable().await?)
    }

    pub fn put_job(&self, job: &Job) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(job).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tree = if job.archived {
            &self.archive
        } else {
            &self.jobs
        };
        tree.insert(key(job.id), bytes)?;
        Ok(())
    }

    /// Writes a new job and the idempotency key that created it in one transaction: after a
    /// crash both exist or neither does.
    pub fn put_job_keyed(
        &self,
        job: &Job,
        idem: &Idempotency,
        record: &KeyRecord,
    ) -> Result<(), StoreError> {
        use sled::Transactional;
        let bytes = serde_json::to_vec(job).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let rec = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let store_key = idem.store_key();
        (&self.jobs, &self.keys)
            .transaction(|(jobs, keys)| {
                jobs.insert(&key(job.id), bytes.clone())?;
                keys.insert(store_key.clone(), rec.clone())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Corrupt(format!("keyed submit transaction: {e:?}")))?;
        Ok(())
    }

    pub fn key_record(&self, key: &Idempotency) -> Result<Option<KeyRecord>, StoreError> {
        match self.keys.get(key.store_key())? {
            Some(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            None => Ok(None),
        }
    }

    pub fn remove_key(&self, key: &Idempotency) -> Result<(), StoreError> {
        self.keys.remove(key.store_key())?;
        Ok(())
    }

    /// Forgets keys created before `cutoff` (seconds since the epoch); answers how many.
    pub fn sweep_keys(&self, cutoff: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.keys.iter() {
            let (k, v) = item?;
            let expired =
                serde_json::from_slice::<KeyRecord>(&v).map_or(true, |r| r.created < cutoff);
            if expired {
                self.keys.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes a live job's record (a submission that was refused after its record was written).
    pub fn remove_job(&self, id: JobId) -> Result<(), StoreError> {
        self.jobs.remove(key(id))?;
        Ok(())
    }

    /// Moves a finalized job to the archive tree, atomically.
    pub fn archive_job(&self, job: &Job) -> Result<(), StoreError> {
        use sled::Transactional;
        let bytes = serde_json::to_vec(job).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        (&self.jobs, &self.archive)
            .transaction(|(jobs, archive)| {
                jobs.remove(&key(job.id))?;
                archive.insert(&key(job.id), bytes.clone())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Corrupt(format!("archive transaction: {e:?}")))?;
        Ok(())
    }

    pub fn archived_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        match self.archive.get(key(id))? {
            Some(bytes) => Ok(Some(self.with_logs(decode(&bytes)?)?)),
            None => Ok(None),
        }
    }

    /// Calls `f` with each archived job in id order (only those in `ids` when given), one at a
    /// time: memory stays bounded by one job, however large the archive. Log entries are read
    /// only when `logs` is set.
    pub fn each_archived(
        &self,
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
                    if let Some(bytes) = self.archive.get(key(JobId(*id)))? {
                        f(&load(&bytes)?);
                    }
                }
            }
            None => {
                for bytes in self.archive.iter().values() {
                    f(&load(&bytes?)?);
                }
            }
        }
        Ok(())
    }

    pub fn live_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.jobs
            .iter()
            .values()
            .map(|v| self.with_logs(decode(&v?)?))
            .collect()
    }

    /// Reads every record (`gantry check-db`): answers (live jobs, archived jobs, log entries)
    /// or the first record that does not decode.
    pub fn check(&self) -> Result<(usize, usize, usize), StoreError> {
        let live = self.live_jobs()?.len();
        let mut archived = 0;
        self.each_archived(None, true, |_| archived += 1)?;
        let logs = self.logs.len();
        self.next_id()?;
        self.filter_rules()?;
        Ok((live, archived, logs))
    }

    /// Appends one log entry of opcode `index` of job `id` (made durable by the next flush).
    pub fn put_log(&self, id: JobId, index: usize, entry: &LogEntry) -> Result<(), StoreError> {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&key(id));
        k[8..].copy_from_slice(&entry.0.to_be_bytes());
        let bytes =
            serde_json::to_vec(&(index, entry)).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.logs.insert(k, bytes)?;
        Ok(())
    }

    /// Adds the separately stored log entries to a job read from its record.
    fn with_logs(&self, mut job: Job) -> Result<Job, StoreError> {
        for item in self.logs.scan_prefix(key(job.id)) {
            let (_, bytes) = item?;
            let (index, entry): (usize, LogEntry) = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("log entry of job {}: {e}", job.id)))?;
            if let Some(op) = job.ops.get_mut(index) {
                job.log_size.0 += 1;
                job.log_size.1 += entry.3.to_string().len();
                op.log.push(entry);
            }
        }
        Ok(job)
    }

    pub fn max_archived_id(&self) -> Result<u64, StoreError> {
        Ok(match self.archive.last()? {
            Some((k, _)) => u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8])),
            None => 0,
        })
    }

    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(NEXT_ID)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(1))
    }

    pub fn set_next_id(&self, next: u64) -> Result<(), StoreError> {
        self.meta.insert(NEXT_ID, &next.to_be_bytes())?;
        Ok(())
    }

    pub fn drain_flag(&self) -> Result<bool, StoreError> {
        Ok(self.drain_file.exists())
    }

    pub fn set_drain_flag(&self, on: bool) -> Result<(), StoreError> {
        set_drain_file(&self.drain_file, on).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

impl Store {
    pub fn filter_rules(&self) -> Result<Vec<FilterRule>, StoreError> {
        self.filters
            .iter()
            .values()
            .map(|v| serde_json::from_slice(&v?).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect()
    }

    pub fn put_filter_rule(&self, rule: &FilterRule) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rule).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.filters.insert(rule.uuid.as_bytes(), bytes)?;
        Ok(())
    }

    /// Answers whether the rule existed.
    pub fn delete_filter_rule(&self, uuid: &str) -> Result<bool, StoreError> {
        Ok(self.filters.remove(uuid.as_bytes())?.is_some())
    }
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
