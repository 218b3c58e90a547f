//! Node fields (upstream `_BuildNodeFields`).

use super::{Cell, Live, common};
use crate::cluster::leases::held_back;
use crate::cluster::model::*;
use serde_json::{Value, json};

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

/// This host's boot id: the fake nodes and the kvm nodes run on this host.
fn boot_id() -> Option<String> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
    })
    .clone()
}

pub fn node_field(cfg: &Config, live: &Live, node: &Node, name: &str) -> Option<Cell> {
    if let Some(v) = common(&node.meta, name) {
        return Some(v.into());
    }
    let nd = cfg.effective_ndparams(node);
    // Runtime fields: offline nodes are not asked, silent nodes have no data.
    let runtime = |f: &dyn Fn(&crate::backends::NodeInfo) -> Value| -> Cell {
        if node.offline {
            return Cell::Offline;
        }
        live.nodes
            .get(&node.name)
            .map_or(Cell::NoData, |i| Cell::Normal(f(i)))
    };
    let exclusive = nd.get("exclusive_storage") == Some(&json!(true));
    Some(Cell::Normal(match name {
        "name" => json!(node.name),
        "offline" => json!(node.offline),
        "master_candidate" => json!(node.master_candidate),
        "drained" => json!(node.drained),
        "master_capable" => json!(node.master_capable),
        "vm_capable" => json!(node.vm_capable),
        // Upstream knows the power state only through an out-of-band program.
        "powered" => {
            let oob = nd.get("oob_program").and_then(Value::as_str);
            return Some(Cell::or_unavail(
                oob.filter(|p| !p.is_empty()).map(|_| node.powered),
            ));
        }
        "master" => json!(node.name == cfg.cluster.master),
        "dtotal" => return Some(runtime(&|i| json!(i.disk_total))),
        // Free figures leave out what open lease reservations hold back (htools plan with them).
        "dfree" => {
            let held = held_back(cfg, &node.name, crate::util::now_f64(), None).disk;
            return Some(runtime(&|i| json!(i.disk_free.saturating_sub(held))));
        }
        // Spindles are reported only under exclusive storage.
        "sptotal" | "spfree" if !exclusive => return Some(Cell::NoData),
        "sptotal" => {
            return Some(runtime(&|_| {
                nd.get("spindle_count").cloned().unwrap_or(json!(1))
            }));
        }
        "spfree" => {
            let used: i64 = cfg
                .instances
                .values()
                .filter(|i| i.pnode == node.name)
                .flat_map(|i| i.disks.iter())
                .map(|d| d.spindles.unwrap_or(1))
                .sum();
            let total = nd.get("spindle_count").and_then(Value::as_i64).unwrap_or(1);
            return Some(runtime(&|_| json!(total - used)));
        }
        "mtotal" => return Some(runtime(&|i| json!(i.memory_total))),
        "mnode" => return Some(runtime(&|i| json!(i.memory_node))),
        "mfree" => {
            let held = held_back(cfg, &node.name, crate::util::now_f64(), None).memory;
            return Some(runtime(&|i| json!(i.memory_free.saturating_sub(held))));
        }
        "ctotal" => return Some(runtime(&|i| json!(i.cpus))),
        "cnos" | "cnodes" => return Some(runtime(&|_| json!(1))),
        "csockets" => return Some(runtime(&|i| json!(i.sockets))),
        "bootid" => return Some(runtime(&|_| json!(boot_id()))),
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
        // Gantry keeps no static hypervisor or disk state for nodes.
        "hv_state" | "disk_state" => return Some(Cell::Unavail),
        other => {
            let k = other.strip_prefix("ndp/")?;
            return Some(Cell::or_unavail(nd.get(k)));
        }
    }))
}
