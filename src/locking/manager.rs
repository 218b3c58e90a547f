//! The lock manager: named locks per level, shared or exclusive, granted in priority order.
//! Callers acquire a whole plan in (level, name) order, which makes deadlock impossible.

use super::{LockLevel, LockMode, LockPlan};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

struct Waiter {
    mode: LockMode,
    owner: u64,
    grant: oneshot::Sender<()>,
}

#[derive(Default)]
struct LockState {
    exclusive: bool,
    shared: usize,
    /// Ordered by (priority, job id, arrival): lower priority value first, then first in,
    /// first out by job id (the id, not the moment of asking: jobs started together may ask in
    /// any order).
    waiters: BTreeMap<(i64, u64, u64), Waiter>,
    /// Job ids holding the lock, for the lock query.
    owners: Vec<(u64, LockMode)>,
}

impl LockState {
    fn can_take(&self, mode: LockMode) -> bool {
        match mode {
            LockMode::Shared => !self.exclusive,
            LockMode::Exclusive => !self.exclusive && self.shared == 0,
        }
    }

    fn take(&mut self, mode: LockMode, owner: u64) {
        match mode {
            LockMode::Shared => self.shared += 1,
            LockMode::Exclusive => self.exclusive = true,
        }
        self.owners.push((owner, mode));
    }

    fn release(&mut self, mode: LockMode, owner: u64) {
        match mode {
            LockMode::Shared => self.shared -= 1,
            LockMode::Exclusive => self.exclusive = false,
        }
        if let Some(i) = self.owners.iter().position(|o| *o == (owner, mode)) {
            self.owners.swap_remove(i);
        }
    }

    /// Hands the lock to waiters at the front of the queue while they are compatible.
    fn grant_waiters(&mut self) {
        while let Some(mode) = self.waiters.first_key_value().map(|(_, w)| w.mode) {
            if !self.can_take(mode) {
                return;
            }
            let Some((_, waiter)) = self.waiters.pop_first() else {
                return;
            };
            if waiter.grant.send(()).is_ok() {
                self.take(waiter.mode, waiter.owner);
            }
        }
    }

    fn is_idle(&self) -> bool {
        !self.exclusive && self.shared == 0 && self.waiters.is_empty()
    }
}

type Key = (LockLevel, String);

#[derive(Default)]
struct Table {
    locks: HashMap<Key, LockState>,
    arrivals: u64,
}

#[derive(Clone, Default)]
pub struct LockManager {
    table: Arc<Mutex<Table>>,
}

/// One lock as the lock query shows it: who holds it and who waits, by job id.
#[derive(Debug, Clone, PartialEq)]
pub struct LockInfo {
    pub level: LockLevel,
    pub name: String,
    pub owners: Vec<(u64, LockMode)>,
    pub pending: Vec<(u64, LockMode)>,
}

/// Locks held by one opcode; dropping it releases them all.
pub struct HeldLocks {
    manager: LockManager,
    owner: u64,
    held: Vec<(Key, LockMode)>,
}

impl Drop for HeldLocks {
    fn drop(&mut self) {
        let mut table = self.manager.lock_table();
        for (key, mode) in self.held.drain(..) {
            release_one(&mut table, &key, mode, self.owner);
        }
    }
}

fn release_one(table: &mut Table, key: &Key, mode: LockMode, owner: u64) {
    if let Some(state) = table.locks.get_mut(key) {
        state.release(mode, owner);
        state.grant_waiters();
        if state.is_idle() {
            table.locks.remove(key);
        }
    }
}

/// A request still queued for one lock; dropping it (e.g. on cancel) withdraws it cleanly.
struct Pending {
    manager: LockManager,
    key: Key,
    slot: (i64, u64, u64),
    mode: LockMode,
    owner: u64,
    granted: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut table = self.manager.lock_table();
        let still_queued = table
            .locks
            .get_mut(&self.key)
            .and_then(|s| s.waiters.remove(&self.slot))
            .is_some();
        if !still_queued {
            // The grant raced with our withdrawal: give the lock back.
            release_one(&mut table, &self.key, self.mode, self.owner);
        } else if table.locks.get(&self.key).is_some_and(LockState::is_idle) {
            table.locks.remove(&self.key);
        }
    }
}

impl LockManager {
    fn lock_table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Acquires every lock of `plan` in order, waiting as needed. Cancel-safe: dropping the future
    /// releases what was taken and withdraws what was queued.
    pub async fn acquire(&self, plan: &LockPlan, priority: i64, owner: u64) -> HeldLocks {
        let mut held = HeldLocks {
            manager: self.clone(),
            owner,
            held: Vec::with_capacity(plan.locks.len()),
        };
        for (key, mode) in plan.iter() {
            let waiting = {
                let mut table = self.lock_table();
                table.arrivals += 1;
                let slot = (priority, owner, table.arrivals);
                let state = table.locks.entry(key.clone()).or_default();
                if state.waiters.is_empty() && state.can_take(*mode) {
                    state.take(*mode, owner);
                    None
                } else {
                    let (tx, rx) = oneshot::channel();
                    state.waiters.insert(
                        slot,
                        Waiter {
                            mode: *mode,
                            owner,
                            grant: tx,
                        },
                    );
                    let pending = Pending {
                        manager: self.clone(),
                        key: key.clone(),
                        slot,
                        mode: *mode,
                        owner,
                        granted: false,
                    };
                    Some((pending, rx))
                }
            };
            if let Some((mut pending, rx)) = waiting {
                let since = std::time::Instant::now();
                // The sender lives in the table until granted or withdrawn by `pending`.
                if rx.await.is_ok() {
                    pending.granted = true;
                }
                crate::metrics::METRICS
                    .lock_wait_seconds
                    .get_or_create(&crate::metrics::LevelLabel {
                        level: key.0.name().into(),
                    })
                    .observe(since.elapsed().as_secs_f64());
            }
            held.held.push((key.clone(), *mode));
        }
        held
    }

    /// Every lock held or waited for, sorted by level and name.
    pub fn snapshot(&self) -> Vec<LockInfo> {
        let table = self.lock_table();
        let mut out: Vec<LockInfo> = table
            .locks
            .iter()
            .map(|((level, name), state)| LockInfo {
                level: *level,
                name: name.clone(),
                owners: state.owners.clone(),
                pending: state.waiters.values().map(|w| (w.owner, w.mode)).collect(),
            })
            .collect();
        out.sort_by(|a, b| (a.level, &a.name).cmp(&(b.level, &b.name)));
        out
    }

    /// Number of locks currently tracked (held or waited for); for tests and diagnostics.
    pub fn tracked(&self) -> usize {
        self.lock_table().locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plan(entries: &[(LockLevel, &str, LockMode)]) -> LockPlan {
        let mut p = LockPlan::default();
        for (l, n, m) in entries {
            p.add(*l, *n, *m);
        }
        p
    }

    #[tokio::test]
    async fn exclusive_blocks_and_shared_shares() {
        let m = LockManager::default();
        let x = plan(&[(LockLevel::Instance, "a", LockMode::Exclusive)]);
        let s = plan(&[(LockLevel::Instance, "a", LockMode::Shared)]);
        let first = m.acquire(&s, 0, 7).await;
        let _second = m.acquire(&s, 0, 7).await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), m.acquire(&x, 0, 7)).await;
        assert!(blocked.is_err(), "exclusive must wait for shared holders");
        drop(first);
        drop(_second);
        let _got = tokio::time::timeout(Duration::from_secs(5), m.acquire(&x, 0, 7))
            .await
            .expect("granted once free");
    }

    #[tokio::test]
    async fn waiters_are_served_by_priority() {
        let m = LockManager::default();
        let x = plan(&[(LockLevel::Node, "n1", LockMode::Exclusive)]);
        let holder = m.acquire(&x, 0, 7).await;
        let order = Arc::new(Mutex::new(vec![]));
        let mut tasks = vec![];
        for prio in [10, 0, -10] {
            let (m, x, order) = (m.clone(), x.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _l = m.acquire(&x, prio, 7).await;
                order.lock().unwrap().push(prio);
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(holder);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![-10, 0, 10]);
    }

    /// Within a priority, waiters are served by job id, whatever order they asked in (jobs
    /// started together reach the lock manager in any order).
    #[tokio::test]
    async fn waiters_of_one_priority_are_served_by_job_id() {
        let m = LockManager::default();
        let x = plan(&[(LockLevel::Instance, "i1", LockMode::Exclusive)]);
        let holder = m.acquire(&x, 0, 1).await;
        let order = Arc::new(Mutex::new(vec![]));
        let mut tasks = vec![];
        for job in [14, 12, 13] {
            let (m, x, order) = (m.clone(), x.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _l = m.acquire(&x, 0, job).await;
                order.lock().unwrap().push(job);
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(holder);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![12, 13, 14]);
    }

    #[tokio::test]
    async fn dropped_request_leaves_nothing_behind() {
        let m = LockManager::default();
        let x = plan(&[
            (LockLevel::Instance, "a", LockMode::Exclusive),
            (LockLevel::Node, "n1", LockMode::Exclusive),
        ]);
        let holder = m
            .acquire(&plan(&[(LockLevel::Node, "n1", LockMode::Exclusive)]), 0, 7)
            .await;
        let attempt = tokio::time::timeout(Duration::from_millis(50), m.acquire(&x, 0, 7)).await;
        assert!(attempt.is_err());
        drop(holder);
        assert_eq!(
            m.tracked(),
            0,
            "the canceled request released instance lock 'a'"
        );
    }

    #[test]
    fn plans_sort_by_level_then_name_and_merge_modes() {
        let mut p = LockPlan::default();
        p.add(LockLevel::Node, "b", LockMode::Shared);
        p.add(LockLevel::Instance, "z", LockMode::Shared);
        p.add(LockLevel::Node, "a", LockMode::Shared);
        p.add(LockLevel::Node, "b", LockMode::Exclusive);
        let order: Vec<_> = p.iter().map(|((l, n), m)| (*l, n.clone(), *m)).collect();
        assert_eq!(
            order,
            vec![
                (LockLevel::Instance, "z".into(), LockMode::Shared),
                (LockLevel::Node, "a".into(), LockMode::Shared),
                (LockLevel::Node, "b".into(), LockMode::Exclusive),
            ]
        );
    }
}
