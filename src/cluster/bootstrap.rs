//! A usable cluster on first start: default group, a few nodes, an OS, sane defaults.

use super::model::*;
use crate::util::{new_uuid, now_f64};
use serde_json::{Value, json};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub cluster_name: String,
    pub node_names: Vec<String>,
    pub hypervisor: String,
    pub node_memory_mib: u64,
    pub node_disk_mib: u64,
    pub node_cpus: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            cluster_name: "cluster.example.com".into(),
            node_names: (1..=3).map(|i| format!("node{i}.example.com")).collect(),
            hypervisor: "fake".into(),
            node_memory_mib: 16384,
            node_disk_mib: 512 * 1024,
            node_cpus: 8,
        }
    }
}

fn obj(v: Value) -> Params {
    v.as_object().cloned().unwrap_or_default()
}

/// Ganeti 3.0's parameter defaults for a new cluster (hypervisors, disk templates, node
/// parameters, instance policy, data collectors), captured from a real `gnt-cluster init`.
/// The one change: kvm's `kernel_path` is empty, as gantry boots guests from their own disks.
static DEFAULTS: std::sync::LazyLock<Params> = std::sync::LazyLock::new(|| {
    serde_json::from_str(include_str!("defaults.json")).expect("defaults.json is valid")
});

/// One dictionary of Ganeti 3.0's defaults (`hvparams`, `diskparams`, `ndparams`...).
pub fn defaults(key: &str) -> Params {
    DEFAULTS
        .get(key)
        .map(|v| obj(v.clone()))
        .unwrap_or_default()
}

pub fn default_ipolicy() -> Params {
    defaults("ipolicy")
}

pub fn initial_config(opts: &InitOptions) -> Config {
    let now = now_f64();
    let group_uuid = new_uuid();
    let mut groups = BTreeMap::new();
    groups.insert(
        group_uuid.clone(),
        Group {
            name: "default".into(),
            meta: Meta::new(group_uuid.clone(), now),
            alloc_policy: "preferred".into(),
            ndparams: Params::new(),
            diskparams: Params::new(),
            ipolicy: Params::new(),
            hv_state: Params::new(),
            disk_state: Params::new(),
            networks: BTreeMap::new(),
        },
    );
    let mut nodes = BTreeMap::new();
    for (i, name) in opts.node_names.iter().enumerate() {
        nodes.insert(
            name.clone(),
            Node {
                name: name.clone(),
                meta: Meta::new(new_uuid(), now),
                group: group_uuid.clone(),
                primary_ip: format!("192.0.2.{}", i + 10),
                secondary_ip: format!("198.51.100.{}", i + 10),
                offline: false,
                drained: false,
                master_candidate: i < 10,
                master_capable: true,
                vm_capable: true,
                // The fake hypervisor's simulated sizes; a real host reports its own.
                ndparams: if opts.hypervisor == "fake" {
                    obj(json!({
                        "fake_memory_mib": opts.node_memory_mib,
                        "fake_disk_mib": opts.node_disk_mib,
                        "fake_cpus": opts.node_cpus,
                    }))
                } else {
                    Default::default()
                },
                powered: true,
            },
        );
    }
    let mut os = BTreeMap::new();
    os.insert(
        "debootstrap".into(),
        OsDefinition {
            name: "debootstrap".into(),
            variants: vec!["default".into(), "minimal".into()],
            api_versions: vec![20],
            parameters: vec![("dhcp".into(), "Whether to use DHCP".into())],
            trusted: true,
        },
    );
    os.insert(
        "image".into(),
        OsDefinition {
            name: "image".into(),
            variants: vec![],
            api_versions: vec![20],
            parameters: vec![],
            trusted: true,
        },
    );
    let master = opts.node_names.first().cloned().unwrap_or_default();
    Config {
        serial_no: 1,
        cluster: ClusterInfo {
            name: opts.cluster_name.clone(),
            meta: Meta::new(new_uuid(), now),
            master,
            enabled_hypervisors: vec![opts.hypervisor.clone()],
            // The kvm backend keeps disks as files on storage every node sees (sharedfile);
            // the fake one simulates node-local and DRBD-mirrored disks too.
            enabled_disk_templates: if opts.hypervisor == "kvm" {
                vec!["sharedfile".into(), "file".into(), "plain".into()]
            } else {
                vec![
                    "plain".into(),
                    "drbd".into(),
                    "file".into(),
                    "diskless".into(),
                ]
            },
            hvparams: defaults("hvparams"),
            beparams: obj(
                json!({"maxmem": 128, "minmem": 128, "vcpus": 1, "auto_balance": true,
                "always_failover": false, "spindle_use": 1}),
            ),
            osparams: Params::new(),
            os_hvp: Params::new(),
            nicparams: obj(json!({"mode": "bridged", "link": "br0", "vlan": ""})),
            ndparams: defaults("ndparams"),
            diskparams: defaults("diskparams"),
            ipolicy: default_ipolicy(),
            candidate_pool_size: 10,
            max_running_jobs: 20,
            max_tracked_jobs: 25,
            mac_prefix: "aa:00:00".into(),
            master_netdev: "eth0".into(),
            master_netmask: 32,
            volume_group_name: "xenvg".into(),
            drbd_usermode_helper: "/bin/true".into(),
            file_storage_dir: "/srv/ganeti/file-storage".into(),
            shared_file_storage_dir: "/srv/ganeti/shared-file-storage".into(),
            gluster_storage_dir: "/var/run/ganeti/gluster".into(),
            default_iallocator: "hail".into(),
            default_iallocator_params: Params::new(),
            maintain_node_health: false,
            prealloc_wipe_disks: false,
            uid_pool: vec![],
            reserved_lvs: vec![],
            hidden_os: vec![],
            blacklisted_os: vec![],
            use_external_mip_script: false,
            modify_etc_hosts: true,
            install_image: String::new(),
            instance_communication_network: String::new(),
            zeroing_image: String::new(),
            compression_tools: vec!["gzip".into(), "gzip-fast".into(), "gzip-slow".into()],
            enabled_user_shutdown: false,
            enabled_data_collectors: defaults("enabled_data_collectors"),
            data_collector_interval: defaults("data_collector_interval"),
            hv_state: Params::new(),
            disk_state: Params::new(),
        },
        nodes,
        groups,
        instances: BTreeMap::new(),
        networks: BTreeMap::new(),
        os,
        leases: BTreeMap::new(),
        pools: BTreeMap::new(),
    }
}
