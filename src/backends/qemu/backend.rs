//! The `kvm` hypervisor on one host: every node this backend serves is local. Instance disks are
//! raw sparse files in a shared storage directory (Ganeti's `file`/`sharedfile` model: every node
//! sees the same path, so migration moves only memory). Each running VM has a runtime record
//! (`runtime.json` in its run dir, which is per host: the exact VM config) so a restarted gantry
//! or node agent re-adopts it, and a supervisor task that notices when it dies.

use super::lvm;
use super::net;
use super::os::{self, InstalledOs};
use super::vm::{Vm, VmConfig, VmError};
use crate::backends::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;

#[derive(Debug, Clone)]
pub struct QemuSettings {
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    /// Shared by every node: `<storage>/<instance>/disk-<disk uuid>.img` and the last `spec.json`,
    /// and exports under `<storage>/.export/<instance>/`. Runtime records live in `run_root`.
    pub storage_dir: PathBuf,
    /// Sockets, pidfiles and logs; keep it short (unix socket paths must stay < 108 bytes).
    pub run_root: PathBuf,
    pub accel: String,
    /// The machine type new VMs get (`probe.rs`).
    pub machine: String,
    pub os_search_path: Vec<PathBuf>,
    /// Address other hosts reach this one at for incoming migrations (TCP); None: this host
    /// only migrates to itself, over unix sockets.
    pub migration_host: Option<String>,
    /// Every NIC a user-mode netdev (`--user-networking`): for hosts without bridges. Guests
    /// reach out through QEMU's NAT but cannot be reached.
    pub user_networking: bool,
    /// The directories hvparams `kernel_path` and `initrd_path` may name (`--boot-dir`): a
    /// write user must not be able to hand any host file to a guest.
    pub boot_dirs: Vec<PathBuf>,
}

/// What `runtime.json` holds: where the VM runs and exactly how it was started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RuntimeRecord {
    node: String,
    config: VmConfig,
}

struct Running {
    node: String,
    vm: Arc<Vm>,
    /// The VM as it is now: its start configuration plus hot-added disks.
    config: VmConfig,
}

type VmMap = Arc<tokio::sync::Mutex<HashMap<String, Running>>>;

pub struct QemuBackend {
    settings: QemuSettings,
    nodes: std::sync::Mutex<BTreeMap<String, NodeSpec>>,
    vms: VmMap,
    /// Migration targets started with `-incoming`, until the migration ends.
    incoming: tokio::sync::Mutex<HashMap<String, Vm>>,
}

fn failed(e: impl std::fmt::Display) -> BackendError {
    BackendError::failed(e.to_string())
}

/// `root/name`, for a `name` that is one safe path component (a valid host name).
fn safe_dir(root: &Path, name: &str) -> BackendResult<PathBuf> {
    if !crate::validate::is_safe_component(name) {
        return Err(failed(format!(
            "refusing the invalid instance name {name:?}"
        )));
    }
    Ok(root.join(name))
}

/// MACs become part of QEMU's `-device` argument: anything but `aa:bb:cc:dd:ee:ff` could smuggle
/// in more properties (`,romfile=/etc/shadow`).
fn check_macs(macs: &[String]) -> BackendResult<()> {
    match macs.iter().find(|m| !crate::validate::is_mac(m)) {
        Some(bad) => Err(failed(format!("refusing the invalid MAC address {bad:?}"))),
        None => Ok(()),
    }
}

/// A short, stable name derived from `name` (8 hex digits): run dirs must stay short.
pub fn short_id(name: &str) -> String {
    use md5::{Digest, Md5};
    let digest = Md5::digest(name.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl QemuBackend {
    pub fn new(settings: QemuSettings) -> QemuBackend {
        QemuBackend {
            settings,
            nodes: Default::default(),
            vms: Default::default(),
            incoming: Default::default(),
        }
    }

    /// The OS definitions installed in the search path.
    pub fn operating_systems(&self) -> BTreeMap<String, InstalledOs> {
        os::scan(&self.settings.os_search_path)
    }

    /// An instance's directory on the shared storage. Names reach this point validated by the
    /// logical units; refusing anything else here keeps every path under the storage root even
    /// if a check upstream is ever missed.
    fn instance_dir(&self, name: &str) -> BackendResult<PathBuf> {
        safe_dir(&self.settings.storage_dir, name)
    }

    /// Disk files are named by disk UUID, so removing a disk never shifts another's file; on
    /// LVM the volumes are (`lvm.rs`).
    fn disk_paths(&self, vm: &VmSpec) -> BackendResult<Vec<PathBuf>> {
        let dir = self.instance_dir(&vm.name)?;
        if let Some(vg) = lvm::instance_vg(&dir) {
            return (0..vm.disks_mib.len())
                .map(|n| match vm.disk_ids.get(n) {
                    Some(id) if crate::validate::is_uuid(id) => Ok(lvm::lv_path(&vg, id)),
                    other => Err(failed(format!(
                        "refusing the disk id {other:?} as a volume name"
                    ))),
                })
                .collect();
        }
        (0..vm.disks_mib.len())
            .map(|n| {
                let file = match vm.disk_ids.get(n) {
                    Some(id) if crate::validate::is_uuid(id) => format!("disk-{id}.img"),
                    Some(id) => return Err(failed(format!("refusing the invalid disk id {id:?}"))),
                    None => format!("disk{n}.img"),
                };
                Ok(dir.join(file))
            })
            .collect()
    }

    /// Exports live next to the instances, on the shared storage, so any node can import them.
    fn export_dir(&self, name: &str) -> BackendResult<PathBuf> {
        safe_dir(&self.settings.storage_dir.join(".export"), name)
    }

    fn find_os(&self, os_type: &str) -> BackendResult<InstalledOs> {
        let name = os_type.split('+').next().unwrap_or("");
        self.operating_systems()
            .remove(name)
            .ok_or_else(|| failed(format!("OS '{name}' not found")))
    }

    /// The last specification this host was given for an instance (for calls that name the
    /// instance only, such as growing a disk of a stopped one).
    fn saved_spec(&self, name: &str) -> Option<VmSpec> {
        let text = std::fs::read(self.instance_dir(name).ok()?.join("spec.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn save_spec(&self, vm: &VmSpec) -> BackendResult<()> {
        let text = serde_json::to_vec_pretty(vm).map_err(failed)?;
        std::fs::write(self.instance_dir(&vm.name)?.join("spec.json"), text).map_err(failed)
    }

    fn vm_config(&self, vm: &VmSpec, incoming: Option<String>) -> BackendResult<VmConfig> {
        let suffix = if incoming.is_some() { "-in" } else { "" };
        let run_dir = self
            .settings
            .run_root
            .join(format!("{}{suffix}", short_id(&vm.name)));
        let net = if self.settings.user_networking || vm.nics.len() != vm.macs.len() {
            Vec::new()
        } else {
            net::plan(&vm.nics, &run_dir)
                .map_err(|e| failed(format!("Instance {}: {e}", vm.name)))?
        };
        let boot = match &vm.boot {
            Some(boot) => Some(self.checked_boot(boot)?),
            None => None,
        };
        Ok(VmConfig {
            name: vm.name.to_string(),
            run_dir,
            net,
            boot,
            console_log: Some(self.instance_dir(&vm.name)?.join("console.log")),
            memory_mib: vm.memory_mib,
            vcpus: vm.vcpus.max(1) as u32,
            disks: self.disk_paths(vm)?,
            macs: vm.macs.iter().map(|m| m.to_string()).collect(),
            accel: self.settings.accel.clone(),
            machine: self.settings.machine.clone(),
            incoming,
        })
    }

    /// The kernel and initrd as canonical paths, each a file under one of the boot directories.
    fn checked_boot(&self, boot: &KernelBoot) -> BackendResult<KernelBoot> {
        let allowed: Vec<PathBuf> = self
            .settings
            .boot_dirs
            .iter()
            .filter_map(|d| d.canonicalize().ok())
            .collect();
        let check = |param: &str, path: &str| -> BackendResult<String> {
            let real = Path::new(path)
                .canonicalize()
                .map_err(|e| failed(format!("{param} '{path}': {e}")))?;
            if !real.is_file() || !allowed.iter().any(|dir| real.starts_with(dir)) {
                let dirs: Vec<String> = self
                    .settings
                    .boot_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                return Err(failed(format!(
                    "{param} '{path}' is not a file in this host's boot directories ({}); `--boot-dir` names them",
                    dirs.join(", ")
                )));
            }
            Ok(real.display().to_string())
        };
        Ok(KernelBoot {
            kernel: check("kernel_path", &boot.kernel)?,
            initrd: match &boot.initrd {
                Some(initrd) => Some(check("initrd_path", initrd)?),
                None => None,
            },
            append: boot.append.clone(),
        })
    }

    fn write_record(&self, node: &str, config: &VmConfig) -> BackendResult<()> {
        let record = RuntimeRecord {
            node: node.to_string(),
            config: config.clone(),
        };
        let text = serde_json::to_vec_pretty(&record).map_err(failed)?;
        std::fs::create_dir_all(&config.run_dir).map_err(failed)?;
        std::fs::write(config.run_dir.join("runtime.json"), text).map_err(failed)
    }

    /// Registers a running VM and starts its supervisor: a guest poweroff (QEMU stays in
    /// `shutdown` because of -no-shutdown) is turned into `quit`, and a VM whose QMP connection
    /// ends without gantry stopping it is dropped from the map and logged.
    async fn register(&self, node: &str, vm: Vm) {
        let name = vm.config.name.clone();
        let config = vm.config.clone();
        let vm = Arc::new(vm);
        self.vms.lock().await.insert(
            name.clone(),
            Running {
                node: node.to_string(),
                vm: vm.clone(),
                config,
            },
        );
        let vms = self.vms.clone();
        tokio::spawn(async move {
            let mut events = vm.qmp.events();
            loop {
                tokio::select! {
                    _ = vm.qmp.closed() => break,
                    event = events.recv() => match event {
                        Ok(e) if e.name == "SHUTDOWN" && e.data["guest"] == true => {
                            tracing::info!(instance = %name, "guest powered off");
                            let _ = vm.qmp.execute("quit", Value::Null).await;
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                }
            }
            let mut map = vms.lock().await;
            let died = map.get(&name).is_some_and(|r| Arc::ptr_eq(&r.vm, &vm));
            if died {
                map.remove(&name);
                tracing::warn!(instance = %name, "QEMU exited without being stopped by gantry");
            }
            drop(map);
            vm.reap(Duration::from_secs(5)).await;
            if died {
                // What QEMU logged stays readable in the run dir; only the sockets go.
                let _ = std::fs::remove_file(vm.config.qmp_socket());
                let _ = std::fs::remove_file(vm.config.serial_socket());
            }
        });
    }

    async fn running(&self, name: &str) -> Option<(String, Arc<Vm>)> {
        self.vms
            .lock()
            .await
            .get(name)
            .filter(|r| !r.vm.qmp.is_closed())
            .map(|r| (r.node.clone(), r.vm.clone()))
    }

    /// The current configuration of a running VM (with hot-added disks).
    async fn current_config(&self, name: &str) -> Option<VmConfig> {
        self.vms.lock().await.get(name).map(|r| r.config.clone())
    }

    async fn qemu_img(&self, args: &[&str]) -> BackendResult<()> {
        let out = Command::new(&self.settings.qemu_img)
            .args(args)
            .output()
            .await
            .map_err(|e| failed(format!("cannot run qemu-img: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(failed(format!(
                "qemu-img {} failed: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Hot-adds disk files the running VM does not have yet, and records them.
    async fn hot_add_disks(&self, vm: &Vm, paths: &[PathBuf], from: usize) -> BackendResult<()> {
        for (n, path) in paths.iter().enumerate().skip(from) {
            let id = format!("disk{n}");
            vm.qmp
                .execute(
                    "blockdev-add",
                    json!({"driver": "file", "filename": path, "node-name": format!("{id}-file")}),
                )
                .await
                .map_err(failed)?;
            vm.qmp
                .execute(
                    "blockdev-add",
                    json!({"driver": "raw", "file": format!("{id}-file"), "node-name": id}),
                )
                .await
                .map_err(failed)?;
            vm.qmp
                .execute(
                    "device_add",
                    json!({"driver": "virtio-blk-pci", "drive": id, "id": id,
                           "addr": super::vm::disk_slot(n)}),
                )
                .await
                .map_err(failed)?;
            let mut map = self.vms.lock().await;
            if let Some(running) = map.get_mut(&vm.config.name) {
                running.config.disks.push(path.clone());
                let (node, config) = (running.node.clone(), running.config.clone());
                drop(map);
                self.write_record(&node, &config)?;
            }
        }
        Ok(())
    }

    async fn stop_vm(&self, name: &str, timeout: Duration) -> BackendResult<()> {
        let entry = self.vms.lock().await.remove(name);
        if let Some(running) = entry {
            running.vm.stop(timeout).await.map_err(failed)?;
            let _ = std::fs::remove_dir_all(&running.vm.config.run_dir);
        }
        Ok(())
    }

    /// Starts QEMU and attaches its taps; a VM whose network cannot be set up is stopped again.
    async fn launch(&self, node: &str, config: VmConfig) -> BackendResult<Vm> {
        let on_node = |e: String| failed(format!("on node {node}: {e}"));
        net::check(&config.net).map_err(on_node)?;
        let vm = Vm::launch(&self.settings.qemu, config)
            .await
            .map_err(|e| match e {
                VmError::Launch(m) | VmError::Io(m) => m,
                other => other.to_string(),
            })
            .map_err(on_node)?;
        if let Err(e) = net::attach(&vm.config.net).await {
            let _ = vm.stop(Duration::ZERO).await;
            return Err(on_node(e));
        }
        Ok(vm)
    }

    /// Starts the migration target: the source's configuration, this host's paths, `-incoming`.
    async fn start_incoming(
        &self,
        dst: &str,
        name: &str,
        source: VmConfig,
    ) -> BackendResult<String> {
        let mut config = source;
        check_macs(&config.macs)?;
        // Same files, seen through this host's mount of the shared storage.
        let dir = self.instance_dir(name)?;
        config.disks = config
            .disks
            .iter()
            .map(|d| dir.join(d.file_name().unwrap_or_default()))
            .collect();
        config.console_log = Some(dir.join("console.log"));
        config.accel = self.settings.accel.clone();
        config.run_dir =
            self.settings
                .run_root
                .join(format!("{}-{}", short_id(name), short_id(dst)));
        let _ = std::fs::remove_dir_all(&config.run_dir);
        // The target's own taps: both QEMUs hold theirs until the source quits.
        for (n, nic) in config.net.iter_mut().enumerate() {
            nic.tap = net::tap_name(&config.run_dir, n);
        }
        let uri = match &self.settings.migration_host {
            Some(host) => {
                // A free port: bind, note it, release it for QEMU.
                let port = std::net::TcpListener::bind((host.as_str(), 0))
                    .and_then(|l| l.local_addr())
                    .map_err(failed)?
                    .port();
                format!("tcp:{host}:{port}")
            }
            None => format!("unix:{}", config.run_dir.join("migrate.sock").display()),
        };
        config.incoming = Some(uri.clone());
        let target = self.launch(dst, config).await?;
        if let Some(stale) = self.incoming.lock().await.insert(name.to_string(), target) {
            let _ = stale.stop(Duration::ZERO).await;
        }
        Ok(uri)
    }

    /// Streams memory to a waiting target; the disks are shared. On failure the source keeps
    /// running; on success it quits.
    async fn send(&self, name: &str, uri: &str, live: bool) -> BackendResult<()> {
        let Some((_, source)) = self.running(name).await else {
            return Err(failed(format!("Instance {name} is not running")));
        };
        if !live {
            source
                .qmp
                .execute("stop", Value::Null)
                .await
                .map_err(failed)?;
        }
        let outcome = async {
            source
                .qmp
                .execute("migrate", json!({"uri": uri}))
                .await
                .map_err(failed)?;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let state = source
                    .qmp
                    .execute("query-migrate", Value::Null)
                    .await
                    .map_err(failed)?;
                match state["status"].as_str().unwrap_or("") {
                    "completed" => return Ok(()),
                    "failed" | "cancelled" => {
                        return Err(failed(format!(
                            "migration {}: {}",
                            state["status"],
                            state["error-desc"].as_str().unwrap_or("no reason given")
                        )));
                    }
                    _ => {}
                }
            }
        }
        .await;
        if let Err(e) = outcome {
            if !live {
                let _ = source.qmp.execute("cont", Value::Null).await;
            }
            return Err(e);
        }
        self.vms.lock().await.remove(name);
        let _ = source.stop(Duration::ZERO).await;
        let _ = std::fs::remove_dir_all(&source.config.run_dir);
        Ok(())
    }

    /// Takes over a received VM (resuming it if the source was paused), or discards it.
    async fn finish(&self, dst: &str, name: &str, success: bool) -> BackendResult<()> {
        let Some(target) = self.incoming.lock().await.remove(name) else {
            return if success {
                Err(failed(format!("no incoming migration of {name}")))
            } else {
                Ok(())
            };
        };
        if !success {
            let _ = target.stop(Duration::ZERO).await;
            let _ = std::fs::remove_dir_all(&target.config.run_dir);
            return Ok(());
        }
        if target.status().await.map_err(failed)? != "running" {
            target
                .qmp
                .execute("cont", Value::Null)
                .await
                .map_err(failed)?;
        }
        self.write_record(dst, &target.config)?;
        self.register(dst, target).await;
        Ok(())
    }
}

impl Backend for QemuBackend {
    fn adopt(&self, nodes: Vec<NodeSpec>, _vms: Vec<(String, VmSpec, bool)>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            *self.nodes.lock().unwrap_or_else(|e| e.into_inner()) =
                nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
            let _ = std::fs::create_dir_all(&self.settings.storage_dir);
            let _ = std::fs::create_dir_all(&self.settings.run_root);
            let Ok(entries) = std::fs::read_dir(&self.settings.run_root) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path().join("runtime.json");
                let Ok(text) = std::fs::read(&path) else {
                    continue;
                };
                let Ok(record) = serde_json::from_slice::<RuntimeRecord>(&text) else {
                    tracing::warn!("unreadable runtime record {}", path.display());
                    continue;
                };
                let name = record.config.name.clone();
                match Vm::adopt(record.config.clone()).await {
                    Some(vm) => {
                        tracing::info!(instance = %name, pid = vm.pid(), "re-adopted running VM");
                        if let Err(e) = net::attach(&vm.config.net).await {
                            tracing::warn!(instance = %name, "re-attaching its NICs: {e}");
                        }
                        self.register(&record.node, vm).await;
                    }
                    None => {
                        tracing::warn!(instance = %name, "VM is gone; cleaning its run files");
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
        })
    }

    fn node_info<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<NodeInfo>> {
        Box::pin(async move {
            let known = self
                .nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(node);
            if !known {
                return Err(BackendError {
                    kind: FailureKind::NodeUnreachable,
                    message: format!("Node {node} is not served by this host"),
                });
            }
            // Local nodes are this host: its real capacity, whatever the configuration says.
            let spec = host_spec(node, &self.settings.storage_dir);
            let used_memory: u64 = self
                .vms
                .lock()
                .await
                .values()
                .filter(|r| r.node == node)
                .map(|r| r.vm.config.memory_mib)
                .sum();
            // Disks are sparse: count what was allocated to instances (their logical sizes),
            // not the blocks written so far, as Ganeti accounts for volumes.
            let used_disk: u64 = std::fs::read_dir(&self.settings.storage_dir)
                .into_iter()
                .flatten()
                .flatten()
                .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
                .filter(|f| f.path().extension().is_some_and(|e| e == "img"))
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.len() / (1024 * 1024))
                .sum();
            let host = 512;
            Ok(NodeInfo {
                memory_total: spec.memory_mib,
                memory_free: spec.memory_mib.saturating_sub(host + used_memory),
                memory_node: host,
                disk_total: spec.disk_mib,
                disk_free: spec.disk_mib.saturating_sub(used_disk),
                cpus: spec.cpus,
                sockets: 1,
            })
        })
    }

    fn create_disks<'a>(
        &'a self,
        _node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            // Makes the disk files match the specification: missing ones are created (and
            // hot-plugged into a running VM); files of removed disks go once the VM is stopped.
            let dir = self.instance_dir(&vm.name)?;
            std::fs::create_dir_all(&dir).map_err(failed)?;
            // `plain` goes on LVM when the cluster's volume group is on this host, decided with
            // the instance's first disks and kept in its directory.
            let new_instance = !dir.join("spec.json").exists();
            if new_instance && vm.disk_template == "plain" && lvm::vg_exists(&vm.vg_name).await {
                std::fs::write(dir.join(lvm::MARKER), &vm.vg_name).map_err(failed)?;
            }
            let vg = lvm::instance_vg(&dir);
            let paths = self.disk_paths(vm)?;
            let existing = match &vg {
                Some(vg) => lvm::volumes(vg, &vm.uuid).await.map_err(failed)?,
                None => Vec::new(),
            };
            let mut created = 0;
            for ((path, size), id) in paths.iter().zip(&vm.disks_mib).zip(&vm.disk_ids) {
                if let Some(vg) = &vg {
                    if !existing.iter().any(|v| v == id.as_str()) {
                        lvm::create(vg, id, *size, &vm.uuid).await.map_err(failed)?;
                        created += 1;
                    }
                    continue;
                }
                if path.exists() {
                    continue;
                }
                let path_text = path.display().to_string();
                self.qemu_img(&["create", "-q", "-f", "raw", &path_text, &format!("{size}M")])
                    .await?;
                created += 1;
            }
            self.save_spec(vm)?;
            match self.running(&vm.name).await {
                Some((_, running)) if created > 0 => {
                    let had = self
                        .current_config(&vm.name)
                        .await
                        .map_or(running.config.disks.len(), |c| c.disks.len());
                    self.hot_add_disks(&running, &paths, had).await?;
                }
                Some(_) => {}
                None if vg.is_some() => {
                    // Volumes made above are in the spec; only ones listed before can be stale.
                    let vg = vg.unwrap_or_default();
                    for volume in existing {
                        if !vm.disk_ids.iter().any(|id| id.as_str() == volume) {
                            lvm::remove(&vg, &volume).await.map_err(failed)?;
                        }
                    }
                }
                None => {
                    let stale = std::fs::read_dir(self.instance_dir(&vm.name)?)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| {
                            p.extension().is_some_and(|e| e == "img") && !paths.contains(p)
                        });
                    for path in stale {
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
            Ok(())
        })
    }

    fn remove_disks<'a>(
        &'a self,
        _node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.stop_vm(name, Duration::ZERO).await?;
            // Run dirs of this instance left by a VM that died (they keep QEMU's log until now).
            let prefix = short_id(name);
            for entry in std::fs::read_dir(&self.settings.run_root)
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            let dir = self.instance_dir(name)?;
            if let (Some(vg), Some(spec)) = (lvm::instance_vg(&dir), self.saved_spec(name)) {
                for volume in lvm::volumes(&vg, &spec.uuid).await.map_err(failed)? {
                    lvm::remove(&vg, &volume).await.map_err(failed)?;
                }
            }
            match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(failed(e)),
                _ => Ok(()),
            }
        })
    }

    fn grow_disk<'a>(
        &'a self,
        _node: &'a str,
        name: &'a str,
        index: usize,
        new_size: u64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let bytes = new_size * 1024 * 1024;
            // A volume grows first; QEMU then sees the new size of its block device.
            if let (Some(vg), Some(spec)) = (
                lvm::instance_vg(&self.instance_dir(name)?),
                self.saved_spec(name),
            ) {
                let id = spec
                    .disk_ids
                    .get(index)
                    .ok_or_else(|| failed(format!("instance {name} has no disk {index}")))?;
                lvm::extend(&vg, id, new_size).await.map_err(failed)?;
                if let Some((_, vm)) = self.running(name).await {
                    return vm.resize_disk(index, bytes).await.map_err(failed);
                }
                return Ok(());
            }
            // Absolute sizes make this idempotent: it is called once per node of the instance.
            if let Some((_, vm)) = self.running(name).await {
                return vm.resize_disk(index, bytes).await.map_err(failed);
            }
            let spec = self
                .saved_spec(name)
                .ok_or_else(|| failed(format!("no disks known for instance {name}")))?;
            let path = self
                .disk_paths(&spec)?
                .get(index)
                .cloned()
                .ok_or_else(|| failed(format!("instance {name} has no disk {index}")))?;
            let path = path.display().to_string();
            self.qemu_img(&["resize", "-q", "-f", "raw", &path, &format!("{new_size}M")])
                .await
        })
    }

    fn install_os<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move {
            if self.running(&vm.name).await.is_some() {
                return Err(failed(format!("Instance {} is running", vm.name)));
            }
            let os = self
                .find_os(&vm.os)
                .map_err(|e| failed(format!("{e} on node {node}")))?;
            let disks = self.disk_paths(vm)?;
            // Kept for the OS rename script, which needs the same environment.
            self.save_spec(vm)?;
            let env = os::instance_env(&os, vm, &disks);
            os::run_script(&os, "create", &env).await.map_err(failed)
        })
    }

    fn start<'a>(&'a self, node: &'a str, vm: &'a VmSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            if self.running(&vm.name).await.is_some() {
                return Ok(());
            }
            let config = self.vm_config(vm, None)?;
            let _ = std::fs::remove_dir_all(&config.run_dir);
            std::fs::create_dir_all(self.instance_dir(&vm.name)?).map_err(failed)?;
            self.write_record(node, &config)?;
            let run_dir = config.run_dir.clone();
            match self.launch(node, config).await {
                Ok(running) => {
                    self.register(node, running).await;
                    Ok(())
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(run_dir);
                    Err(e)
                }
            }
        })
    }

    fn stop<'a>(
        &'a self,
        _node: &'a str,
        name: &'a str,
        timeout_s: u64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.stop_vm(name, Duration::from_secs(timeout_s)).await })
    }

    fn reboot<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        kind: RebootKind,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let Some((_, vm)) = self.running(name).await else {
                return Err(failed(format!("Instance {name} is not running")));
            };
            match kind {
                // A soft reboot resets the guest in place, keeping the process.
                RebootKind::Soft => vm
                    .qmp
                    .execute("system_reset", Value::Null)
                    .await
                    .map(|_| ())
                    .map_err(failed),
                // A hard one is a new QEMU process with the same configuration.
                RebootKind::Hard => {
                    let mut config = self
                        .current_config(name)
                        .await
                        .unwrap_or_else(|| vm.config.clone());
                    config.incoming = None;
                    self.stop_vm(name, Duration::ZERO).await?;
                    self.write_record(node, &config)?;
                    let fresh = self.launch(node, config).await?;
                    self.register(node, fresh).await;
                    Ok(())
                }
            }
        })
    }

    fn instance_state<'a>(
        &'a self,
        _node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<VmState>>> {
        Box::pin(async move {
            let Some((_, vm)) = self.running(name).await else {
                return Ok(None);
            };
            let status = vm.status().await.unwrap_or_default();
            Ok(Some(VmState {
                running: status == "running",
                memory_mib: vm.config.memory_mib,
                vcpus: vm.config.vcpus as u64,
            }))
        })
    }

    fn migrate<'a>(
        &'a self,
        _src: &'a str,
        dst: &'a str,
        name: &'a str,
        live: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            // A stopped instance on shared storage moves by configuration alone.
            let Some(config) = self.current_config(name).await else {
                return Ok(());
            };
            let source_net = config.net.clone();
            let uri = self.start_incoming(dst, name, config).await?;
            let sent = self.send(name, &uri, live).await;
            self.finish(dst, name, sent.is_ok()).await?;
            if sent.is_err() {
                // The discarded target took its routes along; the source keeps serving.
                net::attach(&source_net).await.map_err(failed)?;
            }
            sent
        })
    }

    fn rename<'a>(
        &'a self,
        _node: &'a str,
        old: &'a str,
        new: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            if self.running(old).await.is_some() {
                return Err(failed(format!("Instance {old} is running")));
            }
            let (from, to) = (self.instance_dir(old)?, self.instance_dir(new)?);
            if from.exists() && from != to {
                std::fs::rename(&from, &to).map_err(failed)?;
            }
            // The saved specification follows the name; then the OS's rename script runs.
            let Some(mut vm) = self.saved_spec(new) else {
                return Ok(());
            };
            vm.name = crate::validate::HostName::new(new).map_err(failed)?;
            vm.reinstall = false;
            self.save_spec(&vm)?;
            let Ok(os) = self.find_os(&vm.os) else {
                return Ok(());
            };
            let mut env = os::instance_env(&os, &vm, &self.disk_paths(&vm)?);
            env.push(("OLD_INSTANCE_NAME".into(), old.to_string()));
            // As upstream: the instance is renamed either way; a failed script is a warning.
            if let Err(e) = os::run_script(&os, "rename", &env).await {
                tracing::warn!(instance = %new, "OS rename script failed: {e}");
            }
            Ok(())
        })
    }

    fn console<'a>(&'a self, node: &'a str, name: &'a str) -> BoxFuture<'a, Option<Value>> {
        Box::pin(async move {
            let (_, vm) = self.running(name).await?;
            let socket = vm.config.serial_socket().display().to_string();
            Some(json!({
                "instance": name,
                "kind": "ssh",
                "host": node,
                "port": 22,
                "user": "root",
                "command": ["socat", "STDIO,raw,echo=0,escape=0x1d", format!("UNIX-CONNECT:{socket}")],
            }))
        })
    }

    fn installed_os(
        &self,
    ) -> BoxFuture<'_, Option<BTreeMap<String, crate::cluster::model::OsDefinition>>> {
        Box::pin(async move {
            Some(
                self.operating_systems()
                    .into_values()
                    .map(|o| (o.def.name.clone(), o.def))
                    .collect(),
            )
        })
    }

    fn verify_os_params<'a>(
        &'a self,
        _node: &'a str,
        os_type: &'a str,
        params: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let os = self.find_os(os_type)?;
            os::verify_parameters(&os, os_type, params)
                .await
                .map_err(failed)
        })
    }

    fn export_instance<'a>(
        &'a self,
        _node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move {
            let os = self.find_os(&vm.os)?;
            let dir = self.export_dir(&vm.name)?;
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(failed)?;
            let disks = self.disk_paths(vm)?;
            let mut log = vec![];
            for n in 0..disks.len() {
                let env = os::disk_script_env(&os, vm, &disks, n, "EXPORT");
                let dump =
                    std::fs::File::create(dir.join(format!("disk{n}.dump"))).map_err(failed)?;
                log.extend(
                    os::run_script_io(&os, "export", &env, None, Some(dump))
                        .await
                        .map_err(failed)?,
                );
            }
            let spec = serde_json::to_vec_pretty(vm).map_err(failed)?;
            std::fs::write(dir.join("spec.json"), spec).map_err(failed)?;
            log.push(format!(
                "exported {} disk(s) to {}",
                disks.len(),
                dir.display()
            ));
            Ok(log)
        })
    }

    fn import_instance<'a>(
        &'a self,
        _node: &'a str,
        vm: &'a VmSpec,
        source: &'a str,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move {
            let os = self.find_os(&vm.os)?;
            // An absolute export path, or the name of an exported instance.
            let dir = if source.starts_with('/') {
                PathBuf::from(source)
            } else {
                self.export_dir(source)?
            };
            let disks = self.disk_paths(vm)?;
            let mut log = vec![];
            for n in 0..disks.len() {
                let dump = dir.join(format!("disk{n}.dump"));
                let Ok(input) = std::fs::File::open(&dump) else {
                    return Err(failed(format!("export {} has no disk {n}", dir.display())));
                };
                let env = os::disk_script_env(&os, vm, &disks, n, "IMPORT");
                log.extend(
                    os::run_script_io(&os, "import", &env, Some(input), None)
                        .await
                        .map_err(failed)?,
                );
            }
            self.save_spec(vm)?;
            Ok(log)
        })
    }

    fn list_exports<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move {
            let dir = self.settings.storage_dir.join(".export");
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            names.sort();
            Ok(names)
        })
    }

    fn remove_export<'a>(
        &'a self,
        _node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            match std::fs::remove_dir_all(self.export_dir(name)?) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(failed(format!("no export of {name}")))
                }
                other => other.map_err(failed),
            }
        })
    }

    fn add_node<'a>(&'a self, node: NodeSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node.name.clone(), node);
            Ok(())
        })
    }

    fn running_config<'a>(
        &'a self,
        _node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<Value>>> {
        Box::pin(async move {
            Ok(self
                .current_config(name)
                .await
                .map(|c| serde_json::to_value(c).unwrap_or(Value::Null)))
        })
    }

    fn prepare_incoming<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        config: Value,
    ) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(async move {
            let config: VmConfig = serde_json::from_value(config).map_err(failed)?;
            self.start_incoming(node, name, config).await
        })
    }

    fn send_migration<'a>(
        &'a self,
        _node: &'a str,
        name: &'a str,
        uri: &'a str,
        live: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.send(name, uri, live).await })
    }

    fn finish_incoming<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        success: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.finish(node, name, success).await })
    }

    fn powercycle<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(async move {
            Err(failed(format!(
                "Powercycling node {node} is not supported by the kvm backend"
            )))
        })
    }

    fn delay<'a>(&'a self, _node: &'a str, seconds: f64) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::try_from_secs_f64(seconds).unwrap_or_default()).await;
            Ok(())
        })
    }
}

/// A real host's capacity: memory from /proc/meminfo, CPUs, and the storage file system.
fn host_spec(node: &str, storage: &std::path::Path) -> NodeSpec {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let disk_mib = std::ffi::CString::new(storage.display().to_string())
        .ok()
        .and_then(|path| {
            let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: a valid C string and a zeroed out-parameter of the right type.
            (unsafe { libc::statvfs(path.as_ptr(), &mut stat) } == 0)
                .then(|| stat.f_blocks as u64 * stat.f_frsize as u64 / (1024 * 1024))
        })
        .unwrap_or(0);
    NodeSpec {
        name: node.to_string(),
        address: None,
        memory_mib: memory_kib / 1024,
        disk_mib,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    }
}
