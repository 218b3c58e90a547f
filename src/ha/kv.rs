//! `Kv` on etcd: tree `t`, key `k` is the etcd key `<prefix>/kv/t/k`; a batch is one
//! transaction, guarded by the leader's fence when one is given, so a master that lost the
//! leadership cannot write even a single record. The stores call `Kv` synchronously (some
//! under the queue lock), so requests run on a runtime thread of their own and the caller
//! waits for the answer.

use super::EtcdOptions;
use super::commit::{Committer, Ops};
use crate::kv::{Durable, Kv, Visit, Write};
use crate::storage::StorageError;
use etcd_client::{Client, Compare, GetOptions, SortOrder, SortTarget};
use std::future::Future;
use std::sync::Arc;

/// Records per range request of a scan.
const PAGE: i64 = 500;

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What a watch saw (`EtcdKv::watch`).
pub enum Seen<'a> {
    /// Record `key` of tree `tree` was written or deleted.
    Record { tree: &'a str, key: &'a [u8] },
    /// The watch (re)opened: anything may have changed meanwhile.
    Anything,
}

pub struct EtcdKv {
    client: Client,
    root: String,
    runtime: tokio::runtime::Handle,
    /// Every write goes through it, in order (`commit.rs`).
    committer: Arc<Committer>,
}

fn failed(e: etcd_client::Error) -> StorageError {
    StorageError::Flush(format!("etcd: {e}"))
}

impl EtcdKv {
    /// Connects to etcd for records under `<prefix>/kv/`; every write carries `fence` (a
    /// leader's) when given. The client is made on the request thread's own runtime: a gRPC
    /// channel drives its connections from the runtime it was made on, and the stores' callers
    /// block runtime threads while they wait (with a client of the main runtime, two blocked
    /// callers on two cores would wait forever for a connection nobody drives).
    pub fn connect(opts: &EtcdOptions, fence: Option<Compare>) -> Result<EtcdKv, StorageError> {
        let runtime =
            super::runtime_thread("etcd-kv").map_err(|e| StorageError::Open(e.to_string()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let connecting = opts.clone();
        runtime.spawn(async move {
            let _ = tx.send(super::connect(&connecting).await);
        });
        let client = rx
            .recv()
            .map_err(|_| StorageError::Open("the etcd request thread stopped".into()))?
            .map_err(|e| StorageError::Open(e.to_string()))?;
        let committer = Arc::new(Committer::new());
        let flusher = committer.clone();
        let committing = client.clone();
        runtime.spawn(async move { flusher.run(committing, fence).await });
        Ok(EtcdKv {
            client,
            root: format!("{}/kv/", opts.prefix),
            runtime,
            committer,
        })
    }

    fn key(&self, tree: &str, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.root.len() + tree.len() + 1 + key.len());
        k.extend_from_slice(self.root.as_bytes());
        k.extend_from_slice(tree.as_bytes());
        k.push(b'/');
        k.extend_from_slice(key);
        k
    }

    /// Runs a request on the etcd thread and waits for it; sent again while it reaches no
    /// member (a dead endpoint in the client's list).
    fn run<T, F, Fut>(&self, request: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(super::timed(super::reaching(request)).await);
        });
        rx.recv()
            .map_err(|_| StorageError::Flush("the etcd request thread stopped".into()))?
            .map_err(failed)
    }

    fn range(
        &self,
        key: Vec<u8>,
        options: GetOptions,
    ) -> Result<etcd_client::GetResponse, StorageError> {
        let client = self.client.clone();
        self.run(move || {
            let (mut client, key, options) = (client.clone(), key.clone(), options.clone());
            async move { client.get(key, Some(options)).await }
        })
    }

    /// Calls `seen` with each record written or deleted under this store from now on (by any
    /// master), on the etcd thread, for as long as the process lives. A watch that broke is
    /// opened again (backing off up to 5 s); changes in the gap are not replayed, so `seen`
    /// hears `Seen::Anything` whenever a watch opens.
    pub fn watch(&self, seen: impl Fn(Seen<'_>) + Send + Sync + 'static) {
        use backon::{ExponentialBuilder, Retryable};
        let (client, root) = (self.client.clone(), self.root.clone());
        let seen = Arc::new(seen);
        let watch_once = move || {
            let (mut client, root, seen) = (client.clone(), root.clone(), seen.clone());
            async move {
                let options = etcd_client::WatchOptions::new().with_prefix();
                let mut stream = client.watch(root.as_bytes(), Some(options)).await?;
                seen(Seen::Anything);
                while let Some(answer) = stream.message().await? {
                    for kv in answer.events().iter().filter_map(|e| e.kv()) {
                        let Some(record) = kv.key().strip_prefix(root.as_bytes()) else {
                            continue;
                        };
                        let Some(slash) = record.iter().position(|b| *b == b'/') else {
                            continue;
                        };
                        if let Ok(tree) = std::str::from_utf8(&record[..slash]) {
                            seen(Seen::Record {
                                tree,
                                key: &record[slash + 1..],
                            });
                        }
                    }
                }
                Err::<(), _>(etcd_client::Error::WatchError("the watch ended".into()))
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_max_delay(std::time::Duration::from_secs(5))
            .without_max_times();
        self.runtime.spawn(async move {
            let _ = watch_once
                .retry(backoff)
                .notify(|e, _| tracing::debug!("etcd watch: {e}; opening it again"))
                .await;
        });
    }

    /// Runs `hook` at the first failed commit (a leader that can no longer know what etcd
    /// holds restarts).
    pub fn when_failed(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.committer.when_failed(hook);
    }

    fn ops(&self, writes: &[Write]) -> Ops {
        writes
            .iter()
            .map(|w| match *w {
                Write::Put(t, k, v) => (self.key(t, k), Some(v.to_vec())),
                Write::Delete(t, k) => (self.key(t, k), None),
            })
            .collect()
    }

    /// Waits until every write queued so far is committed (a range read must see them).
    fn settle(&self) -> Result<(), StorageError> {
        let generation = self.committer.queued();
        if self.committer.settled_now(generation) {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let committer = self.committer.clone();
        self.runtime.spawn(async move {
            let _ = tx.send(committer.settled(generation).await);
        });
        rx.recv()
            .map_err(|_| StorageError::Flush("the etcd request thread stopped".into()))?
    }
}

impl Kv for EtcdKv {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let full = self.key(tree, key);
        if let Some(pending) = self.committer.pending(&full) {
            return Ok(pending);
        }
        let answer = self.range(full, GetOptions::new())?;
        Ok(answer.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Reads a page at a time: a tree may hold more than one answer can carry (gRPC's message
    /// limit), and a visitor that stops early should not pay for the rest.
    fn scan(&self, tree: &str, prefix: &[u8], visit: &mut Visit) -> Result<(), StorageError> {
        self.settle()?;
        let strip = self.key(tree, b"").len();
        let mut from = self.key(tree, prefix);
        let end = prefix_end(&from);
        loop {
            let options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            let answer = self.range(from.clone(), options)?;
            for kv in answer.kvs() {
                if !visit(&kv.key()[strip..], kv.value())? {
                    return Ok(());
                }
            }
            match answer.kvs().last() {
                Some(last) if answer.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    fn count(&self, tree: &str) -> Result<usize, StorageError> {
        self.settle()?;
        let options = GetOptions::new().with_prefix().with_count_only();
        Ok(self.range(self.key(tree, b""), options)?.count() as usize)
    }

    fn last_key(&self, tree: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.settle()?;
        let strip = self.key(tree, b"").len();
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(1)
            .with_keys_only();
        let answer = self.range(self.key(tree, b""), options)?;
        Ok(answer.kvs().first().map(|kv| kv.key()[strip..].to_vec()))
    }

    /// Waits for its own batch's transaction (the answers come from it).
    fn apply(&self, writes: &[Write]) -> Result<Vec<bool>, StorageError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.committer.enqueue(self.ops(writes), Some(tx));
        rx.recv()
            .map_err(|_| StorageError::Flush("the etcd request thread stopped".into()))?
    }

    fn apply_blind(&self, writes: &[Write]) -> Result<(), StorageError> {
        self.committer.enqueue(self.ops(writes), None);
        Ok(())
    }

    fn guard(&self, tree: &str, key: &[u8]) -> Result<(), StorageError> {
        let full = self.key(tree, key);
        let answer = self.range(full.clone(), GetOptions::new().with_keys_only())?;
        // etcd compares an absent key's revision as 0.
        let revision = answer.kvs().first().map_or(0, |kv| kv.mod_revision());
        self.committer.guard(full, revision);
        Ok(())
    }

    fn durable(&self) -> Durable<'_> {
        let generation = self.committer.queued();
        Box::pin(async move { self.committer.settled(generation).await })
    }
}
