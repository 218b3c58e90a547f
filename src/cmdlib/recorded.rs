//! What upstream's logical units write back into an opcode when they start it (resolved UUIDs,
//! defaults computed in `CheckArguments`), so that job records read as Ganeti's do. Only
//! parameters the opcode defines and the client left unset are filled; each value is the one
//! the execution uses anyway.

use crate::cluster::model::Config;
use crate::opcodes::{OpCode, OpId};
use serde_json::{Value, json};

/// Upstream's helper VM timeouts (`constants.HELPER_VM_STARTUP`, `HELPER_VM_SHUTDOWN`).
const HELPER_STARTUP_TIMEOUT: u64 = 5 * 60;
const HELPER_SHUTDOWN_TIMEOUT: u64 = 2 * 60 * 60;

pub fn recorded_params(op: &OpCode, cfg: &Config) -> Vec<(&'static str, Value)> {
    let mut out = vec![];
    if let Some(inst) = op.str("instance_name").and_then(|n| cfg.instances.get(n)) {
        out.push(("instance_uuid", json!(inst.meta.uuid)));
    }
    if let Some(node) = op.str("node_name").and_then(|n| cfg.nodes.get(n)) {
        out.push(("node_uuid", json!(node.meta.uuid)));
    }
    match op.id() {
        OpId::InstanceCreate => {
            if let Some(node) = op.str("pnode").and_then(|n| cfg.nodes.get(n)) {
                out.push(("pnode_uuid", json!(node.meta.uuid)));
            }
            if let Some(hv) = cfg.cluster.enabled_hypervisors.first() {
                out.push(("hypervisor", json!(hv)));
            }
            out.push(("osparams_private", json!({})));
            out.push(("osparams_secret", json!({})));
            out.push(("helper_startup_timeout", json!(HELPER_STARTUP_TIMEOUT)));
            out.push(("helper_shutdown_timeout", json!(HELPER_SHUTDOWN_TIMEOUT)));
            if matches!(op.str("disk_template"), Some("file" | "sharedfile")) {
                out.push(("file_driver", json!("loop")));
            }
        }
        OpId::InstanceShutdown => out.push(("admin_state_source", json!("admin"))),
        OpId::BackupExport => {
            if let Some(node) = op.str("target_node").and_then(|n| cfg.nodes.get(n)) {
                out.push(("target_node_uuid", json!(node.meta.uuid)));
            }
        }
        OpId::InstanceReinstall => {
            out.push(("osparams", json!({})));
            out.push(("osparams_private", json!({})));
            out.push(("osparams_secret", json!({})));
        }
        // Without a target node, the cluster's default allocator chooses.
        OpId::NodeEvacuate if op.get("remote_node").is_none() => {
            out.push(("iallocator", json!(cfg.cluster.default_iallocator)));
        }
        _ => {}
    }
    out.retain(|(name, _)| {
        op.get(name).is_none() && op.def().params.iter().any(|p| p.name == *name)
    });
    match op.id() {
        OpId::InstanceMultiAlloc => out.push(("instances", multi_alloc_records(op, cfg))),
        OpId::GroupAssignNodes => {
            let uuids: Vec<&str> = op
                .strings("nodes")
                .iter()
                .filter_map(|n| cfg.nodes.get(n).map(|n| n.meta.uuid.as_str()))
                .collect();
            out.push(("node_uuids", json!(uuids)));
        }
        _ => {}
    }
    out
}

/// The instances of a multi-allocation share the parent's reason trail and get their primary
/// node's UUID, as upstream's records show.
fn multi_alloc_records(op: &OpCode, cfg: &Config) -> Value {
    let reason = op.get("reason").cloned().unwrap_or(json!([]));
    let mut instances = op.get("instances").cloned().unwrap_or(json!([]));
    // Only objects: the list is checked when the opcode runs, not when it is recorded.
    let objects = instances.as_array_mut().into_iter().flatten();
    for inst in objects.filter_map(Value::as_object_mut) {
        let node = inst.get("pnode").and_then(Value::as_str);
        if let Some(node) = node.and_then(|n| cfg.nodes.get(n)) {
            inst.insert("pnode_uuid".into(), json!(node.meta.uuid));
        }
        inst.insert("reason".into(), reason.clone());
    }
    instances
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_multi_allocations_are_recorded_without_panicking() {
        let cfg = crate::cluster::bootstrap::initial_config(&Default::default());
        let op = OpCode::build(
            OpId::InstanceMultiAlloc,
            serde_json::from_value(json!({"instances": [1, "x", null, [], {"pnode": 3}]})).unwrap(),
        )
        .unwrap();
        let recorded = recorded_params(&op, &cfg);
        let (_, instances) = recorded.iter().find(|(k, _)| *k == "instances").unwrap();
        assert_eq!(instances[4]["reason"], json!([]));
        assert_eq!(instances[0], json!(1));
    }
}
