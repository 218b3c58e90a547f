//! The cluster model: one configuration, read as snapshots and changed only through `update`,
//! atomically per opcode, with a serial number that grows on every change. On disk it is one
//! document for everything but the instances and leases, plus one record per instance (tree
//! `config_instances`) and per lease (`config_leases`: a pool's checkouts make one each), so a
//! change to one of thousands writes that one, not megabytes; all are written in one
//! transaction.

pub mod addresses;
pub mod bootstrap;
pub mod leases;
pub mod model;
pub mod names;
pub mod params;
pub mod reservations;
pub mod verify;

use crate::kv::{Database, Kv, Write};
use crate::storage::StorageError;

use model::{Config, Instance};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use thiserror::Error;

pub use bootstrap::{InitOptions, initial_config};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("configuration record is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Durability(#[from] StorageError),
}

const CONFIG_KEY: &[u8] = b"config";

/// The document as stored: the configuration without its instances.
#[derive(serde::Serialize)]
struct StoredDoc<'a> {
    serial_no: u64,
    cluster: &'a model::ClusterInfo,
    nodes: &'a BTreeMap<String, model::Node>,
    groups: &'a BTreeMap<String, model::Group>,
    instances: BTreeMap<String, Instance>,
    networks: &'a BTreeMap<String, model::Network>,
    os: &'a BTreeMap<String, model::OsDefinition>,
    pools: &'a BTreeMap<String, leases::Pool>,
}

/// The trees the configuration lives in.
const DOC: &str = "config";
const INSTANCES: &str = "config_instances";
const LEASES: &str = "config_leases";

#[derive(Clone)]
struct Trees {
    kv: Arc<dyn Kv>,
}

impl Trees {
    fn open(db: &Database) -> Result<Trees, ConfigError> {
        Ok(Trees { kv: db.kv() })
    }

    /// Every record of `tree` into `into`.
    fn load_records<T: serde::de::DeserializeOwned>(
        &self,
        tree: &str,
        into: &mut BTreeMap<String, T>,
    ) -> Result<(), ConfigError> {
        let mut bad = None;
        self.kv.scan(
            tree,
            b"",
            &mut |key, bytes| match serde_json::from_slice(bytes) {
                Ok(item) => {
                    into.insert(String::from_utf8_lossy(key).into_owned(), item);
                    Ok(true)
                }
                Err(e) => {
                    bad = Some(e);
                    Ok(false)
                }
            },
        )?;
        bad.map_or(Ok(()), |e| Err(ConfigError::Corrupt(e.to_string())))
    }

    /// The stored configuration, and whether its instances are in their own records yet (a
    /// document of the first layout carries them inline until the first write).
    fn load(&self) -> Result<Option<(Config, bool)>, ConfigError> {
        let corrupt = |e: serde_json::Error| ConfigError::Corrupt(e.to_string());
        let Some(bytes) = self.kv.get(DOC, CONFIG_KEY)? else {
            return Ok(None);
        };
        let mut cfg: Config = serde_json::from_slice(&bytes).map_err(corrupt)?;
        let split = cfg.instances.is_empty();
        self.load_records(INSTANCES, &mut cfg.instances)?;
        self.load_records(LEASES, &mut cfg.leases)?;
        Ok(Some((cfg, split)))
    }

    /// Writes `newest`: the document, and the instance and lease records that differ from
    /// `written`, in one batch.
    fn write(&self, written: &Config, newest: &Config) -> Result<(), ConfigError> {
        let doc = encode(&StoredDoc {
            serial_no: newest.serial_no,
            cluster: &newest.cluster,
            nodes: &newest.nodes,
            groups: &newest.groups,
            instances: BTreeMap::new(),
            networks: &newest.networks,
            os: &newest.os,
            pools: &newest.pools,
        })?;
        let (changed, gone) = differences(&written.instances, &newest.instances)?;
        let (changed_leases, gone_leases) = differences(&written.leases, &newest.leases)?;
        let mut writes = vec![Write::Put(DOC, CONFIG_KEY, &doc)];
        for (tree, changed, gone) in [
            (INSTANCES, &changed, &gone),
            (LEASES, &changed_leases, &gone_leases),
        ] {
            writes.extend(changed.iter().map(|(k, v)| Write::Put(tree, k, v)));
            writes.extend(gone.iter().map(|k| Write::Delete(tree, k.as_bytes())));
        }
        self.kv.apply_blind(&writes)?;
        Ok(())
    }
}

/// Records of `newest` that differ from `written` (encoded), and keys `newest` no longer has.
type Changes<'a> = (Vec<(&'a [u8], Vec<u8>)>, Vec<&'a String>);

fn differences<'a, T: serde::Serialize + PartialEq>(
    written: &'a BTreeMap<String, T>,
    newest: &'a BTreeMap<String, T>,
) -> Result<Changes<'a>, ConfigError> {
    let mut changed = vec![];
    for (key, item) in newest {
        if written.get(key) != Some(item) {
            changed.push((key.as_bytes(), encode(item)?));
        }
    }
    let gone = written
        .keys()
        .filter(|k| !newest.contains_key(*k))
        .collect();
    Ok((changed, gone))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ConfigError> {
    serde_json::to_vec(value).map_err(|e| ConfigError::Corrupt(e.to_string()))
}

#[derive(Clone)]
pub struct ClusterStore {
    trees: Trees,
    db: Database,
    current: Arc<RwLock<Arc<Config>>>,
    writer: Arc<Mutex<()>>,
    /// The newest configuration written to the trees; held while writing, so concurrent
    /// updates share one write of the newest configuration (see `update`).
    written: Arc<tokio::sync::Mutex<Arc<Config>>>,
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
    pub fn open(db: impl Into<Database>, init: &InitOptions) -> Result<ClusterStore, ConfigError> {
        let db = db.into();
        let trees = Trees::open(&db)?;
        // Config writes are compare-and-swaps on the document's revision: a configuration
        // changed by anyone else since this process read it is never overwritten.
        trees.kv.guard(DOC, CONFIG_KEY)?;
        let (config, written) = match trees.load()? {
            // Instances still inline: the first write puts every one into its own record.
            Some((cfg, false)) => {
                let mut without = cfg.clone();
                without.instances.clear();
                (cfg, without)
            }
            Some((cfg, true)) => (cfg.clone(), cfg),
            None => {
                let cfg = initial_config(init);
                let mut none = cfg.clone();
                none.instances.clear();
                trees.write(&none, &cfg)?;
                db.flush_now()?;
                tracing::info!(cluster = %cfg.cluster.name, nodes = cfg.nodes.len(), "initialised a new cluster");
                (cfg.clone(), cfg)
            }
        };
        Ok(ClusterStore {
            written: Arc::new(tokio::sync::Mutex::new(Arc::new(written))),
            trees,
            db,
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
    /// orders the changes.
    ///
    /// The document is written whole, so concurrent updates share writes: each change is
    /// published in memory at once, then whoever holds `written` writes the newest document,
    /// which covers every change published before it; an update whose serial number is already
    /// written only waits for the flush. (With a thousand instances the document is about a
    /// megabyte: one write per change made parallel jobs wait in line for each other's writes.)
    pub async fn update<T>(&self, change: impl FnOnce(&mut Config) -> T) -> Result<T, ConfigError> {
        let (out, serial) = {
            let _w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let mut cfg = (*self.snapshot()).clone();
            let out = change(&mut cfg);
            cfg.serial_no += 1;
            let serial = cfg.serial_no;
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
            (out, serial)
        };
        {
            let mut written = self.written.lock().await;
            if written.serial_no < serial {
                let newest = self.snapshot();
                // One batch (the store holds the backup gate around it).
                self.trees.write(&written, &newest)?;
                *written = newest;
            }
        }
        self.db.durable().await?;
        Ok(out)
    }
}

/// Reads the stored configuration without creating one (`gantry check-db`): `None` when the
/// database holds no cluster.
pub fn check_stored(db: impl Into<Database>) -> Result<Option<Config>, ConfigError> {
    Ok(Trees::open(&db.into())?.load()?.map(|(cfg, _)| cfg))
}
