//! A node on another machine: every backend call becomes an HTTPS request to that host's node
//! agent (`gantry node`, `src/agent.rs`). The agent must present the cluster certificate (pinned,
//! no CA involved) and every request carries the cluster secret, so neither side talks to a
//! stranger.

use super::*;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The wire format of an agent's answer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentReply {
    Ok(Value),
    Error(BackendError),
}

pub struct RemoteBackend {
    base: String,
    secret: String,
    client: reqwest::Client,
}

/// Accepts exactly one certificate: the cluster's.
#[derive(Debug)]
struct PinnedCertificate {
    der: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_slice() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the node does not present the cluster certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn unreachable(message: String) -> BackendError {
    BackendError {
        kind: FailureKind::NodeUnreachable,
        message,
    }
}

impl RemoteBackend {
    pub fn new(base: &str, secret: &str, cluster_cert_der: &[u8]) -> Result<RemoteBackend, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PinnedCertificate {
            der: cluster_cert_der.to_vec(),
            provider: provider.clone(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
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

    async fn call<T: DeserializeOwned>(&self, op: &str, args: Value) -> BackendResult<T> {
        let url = format!("{}/agent/v1/{op}", self.base);
        let response = self
            .client
            .post(&url)
            .bearer_auth(&self.secret)
            .json(&args)
            .send()
            .await
            .map_err(|e| unreachable(format!("Error while contacting {}: {e}", self.base)))?;
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
        Box::pin(self.call("node_info", json!({"node": node})))
    }

    fn create_disks<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call("create_disks", json!({"node": node, "vm": vm})))
    }

    fn remove_disks<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call("remove_disks", json!({"node": node, "name": name})))
    }

    fn grow_disk<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        index: usize,
        new_size: u64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(
            "grow_disk",
            json!({"node": node, "name": name, "index": index, "new_size": new_size}),
        ))
    }

    fn install_os<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(self.call("install_os", json!({"node": node, "vm": vm})))
    }

    fn start<'a>(&'a self, node: &'a str, vm: &'a VmSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call("start", json!({"node": node, "vm": vm})))
    }

    fn stop<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        timeout_s: u64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(
            "stop",
            json!({"node": node, "name": name, "timeout_s": timeout_s}),
        ))
    }

    fn reboot<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        kind: RebootKind,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call("reboot", json!({"node": node, "name": name, "kind": kind})))
    }

    fn instance_state<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<VmState>>> {
        Box::pin(self.call("instance_state", json!({"node": node, "name": name})))
    }

    fn migrate<'a>(
        &'a self,
        src: &'a str,
        dst: &'a str,
        name: &'a str,
        live: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(
            "migrate",
            json!({"src": src, "dst": dst, "name": name, "live": live}),
        ))
    }

    fn rename<'a>(
        &'a self,
        node: &'a str,
        old: &'a str,
        new: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call("rename", json!({"node": node, "old": old, "new": new})))
    }

    fn console<'a>(&'a self, node: &'a str, name: &'a str) -> BoxFuture<'a, Option<Value>> {
        Box::pin(async move {
            self.call::<Option<Value>>("console", json!({"node": node, "name": name}))
                .await
                .ok()
                .flatten()
        })
    }

    fn powercycle<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(self.call("powercycle", json!({"node": node})))
    }

    fn delay<'a>(&'a self, node: &'a str, seconds: f64) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call("delay", json!({"node": node, "seconds": seconds})))
    }

    fn add_node<'a>(&'a self, node: NodeSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call("add_node", json!({"node": node})))
    }

    fn verify_os_params<'a>(
        &'a self,
        node: &'a str,
        os_type: &'a str,
        params: &'a std::collections::BTreeMap<String, String>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(
            "verify_os_params",
            json!({"node": node, "os_type": os_type, "params": params}),
        ))
    }

    fn export_instance<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(self.call("export_instance", json!({"node": node, "vm": vm})))
    }

    fn import_instance<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
        source: &'a str,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(self.call(
            "import_instance",
            json!({"node": node, "vm": vm, "source": source}),
        ))
    }

    fn remove_export<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call("remove_export", json!({"node": node, "name": name})))
    }

    fn running_config<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<Value>>> {
        Box::pin(self.call("running_config", json!({"node": node, "name": name})))
    }

    fn prepare_incoming<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        config: Value,
    ) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(self.call(
            "prepare_incoming",
            json!({"node": node, "name": name, "config": config}),
        ))
    }

    fn send_migration<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        uri: &'a str,
        live: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(
            "send_migration",
            json!({"node": node, "name": name, "uri": uri, "live": live}),
        ))
    }

    fn finish_incoming<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        success: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.call(
            "finish_incoming",
            json!({"node": node, "name": name, "success": success}),
        ))
    }
}
