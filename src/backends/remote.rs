//! A node on another machine: every backend call becomes an HTTPS request to that host's node
//! agent (`gantry agent`, `src/agent.rs`). The agent must present the cluster certificate (pinned,
//! no CA involved) and every request carries the cluster secret, so neither side talks to a
//! stranger.

use super::protocol::{AGENT_PATH, AgentCall, AgentReply, auth};
use super::*;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;

pub struct RemoteBackend {
    base: String,
    secret: String,
    client: reqwest::Client,
}

fn unreachable(message: String) -> BackendError {
    BackendError {
        kind: FailureKind::NodeUnreachable,
        message,
    }
}

impl RemoteBackend {
    pub fn new(base: &str, secret: &str, cluster_cert_der: &[u8]) -> Result<RemoteBackend, String> {
        // The secret travels in every request: never in the clear, whatever the config says.
        if !base.starts_with("https://") {
            return Err(format!(
                "refusing the agent address {base:?}: it must be https://"
            ));
        }
        let tls = crate::http::tls::pinned_client_config(cluster_cert_der)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(RemoteBackend {
            base: base.trim_end_matches('/').to_string(),
            secret: secret.to_string(),
            client,
        })
    }

    async fn call<T: DeserializeOwned>(&self, call: AgentCall) -> BackendResult<T> {
        let url = format!("{}{AGENT_PATH}", self.base);
        let body = serde_json::to_vec(&call).map_err(|e| BackendError::failed(e.to_string()))?;
        let (timestamp, nonce, signature) = auth::sign(&self.secret, &body);
        let timeout = call.timeout();
        let since = std::time::Instant::now();
        let labels = crate::metrics::AgentCallLabels {
            agent: self.base.clone(),
            call: AgentCall::name_in(&body),
        };
        let answer = self
            .post(&url, body, timestamp, nonce, signature, timeout)
            .await;
        crate::metrics::METRICS
            .agent_call_seconds
            .get_or_create(&labels)
            .observe(since.elapsed().as_secs_f64());
        answer
    }

    /// Posts one signed call and reads its answer.
    async fn post<T: DeserializeOwned>(
        &self,
        url: &str,
        body: Vec<u8>,
        timestamp: String,
        nonce: String,
        signature: String,
        timeout: Duration,
    ) -> BackendResult<T> {
        let response = self
            .client
            .post(url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(auth::TIMESTAMP, timestamp)
            .header(auth::NONCE, nonce)
            .header(auth::SIGNATURE, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let what = if e.is_timeout() {
                    format!(
                        "no answer from {} within {} s",
                        self.base,
                        timeout.as_secs()
                    )
                } else {
                    format!(
                        "Error while contacting the node agent at {}: {}",
                        self.base,
                        crate::util::root_cause(&e)
                    )
                };
                unreachable(what)
            })?;
        let status = response.status();
        let reply: AgentReply = response
            .json()
            .await
            .map_err(|e| unreachable(format!("Bad answer from {} ({status}): {e}", self.base)))?;
        match reply {
            AgentReply::Ok(value) => serde_json::from_value(value)
                .map_err(|e| BackendError::failed(format!("Bad answer from {}: {e}", self.base))),
            AgentReply::Error(e) => Err(e),
        }
    }
}

impl Backend for RemoteBackend {
    fn adopt(&self, _nodes: Vec<NodeSpec>, _vms: Vec<(String, VmSpec, bool)>) -> BoxFuture<'_, ()> {
        // The agent adopts its own VMs when it starts.
        Box::pin(async {})
    }

    fn node_info<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<NodeInfo>> {
        Box::pin(self.call(AgentCall::NodeInfo {
            node: node.to_string(),
        }))
    }

    fn create_disks<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::CreateDisks {
            node: node.to_string(),
            vm: vm.clone(),
        }))
    }

    fn remove_disks<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::RemoveDisks {
            node: node.to_string(),
            name: name.to_string(),
        }))
    }

    fn grow_disk<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        index: usize,
        new_size: u64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::GrowDisk {
            node: node.to_string(),
            name: name.to_string(),
            index,
            new_size,
        }))
    }

    fn install_os<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(self.call(AgentCall::InstallOs {
            node: node.to_string(),
            vm: vm.clone(),
        }))
    }

    fn start<'a>(&'a self, node: &'a str, vm: &'a VmSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::Start {
            node: node.to_string(),
            vm: vm.clone(),
        }))
    }

    fn stop<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        timeout_s: u64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::Stop {
            node: node.to_string(),
            name: name.to_string(),
            timeout_s,
        }))
    }

    fn reboot<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        kind: RebootKind,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::Reboot {
            node: node.to_string(),
            name: name.to_string(),
            kind,
        }))
    }

    fn instance_state<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<VmState>>> {
        Box::pin(self.call(AgentCall::InstanceState {
            node: node.to_string(),
            name: name.to_string(),
        }))
    }

    fn migrate<'a>(
        &'a self,
        src: &'a str,
        dst: &'a str,
        name: &'a str,
        live: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::Migrate {
            src: src.to_string(),
            dst: dst.to_string(),
            name: name.to_string(),
            live,
        }))
    }

    fn rename<'a>(
        &'a self,
        node: &'a str,
        old: &'a str,
        new: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::Rename {
            node: node.to_string(),
            old: old.to_string(),
            new: new.to_string(),
        }))
    }

    fn console<'a>(&'a self, node: &'a str, name: &'a str) -> BoxFuture<'a, Option<Value>> {
        Box::pin(async move {
            self.call::<Option<Value>>(AgentCall::Console {
                node: node.to_string(),
                name: name.to_string(),
            })
            .await
            .ok()
            .flatten()
        })
    }

    fn powercycle<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(self.call(AgentCall::Powercycle {
            node: node.to_string(),
        }))
    }

    fn delay<'a>(&'a self, node: &'a str, seconds: f64) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::Delay {
            node: node.to_string(),
            seconds,
        }))
    }

    fn add_node<'a>(&'a self, node: NodeSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::AddNode { spec: node }))
    }

    fn verify_os_params<'a>(
        &'a self,
        node: &'a str,
        os_type: &'a str,
        params: &'a std::collections::BTreeMap<String, String>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::VerifyOsParams {
            node: node.to_string(),
            os_type: os_type.to_string(),
            params: params.clone(),
        }))
    }

    fn export_instance<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(self.call(AgentCall::ExportInstance {
            node: node.to_string(),
            vm: vm.clone(),
        }))
    }

    fn import_instance<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
        source: &'a str,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(self.call(AgentCall::ImportInstance {
            node: node.to_string(),
            vm: vm.clone(),
            source: source.to_string(),
        }))
    }

    fn list_exports<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(self.call(AgentCall::ListExports {
            node: node.to_string(),
        }))
    }

    fn remove_export<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::RemoveExport {
            node: node.to_string(),
            name: name.to_string(),
        }))
    }

    fn running_config<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<Value>>> {
        Box::pin(self.call(AgentCall::RunningConfig {
            node: node.to_string(),
            name: name.to_string(),
        }))
    }

    fn prepare_incoming<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        config: Value,
    ) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(self.call(AgentCall::PrepareIncoming {
            node: node.to_string(),
            name: name.to_string(),
            config,
        }))
    }

    fn send_migration<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        uri: &'a str,
        live: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::SendMigration {
            node: node.to_string(),
            name: name.to_string(),
            uri: uri.to_string(),
            live,
        }))
    }

    fn finish_incoming<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        success: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(AgentCall::FinishIncoming {
            node: node.to_string(),
            name: name.to_string(),
            success,
        }))
    }
}
