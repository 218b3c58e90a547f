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
    let mut out = serde_json::Map::new();
    for inst in selected {
        let run_state = if static_only {
            Value::Null
        } else {
            let running = is_running(ctx, &inst).await.unwrap_or(false);
            json!(if running { "up" } else { "down" })
        };
        out.insert(
            inst.name.clone(),
            json!({
                "name": inst.name,
                "config_state": inst.admin_state.as_str(),
                "run_state": run_state,
                "pnode": inst.pnode,
                "snodes": inst.snodes,
                "os": inst.os,
                "hypervisor": inst.hypervisor,
                "disk_template": inst.disk_template,
                "network_port": inst.network_port,
                "hv_instance": inst.hvparams,
                "hv_actual": cfg.effective_hvparams(&inst),
                "be_instance": inst.beparams,
                "be_actual": cfg.effective_beparams(&inst),
                "os_instance": inst.osparams,
                "os_actual": inst.osparams,
                "nics": inst.nics.iter().map(|n| json!({"name": n.name, "uuid": n.uuid, "mac": n.mac, "ip": n.ip, "mode": n.mode, "link": n.link, "vlan": n.vlan, "network": n.network})).collect::<Vec<_>>(),
                "disks": inst.disks.iter().enumerate().map(|(i, d)| json!({"iv_name": format!("disk/{i}"), "size": d.size, "mode": d.mode, "name": d.name, "uuid": d.uuid, "dev_type": d.dev_type})).collect::<Vec<_>>(),
                "uuid": inst.meta.uuid,
                "ctime": inst.meta.ctime,
                "mtime": inst.meta.mtime,
                "tags": inst.meta.tags,
            }),
        );
    }
    Ok(Value::Object(out))
}
