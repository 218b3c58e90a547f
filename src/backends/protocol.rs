//! The node agent protocol, shared by the master's client (`remote.rs`) and the agent
//! (`src/agent.rs`): one call is one variant, so the two sides cannot disagree on a name or an
//! argument without failing to compile.

use super::{BackendError, NodeSpec, RebootKind, VmSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The path every call is posted to.
pub const AGENT_PATH: &str = "/agent/v2/call";

/// One backend call, as the master sends it (`{"call": "start", "node": ..., "vm": ...}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentCall {
    NodeInfo {
        node: String,
    },
    AddNode {
        spec: NodeSpec,
    },
    CreateDisks {
        node: String,
        vm: VmSpec,
    },
    RemoveDisks {
        node: String,
        name: String,
    },
    GrowDisk {
        node: String,
        name: String,
        index: usize,
        new_size: u64,
    },
    InstallOs {
        node: String,
        vm: VmSpec,
    },
    Start {
        node: String,
        vm: VmSpec,
    },
    Stop {
        node: String,
        name: String,
        timeout_s: u64,
    },
    Reboot {
        node: String,
        name: String,
        kind: RebootKind,
    },
    InstanceState {
        node: String,
        name: String,
    },
    Migrate {
        src: String,
        dst: String,
        name: String,
        live: bool,
    },
    Rename {
        node: String,
        old: String,
        new: String,
    },
    Console {
        node: String,
        name: String,
    },
    Powercycle {
        node: String,
    },
    Delay {
        node: String,
        seconds: f64,
    },
    VerifyOsParams {
        node: String,
        os_type: String,
        params: BTreeMap<String, String>,
    },
    ExportInstance {
        node: String,
        vm: VmSpec,
    },
    ImportInstance {
        node: String,
        vm: VmSpec,
        source: String,
    },
    RemoveExport {
        node: String,
        name: String,
    },
    RunningConfig {
        node: String,
        name: String,
    },
    PrepareIncoming {
        node: String,
        name: String,
        config: Value,
    },
    SendMigration {
        node: String,
        name: String,
        uri: String,
        live: bool,
    },
    FinishIncoming {
        node: String,
        name: String,
        success: bool,
    },
}

/// The wire format of an agent's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentReply {
    Ok(Value),
    Error(BackendError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_are_tagged_by_name() {
        let call = AgentCall::Stop {
            node: "n1".into(),
            name: "vm1".into(),
            timeout_s: 5,
        };
        assert_eq!(
            serde_json::to_value(&call).unwrap(),
            json!({"call": "stop", "node": "n1", "name": "vm1", "timeout_s": 5})
        );
        let unknown = serde_json::from_value::<AgentCall>(json!({"call": "rm_rf", "node": "n1"}));
        assert!(unknown.is_err());
        let extra = serde_json::from_value::<AgentCall>(
            json!({"call": "powercycle", "node": "n1", "force": true}),
        );
        assert!(extra.is_err(), "unknown arguments are refused");
    }
}
