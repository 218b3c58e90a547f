//! The sled database and its group commit: one flusher thread makes writes durable and wakes every
//! caller whose writes that flush covered, so concurrent callers share fsyncs.
//!
//! sled 0.34's `flush_async` deadlocks when many tasks call it at once (sled #1308), so nothing but
//! the flusher thread ever flushes while the server runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use thiserror::Error;
use tokio::sync::watch;

#[derive(Debug, Error, Clone)]
pub enum StorageError {
    #[error("cannot open the database: {0}")]
    Open(String),
    #[error("flush to stable storage failed: {0}")]
    Flush(String),
    /// Another process has the database open (sled holds an exclusive file lock).
    #[error("{0}: another process has this database open")]
    InUse(String),
}

/// What the flusher has done: every request up to `done` is durable; requests after `done` and up
/// to `failed_up_to` were covered by a flush that failed with `error`. The flusher keeps
/// running after a failure, so the next request tries again (a full disk that gets space back
/// serves again without a restart).
#[derive(Debug, Clone, Default)]
struct Flushed {
    done: u64,
    failed_up_to: u64,
    error: String,
}

struct Flusher {
    requested: AtomicU64,
    wake: (Mutex<bool>, Condvar),
    flushed: watch::Sender<Flushed>,
}

#[derive(Clone)]
pub struct GroupCommit {
    db: sled::Db,
    path: PathBuf,
    flusher: Arc<Flusher>,
    /// Every write to the database holds this shared; a backup holds it exclusively while it
    /// copies, so the copy is one instant of every tree (sled has no cross-tree snapshot).
    gate: Arc<RwLock<()>>,
    /// No flusher thread (`open_offline`).
    offline: bool,
}

impl GroupCommit {
    pub fn open(path: &Path) -> Result<GroupCommit, StorageError> {
        let commit = GroupCommit::unflushed(path, false)?;
        let (thread_db, thread_flusher) = (commit.db.clone(), commit.flusher.clone());
        std::thread::Builder::new()
            .name("sled-flusher".into())
            .spawn(move || flush_loop(thread_db, thread_flusher))
            .map_err(|e| StorageError::Open(e.to_string()))?;
        Ok(commit)
    }

    /// Opens a database for a tool that writes it once and closes it (a backup's copy): no
    /// flusher thread, and `durable` flushes at once.
    pub fn open_offline(path: &Path) -> Result<GroupCommit, StorageError> {
        GroupCommit::unflushed(path, true)
    }

    /// The database without its flusher thread (`open` starts one).
    fn unflushed(path: &Path, offline: bool) -> Result<GroupCommit, StorageError> {
        let (tx, _) = watch::channel(Flushed::default());
        Ok(GroupCommit {
            db: open_db(path)?,
            path: path.to_path_buf(),
            flusher: Arc::new(Flusher {
                requested: AtomicU64::new(0),
                wake: (Mutex::new(false), Condvar::new()),
                flushed: tx,
            }),
            gate: Arc::new(RwLock::new(())),
            offline,
        })
    }

    /// Held (shared) around every write, so a backup never sees half of a change spread over
    /// several calls. Never held across an await.
    pub fn writing(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    fn paused(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies every tree into `target` (a new, empty database) while every writer here waits:
    /// the copy is one instant of the whole database. Durable when this answers.
    pub fn copy_into(&self, target: &GroupCommit) -> Result<(), StorageError> {
        {
            let _paused = self.paused();
            target.db.import(self.db.export());
        }
        target.flush_now()
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The directory holding the database (the server's data dir).
    pub fn data_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Waits until everything written before this call is on stable storage.
    pub async fn durable(&self) -> Result<(), StorageError> {
        if self.offline {
            return self.flush_now();
        }
        let generation = self.flusher.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.flusher.flushed.subscribe();
        {
            let (lock, cvar) = &self.flusher.wake;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cvar.notify_one();
        }
        loop {
            {
                let state = rx.borrow_and_update();
                if state.done >= generation {
                    return Ok(());
                }
                if state.failed_up_to >= generation {
                    return Err(StorageError::Flush(state.error.clone()));
                }
            }
            if rx.changed().await.is_err() {
                return Err(StorageError::Flush("flusher stopped".into()));
            }
        }
    }

    /// A direct flush for start-up and shutdown, when nobody else is writing.
    pub fn flush_now(&self) -> Result<(), StorageError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StorageError::Flush(e.to_string()))
    }
}

/// Opens sled, turning its panics on a damaged file (it asserts while recovering) into an error
/// that names the database and says what to do.
/// sled's page cache. Its default (1 GiB) would let memory grow with the stored history; hot
/// records (unfinished jobs, the config) are few, and finished jobs are read rarely.
const CACHE_BYTES: u64 = 64 << 20;

fn open_db(path: &Path) -> Result<sled::Db, StorageError> {
    let damaged = |detail: String| {
        StorageError::Open(format!(
            "the database at {} is damaged ({detail}); run `gantry check-db` on it, then \
             restore the data dir from a backup or move it aside to start a new cluster",
            path.display()
        ))
    };
    // Quiet the default hook for the duration: the message goes into the error instead.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| {
        sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
    });
    std::panic::set_hook(previous);
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Corruption { at, .. })) => Err(damaged(format!("corrupt at {at:?}"))),
        // sled reports its file lock as a plain I/O error with this text (kind `Other`).
        Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
            Err(StorageError::InUse(path.display().to_string()))
        }
        Ok(Err(e)) => Err(StorageError::Open(format!("{}: {e}", path.display()))),
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "sled panicked".into());
            Err(damaged(text))
        }
    }
}

fn flush_loop(db: sled::Db, f: Arc<Flusher>) {
    loop {
        {
            let (lock, cvar) = &f.wake;
            let mut pending = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !*pending {
                pending = cvar.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            *pending = false;
        }
        // Every caller counted in `target` wrote before it asked, so this flush covers it.
        let target = f.requested.load(Ordering::SeqCst);
        let since = std::time::Instant::now();
        let flushed = db.flush();
        let metrics = &crate::metrics::METRICS;
        metrics.flush_seconds.observe(since.elapsed().as_secs_f64());
        match flushed {
            Ok(_) => f.flushed.send_modify(|s| {
                metrics
                    .flush_batch
                    .observe(target.saturating_sub(s.done.max(s.failed_up_to)) as f64);
                s.done = s.done.max(target)
            }),
            Err(e) => {
                tracing::error!("sled flush failed (the waiting writers are told): {e}");
                f.flushed.send_modify(|s| {
                    s.failed_up_to = s.failed_up_to.max(target);
                    s.error = e.to_string();
                });
                // Do not spin on a full disk: the next request retries after a pause.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}
