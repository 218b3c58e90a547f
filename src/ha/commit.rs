//! Group commit on etcd: writes that need no answer return at once and are committed by one
//! flusher, many batches to a transaction, as sled's group commit shares one fsync among its
//! writers. A submission then costs part of a round trip instead of a whole one under the
//! queue lock. `durable` waits until every write made before it is committed (or says that
//! one failed); reads see writes not yet committed (`pending`). Each caller's batch stays
//! atomic: batches are never split across transactions. A transaction may not name a key twice
//! (etcd refuses that): a later write to a key replaces the earlier one in the transaction,
//! which leaves what applying the batches in order would (every submission moves the id
//! counter: without this, no two would share a transaction).

use crate::storage::StorageError;
use backon::{ExponentialBuilder, Retryable};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// etcd's default `--max-txn-ops`.
const MAX_OPS: usize = 128;

/// One caller's writes: (etcd key, value or none for a delete).
pub(super) type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;

type Answer = std::sync::mpsc::Sender<Result<Vec<bool>, StorageError>>;

struct Queued {
    generation: u64,
    ops: Ops,
    answer: Option<Answer>,
}

#[derive(Default)]
struct Pending {
    queue: VecDeque<Queued>,
    next: u64,
    /// Key → (generation of its newest uncommitted write, value or none for a delete).
    overlay: HashMap<Vec<u8>, (u64, Option<Vec<u8>>)>,
}

#[derive(Clone, Default)]
struct Settled {
    /// Every generation up to here has its result.
    up_to: u64,
    /// The first failed commit. It stays: writers that needed no answer have moved on, so
    /// this process no longer knows what etcd holds; every later `durable` fails, and the
    /// `when_failed` hook (a master restarts) runs.
    failed: Option<String>,
}

pub(super) struct Committer {
    pending: Mutex<Pending>,
    wake: Notify,
    settled: watch::Sender<Settled>,
    hook: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Keys whose writes compare their revision (`Kv::guard`): key → the revision this
    /// master last read or wrote it at (0: absent).
    guarded: Mutex<HashMap<Vec<u8>, i64>>,
}

impl Committer {
    pub(super) fn new() -> Committer {
        Committer {
            pending: Mutex::new(Pending {
                next: 1,
                ..Pending::default()
            }),
            wake: Notify::new(),
            settled: watch::channel(Settled::default()).0,
            hook: std::sync::OnceLock::new(),
            guarded: Mutex::default(),
        }
    }

    /// Writes of `key` compare its revision from now on; `revision` is the one just read.
    pub(super) fn guard(&self, key: Vec<u8>, revision: i64) {
        self.revisions().insert(key, revision);
    }

    fn revisions(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, i64>> {
        self.guarded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called (once) at the first failed commit.
    pub(super) fn when_failed(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.hook.set(Box::new(hook));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a batch; its generation. `answer` receives the result (delete answers).
    pub(super) fn enqueue(&self, ops: Ops, answer: Option<Answer>) -> u64 {
        let generation = {
            let mut p = self.lock();
            let generation = p.next;
            p.next += 1;
            for (key, value) in &ops {
                p.overlay.insert(key.clone(), (generation, value.clone()));
            }
            p.queue.push_back(Queued {
                generation,
                ops,
                answer,
            });
            generation
        };
        self.wake.notify_one();
        generation
    }

    /// A write to `key` not yet committed: Some(value or none for a delete).
    pub(super) fn pending(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.lock().overlay.get(key).map(|(_, v)| v.clone())
    }

    /// The newest generation queued so far (0: none).
    pub(super) fn queued(&self) -> u64 {
        self.lock().next - 1
    }

    /// Waits until every generation up to `generation` is settled; an error once any commit
    /// failed (`Settled::failed`).
    pub(super) async fn settled(&self, generation: u64) -> Result<(), StorageError> {
        let mut rx = self.settled.subscribe();
        let settled = rx
            .wait_for(|s| s.up_to >= generation || s.failed.is_some())
            .await
            .map_err(|_| StorageError::Flush("the etcd committer stopped".into()))?
            .clone();
        match settled.failed {
            Some(error) => Err(StorageError::Flush(error)),
            None => Ok(()),
        }
    }

    /// Whether everything up to `generation` is committed already.
    pub(super) fn settled_now(&self, generation: u64) -> bool {
        let s = self.settled.borrow();
        s.up_to >= generation && s.failed.is_none()
    }

    /// Commits queued batches forever (on the etcd request thread).
    pub(super) async fn run(&self, client: Client, fence: Option<Compare>) {
        loop {
            let batches: Vec<Queued> = {
                let mut p = self.lock();
                p.queue.drain(..).collect()
            };
            if batches.is_empty() {
                self.wake.notified().await;
                continue;
            }
            for group in groups(batches) {
                self.commit(&client, fence.as_ref(), group).await;
            }
        }
    }

    async fn commit(&self, client: &Client, fence: Option<&Compare>, group: Group) {
        let (lo, hi) = (
            group.batches.first().map_or(0, |q| q.generation),
            group.batches.last().map_or(0, |q| q.generation),
        );
        let ops: Vec<TxnOp> = group
            .ops
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(k.clone(), v.clone(), None),
                None => TxnOp::delete(k.clone(), None),
            })
            .collect();
        // The guarded keys this transaction writes, at the revisions they must still have.
        let guards: Vec<(Vec<u8>, i64)> = {
            let known = self.revisions();
            group
                .ops
                .iter()
                .filter_map(|(k, _)| known.get(k).map(|r| (k.clone(), *r)))
                .collect()
        };
        let compares: Vec<Compare> = fence
            .cloned()
            .into_iter()
            .chain(
                guards
                    .iter()
                    .map(|(k, r)| Compare::mod_revision(k.clone(), CompareOp::Equal, *r)),
            )
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let mut sends = 0;
        // Sent again after any failure to get an answer (a member died under it, a timeout):
        // the same writes again leave the same state, and the fence still guards them. Only a
        // refusal, or etcd unreachable for seconds, fails the commit.
        let again = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(500))
            .with_max_times(8);
        let answer = super::timed(
            (|| {
                let (mut client, txn) = (client.clone(), txn.clone());
                sends += 1;
                async move { client.txn(txn).await }
            })
            .retry(again)
            .notify(|e, _| tracing::warn!("etcd commit sent again: {e}")),
        )
        .await;
        let blind = group.batches.iter().all(|q| q.answer.is_none());
        let outcome = match answer {
            Ok(a) if a.succeeded() => {
                let revision = a.header().map_or(0, |h| h.revision());
                // A deleted key compares as absent: revision 0.
                self.wrote(guards.iter().map(|(key, _)| {
                    let put = group.at.get(key).is_some_and(|&i| group.ops[i].1.is_some());
                    (key.clone(), if put { revision } else { 0 })
                }));
                Ok(a.op_responses())
            }
            // A send whose answer was lost may have committed: then its guarded keys have
            // moved on, and the transaction sent again is refused for it.
            Ok(_) if sends > 1 && blind && self.landed(client, &group, &guards).await => Ok(vec![]),
            Ok(_) if guards.is_empty() => Err(StorageError::Flush(
                "etcd: refused, this master no longer leads".into(),
            )),
            Ok(_) => Err(StorageError::Flush(
                "etcd: refused: this master no longer leads, or another process changed the \
                 configuration since this master read it"
                    .into(),
            )),
            Err(e) => Err(StorageError::Flush(format!("etcd: {e}"))),
        };
        // Committed or refused, these writes are no longer pending: readers go to etcd (before
        // any waiter hears, so it reads what it wrote).
        {
            let mut p = self.lock();
            p.overlay.retain(|_, (generation, _)| *generation > hi);
        }
        // Only a group of one batch carries answers (`groups`), so its responses are its own.
        let mut at = 0;
        for q in &group.batches {
            let n = q.ops.len();
            if let Some(answer) = &q.answer {
                let result = match &outcome {
                    Ok(responses) => Ok(responses[at..(at + n).min(responses.len())]
                        .iter()
                        .filter_map(|r| match r {
                            TxnOpResponse::Delete(d) => Some(d.deleted() > 0),
                            _ => None,
                        })
                        .collect()),
                    Err(e) => Err(e.clone()),
                };
                let _ = answer.send(result);
            }
            at += n;
        }
        let failed = outcome.err().map(|e| e.to_string());
        if let Some(error) = &failed {
            tracing::error!(first = lo, last = hi, "etcd commit failed: {error}");
        }
        let first_failure = failed.is_some() && self.settled.borrow().failed.is_none();
        self.settled.send_modify(|s| {
            s.up_to = s.up_to.max(hi);
            if s.failed.is_none() {
                s.failed = failed;
            }
        });
        if first_failure && let Some(hook) = self.hook.get() {
            hook();
        }
    }

    /// Notes the revisions guarded keys have now.
    fn wrote(&self, revisions: impl IntoIterator<Item = (Vec<u8>, i64)>) {
        self.revisions().extend(revisions);
    }

    /// Whether a refused group had committed at an earlier send: every guarded key it writes
    /// holds what it wrote, at a newer revision than it compared.
    async fn landed(&self, client: &Client, group: &Group, guards: &[(Vec<u8>, i64)]) -> bool {
        if guards.is_empty() {
            return false;
        }
        let mut now = vec![];
        for (key, was) in guards {
            let Ok(answer) = client.clone().get(key.clone(), None).await else {
                return false;
            };
            let stored = answer
                .kvs()
                .first()
                .map(|kv| (kv.value(), kv.mod_revision()));
            let written = group.at.get(key).and_then(|&i| group.ops[i].1.as_deref());
            if !holds_what_was_written(stored, written, *was) {
                return false;
            }
            now.push((key.clone(), stored.map_or(0, |(_, revision)| revision)));
        }
        self.wrote(now);
        true
    }
}

/// Whether a key `stored` as (value, revision), or absent, shows a write of `written` (none: a
/// delete) made after revision `was`.
fn holds_what_was_written(stored: Option<(&[u8], i64)>, written: Option<&[u8]>, was: i64) -> bool {
    match (stored, written) {
        (Some((value, revision)), Some(written)) => value == written && revision > was,
        (None, None) => true,
        _ => false,
    }
}

/// Batches committed in one transaction: their writes, one per key (a later write to a key
/// replaces an earlier one: the transaction leaves what applying them in order would).
struct Group {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    at: HashMap<Vec<u8>, usize>,
    batches: Vec<Queued>,
}

impl Group {
    fn new() -> Group {
        Group {
            ops: vec![],
            at: HashMap::new(),
            batches: vec![],
        }
    }

    fn add(&mut self, q: Queued) {
        for (k, v) in &q.ops {
            match self.at.get(k) {
                Some(&i) => self.ops[i].1 = v.clone(),
                None => {
                    self.at.insert(k.clone(), self.ops.len());
                    self.ops.push((k.clone(), v.clone()));
                }
            }
        }
        self.batches.push(q);
    }
}

/// Consecutive batches into transactions of at most `MAX_OPS` keys; a batch is never split. A
/// batch that wants answers (whether its deletes found their keys) goes alone, so the
/// transaction's responses are its own.
fn groups(batches: Vec<Queued>) -> Vec<Group> {
    let mut groups: Vec<Group> = vec![];
    let mut open = false;
    for q in batches {
        let alone = q.answer.is_some();
        let fits = groups.last().is_some_and(|g| {
            let new_keys = q.ops.iter().filter(|(k, _)| !g.at.contains_key(k)).count();
            g.ops.len() + new_keys <= MAX_OPS
        });
        if alone || !open || !fits {
            groups.push(Group::new());
        }
        open = !alone;
        if let Some(last) = groups.last_mut() {
            last.add(q);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::holds_what_was_written;

    #[test]
    fn a_resent_commit_is_told_from_a_conflict() {
        // Ours, committed after the revision compared: the first send landed.
        assert!(holds_what_was_written(Some((b"ours", 9)), Some(b"ours"), 5));
        // Another writer's value, or ours but not newer than compared: a conflict.
        assert!(!holds_what_was_written(
            Some((b"theirs", 9)),
            Some(b"ours"),
            5
        ));
        assert!(!holds_what_was_written(
            Some((b"ours", 5)),
            Some(b"ours"),
            5
        ));
        // A delete landed when the key is gone; not when it is back.
        assert!(holds_what_was_written(None, None, 5));
        assert!(!holds_what_was_written(Some((b"x", 9)), None, 5));
        assert!(!holds_what_was_written(None, Some(b"ours"), 5));
    }
}
