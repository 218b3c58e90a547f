//! The configuration's own invariants (upstream `ConfigWriter.VerifyConfig`, run by
//! `OP_CLUSTER_VERIFY_CONFIG`): unique MACs and addresses, network bookkeeping that matches the
//! instances, no dangling references, typed parameters. Answers one message per broken
//! invariant; none means the configuration is sound.

use super::model::Config;
use super::params::{BACKEND, NODE, check_hvparams, force_dict_type};
use std::collections::BTreeMap;

pub fn verify(cfg: &Config) -> Vec<String> {
    let mut errors = vec![];
    let mut macs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    // (network, address) → instances whose NICs hold it.
    let mut addresses: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for inst in cfg.instances.values() {
        let name = inst.name.as_str();
        if !cfg.nodes.contains_key(&inst.pnode) {
            errors.push(format!(
                "instance {name}: unknown primary node {}",
                inst.pnode
            ));
        }
        for s in &inst.snodes {
            if !cfg.nodes.contains_key(s) {
                errors.push(format!("instance {name}: unknown secondary node {s}"));
            }
        }
        for (n, nic) in inst.nics.iter().enumerate() {
            macs.entry(nic.mac.as_str()).or_default().push(name);
            let Some(net) = nic.network.as_deref() else {
                continue;
            };
            let Some(network) = cfg.networks.get(net) else {
                errors.push(format!("instance {name} nic {n}: unknown network {net}"));
                continue;
            };
            if let Some(ip) = nic.ip.as_deref() {
                addresses.entry((net, ip)).or_default().push(name);
                if network.used.get(ip).map(String::as_str) != Some(name) {
                    errors.push(format!(
                        "network {}: address {ip} of instance {name} is not recorded as used by it",
                        network.name
                    ));
                }
            }
        }
        let mut be = inst.beparams.clone();
        if let Err(e) = force_dict_type(&mut be, BACKEND, &[]) {
            errors.push(format!("instance {name}: backend parameters: {e}"));
        } else if be != inst.beparams {
            errors.push(format!(
                "instance {name}: backend parameters are not normalised"
            ));
        }
        let mut hv = inst.hvparams.clone();
        if let Err(e) = check_hvparams(&inst.hypervisor, &mut hv, &[]) {
            errors.push(format!("instance {name}: hypervisor parameters: {e}"));
        }
    }
    for node in cfg.nodes.values() {
        let mut nd = node.ndparams.clone();
        if let Err(e) = force_dict_type(&mut nd, NODE, &[]) {
            errors.push(format!("node {}: node parameters: {e}", node.name));
        }
    }
    for (mac, owners) in macs.iter().filter(|(_, o)| o.len() > 1) {
        errors.push(format!(
            "duplicate MAC address {mac} (instances {})",
            owners.join(", ")
        ));
    }
    for ((net, ip), owners) in addresses.iter().filter(|(_, o)| o.len() > 1) {
        errors.push(format!(
            "network {net}: duplicate address {ip} (instances {})",
            owners.join(", ")
        ));
    }
    for (uuid, network) in &cfg.networks {
        for (ip, owner) in &network.used {
            if !addresses.contains_key(&(uuid.as_str(), ip.as_str())) {
                errors.push(format!(
                    "network {}: address {ip} is recorded as used by {owner}, which has no NIC with it",
                    network.name
                ));
            }
        }
    }
    for node in cfg.nodes.values() {
        if !cfg.groups.contains_key(&node.group) {
            errors.push(format!(
                "node {}: unknown node group {}",
                node.name, node.group
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::InitOptions;
    use crate::cluster::bootstrap::initial_config;

    #[test]
    fn a_new_cluster_is_sound_and_breakage_is_named() {
        let mut cfg = initial_config(&InitOptions::default());
        assert_eq!(verify(&cfg), Vec::<String>::new());
        let node = cfg.nodes.keys().next().unwrap().clone();
        cfg.nodes.get_mut(&node).unwrap().group = "nowhere".into();
        let errors = verify(&cfg);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("unknown node group nowhere"),
            "{errors:?}"
        );
    }
}
