//! Network fields (upstream `_BuildNetworkFields`).

use super::{Cell, common};
use crate::cluster::model::*;
use serde_json::{Value, json};

pub fn network_field(cfg: &Config, net: &Network, name: &str) -> Option<Cell> {
    if let Some(v) = common(&net.meta, name) {
        return Some(v.into());
    }
    let (free, reserved) = crate::cluster::addresses::pool_counts(net);
    let groups: Vec<Value> = cfg
        .groups
        .values()
        .filter_map(|g| {
            g.networks
                .get(&net.meta.uuid)
                .map(|l| json!([g.name, l.mode, l.link, l.vlan]))
        })
        .collect();
    let instances: std::collections::BTreeSet<&String> = net.used.values().collect();
    Some(Cell::Normal(match name {
        "name" => json!(net.name),
        "network" => json!(net.network),
        "gateway" => json!(net.gateway),
        "network6" => return Some(Cell::or_unavail(net.network6.as_ref())),
        "gateway6" => return Some(Cell::or_unavail(net.gateway6.as_ref())),
        "mac_prefix" => return Some(Cell::or_unavail(net.mac_prefix.as_ref())),
        "free_count" => json!(free),
        "reserved_count" => json!(reserved),
        "map" => json!(network_map(net)),
        "group_list" => json!(groups),
        "group_cnt" => json!(groups.len()),
        "inst_list" => json!(instances),
        "inst_cnt" => json!(instances.len()),
        "external_reservations" => json!(external_reservations(net).join(", ")),
        _ => return None,
    }))
}

/// What upstream's address pool marks as reserved outside instances: the network and broadcast
/// addresses and the gateway (reserved when the network is created), plus the admin's ones.
fn external_reservations(net: &Network) -> Vec<String> {
    let mut reserved: Vec<std::net::Ipv4Addr> = net
        .external_reservations
        .iter()
        .chain(net.gateway.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if let Some((base, len)) = crate::cluster::addresses::parse_cidr(&net.network) {
        let last = base + ((1u64 << (32 - len)) - 1) as u32;
        reserved.extend([
            std::net::Ipv4Addr::from(base),
            std::net::Ipv4Addr::from(last),
        ]);
    }
    reserved.sort();
    reserved.dedup();
    reserved.iter().map(ToString::to_string).collect()
}

/// One character per address of the network: `yes` where `taken(index, size, address)`,
/// else `no` (upstream keeps its address pool as such strings).
fn per_address(
    net: &Network,
    (yes, no): (char, char),
    taken: &dyn Fn(u64, u64, &str) -> bool,
) -> String {
    let Some((base, len)) = crate::cluster::addresses::parse_cidr(&net.network) else {
        return String::new();
    };
    let size = 1u64 << (32 - len);
    (0..size)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(base + i as u32).to_string();
            if taken(i, size, &ip) { yes } else { no }
        })
        .collect()
}

/// The addresses instances hold, as upstream's `reservations` bit string.
pub fn network_reservations(net: &Network) -> String {
    per_address(net, ('1', '0'), &|_, _, ip| net.used.contains_key(ip))
}

/// The addresses reserved outside instances, as upstream's `ext_reservations` bit string.
pub fn network_external_bitmap(net: &Network) -> String {
    let external = external_reservations(net);
    per_address(net, ('1', '0'), &|_, _, ip| {
        external.iter().any(|e| e == ip)
    })
}

/// Ganeti's pool map: `X` for the network and broadcast addresses and taken ones, `.` free.
fn network_map(net: &Network) -> String {
    per_address(net, ('X', '.'), &|i, size, ip| {
        i == 0 || i == size - 1 || crate::cluster::addresses::is_taken(net, ip)
    })
}
