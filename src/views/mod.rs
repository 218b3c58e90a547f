//! Read views of the configuration in Ganeti's field names, shared by RAPI and query opcodes
//! (upstream `lib/query.py`): the model joined with what the backends report, so this room sits
//! above both `cluster` and `backends`.
//! Runtime facts (running state, free memory) come from the caller, who asks the backend.

use crate::cluster::model::*;
use serde_json::{Value, json};
use std::collections::HashMap;

mod fields;
mod group;
mod instance;
mod network;
mod node;

pub use fields::{Cell, Definition, definition, definitions, is_known};
pub use group::group_field;
pub use instance::instance_field;
pub use network::{network_external_bitmap, network_field, network_reservations};
pub use node::{node_field, node_role};

/// Runtime facts about nodes and instances gathered from the backend.
#[derive(Debug, Default, Clone)]
pub struct Live {
    pub nodes: HashMap<String, crate::backends::NodeInfo>,
    /// Instance name → (running, memory, vcpus); missing means not running.
    pub instances: HashMap<String, crate::backends::VmState>,
    /// Nodes that did not answer when asked: their instances are `ERROR_nodedown`, with no
    /// live data (upstream's "bad nodes").
    pub unreachable: std::collections::HashSet<String>,
}

pub fn cluster_info(cfg: &Config) -> Value {
    let c = &cfg.cluster;
    json!({
        "software_version": "3.1.0",
        "protocol_version": 3100000,
        "config_version": 3100000,
        "os_api_version": 20,
        "export_version": 0,
        "vcs_version": concat!("gantry-", env!("CARGO_PKG_VERSION")),
        // Upstream's word size first ("64bits"), then the machine.
        "architecture": [format!("{}bits", usize::BITS), std::env::consts::ARCH],
        "name": c.name,
        "master": c.master,
        "default_hypervisor": c.enabled_hypervisors.first(),
        "enabled_hypervisors": c.enabled_hypervisors,
        "hvparams": c.hvparams,
        "os_hvp": c.os_hvp,
        "beparams": {"default": c.beparams},
        "osparams": c.osparams,
        "ipolicy": c.ipolicy,
        "nicparams": {"default": c.nicparams},
        "ndparams": c.ndparams,
        "diskparams": c.diskparams,
        "candidate_pool_size": c.candidate_pool_size,
        "max_running_jobs": c.max_running_jobs,
        "max_tracked_jobs": c.max_tracked_jobs,
        "mac_prefix": c.mac_prefix,
        "master_netdev": c.master_netdev,
        "master_netmask": c.master_netmask,
        "use_external_mip_script": c.use_external_mip_script,
        "volume_group_name": c.volume_group_name,
        "vg_name": c.volume_group_name,
        "drbd_usermode_helper": c.drbd_usermode_helper,
        "drbd_helper": c.drbd_usermode_helper,
        "file_storage_dir": c.file_storage_dir,
        "shared_file_storage_dir": c.shared_file_storage_dir,
        "gluster_storage_dir": c.gluster_storage_dir,
        "maintain_node_health": c.maintain_node_health,
        "ctime": c.meta.ctime,
        "mtime": c.meta.mtime,
        "uuid": c.meta.uuid,
        "tags": c.meta.tags,
        "uid_pool": c.uid_pool,
        "default_iallocator": c.default_iallocator,
        "default_iallocator_params": c.default_iallocator_params,
        "reserved_lvs": c.reserved_lvs,
        "primary_ip_version": 4,
        "prealloc_wipe_disks": c.prealloc_wipe_disks,
        "hidden_os": c.hidden_os,
        "blacklisted_os": c.blacklisted_os,
        "enabled_disk_templates": c.enabled_disk_templates,
        "install_image": c.install_image,
        "instance_communication_network": c.instance_communication_network,
        "zeroing_image": c.zeroing_image,
        "compression_tools": c.compression_tools,
        "enabled_user_shutdown": c.enabled_user_shutdown,
        "enabled_data_collectors": c.enabled_data_collectors,
        "data_collector_interval": c.data_collector_interval,
        // Gantry manages no SSH keys; these are the values of a cluster that does not either.
        "modify_ssh_setup": false,
        "ssh_key_type": "rsa",
        "ssh_key_bits": 2048,
    })
}

/// Upstream's cluster-wide hypervisor parameters (`constants.HVC_GLOBALS`), left out of an
/// instance's filled hypervisor parameters.
const HV_GLOBALS: &[&str] = &[
    "migration_port",
    "migration_bandwidth",
    "migration_mode",
    "xen_cmd",
];

pub fn without_hv_globals(mut hvparams: Params) -> Params {
    hvparams.retain(|k, _| !HV_GLOBALS.contains(&k.as_str()));
    hvparams
}

fn common(meta: &Meta, name: &str) -> Option<Value> {
    Some(match name {
        "ctime" => json!(meta.ctime),
        "mtime" => json!(meta.mtime),
        "uuid" => json!(meta.uuid),
        "serial_no" => json!(meta.serial_no),
        "tags" => json!(meta.tags),
        _ => return None,
    })
}

/// What `GET /2/instances/X/console` answers when the hypervisor has no console to offer.
pub fn console_info(inst: &Instance) -> Value {
    json!({
        "instance": inst.name,
        "kind": "msg",
        "message": format!("Console not available for {} hypervisor", inst.hypervisor),
    })
}
