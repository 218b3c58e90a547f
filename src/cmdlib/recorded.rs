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
        _ => {}
    }
    out.retain(|(name, _)| {
        op.get(name).is_none() && op.def().params.iter().any(|p| p.name == *name)
    });
    out
}
