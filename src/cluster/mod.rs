//! The cluster model: one configuration document in sled, read as snapshots and changed only
//! through `update`, atomically per opcode, with a serial number that grows on every change.

pub mod addresses;
pub mod bootstrap;
pub mod model;
pub mod names;
pub mod params;
pub mod reservations;
pub mod verify;

use crate::storage::{GroupCommit, StorageError};
use model::Config;
use std::sync::{Arc, Mutex, RwLock};
use thiserror::Error;

pub use bootstrap::{InitOptions, initial_config};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("configuration storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("configuration record is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Durability(#[from] StorageError),
}

const CONFIG_KEY: &[u8] = b"config";

#[derive(Clone)]
pub struct ClusterStore {
    tree: sled::Tree,
    commit: GroupCommit,
    current: Arc<RwLock<Arc<Config>>>,
    writer: Arc<Mutex<()>>,
    reservations: Arc<Mutex<reservations::Reservations>>,
}

/// Read-only access to the configuration: changes go through opcode jobs only.
#[derive(Clone)]
pub struct ConfigReader(ClusterStore);

impl ConfigReader {
    pub fn snapshot(&self) -> Arc<Config> {
        self.0.snapshot()
    }
}

impl ClusterStore {
    /// Opens the stored configuration, initialising a new cluster when there is none.
    pub fn open(commit: &GroupCommit, init: &InitOptions) -> Result<ClusterStore, ConfigError> {
        let tree = commit.db().open_tree("config")?;
        let config = match tree.get(CONFIG_KEY)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| ConfigError::Corrupt(e.to_string()))?
            }
            None => {
                let cfg = initial_config(init);
                tree.insert(CONFIG_KEY, encode(&cfg)?)?;
                commit.flush_now()?;
                tracing::info!(cluster = %cfg.cluster.name, nodes = cfg.nodes.len(), "initialised a new cluster");
                cfg
            }
        };
        Ok(ClusterStore {
            tree,
            commit: commit.clone(),
            current: Arc::new(RwLock::new(Arc::new(config))),
            writer: Arc::new(Mutex::new(())),
            reservations: Arc::default(),
        })
    }

    pub fn snapshot(&self) -> Arc<Config> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `claim` against the newest configuration and every job's reservations, atomically
    /// with respect to other claims (see `reservations.rs`).
    pub fn reserve<T>(
        &self,
        claim: impl FnOnce(&Config, &mut reservations::Reservations) -> T,
    ) -> T {
        let mut held = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        claim(&self.snapshot(), &mut held)
    }

    /// Ends the reservations of a job (when its opcode ends).
    pub fn release(&self, job: u64) {
        self.reservations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(job);
    }

    /// A handle that can read the configuration and nothing else (what the RAPI gets).
    pub fn reader(&self) -> ConfigReader {
        ConfigReader(self.clone())
    }

    /// Applies `change` to the newest configuration and makes the result durable. Locks held by
    /// the calling opcode guarantee no conflicting change runs concurrently; the writer mutex only
    /// orders the commits.
    pub async fn update<T>(&self, change: impl FnOnce(&mut Config) -> T) -> Result<T, ConfigError> {
        let out = {
            let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let mut cfg = (*self.snapshot()).clone();
            let out = change(&mut cfg);
            cfg.serial_no += 1;
            self.tree.insert(CONFIG_KEY, encode(&cfg)?)?;
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
            out
        };
        self.commit.durable().await?;
        Ok(out)
    }
}

/// Reads the stored configuration without creating one (`gantry check-db`): `None` when the
/// database holds no cluster.
pub fn check_stored(commit: &GroupCommit) -> Result<Option<Config>, ConfigError> {
    let tree = commit.db().open_tree("config")?;
    match tree.get(CONFIG_KEY)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ConfigError::Corrupt(e.to_string())),
        None => Ok(None),
    }
}

fn encode(cfg: &Config) -> Result<Vec<u8>, ConfigError> {
    serde_json::to_vec(cfg).map_err(|e| ConfigError::Corrupt(e.to_string()))
}
