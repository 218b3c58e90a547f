//! The master's view of a kvm cluster: nodes served by this host's QEMU backend, and nodes on
//! other machines reached through their agents. Each call goes to the backend of its node; a
//! migration between two of them is driven here step by step.

use super::remote::RemoteBackend;
use super::*;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub struct ClusterBackend {
    local: Arc<dyn Backend>,
    remotes: RwLock<HashMap<String, Arc<RemoteBackend>>>,
    /// Cluster secret and certificate for talking to agents.
    secret: String,
    cert_der: Vec<u8>,
}

impl ClusterBackend {
    pub fn new(local: Arc<dyn Backend>, secret: String, cert_der: Vec<u8>) -> ClusterBackend {
        ClusterBackend {
            local,
            remotes: RwLock::default(),
            secret,
            cert_der,
        }
    }

    fn for_node(&self, node: &str) -> Arc<dyn Backend> {
        match self
            .remotes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
        {
            Some(remote) => remote.clone(),
            None => self.local.clone(),
        }
    }

    fn is_remote(&self, node: &str) -> bool {
        self.remotes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(node)
    }

    fn connect(&self, node: &NodeSpec) -> BackendResult<Option<Arc<RemoteBackend>>> {
        let Some(address) = &node.address else {
            return Ok(None);
        };
        let remote = RemoteBackend::new(address, &self.secret, &self.cert_der)
            .map_err(BackendError::failed)?;
        let remote = Arc::new(remote);
        self.remotes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.name.clone(), remote.clone());
        Ok(Some(remote))
    }
}

impl Backend for ClusterBackend {
    fn adopt(&self, nodes: Vec<NodeSpec>, vms: Vec<(String, VmSpec, bool)>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut local = vec![];
            for node in nodes {
                match self.connect(&node) {
                    Ok(Some(_)) => {}
                    Ok(None) => local.push(node),
                    Err(e) => {
                        tracing::error!(node = %node.name, "cannot set up the agent client: {e}")
                    }
                }
            }
            let local_vms = vms
                .into_iter()
                .filter(|(node, _, _)| !self.is_remote(node))
                .collect();
            self.local.adopt(local, local_vms).await;
        })
    }

    fn node_info<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<NodeInfo>> {
        Box::pin(async move { self.for_node(node).node_info(node).await })
    }

    fn create_disks<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.for_node(node).create_disks(node, vm).await })
    }

    fn remove_disks<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.for_node(node).remove_disks(node, name).await })
    }

    fn grow_disk<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        index: usize,
        new_size: u64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.for_node(node)
                .grow_disk(node, name, index, new_size)
                .await
        })
    }

    fn install_os<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move { self.for_node(node).install_os(node, vm).await })
    }

    fn start<'a>(&'a self, node: &'a str, vm: &'a VmSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.for_node(node).start(node, vm).await })
    }

    fn stop<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        timeout_s: u64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.for_node(node).stop(node, name, timeout_s).await })
    }

    fn reboot<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
        kind: RebootKind,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.for_node(node).reboot(node, name, kind).await })
    }

    fn instance_state<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<VmState>>> {
        Box::pin(async move { self.for_node(node).instance_state(node, name).await })
    }

    fn migrate<'a>(
        &'a self,
        src: &'a str,
        dst: &'a str,
        name: &'a str,
        live: bool,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let (from, to) = (self.for_node(src), self.for_node(dst));
            if !self.is_remote(src) && !self.is_remote(dst) {
                return from.migrate(src, dst, name, live).await;
            }
            // Two hosts: the target waits with -incoming, the source streams to it.
            let Some(config) = from.running_config(src, name).await? else {
                return Ok(());
            };
            let uri = to.prepare_incoming(dst, name, config).await?;
            let sent = from.send_migration(src, name, &uri, live).await;
            let finished = to.finish_incoming(dst, name, sent.is_ok()).await;
            sent.and(finished)
        })
    }

    fn rename<'a>(
        &'a self,
        node: &'a str,
        old: &'a str,
        new: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.for_node(node).rename(node, old, new).await })
    }

    fn console<'a>(&'a self, node: &'a str, name: &'a str) -> BoxFuture<'a, Option<Value>> {
        Box::pin(async move { self.for_node(node).console(node, name).await })
    }

    fn powercycle<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<String>> {
        Box::pin(async move { self.for_node(node).powercycle(node).await })
    }

    fn delay<'a>(&'a self, node: &'a str, seconds: f64) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.for_node(node).delay(node, seconds).await })
    }

    fn installed_os(
        &self,
    ) -> BoxFuture<
        '_,
        Option<std::collections::BTreeMap<String, crate::cluster::model::OsDefinition>>,
    > {
        self.local.installed_os()
    }

    fn verify_os_params<'a>(
        &'a self,
        node: &'a str,
        os_type: &'a str,
        params: &'a std::collections::BTreeMap<String, String>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            self.for_node(node)
                .verify_os_params(node, os_type, params)
                .await
        })
    }

    fn export_instance<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move { self.for_node(node).export_instance(node, vm).await })
    }

    fn import_instance<'a>(
        &'a self,
        node: &'a str,
        vm: &'a VmSpec,
        source: &'a str,
    ) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move { self.for_node(node).import_instance(node, vm, source).await })
    }

    fn list_exports<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<Vec<String>>> {
        Box::pin(async move { self.for_node(node).list_exports(node).await })
    }

    fn remove_export<'a>(
        &'a self,
        node: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move { self.for_node(node).remove_export(node, name).await })
    }

    fn add_node<'a>(&'a self, node: NodeSpec) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            match self.connect(&node)? {
                Some(remote) => {
                    let checked = remote.add_node(node.clone()).await;
                    if checked.is_err() {
                        self.remotes
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&node.name);
                    }
                    checked
                }
                None => self.local.add_node(node).await,
            }
        })
    }
}
