//! Connection slots that hold under abuse. A peer may hold at most `per_ip` connections; when
//! every slot is taken, a new connection takes the slot of an idle connection (no request in
//! flight) of the address holding the most slots, its oldest one, so idle or half-open
//! connections cannot starve clients that actually ask something. Refusals are counted and
//! logged at most every few seconds.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What one open connection shares with the table.
pub struct Connection {
    /// True while no request is being answered (before the first one, and between requests).
    pub idle: AtomicBool,
    /// Notified when the connection's slot is taken by a newer one.
    pub evicted: Notify,
}

struct Entry {
    ip: IpAddr,
    conn: Arc<Connection>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
}

pub struct Slots {
    max: usize,
    per_ip: usize,
    table: Mutex<Table>,
    refused: AtomicU64,
    last_report: Mutex<Option<Instant>>,
}

/// Holds a slot; dropping it frees the slot.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    pub conn: Arc<Connection>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(self.id);
    }
}

const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Slots {
    pub fn new(max: usize, per_ip: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            per_ip: per_ip.max(1),
            table: Mutex::new(Table::default()),
            refused: AtomicU64::new(0),
            last_report: Mutex::new(None),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection from `ip`, or `None` (the connection is to be closed).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut t = self.table();
        if t.per_ip.get(&ip).copied().unwrap_or(0) >= self.per_ip {
            drop(t);
            self.refuse("too many connections from one address");
            return None;
        }
        if t.open.len() >= self.max {
            // From the address holding the most slots, its oldest idle connection (the map is
            // ordered by admission): a client with few connections is never the one evicted
            // while a flooding address holds many.
            let victim = t
                .open
                .iter()
                .filter(|(_, e)| e.conn.idle.load(Ordering::Relaxed))
                .max_by_key(|(id, e)| (t.per_ip.get(&e.ip).copied().unwrap_or(0), u64::MAX - **id))
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                drop(t);
                self.refuse("connection limit reached, every connection busy");
                return None;
            };
            if let Some(entry) = remove(&mut t, victim) {
                entry.conn.evicted.notify_one();
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let conn = Arc::new(Connection {
            idle: AtomicBool::new(true),
            evicted: Notify::new(),
        });
        *t.per_ip.entry(ip).or_insert(0) += 1;
        t.open.insert(
            id,
            Entry {
                ip,
                conn: conn.clone(),
            },
        );
        Some(Slot {
            slots: self.clone(),
            id,
            conn,
        })
    }

    fn release(&self, id: u64) {
        remove(&mut self.table(), id);
    }

    /// Counts a refusal; one log line every few seconds says how many there were.
    fn refuse(&self, why: &str) {
        let count = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_report.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            *last = Some(Instant::now());
            self.refused.store(0, Ordering::Relaxed);
            tracing::warn!(refused = count, "closing new connections: {why}");
        }
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.table().open.len()
    }
}

fn remove(t: &mut Table, id: u64) -> Option<Entry> {
    let entry = t.open.remove(&id)?;
    if let Some(n) = t.per_ip.get_mut(&entry.ip) {
        *n -= 1;
        if *n == 0 {
            t.per_ip.remove(&entry.ip);
        }
    }
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn one_address_cannot_take_every_slot() {
        let slots = Slots::new(10, 2);
        let _a = slots.admit(ip(2)).unwrap();
        let _b = slots.admit(ip(2)).unwrap();
        assert!(slots.admit(ip(2)).is_none());
        assert!(slots.admit(ip(1)).is_some());
    }

    #[test]
    fn the_busiest_address_gives_up_a_slot_first() {
        let slots = Slots::new(3, 10);
        let lone = slots.admit(ip(1)).unwrap();
        let _f1 = slots.admit(ip(2)).unwrap();
        let _f2 = slots.admit(ip(2)).unwrap();
        let _new = slots.admit(ip(3)).unwrap();
        assert!(
            futures_util::FutureExt::now_or_never(lone.conn.evicted.notified()).is_none(),
            "the address with one connection keeps it"
        );
    }

    #[test]
    fn a_new_connection_takes_the_oldest_idle_slot() {
        let slots = Slots::new(2, 10);
        let old = slots.admit(ip(2)).unwrap();
        let busy = slots.admit(ip(3)).unwrap();
        busy.conn.idle.store(false, Ordering::Relaxed);
        let new = slots.admit(ip(1)).unwrap();
        assert_eq!(slots.open(), 2);
        // The idle one was told to go; the busy one keeps its slot.
        assert!(
            futures_util::FutureExt::now_or_never(old.conn.evicted.notified()).is_some(),
            "the idle connection is evicted"
        );
        drop((old, new));
        assert_eq!(slots.open(), 1, "a dropped slot is freed once");
        // All slots busy: a newcomer is refused.
        let other = slots.admit(ip(4)).unwrap();
        other.conn.idle.store(false, Ordering::Relaxed);
        assert!(slots.admit(ip(5)).is_none());
    }
}
