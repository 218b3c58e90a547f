//! The sled database and its group commit: one flusher thread makes writes durable and wakes every
//! caller whose writes that flush covered, so concurrent callers share fsyncs.
//!
//! sled 0.34's `flush_async` deadlocks when many tasks call it at once (sled #1308), so nothing but
//! the flusher thread ever flushes while the server runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use thiserror::Error;
use tokio::sync::watch;

#[derive(Debug, Error, Clone)]
pub enum StorageError {
    #[error("cannot open the database: {0}")]
    Open(String),
    #[error("flush to stable storage failed: {0}")]
    Flush(String),
}

/// What the flusher has made durable: a generation number, or the error that stopped it.
type Flushed = Result<u64, String>;

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
}

impl GroupCommit {
    pub fn open(path: &Path) -> Result<GroupCommit, StorageError> {
        let db = sled::Config::new()
            .path(path)
            .open()
            .map_err(|e| StorageError::Open(e.to_string()))?;
        let (tx, _) = watch::channel(Ok(0));
        let flusher = Arc::new(Flusher {
            requested: AtomicU64::new(0),
            wake: (Mutex::new(false), Condvar::new()),
            flushed: tx,
        });
        let (thread_db, thread_flusher) = (db.clone(), flusher.clone());
        std::thread::Builder::new()
            .name("sled-flusher".into())
            .spawn(move || flush_loop(thread_db, thread_flusher))
            .map_err(|e| StorageError::Open(e.to_string()))?;
        Ok(GroupCommit {
            db,
            path: path.to_path_buf(),
            flusher,
        })
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
        let generation = self.flusher.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.flusher.flushed.subscribe();
        {
            let (lock, cvar) = &self.flusher.wake;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cvar.notify_one();
        }
        loop {
            match &*rx.borrow_and_update() {
                Ok(done) if *done >= generation => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(StorageError::Flush(e.clone())),
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
        let outcome = db.flush().map(|_| target).map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            tracing::error!("sled flush failed: {e}");
        }
        let failed = outcome.is_err();
        let _ = f.flushed.send_replace(outcome);
        if failed {
            return;
        }
    }
}
