//! The cluster's objects as stored: cluster parameters, nodes, groups, instances, networks, OSes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

pub type Params = Map<String, Value>;

/// Common bookkeeping every object carries (Ganeti's `ctime mtime uuid serial_no tags`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub uuid: String,
    pub ctime: f64,
    pub mtime: f64,
    pub serial_no: u64,
    pub tags: BTreeSet<String>,
}

impl Meta {
    pub fn new(uuid: String, now: f64) -> Meta {
        Meta {
            uuid,
            ctime: now,
            mtime: now,
            serial_no: 1,
            tags: BTreeSet::new(),
        }
    }

    pub fn touch(&mut self, now: f64) {
        self.mtime = now;
        self.serial_no += 1;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub name: String,
    pub meta: Meta,
    pub master: String,
    pub enabled_hypervisors: Vec<String>,
    pub enabled_disk_templates: Vec<String>,
    pub hvparams: Params,
    pub beparams: Params,
    pub osparams: Params,
    pub os_hvp: Params,
    pub nicparams: Params,
    pub ndparams: Params,
    pub diskparams: Params,
    pub ipolicy: Params,
    pub candidate_pool_size: i64,
    pub max_running_jobs: i64,
    pub max_tracked_jobs: i64,
    pub mac_prefix: String,
    pub master_netdev: String,
    pub master_netmask: i64,
    pub volume_group_name: String,
    pub drbd_usermode_helper: String,
    pub file_storage_dir: String,
    pub shared_file_storage_dir: String,
    pub gluster_storage_dir: String,
    pub default_iallocator: String,
    pub default_iallocator_params: Params,
    pub maintain_node_health: bool,
    pub prealloc_wipe_disks: bool,
    pub uid_pool: Vec<Value>,
    pub reserved_lvs: Vec<String>,
    pub hidden_os: Vec<String>,
    pub blacklisted_os: Vec<String>,
    pub use_external_mip_script: bool,
    pub modify_etc_hosts: bool,
    pub install_image: String,
    pub instance_communication_network: String,
    pub zeroing_image: String,
    pub compression_tools: Vec<String>,
    pub enabled_user_shutdown: bool,
    pub enabled_data_collectors: Params,
    pub data_collector_interval: Params,
    pub hv_state: Params,
    pub disk_state: Params,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub meta: Meta,
    pub group: String,
    pub primary_ip: String,
    pub secondary_ip: String,
    pub offline: bool,
    pub drained: bool,
    pub master_candidate: bool,
    pub master_capable: bool,
    pub vm_capable: bool,
    pub ndparams: Params,
    pub powered: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkLink {
    pub mode: String,
    pub link: String,
    pub vlan: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub meta: Meta,
    pub alloc_policy: String,
    pub ndparams: Params,
    pub diskparams: Params,
    pub ipolicy: Params,
    pub hv_state: Params,
    pub disk_state: Params,
    /// Connected networks: network UUID → how instances reach it in this group.
    pub networks: BTreeMap<String, NetworkLink>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    Up,
    Down,
    Offline,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Up => "up",
            AdminState::Down => "down",
            AdminState::Offline => "offline",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    pub uuid: String,
    pub name: Option<String>,
    pub size: u64,
    pub mode: String,
    pub spindles: Option<i64>,
    pub dev_type: String,
    pub params: Params,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub uuid: String,
    pub name: Option<String>,
    pub mac: String,
    pub ip: Option<String>,
    pub mode: String,
    pub link: String,
    pub vlan: String,
    pub network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub meta: Meta,
    pub os: String,
    pub hypervisor: String,
    pub pnode: String,
    pub snodes: Vec<String>,
    pub disk_template: String,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    /// Instance-level overrides; the effective values fill in cluster defaults.
    pub beparams: Params,
    pub hvparams: Params,
    pub osparams: Params,
    pub admin_state: AdminState,
    pub admin_state_source: String,
    pub network_port: Option<u16>,
    pub disks_active: bool,
    pub forthcoming: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub meta: Meta,
    pub network: String,
    pub gateway: Option<String>,
    pub network6: Option<String>,
    pub gateway6: Option<String>,
    pub mac_prefix: Option<String>,
    /// Addresses taken by instances (IP → owner) and reserved by the admin.
    pub used: BTreeMap<String, String>,
    pub external_reservations: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OsDefinition {
    pub name: String,
    pub variants: Vec<String>,
    pub api_versions: Vec<i64>,
    pub parameters: Vec<(String, String)>,
    pub trusted: bool,
}

/// The whole configuration; one value so that every opcode commits atomically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub serial_no: u64,
    pub cluster: ClusterInfo,
    pub nodes: BTreeMap<String, Node>,
    pub groups: BTreeMap<String, Group>,
    pub instances: BTreeMap<String, Instance>,
    pub networks: BTreeMap<String, Network>,
    pub os: BTreeMap<String, OsDefinition>,
    /// gantry extensions (`cluster::leases`); absent from configurations written before them.
    #[serde(default)]
    pub leases: BTreeMap<String, super::leases::Lease>,
    #[serde(default)]
    pub pools: BTreeMap<String, super::leases::Pool>,
}

impl Config {
    pub fn group_by_name(&self, name: &str) -> Option<&Group> {
        self.groups
            .values()
            .find(|g| g.name == name)
            .or_else(|| self.groups.get(name))
    }

    pub fn network_by_name(&self, name: &str) -> Option<&Network> {
        self.networks
            .values()
            .find(|n| n.name == name)
            .or_else(|| self.networks.get(name))
    }

    pub fn node_by_uuid(&self, uuid: &str) -> Option<&Node> {
        self.nodes.values().find(|n| n.meta.uuid == uuid)
    }

    /// Instance names whose primary node is `node`.
    pub fn primary_instances(&self, node: &str) -> Vec<String> {
        self.instances
            .values()
            .filter(|i| i.pnode == node)
            .map(|i| i.name.clone())
            .collect()
    }

    pub fn secondary_instances(&self, node: &str) -> Vec<String> {
        self.instances
            .values()
            .filter(|i| i.snodes.iter().any(|s| s == node))
            .map(|i| i.name.clone())
            .collect()
    }

    pub fn group_nodes(&self, group_uuid: &str) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.group == group_uuid)
            .map(|n| n.name.clone())
            .collect()
    }

    /// Instance parameters with cluster defaults filled in.
    pub fn effective_beparams(&self, inst: &Instance) -> Params {
        let mut p = self.cluster.beparams.clone();
        for (k, v) in &inst.beparams {
            p.insert(k.clone(), v.clone());
        }
        p
    }

    pub fn effective_hvparams(&self, inst: &Instance) -> Params {
        let mut p = self
            .cluster
            .hvparams
            .get(&inst.hypervisor)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, v) in &inst.hvparams {
            p.insert(k.clone(), v.clone());
        }
        p
    }

    pub fn effective_ndparams(&self, node: &Node) -> Params {
        let mut p = self.cluster.ndparams.clone();
        if let Some(g) = self.groups.get(&node.group) {
            for (k, v) in &g.ndparams {
                p.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in &node.ndparams {
            p.insert(k.clone(), v.clone());
        }
        p
    }

    pub fn effective_ipolicy(&self, group: &Group) -> Params {
        let mut p = self.cluster.ipolicy.clone();
        for (k, v) in &group.ipolicy {
            p.insert(k.clone(), v.clone());
        }
        p
    }
}

/// Memory an instance needs when running, from its effective beparams.
pub fn instance_memory(cfg: &Config, inst: &Instance) -> u64 {
    let be = cfg.effective_beparams(inst);
    be.get("maxmem")
        .and_then(crate::opcodes::parse_size_mib)
        .unwrap_or(128)
}

pub fn instance_vcpus(cfg: &Config, inst: &Instance) -> u64 {
    cfg.effective_beparams(inst)
        .get("vcpus")
        .and_then(Value::as_u64)
        .unwrap_or(1)
}
