//! The key-value interface the stores are written against (issue 16): named trees of byte keys
//! in order, reads, prefix scans, and atomic batches of writes over several trees. The job
//! store, the configuration and the keyed records use only this, so the database under them
//! can be sled (one master, the default) or etcd (several masters, `ha.rs`).

use crate::storage::{GroupCommit, StorageError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// One write of an atomic batch.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    Put(&'a str, &'a [u8], &'a [u8]),
    Delete(&'a str, &'a [u8]),
}

pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StorageError> + 'a;

pub trait Kv: Send + Sync {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Calls `visit` with each record of `tree` whose key starts with `prefix`, in key order,
    /// until it answers false.
    fn scan(&self, tree: &str, prefix: &[u8], visit: &mut Visit) -> Result<(), StorageError>;
    fn count(&self, tree: &str) -> Result<usize, StorageError>;
    /// The highest key of `tree`.
    fn last_key(&self, tree: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Applies every write, all or none. Answers, per `Delete`, whether the key was there.
    fn apply(&self, writes: &[Write]) -> Result<Vec<bool>, StorageError>;
    /// Like `apply` for a caller that needs no answer and calls `durable` before it relies
    /// on the write: a store may then commit it with others (etcd's group commit). Reads see it
    /// at once either way.
    fn apply_blind(&self, writes: &[Write]) -> Result<(), StorageError> {
        self.apply(writes).map(drop)
    }
    /// From now on, every write of record `key` of `tree` is a compare-and-swap on the
    /// revision this store last read or wrote it at: when another process wrote the record
    /// meanwhile, the write fails (and the store with it). Only a store that other processes
    /// reach needs it (etcd); sled is this process's alone.
    fn guard(&self, _tree: &str, _key: &[u8]) -> Result<(), StorageError> {
        Ok(())
    }
    /// Waits until every write made before this call is committed (sled's durability is its
    /// group commit's, in `Database`).
    fn durable(&self) -> Durable<'_> {
        Box::pin(async { Ok(()) })
    }
}

pub type Durable<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StorageError>> + Send + 'a>>;

fn failed(e: sled::Error) -> StorageError {
    StorageError::Flush(e.to_string())
}

/// sled: each tree a sled tree; batches over several trees are sled transactions. Every write
/// holds the group commit's gate (a backup copies between writes, never inside one).
pub struct SledKv {
    commit: GroupCommit,
    trees: RwLock<HashMap<String, sled::Tree>>,
}

impl SledKv {
    pub fn new(commit: &GroupCommit) -> SledKv {
        SledKv {
            commit: commit.clone(),
            trees: RwLock::new(HashMap::new()),
        }
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StorageError> {
        if let Some(t) = self
            .trees
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(t.clone());
        }
        let tree = self.commit.db().open_tree(name).map_err(failed)?;
        self.trees
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), tree.clone());
        Ok(tree)
    }
}

impl Kv for SledKv {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .tree(tree)?
            .get(key)
            .map_err(failed)?
            .map(|v| v.to_vec()))
    }

    fn scan(&self, tree: &str, prefix: &[u8], visit: &mut Visit) -> Result<(), StorageError> {
        for item in self.tree(tree)?.scan_prefix(prefix) {
            let (k, v) = item.map_err(failed)?;
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn count(&self, tree: &str) -> Result<usize, StorageError> {
        Ok(self.tree(tree)?.len())
    }

    fn last_key(&self, tree: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .tree(tree)?
            .last()
            .map_err(failed)?
            .map(|(k, _)| k.to_vec()))
    }

    fn apply(&self, writes: &[Write]) -> Result<Vec<bool>, StorageError> {
        let _gate = self.commit.writing();
        // One write needs no transaction (the common case: a job's new state, a log entry).
        if let [single] = writes {
            return Ok(match *single {
                Write::Put(t, k, v) => {
                    self.tree(t)?.insert(k, v).map_err(failed)?;
                    vec![]
                }
                Write::Delete(t, k) => vec![self.tree(t)?.remove(k).map_err(failed)?.is_some()],
            });
        }
        let mut names: Vec<&str> = vec![];
        for w in writes {
            let (Write::Put(t, ..) | Write::Delete(t, _)) = *w;
            if !names.contains(&t) {
                names.push(t);
            }
        }
        let trees = names
            .iter()
            .map(|n| self.tree(n))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&sled::Tree> = trees.iter().collect();
        use sled::Transactional;
        refs.as_slice()
            .transaction(|view| {
                let mut removed = vec![];
                for w in writes {
                    let (Write::Put(t, ..) | Write::Delete(t, _)) = *w;
                    let at = names.iter().position(|n| *n == t).unwrap_or(0);
                    match *w {
                        Write::Put(_, k, v) => {
                            view[at].insert(k, v)?;
                        }
                        Write::Delete(_, k) => removed.push(view[at].remove(k)?.is_some()),
                    }
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(removed)
            })
            .map_err(|e| StorageError::Flush(format!("transaction: {e:?}")))
    }
}

/// What the stores are opened on: the key-value interface, and how to wait until a write is
/// durable. sled (one master) makes writes durable in its group commit; etcd (several masters)
/// has them durable on a quorum when the transaction is answered.
#[derive(Clone)]
pub struct Database {
    kv: Arc<dyn Kv>,
    sled: Option<GroupCommit>,
}

impl From<&GroupCommit> for Database {
    fn from(commit: &GroupCommit) -> Database {
        Database {
            kv: Arc::new(SledKv::new(commit)),
            sled: Some(commit.clone()),
        }
    }
}

impl Database {
    /// A store whose writes are durable once applied (etcd).
    pub fn replicated(kv: Arc<dyn Kv>) -> Database {
        Database { kv, sled: None }
    }

    pub fn kv(&self) -> Arc<dyn Kv> {
        self.kv.clone()
    }

    /// The sled database's data dir; none on a replicated store (its state is not in a file of
    /// this host: the drain flag, for one, lives in the store).
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.sled.as_ref().map(GroupCommit::data_dir)
    }

    /// Waits until everything written before this call is on stable storage.
    pub async fn durable(&self) -> Result<(), StorageError> {
        match &self.sled {
            Some(commit) => commit.durable().await,
            None => self.kv.durable().await,
        }
    }

    /// A direct flush, when nobody else writes (start-up).
    pub fn flush_now(&self) -> Result<(), StorageError> {
        self.sled.as_ref().map_or(Ok(()), GroupCommit::flush_now)
    }

    /// The collection `name`.
    pub fn records(&self, name: &str) -> Records {
        Records {
            db: self.clone(),
            tree: name.to_string(),
        }
    }
}

/// A keyed collection of records in the database for a room with no store of its own (API
/// tokens); `durable` waits for the flush.
#[derive(Clone)]
pub struct Records {
    db: Database,
    tree: String,
}

impl GroupCommit {
    /// The collection `name`.
    pub fn records(&self, name: &str) -> Result<Records, StorageError> {
        Ok(Database::from(self).records(name))
    }
}

impl Records {
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.kv.get(&self.tree, key.as_bytes())
    }

    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        self.db
            .kv
            .apply_blind(&[Write::Put(&self.tree, key.as_bytes(), value)])?;
        Ok(())
    }

    /// Answers whether the key was there.
    pub fn remove(&self, key: &str) -> Result<bool, StorageError> {
        let removed = self
            .db
            .kv
            .apply(&[Write::Delete(&self.tree, key.as_bytes())])?;
        Ok(removed.first().copied().unwrap_or(false))
    }

    /// Every value, in key order.
    pub fn values(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut values = vec![];
        self.db.kv.scan(&self.tree, b"", &mut |_, v| {
            values.push(v.to_vec());
            Ok(true)
        })?;
        Ok(values)
    }

    pub async fn durable(&self) -> Result<(), StorageError> {
        self.db.durable().await
    }
}
