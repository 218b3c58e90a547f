//! Node group fields (upstream `_BuildGroupFields`).

use super::{Cell, common};
use crate::cluster::model::*;
use serde_json::json;

pub fn group_field(cfg: &Config, group: &Group, name: &str) -> Option<Cell> {
    if let Some(v) = common(&group.meta, name) {
        return Some(v.into());
    }
    let nodes = cfg.group_nodes(&group.meta.uuid);
    let insts: Vec<String> = cfg
        .instances
        .values()
        .filter(|i| nodes.contains(&i.pnode))
        .map(|i| i.name.clone())
        .collect();
    let ndparams = || {
        let mut p = cfg.cluster.ndparams.clone();
        p.extend(group.ndparams.clone());
        p
    };
    Some(Cell::Normal(match name {
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
        "ndparams" => json!(ndparams()),
        "custom_ndparams" => json!(group.ndparams),
        "networks" => json!(
            group
                .networks
                .keys()
                .filter_map(|u| cfg.networks.get(u).map(|n| n.name.clone()))
                .collect::<Vec<_>>()
        ),
        other => {
            let k = other.strip_prefix("ndp/")?;
            return Some(Cell::or_unavail(ndparams().get(k).cloned()));
        }
    }))
}
