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
    ListExports {
        node: String,
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

impl AgentCall {
    /// The call's name on the wire (`start`, `node_info`...), read from its serialized form
    /// (the arguments are skipped, not built into values), for metrics.
    pub fn name_in(body: &[u8]) -> String {
        #[derive(Deserialize)]
        struct Tag {
            call: String,
        }
        serde_json::from_slice::<Tag>(body)
            .map(|t| t.call)
            .unwrap_or_default()
    }

    /// How long the master waits for the agent's answer: a hung agent fails the job in bounded
    /// time. Questions are quick; disk copies, OS scripts and migrations may take long.
    pub fn timeout(&self) -> std::time::Duration {
        use std::time::Duration;
        const QUICK: Duration = Duration::from_secs(60);
        const LONG: Duration = Duration::from_secs(3 * 3600);
        match self {
            AgentCall::NodeInfo { .. }
            | AgentCall::InstanceState { .. }
            | AgentCall::Console { .. }
            | AgentCall::ListExports { .. }
            | AgentCall::RunningConfig { .. }
            | AgentCall::VerifyOsParams { .. }
            | AgentCall::AddNode { .. }
            | AgentCall::Powercycle { .. }
            | AgentCall::RemoveExport { .. }
            | AgentCall::Rename { .. }
            | AgentCall::FinishIncoming { .. } => QUICK,
            AgentCall::Stop { timeout_s, .. } => Duration::from_secs(*timeout_s) + QUICK,
            AgentCall::Delay { seconds, .. } => {
                Duration::try_from_secs_f64(*seconds)
                    .unwrap_or(LONG)
                    .min(LONG)
                    + QUICK
            }
            AgentCall::CreateDisks { .. }
            | AgentCall::RemoveDisks { .. }
            | AgentCall::GrowDisk { .. }
            | AgentCall::InstallOs { .. }
            | AgentCall::Start { .. }
            | AgentCall::Reboot { .. }
            | AgentCall::Migrate { .. }
            | AgentCall::ExportInstance { .. }
            | AgentCall::ImportInstance { .. }
            | AgentCall::PrepareIncoming { .. }
            | AgentCall::SendMigration { .. } => LONG,
        }
    }
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

/// Request authentication: every call carries a timestamp, a fresh nonce and an HMAC-SHA256 of
/// both and the body under the cluster secret. The secret itself never travels, and the agent
/// refuses requests that are old or replayed.
pub mod auth {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;
    use std::collections::HashMap;
    use std::sync::Mutex;

    pub const TIMESTAMP: &str = "x-gantry-timestamp";
    pub const NONCE: &str = "x-gantry-nonce";
    pub const SIGNATURE: &str = "x-gantry-signature";
    /// How far a request's timestamp may be from the agent's clock.
    pub const MAX_SKEW_S: u64 = 30;

    fn mac(secret: &str, timestamp: u64, nonce: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(format!("{timestamp}\n{nonce}\n").as_bytes());
        mac.update(body);
        mac
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The three header values for a request with `body`.
    pub fn sign(secret: &str, body: &[u8]) -> (String, String, String) {
        let timestamp = crate::util::now_f64() as u64;
        let nonce = hex(&crate::util::random_bytes::<16>());
        let signature = hex(&mac(secret, timestamp, &nonce, body).finalize().into_bytes());
        (timestamp.to_string(), nonce, signature)
    }

    /// Nonces seen within the allowed skew, so a captured request cannot be sent again.
    #[derive(Default)]
    pub struct Verifier {
        seen: Mutex<HashMap<String, u64>>,
    }

    impl Verifier {
        /// Checks a request's headers against `secret`; answers why it is refused.
        pub fn verify(
            &self,
            secret: &str,
            timestamp: Option<&str>,
            nonce: Option<&str>,
            signature: Option<&str>,
            body: &[u8],
        ) -> Result<(), &'static str> {
            let (Some(ts), Some(nonce), Some(signature)) = (timestamp, nonce, signature) else {
                return Err("the request is not signed with the cluster secret");
            };
            let ts: u64 = ts.parse().map_err(|_| "bad timestamp")?;
            let now = crate::util::now_f64() as u64;
            if now.abs_diff(ts) > MAX_SKEW_S {
                return Err("the request is too old (or the clocks differ by more than 30 s)");
            }
            let given: Vec<u8> = (0..signature.len() / 2)
                .filter_map(|i| u8::from_str_radix(signature.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            if given.len() != 32 || mac(secret, ts, nonce, body).verify_slice(&given).is_err() {
                return Err("the request is not signed with the cluster secret");
            }
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|_, t| now.abs_diff(*t) <= MAX_SKEW_S);
            if seen.insert(nonce.to_string(), ts).is_some() {
                return Err("the request was replayed");
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn signed_requests_verify_once() {
            let v = Verifier::default();
            let (ts, nonce, sig) = sign("s3cret", b"{}");
            assert_eq!(
                v.verify("s3cret", Some(&ts), Some(&nonce), Some(&sig), b"{}"),
                Ok(())
            );
            assert_eq!(
                v.verify("s3cret", Some(&ts), Some(&nonce), Some(&sig), b"{}"),
                Err("the request was replayed")
            );
            let (ts, nonce, sig) = sign("s3cret", b"{}");
            assert!(
                v.verify("other", Some(&ts), Some(&nonce), Some(&sig), b"{}")
                    .is_err()
            );
            assert!(
                v.verify("s3cret", Some(&ts), Some(&nonce), Some(&sig), b"{ }")
                    .is_err()
            );
            let old = (crate::util::now_f64() as u64 - 120).to_string();
            assert!(
                v.verify("s3cret", Some(&old), Some(&nonce), Some(&sig), b"{}")
                    .is_err()
            );
        }
    }
}
