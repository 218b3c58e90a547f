//! The fake hypervisor: VMs and disks in memory, node memory/disk accounted so that allocation
//! can fail, with optional latency per operation and injectable failures for tests.

use super::*;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone)]
struct FakeVm {
    memory: u64,
    vcpus: u64,
    disks: Vec<u64>,
    running: bool,
}

#[derive(Debug, Clone)]
struct FakeNode {
    spec: NodeSpec,
    vms: HashMap<String, FakeVm>,
    /// Names of the instances exported to this node.
    exports: std::collections::BTreeSet<String>,
    unreachable: bool,
}

impl FakeNode {
    fn used_memory(&self) -> u64 {
        self.vms
            .values()
            .filter(|v| v.running)
            .map(|v| v.memory)
            .sum()
    }

    fn used_disk(&self) -> u64 {
        self.vms.values().flat_map(|v| v.disks.iter()).sum()
    }
}

/// Memory the fake host keeps for itself, reported as `mnode`.
const HOST_MEMORY_MIB: u64 = 512;

#[derive(Default)]
pub struct FakeBackend {
    nodes: Mutex<HashMap<String, FakeNode>>,
    delay: Duration,
    /// Operation name → error to return on its next call.
    failures: Mutex<HashMap<String, BackendError>>,
    /// `--fake-journal`: a line per disk creation and start, so tests can count executions
    /// across processes (several masters append to one file).
    journal: Option<Mutex<std::fs::File>>,
}

impl FakeBackend {
    pub fn new(delay: Duration) -> FakeBackend {
        FakeBackend {
            delay,
            ..FakeBackend::default()
        }
    }

    pub fn with_journal(mut self, path: &std::path::Path) -> std::io::Result<FakeBackend> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.journal = Some(Mutex::new(file));
        Ok(self)
    }

    /// One line, written whole (O_APPEND): `<pid> <operation> <node> <instance>`.
    fn record(&self, operation: &str, node: &str, vm: &str) {
        if let Some(journal) = &self.journal {
            use std::io::Write;
            let line = format!("{} {operation} {node} {vm}\n", std::process::id());
            let mut file = journal.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::warn!("fake journal: {e}");
            }
        }
    }

    /// Makes the next call of `operation` (e.g. "start", "create_disks") fail with `error`.
    pub fn fail_next(&self, operation: &str, error: BackendError) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(operation.into(), error);
    }

    pub fn set_unreachable(&self, node: &str, unreachable: bool) {
        if let Some(n) = self.lock().get_mut(node) {
            n.unreachable = unreachable;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FakeNode>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn enter(&self, operation: &str, node: &str) -> BackendResult<()> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if let Some(err) = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(operation)
        {
            return Err(err);
        }
        match self.lock().get(node) {
            None => Err(BackendError {
                kind: FailureKind::NodeUnreachable,
                message: format!("Node {node} is not known to the fake hypervisor"),
            }),
            Some(n) if n.unreachable => Err(BackendError {
                kind: FailureKind::NodeUnreachable,
                message: format!("Error while contacting node {node}: connection refused"),
            }),
            Some(_) => Ok(()),
        }
    }

    fn with_vm<T>(
        &self,
        node: &str,
        name: &str,
        f: impl FnOnce(&mut FakeNode, &str) -> BackendResult<T>,
    ) -> BackendResult<T> {
        let mut nodes = self.lock();
        let n = nodes
            .get_mut(node)
            .ok_or_else(|| BackendError::failed(format!("unknown node {node}")))?;
        f(n, name)
    }
}

fn missing(name: &str, node: &str) -> BackendError {
    BackendError::failed(format!("Instance {name} has no disks on node {node}"))
}

impl Backend for FakeBackend {
    fn adopt(&self, nodes: Vec<NodeSpec>, vms: Vec<(String, VmSpec, bool)>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut table = self.lock();
            for spec in nodes {
                table
                    .entry(spec.name.clone())
                    .and_modify(|n| n.spec = spec.clone())
                    .or_insert(FakeNode {
                        spec,
                        vms: HashMap::new(),
                        exports: Default::default(),
                        unreachable: false,
                    });
            }
            for (node, vm, running) in vms {
                if let Some(n) = table.get_mut(&node) {
                    n.vms.entry(vm.name.to_string()).or_insert(FakeVm {
                        memory: vm.memory_mib,
                        vcpus: vm.vcpus,
                        disks: vm.disks_mib.clone(),
                        running,
                    });
                }
            }
        })
    }

    fn node_info<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<NodeInfo>> {
        Box::pin(async move {
            self.enter("node_info", node).await?;
            let nodes = self.lock();
            let n = &nodes[node];
            let total = n.spec.memory_mib;
            Ok(NodeInfo {
                memory_total: total,
                memory_node: HOST_MEMORY_MIB.min(total),
                memory_free: total
                    .saturating_sub(HOST_MEMORY_MIB)
                    .saturating_sub(n.used_memory()),
                disk_total: n.spec.disk_mib,
                disk_free: n.spec.disk_mib.saturating_sub(n.used_disk()),
                cpus: n.spec.cpus,
                sockets: 1,
            })
        })
    }

    fn create_disks<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.enter("create_disks", node).await?;
            self.record("create_disks", node, &vm.name);
            self.with_vm(node, &vm.name, |n, name| {
                let needed: u64 = vm.disks_mib.iter().sum();
                let free = n.spec.disk_mib.saturating_sub(n.used_disk());
                if needed > free {
                    return Err(BackendError {
                        kind: FailureKind::InsufficientResources,
                        message: format!(
                            "Not enough disk space on node {node}: required {needed} MiB, available {free} MiB"
                        ),
                    });
                }
                let entry = n.vms.entry(name.into()).or_insert(FakeVm {
                    memory: vm.memory_mib,
                    vcpus: vm.vcpus,
                    disks: vec![],
                    running: false,
                });
                entry.disks = vm.disks_mib.clone();
                Ok(())
            })
        })
    }

    fn remove_disks<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.enter("remove_disks", node).await?;
            self.with_vm(node, name, |n, name| {
                n.vms.remove(name);
                Ok(())
            })
        })
    }

    fn grow_disk<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        index: usize,
        new_size: u64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.enter("grow_disk", node).await?;
            self.with_vm(node, name, |n, name| {
                let free = n.spec.disk_mib.saturating_sub(n.used_disk());
                let vm = n.vms.get_mut(name).ok_or_else(|| missing(name, node))?;
                let current = vm.disks.get(index).copied().unwrap_or(0);
                if new_size.saturating_sub(current) > free {
                    return Err(BackendError {
                        kind: FailureKind::InsufficientResources,
                        message: format!("Not enough disk space on node {node}"),
                    });
                }
                if index >= vm.disks.len() {
                    vm.disks.resize(index + 1, 0);
                }
                vm.disks[index] = new_size;
                Ok(())
            })
        })
    }

    fn install_os<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move {
            self.enter("install_os", node).await?;
            self.with_vm(node, &vm.name, |n, name| {
                n.vms
                    .get(name)
                    .map(|_| vec![])
                    .ok_or_else(|| missing(name, node))
            })
        })
    }

    fn start<'a>(&'a self, node: &'a str, vm: &'a VmSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.enter("start", node).await?;
            self.record("start", node, &vm.name);
            self.with_vm(node, &vm.name, |n, name| {
                let free = n
                    .spec
                    .memory_mib
                    .saturating_sub(HOST_MEMORY_MIB)
                    .saturating_sub(n.used_memory());
                let fake = n.vms.entry(name.into()).or_insert(FakeVm {
                    memory: vm.memory_mib,
                    vcpus: vm.vcpus,
                    disks: vm.disks_mib.clone(),
                    running: false,
                });
                if fake.running {
                    return Ok(());
                }
                if vm.memory_mib > free {
                    return Err(BackendError {
                        kind: FailureKind::InsufficientResources,
                        message: format!("Not enough memory on node {node} to start {name}"),
                    });
                }
                fake.memory = vm.memory_mib;
                fake.vcpus = vm.vcpus;
                fake.running = true;
                Ok(())
            })
        })
    }

    fn stop<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        _timeout_s: u64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.enter("stop", node).await?;
            self.with_vm(node, name, |n, name| {
                if let Some(vm) = n.vms.get_mut(name) {
                    vm.running = false;
                }
                Ok(())
            })
        })
    }

    fn reboot<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        _kind: RebootKind,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.enter("reboot", node).await?;
            self.with_vm(node, name, |n, name| match n.vms.get(name) {
                Some(vm) if vm.running => Ok(()),
                _ => Err(BackendError::failed(format!(
                    "Instance {name} is not running"
                ))),
            })
        })
    }

    fn instance_state<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<VmState>>> {
        Box::pin(async move {
            self.enter("instance_state", node).await?;
            Ok(self.lock()[node].vms.get(name).map(|vm| VmState {
                running: vm.running,
                memory_mib: vm.memory,
                vcpus: vm.vcpus,
            }))
        })
    }

    fn migrate<'a>(
        &'a self,
        src: &'a str,
        dst: &'a str,
        name: &'a str,
        live: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.enter("migrate", src).await?;
            self.enter("migrate_target", dst).await?;
            let mut nodes = self.lock();
            let vm = nodes
                .get_mut(src)
                .and_then(|n| n.vms.remove(name))
                .ok_or_else(|| missing(name, src))?;
            let target = nodes
                .get_mut(dst)
                .ok_or_else(|| BackendError::failed(format!("unknown node {dst}")))?;
            let free = target
                .spec
                .memory_mib
                .saturating_sub(HOST_MEMORY_MIB)
                .saturating_sub(target.used_memory());
            if vm.running && vm.memory > free {
                let memory = vm.memory;
                nodes.get_mut(src).map(|n| n.vms.insert(name.into(), vm));
                return Err(BackendError {
                    kind: FailureKind::InsufficientResources,
                    message: format!(
                        "Not enough memory on node {dst}: needed {memory} MiB, available {free} MiB"
                    ),
                });
            }
            let _ = live;
            // A target that already holds the disks is the DRBD secondary: the roles swap and
            // the old primary keeps its copy of the disks, stopped, as the new secondary.
            let mirrored = target.vms.contains_key(name);
            let secondary = FakeVm {
                running: false,
                ..vm.clone()
            };
            target.vms.insert(name.into(), vm);
            if mirrored && let Some(source) = nodes.get_mut(src) {
                source.vms.insert(name.into(), secondary);
            }
            Ok(())
        })
    }

    fn rename<'a>(
        &'a self,
        node: &'a str,
        old: &'a str,
        new: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.enter("rename", node).await?;
            self.with_vm(node, old, |n, old| {
                if let Some(vm) = n.vms.remove(old) {
                    n.vms.insert(new.into(), vm);
                }
                Ok(())
            })
        })
    }

    fn powercycle<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(async move {
            self.enter("powercycle", node).await?;
            if let Some(n) = self.lock().get_mut(node) {
                n.vms.values_mut().for_each(|vm| vm.running = false);
            }
            Ok("Reboot scheduled in 5 seconds".to_string())
        })
    }

    fn export_instance<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move {
            self.enter("export_instance", node).await?;
            if let Some(n) = self.lock().get_mut(node) {
                n.exports.insert(vm.name.to_string());
            }
            Ok(vec![])
        })
    }

    fn list_exports<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move {
            self.enter("list_exports", node).await?;
            let nodes = self.lock();
            Ok(nodes[node].exports.iter().cloned().collect())
        })
    }

    fn remove_export<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.enter("remove_export", node).await?;
            match self.lock().get_mut(node).map(|n| n.exports.remove(name)) {
                Some(true) => Ok(()),
                _ => Err(BackendError {
                    kind: FailureKind::OperationFailed,
                    message: format!("no export of {name}"),
                }),
            }
        })
    }

    fn delay<'a>(&'a self, node: &'a str, seconds: f64) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.enter("delay", node).await?;
            tokio::time::sleep(Duration::try_from_secs_f64(seconds).unwrap_or_default()).await;
            Ok(())
        })
    }
}
