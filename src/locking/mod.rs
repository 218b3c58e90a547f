//! Ganeti's locking (upstream `lib/locking.py`), on its own floor: the levels and modes, the plan
//! one opcode needs (computed by `cmdlib` before any lock is taken) and the manager that grants
//! plans (used by `jobqueue`). Neither of those two rooms is imported here.

mod manager;

pub use manager::{HeldLocks, LockInfo, LockManager};

use std::collections::BTreeMap;

/// Lock levels in acquisition order (spec opcodes.md §1.5). The cluster-wide BGL is shared by every
/// opcode gantry implements, so it never blocks anything and is not modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockLevel {
    Instance,
    NodeGroup,
    Node,
    NodeRes,
    Network,
}

impl LockLevel {
    /// Ganeti's name of the level (`LEVEL_INSTANCE` is "instance").
    pub fn name(self) -> &'static str {
        match self {
            LockLevel::Instance => "instance",
            LockLevel::NodeGroup => "nodegroup",
            LockLevel::Node => "node",
            LockLevel::NodeRes => "node-res",
            LockLevel::Network => "network",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// The locks one opcode needs, kept sorted and free of duplicates (exclusive wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockPlan {
    locks: BTreeMap<(LockLevel, String), LockMode>,
}

impl LockPlan {
    pub fn add(&mut self, level: LockLevel, name: impl Into<String>, mode: LockMode) {
        let slot = self
            .locks
            .entry((level, name.into()))
            .or_insert(LockMode::Shared);
        *slot = (*slot).max(mode);
    }

    pub fn add_all<I: IntoIterator<Item = S>, S: Into<String>>(
        &mut self,
        level: LockLevel,
        names: I,
        mode: LockMode,
    ) {
        for n in names {
            self.add(level, n, mode);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&(LockLevel, String), &LockMode)> {
        self.locks.iter()
    }
}
