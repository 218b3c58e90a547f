//! Instance fields (upstream `lib/query.py` `_BuildInstanceFields`).

use super::{Cell, Live, common, console_info};
use crate::cluster::model::*;
use serde_json::{Value, json};

/// Fields that upstream defines as another field's name (`lib/query.py` aliases).
fn alias(name: &str) -> &str {
    match name {
        "vcpus" => "be/vcpus",
        "be/memory" => "be/maxmem",
        "sda_size" => "disk.size/0",
        "sdb_size" => "disk.size/1",
        "ip" => "nic.ip/0",
        "mac" => "nic.mac/0",
        "bridge" => "nic.bridge/0",
        "nic_mode" => "nic.mode/0",
        "nic_link" => "nic.link/0",
        "nic_network" => "nic.network/0",
        other => other,
    }
}

/// `name` split as `<prefix>/<index>`, e.g. `disk.size/3` → (`disk.size`, 3).
fn indexed(name: &str) -> Option<(&str, usize)> {
    let (prefix, index) = name.rsplit_once('/')?;
    Some((prefix, index.parse().ok()?))
}

pub fn instance_field(cfg: &Config, live: &Live, inst: &Instance, name: &str) -> Option<Cell> {
    let name = alias(name);
    if let Some(v) = common(&inst.meta, name) {
        return Some(v.into());
    }
    let node_offline = cfg.nodes.get(&inst.pnode).is_none_or(|n| n.offline);
    let running = live.instances.get(&inst.name).filter(|s| s.running);
    let be = cfg.effective_beparams(inst);
    let group_of = |n: &str| cfg.nodes.get(n).map(|n| n.group.clone());
    let group_name = |n: &str| group_of(n).and_then(|g| cfg.groups.get(&g).map(|g| g.name.clone()));
    let network_name = |uuid: &Option<String>| {
        uuid.as_ref()
            .map(|u| cfg.networks.get(u).map_or(u.clone(), |n| n.name.clone()))
    };
    let nic = |f: &dyn Fn(&Nic) -> Value| Value::Array(inst.nics.iter().map(f).collect());
    let disk = |f: &dyn Fn(&Disk) -> Value| Value::Array(inst.disks.iter().map(f).collect());
    if let Some((prefix, i)) = indexed(name) {
        return match prefix {
            "disk.size" | "disk.spindles" | "disk.name" | "disk.uuid" => {
                let Some(d) = inst.disks.get(i) else {
                    return Some(Cell::Unavail);
                };
                Some(match prefix {
                    "disk.size" => Cell::Normal(json!(d.size)),
                    "disk.spindles" => Cell::or_unavail(d.spindles),
                    "disk.name" => Cell::or_unavail(d.name.as_ref()),
                    _ => Cell::Normal(json!(d.uuid)),
                })
            }
            "nic.ip" | "nic.mac" | "nic.name" | "nic.uuid" | "nic.mode" | "nic.link"
            | "nic.bridge" | "nic.vlan" | "nic.network" | "nic.network.name" => {
                let Some(n) = inst.nics.get(i) else {
                    return Some(Cell::Unavail);
                };
                Some(match prefix {
                    "nic.ip" => Cell::or_unavail(n.ip.as_ref()),
                    "nic.mac" => Cell::Normal(json!(n.mac)),
                    "nic.name" => Cell::or_unavail(n.name.as_ref()),
                    "nic.uuid" => Cell::Normal(json!(n.uuid)),
                    "nic.mode" => Cell::Normal(json!(n.mode)),
                    "nic.link" => Cell::Normal(json!(n.link)),
                    "nic.bridge" => Cell::or_unavail((n.mode == "bridged").then_some(&n.link)),
                    "nic.vlan" => Cell::or_unavail((n.mode == "openvswitch").then_some(&n.vlan)),
                    "nic.network" => Cell::or_unavail(n.network.as_ref()),
                    _ => Cell::or_unavail(network_name(&n.network)),
                })
            }
            _ => None,
        };
    }
    Some(Cell::Normal(match name {
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
        "nic.bridges" => nic(&|n| json!((n.mode == "bridged").then_some(&n.link))),
        "nic.networks" => nic(&|n| json!(n.network)),
        "nic.networks.names" => nic(&|n| json!(network_name(&n.network))),
        "nic.names" => nic(&|n| json!(n.name)),
        "nic.uuids" => nic(&|n| json!(n.uuid)),
        "nic.vlans" => {
            nic(&|n| json!(matches!(n.mode.as_str(), "bridged" | "openvswitch").then_some(&n.vlan)))
        }
        "nic.count" => json!(inst.nics.len()),
        "network_port" => return Some(Cell::or_unavail(inst.network_port)),
        "disk.sizes" => disk(&|d| json!(d.size)),
        "disk.spindles" => disk(&|d| json!(d.spindles)),
        "disk.names" => disk(&|d| json!(d.name)),
        "disk.uuids" => disk(&|d| json!(d.uuid)),
        "disk.count" => json!(inst.disks.len()),
        "disk_usage" => json!(disk_usage(inst)),
        "beparams" => json!(be),
        "hvparams" => json!(super::without_hv_globals(cfg.effective_hvparams(inst))),
        "osparams" => json!(inst.osparams),
        "custom_hvparams" => json!(inst.hvparams),
        "custom_beparams" => json!(inst.beparams),
        "custom_osparams" => json!(inst.osparams),
        // NICs on a network take mode, link and vlan from its connection; others keep theirs.
        "custom_nicparams" => nic(&|n| match n.network {
            Some(_) => json!({"mode": n.mode, "link": n.link, "vlan": n.vlan}),
            None => json!({"mode": n.mode, "link": n.link}),
        }),
        "oper_state" | "oper_ram" | "oper_vcpus" if live.unreachable.contains(&inst.pnode) => {
            return Some(Cell::NoData);
        }
        "oper_state" => json!(running.is_some()),
        "oper_ram" | "oper_vcpus" if node_offline => return Some(Cell::NoData),
        "oper_ram" => return Some(Cell::or_unavail(running.map(|s| s.memory_mib))),
        "oper_vcpus" => return Some(Cell::or_unavail(running.map(|s| s.vcpus))),
        "status" => json!(instance_status(
            cfg,
            inst,
            running.is_some(),
            live.unreachable.contains(&inst.pnode)
        )),
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
        // Upstream describes the console of stopped instances too.
        "console" => console_info(inst),
        other => {
            if let Some(k) = other.strip_prefix("be/") {
                return Some(Cell::or_unavail(be.get(k)));
            }
            // Upstream lists every hypervisor's parameters; another hypervisor's are unavailable.
            let k = other.strip_prefix("hv/")?;
            return Some(Cell::or_unavail(cfg.effective_hvparams(inst).get(k)));
        }
    }))
}

/// Space the instance's disks take on its nodes (DRBD adds its metadata).
fn disk_usage(inst: &Instance) -> u64 {
    match inst.disk_template.as_str() {
        "diskless" => 0,
        "drbd" => inst.disks.iter().map(|d| d.size + 128).sum(),
        _ => inst.disks.iter().map(|d| d.size).sum(),
    }
}

/// Ganeti's instance `status` field.
fn instance_status(
    cfg: &Config,
    inst: &Instance,
    running: bool,
    unreachable: bool,
) -> &'static str {
    let offline = cfg.nodes.get(&inst.pnode).is_none_or(|n| n.offline);
    match (inst.admin_state, running) {
        _ if offline => "ERROR_nodeoffline",
        _ if unreachable => "ERROR_nodedown",
        (AdminState::Up, true) => "running",
        (AdminState::Up, false) => "ERROR_down",
        (AdminState::Down, true) => "ERROR_up",
        (AdminState::Down, false) => "ADMIN_down",
        (AdminState::Offline, true) => "ERROR_up",
        (AdminState::Offline, false) => "ADMIN_offline",
    }
}
