//! Read views of the configuration in Ganeti's field names, shared by RAPI and query opcodes
//! (upstream `lib/query.py`): the model joined with what the backends report, so this room sits
//! above both `cluster` and `backends`.
//! Runtime facts (running state, free memory) come from the caller, who asks the backend.

use crate::cluster::model::*;
use serde_json::{Value, json};
use std::collections::HashMap;

/// Runtime facts about nodes and instances gathered from the backend.
#[derive(Debug, Default, Clone)]
pub struct Live {
    pub nodes: HashMap<String, crate::backends::NodeInfo>,
    /// Instance name → (running, memory, vcpus); missing means not running.
    pub instances: HashMap<String, crate::backends::VmState>,
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
        "architecture": [std::env::consts::ARCH.replace("x86_64", "64bit"), std::env::consts::ARCH],
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
        "modify_etc_hosts": c.modify_etc_hosts,
        "enabled_data_collectors": c.enabled_data_collectors,
        "data_collector_interval": c.data_collector_interval,
        "hv_state": c.hv_state,
        "disk_state": c.disk_state,
    })
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

pub const INSTANCE_FIELDS: &[&str] = &[
    "name",
    "admin_state",
    "admin_state_source",
    "os",
    "pnode",
    "snodes",
    "disk_template",
    "nic.ips",
    "nic.macs",
    "nic.modes",
    "nic.links",
    "nic.bridges",
    "nic.networks",
    "nic.names",
    "nic.uuids",
    "nic.vlans",
    "network_port",
    "disk.sizes",
    "disk.spindles",
    "disk.names",
    "disk.uuids",
    "disk_usage",
    "beparams",
    "hvparams",
    "osparams",
    "oper_state",
    "oper_ram",
    "oper_vcpus",
    "status",
    "custom_hvparams",
    "custom_beparams",
    "custom_nicparams",
    "custom_osparams",
    "hypervisor",
    "pnode.group",
    "pnode.group.uuid",
    "snodes.group",
    "snodes.group.uuid",
    "disks_active",
    "forthcoming",
    "disk.count",
    "nic.count",
    "be/maxmem",
    "be/minmem",
    "be/memory",
    "be/vcpus",
    "be/auto_balance",
    "be/spindle_use",
    "be/always_failover",
    "ctime",
    "mtime",
    "uuid",
    "serial_no",
    "tags",
    "console",
];

pub fn instance_field(cfg: &Config, live: &Live, inst: &Instance, name: &str) -> Option<Value> {
    if let Some(v) = common(&inst.meta, name) {
        return Some(v);
    }
    let running = live.instances.get(&inst.name).filter(|s| s.running);
    let be = cfg.effective_beparams(inst);
    let group_of = |n: &str| cfg.nodes.get(n).map(|n| n.group.clone());
    let group_name = |n: &str| group_of(n).and_then(|g| cfg.groups.get(&g).map(|g| g.name.clone()));
    let nic = |f: &dyn Fn(&Nic) -> Value| Value::Array(inst.nics.iter().map(f).collect());
    Some(match name {
        "name" => json!(inst.name),
        "admin_state" => json!(inst.admin_state.as_str()),
        "admin_state_source" => json!(inst.admin_state_source),
        "admin_up" => json!(inst.admin_state == AdminState::Up),
        "os" => json!(inst.os),
        "pnode" => json!(inst.pnode),
        "snodes" => json!(inst.snodes),
        "disk_template" => json!(inst.disk_template),
        "hypervisor" => json!(inst.hypervisor),
        "nic.ips" => nic(&|n| json!(n.ip)),
        "nic.macs" => nic(&|n| json!(n.mac)),
        "nic.modes" => nic(&|n| json!(n.mode)),
        "nic.links" => nic(&|n| json!(n.link)),
        "nic.bridges" => nic(&|n| {
            if n.mode == "bridged" {
                json!(n.link)
            } else {
                Value::Null
            }
        }),
        "nic.networks" => nic(&|n| json!(n.network)),
        "nic.names" => nic(&|n| json!(n.name)),
        "nic.uuids" => nic(&|n| json!(n.uuid)),
        "nic.vlans" => nic(&|n| json!(n.vlan)),
        "nic.count" => json!(inst.nics.len()),
        "network_port" => json!(inst.network_port),
        "disk.sizes" => json!(inst.disks.iter().map(|d| d.size).collect::<Vec<_>>()),
        "disk.spindles" => json!(inst.disks.iter().map(|d| d.spindles).collect::<Vec<_>>()),
        "disk.names" => json!(
            inst.disks
                .iter()
                .map(|d| d.name.clone())
                .collect::<Vec<_>>()
        ),
        "disk.uuids" => json!(
            inst.disks
                .iter()
                .map(|d| d.uuid.clone())
                .collect::<Vec<_>>()
        ),
        "disk.count" => json!(inst.disks.len()),
        "disk_usage" => {
            let per_disk: u64 = inst
                .disks
                .iter()
                .map(|d| d.size + if inst.disk_template == "drbd" { 128 } else { 0 })
                .sum();
            json!(if inst.disk_template == "diskless" {
                0
            } else {
                per_disk
            })
        }
        "beparams" => json!(be),
        "hvparams" => json!(cfg.effective_hvparams(inst)),
        "osparams" => json!(inst.osparams),
        "custom_hvparams" => json!(inst.hvparams),
        "custom_beparams" => json!(inst.beparams),
        "custom_osparams" => json!(inst.osparams),
        "custom_nicparams" => nic(&|n| json!({"mode": n.mode, "link": n.link, "vlan": n.vlan})),
        "oper_state" => json!(running.is_some()),
        "oper_ram" => running.map_or(Value::Null, |s| json!(s.memory_mib)),
        "oper_vcpus" => running.map_or(Value::Null, |s| json!(s.vcpus)),
        "status" => json!(instance_status(cfg, inst, running.is_some())),
        "pnode.group" => json!(group_name(&inst.pnode)),
        "pnode.group.uuid" => json!(group_of(&inst.pnode)),
        "snodes.group" => json!(
            inst.snodes
                .iter()
                .map(|s| group_name(s))
                .collect::<Vec<_>>()
        ),
        "snodes.group.uuid" => json!(inst.snodes.iter().map(|s| group_of(s)).collect::<Vec<_>>()),
        "disks_active" => json!(inst.disks_active),
        "forthcoming" => json!(inst.forthcoming),
        "console" => {
            if running.is_some() {
                console_info(inst)
            } else {
                Value::Null
            }
        }
        other => match other.strip_prefix("be/") {
            Some("memory") => be.get("maxmem").cloned().unwrap_or(Value::Null),
            Some(k) => be.get(k).cloned().unwrap_or(Value::Null),
            None => match other.strip_prefix("hv/") {
                Some(k) => cfg
                    .effective_hvparams(inst)
                    .get(k)
                    .cloned()
                    .unwrap_or(Value::Null),
                None => return None,
            },
        },
    })
}

/// Ganeti's instance `status` field.
fn instance_status(cfg: &Config, inst: &Instance, running: bool) -> &'static str {
    let node_down = cfg.nodes.get(&inst.pnode).is_none_or(|n| n.offline);
    match (inst.admin_state, running) {
        _ if node_down => "ERROR_nodeoffline",
        (AdminState::Up, true) => "running",
        (AdminState::Up, false) => "ERROR_down",
        (AdminState::Down, true) => "ERROR_up",
        (AdminState::Down, false) => "ADMIN_down",
        (AdminState::Offline, true) => "ERROR_up",
        (AdminState::Offline, false) => "ADMIN_offline",
    }
}

pub const NODE_FIELDS: &[&str] = &[
    "name",
    "offline",
    "master_candidate",
    "drained",
    "dtotal",
    "dfree",
    "sptotal",
    "spfree",
    "mtotal",
    "mnode",
    "mfree",
    "pinst_cnt",
    "sinst_cnt",
    "ctotal",
    "cnos",
    "cnodes",
    "csockets",
    "pip",
    "sip",
    "role",
    "pinst_list",
    "sinst_list",
    "master_capable",
    "vm_capable",
    "ndparams",
    "custom_ndparams",
    "group",
    "group.uuid",
    "master",
    "powered",
    "ctime",
    "mtime",
    "uuid",
    "serial_no",
    "tags",
    "ndp/spindle_count",
    "ndp/exclusive_storage",
    "ndp/oob_program",
];

pub fn node_role(cfg: &Config, node: &Node) -> &'static str {
    if node.name == cfg.cluster.master {
        "M"
    } else if node.master_candidate {
        "C"
    } else if node.drained {
        "D"
    } else if node.offline {
        "O"
    } else {
        "R"
    }
}

pub fn node_field(cfg: &Config, live: &Live, node: &Node, name: &str) -> Option<Value> {
    if let Some(v) = common(&node.meta, name) {
        return Some(v);
    }
    let info = live.nodes.get(&node.name).filter(|_| !node.offline);
    let num =
        |f: &dyn Fn(&crate::backends::NodeInfo) -> u64| info.map_or(Value::Null, |i| json!(f(i)));
    let nd = cfg.effective_ndparams(node);
    Some(match name {
        "name" => json!(node.name),
        "offline" => json!(node.offline),
        "master_candidate" => json!(node.master_candidate),
        "drained" => json!(node.drained),
        "master_capable" => json!(node.master_capable),
        "vm_capable" => json!(node.vm_capable),
        "powered" => json!(node.powered),
        "master" => json!(node.name == cfg.cluster.master),
        "dtotal" => num(&|i| i.disk_total),
        "dfree" => num(&|i| i.disk_free),
        "sptotal" => info.map_or(Value::Null, |_| {
            nd.get("spindle_count").cloned().unwrap_or(json!(1))
        }),
        "spfree" => info.map_or(Value::Null, |_| {
            let used: i64 = cfg
                .instances
                .values()
                .filter(|i| i.pnode == node.name)
                .flat_map(|i| i.disks.iter())
                .map(|d| d.spindles.unwrap_or(1))
                .sum();
            json!(nd.get("spindle_count").and_then(Value::as_i64).unwrap_or(1) - used)
        }),
        "mtotal" => num(&|i| i.memory_total),
        "mnode" => num(&|i| i.memory_node),
        "mfree" => num(&|i| i.memory_free),
        "ctotal" => num(&|i| i.cpus),
        "cnos" => info.map_or(Value::Null, |_| json!(1)),
        "cnodes" => info.map_or(Value::Null, |_| json!(1)),
        "csockets" => num(&|i| i.sockets),
        "pinst_cnt" => json!(cfg.primary_instances(&node.name).len()),
        "sinst_cnt" => json!(cfg.secondary_instances(&node.name).len()),
        "pinst_list" => json!(cfg.primary_instances(&node.name)),
        "sinst_list" => json!(cfg.secondary_instances(&node.name)),
        "pip" => json!(node.primary_ip),
        "sip" | "secondary_ip" => json!(node.secondary_ip),
        "role" => json!(node_role(cfg, node)),
        "ndparams" => json!(nd),
        "custom_ndparams" => json!(node.ndparams),
        "group" => json!(cfg.groups.get(&node.group).map(|g| g.name.clone())),
        "group.uuid" => json!(node.group),
        other => match other.strip_prefix("ndp/") {
            Some(k) => nd.get(k).cloned().unwrap_or(Value::Null),
            None => return None,
        },
    })
}

pub const GROUP_FIELDS: &[&str] = &[
    "name",
    "alloc_policy",
    "node_cnt",
    "node_list",
    "pinst_cnt",
    "pinst_list",
    "ipolicy",
    "custom_ipolicy",
    "diskparams",
    "custom_diskparams",
    "ndparams",
    "custom_ndparams",
    "networks",
    "hv_state",
    "disk_state",
    "ctime",
    "mtime",
    "uuid",
    "serial_no",
    "tags",
];

pub fn group_field(cfg: &Config, group: &Group, name: &str) -> Option<Value> {
    if let Some(v) = common(&group.meta, name) {
        return Some(v);
    }
    let nodes = cfg.group_nodes(&group.meta.uuid);
    let insts: Vec<String> = cfg
        .instances
        .values()
        .filter(|i| nodes.contains(&i.pnode))
        .map(|i| i.name.clone())
        .collect();
    Some(match name {
        "name" => json!(group.name),
        "alloc_policy" => json!(group.alloc_policy),
        "node_cnt" => json!(nodes.len()),
        "node_list" => json!(nodes),
        "pinst_cnt" => json!(insts.len()),
        "pinst_list" => json!(insts),
        "ipolicy" => json!(cfg.effective_ipolicy(group)),
        "custom_ipolicy" => json!(group.ipolicy),
        "diskparams" => {
            let mut p = cfg.cluster.diskparams.clone();
            p.extend(group.diskparams.clone());
            json!(p)
        }
        "custom_diskparams" => json!(group.diskparams),
        "ndparams" => {
            let mut p = cfg.cluster.ndparams.clone();
            p.extend(group.ndparams.clone());
            json!(p)
        }
        "custom_ndparams" => json!(group.ndparams),
        "networks" => json!(
            group
                .networks
                .keys()
                .filter_map(|u| cfg.networks.get(u).map(|n| n.name.clone()))
                .collect::<Vec<_>>()
        ),
        "hv_state" => json!(group.hv_state),
        "disk_state" => json!(group.disk_state),
        _ => return None,
    })
}

pub const NETWORK_FIELDS: &[&str] = &[
    "name",
    "network",
    "gateway",
    "network6",
    "gateway6",
    "mac_prefix",
    "free_count",
    "reserved_count",
    "map",
    "group_list",
    "inst_list",
    "external_reservations",
    "ctime",
    "mtime",
    "uuid",
    "serial_no",
    "tags",
];

pub fn network_field(cfg: &Config, net: &Network, name: &str) -> Option<Value> {
    if let Some(v) = common(&net.meta, name) {
        return Some(v);
    }
    let (free, reserved) = crate::cluster::addresses::pool_counts(net);
    Some(match name {
        "name" => json!(net.name),
        "network" => json!(net.network),
        "gateway" => json!(net.gateway),
        "network6" => json!(net.network6),
        "gateway6" => json!(net.gateway6),
        "mac_prefix" => json!(net.mac_prefix),
        "free_count" => json!(free),
        "reserved_count" => json!(reserved),
        "map" => json!(network_map(net)),
        "group_list" => json!(
            cfg.groups
                .values()
                .filter_map(|g| g
                    .networks
                    .get(&net.meta.uuid)
                    .map(|l| json!([g.name, l.mode, l.link, l.vlan])))
                .collect::<Vec<_>>()
        ),
        "inst_list" => json!(net.used.values().collect::<std::collections::BTreeSet<_>>()),
        "external_reservations" => json!(external_reservations(net).join(", ")),
        _ => return None,
    })
}

/// What upstream's address pool marks as reserved outside instances: the network and broadcast
/// addresses and the gateway (reserved when the network is created), plus the admin's ones.
fn external_reservations(net: &Network) -> Vec<String> {
    let mut reserved: Vec<std::net::Ipv4Addr> = net
        .external_reservations
        .iter()
        .chain(net.gateway.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if let Some((base, len)) = crate::cluster::addresses::parse_cidr(&net.network) {
        let last = base + ((1u64 << (32 - len)) - 1) as u32;
        reserved.extend([
            std::net::Ipv4Addr::from(base),
            std::net::Ipv4Addr::from(last),
        ]);
    }
    reserved.sort();
    reserved.dedup();
    reserved.iter().map(ToString::to_string).collect()
}

/// Ganeti's pool map: one character per address, `X` reserved/used, `.` free.
fn network_map(net: &Network) -> String {
    let Some((base, len)) = crate::cluster::addresses::parse_cidr(&net.network) else {
        return String::new();
    };
    let size = 1u64 << (32 - len);
    (0..size)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(base + i as u32).to_string();
            let taken = i == 0 || i == size - 1 || crate::cluster::addresses::is_taken(net, &ip);
            if taken { 'X' } else { '.' }
        })
        .collect()
}

/// What `GET /2/instances/X/console` answers when the hypervisor has no console to offer.
pub fn console_info(inst: &Instance) -> Value {
    json!({
        "instance": inst.name,
        "kind": "message",
        "message": format!("Console not available for {} hypervisor", inst.hypervisor),
    })
}
