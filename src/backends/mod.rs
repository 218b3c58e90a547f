//! What the executor asks of nodes and hypervisors. The executor calls only this trait; `fake` is
//! an in-memory cluster, and a QEMU backend or a remote node agent can implement the same calls.

pub mod cluster;
pub mod fake;
pub mod protocol;
pub mod qemu;
pub mod remote;

use crate::validate::{DiskId, HostName, MacAddr};
use std::future::Future;
use std::pin::Pin;
use thiserror::Error;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a backend failure should be reported to the client (mapped to Ganeti error classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FailureKind {
    /// The node did not answer: `OpPrereqError` with `environment_error` during checks.
    NodeUnreachable,
    /// The operation itself failed: `OpExecError`.
    OperationFailed,
    /// The node lacks memory or disk.
    InsufficientResources,
}

#[derive(Debug, Clone, Error, PartialEq, serde::Serialize, serde::Deserialize)]
#[error("{message}")]
pub struct BackendError {
    pub kind: FailureKind,
    pub message: String,
}

impl BackendError {
    pub fn failed(message: impl Into<String>) -> BackendError {
        BackendError {
            kind: FailureKind::OperationFailed,
            message: message.into(),
        }
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// A node's capacity and what is free right now.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub memory_total: u64,
    pub memory_free: u64,
    /// Memory used by the node itself (dom0 / host), Ganeti's `mnode`.
    pub memory_node: u64,
    pub disk_total: u64,
    pub disk_free: u64,
    pub cpus: u64,
    pub sockets: u64,
}

/// Static description of a node handed to the backend at start-up.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeSpec {
    pub name: String,
    /// A node agent's URL (`https://host:port`) when the node is another machine.
    #[serde(default)]
    pub address: Option<String>,
    pub memory_mib: u64,
    pub disk_mib: u64,
    pub cpus: u64,
}

/// Everything a backend needs to run one instance. Names, MACs and disk ids are checked types:
/// a spec cannot hold one that could escape a path or an argument.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VmSpec {
    pub name: HostName,
    pub uuid: String,
    pub memory_mib: u64,
    pub vcpus: u64,
    pub disks_mib: Vec<u64>,
    /// The disks' UUIDs, in the same order: stable file names when disks come and go.
    #[serde(default)]
    pub disk_ids: Vec<DiskId>,
    pub macs: Vec<MacAddr>,
    pub os: String,
    /// The instance's OS parameters, as the OS scripts see them (`OSP_<NAME>`).
    pub osparams: std::collections::BTreeMap<String, String>,
    /// Set for the OS `create` script of a reinstall (`INSTANCE_REINSTALL=1`).
    pub reinstall: bool,
    /// How each NIC (same order as `macs`) reaches the network; empty in records written
    /// before NIC modes were honoured.
    #[serde(default)]
    pub nics: Vec<NicNet>,
    /// The instance's disk template (`plain` disks go on LVM where `vg_name` exists).
    #[serde(default)]
    pub disk_template: String,
    /// The cluster's volume group.
    #[serde(default)]
    pub vg_name: String,
    /// Direct kernel boot, from the hvparams `kernel_path`, `initrd_path`, `kernel_args`,
    /// `root_path` and `serial_console`; None boots from the first disk.
    #[serde(default)]
    pub boot: Option<KernelBoot>,
}

/// A NIC's network side, as Ganeti's nicparams and NIC IP describe it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NicNet {
    /// `bridged`, `routed` or `openvswitch`.
    pub mode: String,
    /// The bridge, routing table or switch.
    pub link: String,
    pub ip: Option<String>,
    #[serde(default)]
    pub vlan: String,
}

/// What QEMU's `-kernel`, `-initrd` and `-append` get.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelBoot {
    pub kernel: String,
    pub initrd: Option<String>,
    /// The kernel command line: `root=<root_path> <kernel_args>` and the serial console.
    pub append: String,
}

/// What a backend reports about one instance on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmState {
    pub running: bool,
    pub memory_mib: u64,
    pub vcpus: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RebootKind {
    Soft,
    Hard,
}

pub trait Backend: Send + Sync {
    /// Learns the nodes and re-adopts instances after a restart (`running` = admin state up).
    fn adopt(&self, nodes: Vec<NodeSpec>, vms: Vec<(String, VmSpec, bool)>) -> BoxFuture<'_, ()>;
    fn node_info<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<NodeInfo>>;
    fn create_disks<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<()>>;
    fn remove_disks<'a>(&'a self, node: &'a str, name: &'a str)
    -> BoxFuture<'a, BackendResult<()>>;
    fn grow_disk<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        index: usize,
        new_size: u64,
    ) -> BoxFuture<'a, BackendResult<()>>;
    /// Installs the OS onto the VM's disks; answers the install's output lines for the job log.
    fn install_os<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>>;
    fn start<'a>(&'a self, node: &'a str, vm: &'a VmSpec) -> BoxFuture<'a, BackendResult<()>>;
    fn stop<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        timeout_s: u64,
    ) -> BoxFuture<'a, BackendResult<()>>;
    fn reboot<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        kind: RebootKind,
    ) -> BoxFuture<'a, BackendResult<()>>;
    fn instance_state<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<VmState>>>;
    /// Moves a VM (and its disks) from one node to another; `live` keeps it running throughout.
    fn migrate<'a>(
        &'a self,
        src: &'a str,
        dst: &'a str,
        name: &'a str,
        live: bool,
    ) -> BoxFuture<'a, BackendResult<()>>;
    fn rename<'a>(
        &'a self,
        node: &'a str,
        old: &'a str,
        new: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>>;
    /// Console connection info in Ganeti's `InstanceConsole` shape; None to use the default.
    fn console<'a>(
        &'a self,
        _node: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, Option<serde_json::Value>> {
        Box::pin(async { None })
    }
    fn powercycle<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<String>>;
    /// The OS definitions installed where this backend runs; None when the cluster
    /// configuration is the only source (the fake backend).
    fn installed_os(
        &self,
    ) -> BoxFuture<
        '_,
        Option<std::collections::BTreeMap<String, crate::cluster::model::OsDefinition>>,
    > {
        Box::pin(async { None })
    }
    /// Asks the OS definition whether these OS parameters are valid (`verify parameters`).
    fn verify_os_params<'a>(
        &'a self,
        _node: &'a str,
        _os_type: &'a str,
        _params: &'a std::collections::BTreeMap<String, String>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Exports an instance's disks (OS `export` script) into the export area; answers the
    /// script output for the job log. The fake backend copies nothing.
    fn export_instance<'a>(
        &'a self,
        _node: &'a str,
        _vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async { Ok(vec![]) })
    }
    /// Fills a new instance's disks from an export (OS `import` script).
    fn import_instance<'a>(
        &'a self,
        _node: &'a str,
        _vm: &'a VmSpec,
        _source: &'a str,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async { Ok(vec![]) })
    }
    /// The exports kept on a node, by instance name (the export query).
    fn list_exports<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async { Ok(vec![]) })
    }
    /// Deletes an instance's export.
    fn remove_export<'a>(
        &'a self,
        _node: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async { Ok(()) })
    }
    /// A node joins the cluster (`gnt-node add`): the backend checks it can reach and use it.
    fn add_node<'a>(&'a self, node: NodeSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let _ = node;
            Ok(())
        })
    }

    // Migration between two backends (two hosts) in steps the master drives; see
    // `backends::cluster`. A backend serving both ends uses `migrate` instead.

    /// The running VM's exact configuration, None when it is not running.
    fn running_config<'a>(
        &'a self,
        _node: &'a str,
        _name: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<serde_json::Value>>> {
        Box::pin(async { Ok(None) })
    }
    /// Starts a paused copy waiting for the memory stream; answers the URI to send it to.
    fn prepare_incoming<'a>(
        &'a self,
        node: &'a str,
        _name: &'a str,
        _config: serde_json::Value,
    ) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(async move {
            Err(BackendError::failed(format!(
                "node {node} cannot receive migrations"
            )))
        })
    }
    /// Streams the running VM to `uri`; on success the source process is gone.
    fn send_migration<'a>(
        &'a self,
        node: &'a str,
        _name: &'a str,
        _uri: &'a str,
        _live: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            Err(BackendError::failed(format!(
                "node {node} cannot send migrations"
            )))
        })
    }
    /// Adopts the received VM (`success`) or discards the half-started copy.
    fn finish_incoming<'a>(
        &'a self,
        _node: &'a str,
        _name: &'a str,
        _success: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async { Ok(()) })
    }
    /// Pauses for `seconds` on a node (OP_TEST_DELAY with nodes).
    fn delay<'a>(&'a self, node: &'a str, seconds: f64) -> BoxFuture<'a, BackendResult<()>>;
}

/// The read-only face of a backend (what the RAPI gets): what nodes and VMs report now.
/// Anything that changes a node or a VM goes through an opcode job.
#[derive(Clone)]
pub struct LiveState(std::sync::Arc<dyn Backend>);

impl LiveState {
    pub fn new(backend: std::sync::Arc<dyn Backend>) -> LiveState {
        LiveState(backend)
    }

    pub async fn node_info(&self, node: &str) -> BackendResult<NodeInfo> {
        self.0.node_info(node).await
    }

    pub async fn instance_state(&self, node: &str, name: &str) -> BackendResult<Option<VmState>> {
        self.0.instance_state(node, name).await
    }

    pub async fn list_exports(&self, node: &str) -> BackendResult<Vec<String>> {
        self.0.list_exports(node).await
    }

    pub async fn console(&self, node: &str, name: &str) -> Option<serde_json::Value> {
        self.0.console(node, name).await
    }
}
