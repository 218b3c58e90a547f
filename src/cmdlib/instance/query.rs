//! Instance data queries (upstream `instance_query.py`).

use super::*;

pub(super) async fn query_data(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let names = ctx.op.strings("instances");
    let selected: Vec<_> = if names.is_empty() {
        cfg.instances.values().cloned().collect()
    } else {
        names
            .iter()
            .map(|n| find_instance(&cfg, n).cloned())
            .collect::<Result<_, _>>()?
    };
    let static_only = ctx.op.bool("static");
    if !static_only {
        ctx.warn("Non-static data requested, locks need to be acquired");
    }
    let mut out = serde_json::Map::new();
    for inst in selected {
        let run_state = if static_only {
            Value::Null
        } else {
            let running = is_running(ctx, &inst).await.unwrap_or(false);
            json!(if running { "up" } else { "down" })
        };
        let group_of = |node: &str| cfg.nodes.get(node).map(|n| n.group.clone());
        let group_name = |uuid: &Option<String>| {
            uuid.as_ref()
                .and_then(|u| cfg.groups.get(u))
                .map(|g| g.name.clone())
        };
        let snode_groups: Vec<Option<String>> = inst.snodes.iter().map(|s| group_of(s)).collect();
        out.insert(
            inst.name.clone(),
            json!({
                "name": inst.name,
                "config_state": inst.admin_state.as_str(),
                "run_state": run_state,
                "pnode": inst.pnode,
                "pnode_group_uuid": group_of(&inst.pnode),
                "pnode_group_name": group_name(&group_of(&inst.pnode)),
                "snodes": inst.snodes,
                "snodes_group_uuids": snode_groups,
                "snodes_group_names": snode_groups.iter().map(group_name).collect::<Vec<_>>(),
                "os": inst.os,
                "nics": inst.nics.iter().map(|n| nic_tuple(&cfg, n)).collect::<Vec<_>>(),
                "disk_template": inst.disk_template,
                "disks": inst.disks.iter().enumerate().map(|(i, d)| disk_status(&cfg, &inst, i, d)).collect::<Vec<_>>(),
                "hypervisor": inst.hypervisor,
                "network_port": inst.network_port,
                "hv_instance": inst.hvparams,
                "hv_actual": crate::views::without_hv_globals(cfg.effective_hvparams(&inst)),
                "be_instance": inst.beparams,
                "be_actual": cfg.effective_beparams(&inst),
                "os_instance": inst.osparams,
                "os_actual": inst.osparams,
                "serial_no": inst.meta.serial_no,
                "mtime": inst.meta.mtime,
                "ctime": inst.meta.ctime,
                "uuid": inst.meta.uuid,
            }),
        );
    }
    Ok(Value::Object(out))
}

/// A NIC as upstream's hooks and instance info list it: `(name, uuid, ip, mac, mode, link, vlan,
/// network uuid, network object)`.
fn nic_tuple(cfg: &Config, nic: &Nic) -> Value {
    let network = nic
        .network
        .as_ref()
        .and_then(|u| cfg.networks.get(u))
        .map(|net| {
            let mut obj = json!({
                "name": net.name,
                "network": net.network,
                "gateway": net.gateway,
                "reservations": crate::views::network_reservations(net),
                "ext_reservations": crate::views::network_external_bitmap(net),
                "uuid": net.meta.uuid,
                "serial_no": net.meta.serial_no,
                "ctime": net.meta.ctime,
                "mtime": net.meta.mtime,
                "tags": net.meta.tags,
            });
            for (key, value) in [
                ("network6", &net.network6),
                ("gateway6", &net.gateway6),
                ("mac_prefix", &net.mac_prefix),
            ] {
                if let Some(v) = value {
                    obj[key] = json!(v);
                }
            }
            obj
        });
    json!([
        nic.name,
        nic.uuid,
        nic.ip,
        nic.mac,
        nic.mode,
        nic.link,
        nic.vlan,
        nic.network,
        network
    ])
}

/// A disk as instance info shows it (static data: no block device status is collected).
fn disk_status(
    cfg: &Config,
    inst: &crate::cluster::model::Instance,
    index: usize,
    disk: &Disk,
) -> Value {
    let logical_id = match disk.dev_type.as_str() {
        "file" | "sharedfile" => {
            let dir = if disk.dev_type == "file" {
                &cfg.cluster.file_storage_dir
            } else {
                &cfg.cluster.shared_file_storage_dir
            };
            json!([
                "loop",
                format!("{dir}/{}/{}.file.disk{index}", inst.name, disk.uuid)
            ])
        }
        "plain" | "drbd" => json!([
            cfg.cluster.volume_group_name,
            format!("{}.disk{index}", disk.uuid)
        ]),
        _ => json!([]),
    };
    json!({
        "iv_name": format!("disk/{index}"),
        "dev_type": disk.dev_type,
        "logical_id": logical_id,
        "drbd_info": null,
        "pstatus": null,
        "sstatus": null,
        "children": [],
        "mode": disk.mode,
        "size": disk.size,
        "spindles": disk.spindles,
        "name": disk.name,
        "uuid": disk.uuid,
    })
}
