//! Network opcodes: IPv4 pools with reservations, connected to node groups.

use super::*;
use crate::cluster::model::{Network, NetworkLink};
use crate::jobqueue::locks::{LockLevel, LockMode};
use std::net::Ipv4Addr;

/// Parses `a.b.c.d/len` into (network address, prefix length).
pub fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if len > 30 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(addr) & mask, len))
}

fn contains(net: &Network, ip: &str) -> bool {
    let (Some((base, len)), Ok(addr)) = (parse_cidr(&net.network), ip.parse::<Ipv4Addr>()) else {
        return false;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(addr) & mask == base
}

/// The lowest address that is neither the network/broadcast address, the gateway, used nor reserved.
pub fn free_address(net: &Network) -> Option<String> {
    let (base, len) = parse_cidr(&net.network)?;
    let size = 1u64 << (32 - len);
    (1..size - 1)
        .map(|i| Ipv4Addr::from(base + i as u32).to_string())
        .find(|ip| {
            Some(ip) != net.gateway.as_ref()
                && !net.used.contains_key(ip)
                && !net.external_reservations.contains(ip)
        })
}

pub fn pool_counts(net: &Network) -> (u64, u64) {
    let size = parse_cidr(&net.network).map_or(0, |(_, len)| 1u64 << (32 - len));
    let reserved =
        net.used.len() + net.external_reservations.len() + 2 + usize::from(net.gateway.is_some());
    (size.saturating_sub(reserved as u64), reserved as u64)
}

pub fn plan(op: &OpCode, cfg: &Config) -> Result<LockPlan, OpError> {
    let mut p = LockPlan::default();
    let name = op.str("network_name").unwrap_or_default();
    if op.id() == "OP_NETWORK_ADD" {
        if cfg.network_by_name(name).is_some() {
            return Err(OpError::prereq(
                format!("Network '{name}' already exists"),
                ErrorCode::AlreadyExists,
            ));
        }
        p.add(LockLevel::Network, name, LockMode::Exclusive);
        return Ok(p);
    }
    let uuid = find_network_uuid(cfg, name)?;
    match op.id() {
        "OP_NETWORK_CONNECT" | "OP_NETWORK_DISCONNECT" => {
            let g = find_group_uuid(cfg, op.str("group_name").unwrap_or_default())?;
            p.add(LockLevel::NodeGroup, g, LockMode::Exclusive);
            p.add(LockLevel::Network, uuid, LockMode::Shared);
        }
        _ => p.add(LockLevel::Network, uuid, LockMode::Exclusive),
    }
    Ok(p)
}

fn check_ip_list(net: &Network, op: &OpCode, key: &str) -> Result<Vec<String>, OpError> {
    let ips = op.strings(key);
    for ip in &ips {
        if !contains(net, ip) {
            return Err(OpError::prereq(
                format!("IP address {ip} does not belong to network {}", net.name),
                ErrorCode::WrongInput,
            ));
        }
    }
    Ok(ips)
}

pub async fn execute(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("network_name").unwrap_or_default().to_string();
    match op.id() {
        "OP_NETWORK_ADD" => {
            let cidr = op.str("network").unwrap_or_default();
            if parse_cidr(cidr).is_none() {
                return Err(OpError::prereq(
                    format!("Invalid network '{cidr}'"),
                    ErrorCode::WrongInput,
                ));
            }
            let mut net = Network {
                name: name.clone(),
                meta: crate::cluster::model::Meta::new(crate::util::new_uuid(), now()),
                network: cidr.into(),
                gateway: op.str("gateway").map(String::from),
                network6: op.str("network6").map(String::from),
                gateway6: op.str("gateway6").map(String::from),
                mac_prefix: op.str("mac_prefix").map(String::from),
                used: Default::default(),
                external_reservations: Default::default(),
            };
            if let Some(gw) = &net.gateway
                && !contains(&net, gw)
            {
                return Err(OpError::prereq(
                    format!("Gateway {gw} does not belong to network {cidr}"),
                    ErrorCode::WrongInput,
                ));
            }
            net.external_reservations = check_ip_list(&net, op, "add_reserved_ips")?
                .into_iter()
                .collect();
            for t in op.strings("tags") {
                check_tag(&t)?;
                net.meta.tags.insert(t);
            }
            if ctx.stop_for_dry_run() {
                return Ok(Value::Null);
            }
            ctx.cluster
                .update(|cfg| cfg.networks.insert(net.meta.uuid.clone(), net))
                .await?;
            Ok(Value::Null)
        }
        "OP_NETWORK_REMOVE" => {
            let uuid = find_network_uuid(&cfg, &name)?;
            let groups: Vec<&str> = cfg
                .groups
                .values()
                .filter(|g| g.networks.contains_key(&uuid))
                .map(|g| g.name.as_str())
                .collect();
            if !groups.is_empty() {
                return Err(OpError::prereq(
                    format!(
                        "Network '{name}' is connected to the following node groups: {}. Please disconnect the network first.",
                        groups.join(", ")
                    ),
                    ErrorCode::WrongState,
                ));
            }
            if ctx.stop_for_dry_run() {
                return Ok(Value::Null);
            }
            ctx.cluster.update(|cfg| cfg.networks.remove(&uuid)).await?;
            Ok(Value::Null)
        }
        "OP_NETWORK_RENAME" => {
            let uuid = find_network_uuid(&cfg, &name)?;
            let new = op.str("new_name").unwrap_or_default().to_string();
            if cfg.network_by_name(&new).is_some() {
                return Err(OpError::prereq(
                    format!("Network '{new}' already exists"),
                    ErrorCode::AlreadyExists,
                ));
            }
            if ctx.stop_for_dry_run() {
                return Ok(Value::Null);
            }
            let (n2, t) = (new.clone(), now());
            ctx.cluster
                .update(move |cfg| {
                    if let Some(n) = cfg.networks.get_mut(&uuid) {
                        n.name = n2;
                        n.meta.touch(t);
                    }
                })
                .await?;
            Ok(Value::String(new))
        }
        "OP_NETWORK_SET_PARAMS" => {
            let uuid = find_network_uuid(&cfg, &name)?;
            let mut net = cfg.networks[&uuid].clone();
            for key in ["gateway", "network6", "gateway6", "mac_prefix"] {
                if let Some(v) = op.get(key) {
                    let s = v.as_str().filter(|s| *s != "none").map(String::from);
                    match key {
                        "gateway" => net.gateway = s,
                        "network6" => net.network6 = s,
                        "gateway6" => net.gateway6 = s,
                        _ => net.mac_prefix = s,
                    }
                }
            }
            for ip in check_ip_list(&net, op, "add_reserved_ips")? {
                if net.used.contains_key(&ip) || net.external_reservations.contains(&ip) {
                    ctx.warn(format!("IP address {ip} is already reserved"));
                }
                net.external_reservations.insert(ip);
            }
            for ip in check_ip_list(&net, op, "remove_reserved_ips")? {
                if !net.external_reservations.remove(&ip) {
                    ctx.warn(format!("IP address {ip} is not externally reserved"));
                }
            }
            if ctx.stop_for_dry_run() {
                return Ok(Value::Null);
            }
            net.meta.touch(now());
            ctx.cluster
                .update(|cfg| cfg.networks.insert(uuid, net))
                .await?;
            Ok(Value::Null)
        }
        "OP_NETWORK_CONNECT" => {
            let uuid = find_network_uuid(&cfg, &name)?;
            let group = find_group_uuid(&cfg, op.str("group_name").unwrap_or_default())?;
            let mode = op.str("network_mode").unwrap_or("bridged").to_string();
            let link = NetworkLink {
                mode,
                link: op.str("network_link").unwrap_or_default().into(),
                vlan: op.str("network_vlan").unwrap_or_default().into(),
            };
            if cfg.groups[&group].networks.contains_key(&uuid) {
                ctx.warn(format!("Network '{name}' is already connected to group"));
                return Ok(Value::Null);
            }
            if ctx.stop_for_dry_run() {
                return Ok(Value::Null);
            }
            ctx.cluster
                .update(|cfg| {
                    if let Some(g) = cfg.groups.get_mut(&group) {
                        g.networks.insert(uuid, link);
                    }
                })
                .await?;
            Ok(Value::Null)
        }
        _ => {
            let uuid = find_network_uuid(&cfg, &name)?;
            let group = find_group_uuid(&cfg, op.str("group_name").unwrap_or_default())?;
            let nodes = cfg.group_nodes(&group);
            if let Some(i) = cfg.instances.values().find(|i| {
                nodes.contains(&i.pnode)
                    && i.nics
                        .iter()
                        .any(|n| n.network.as_deref() == Some(uuid.as_str()))
            }) {
                return Err(OpError::prereq(
                    format!("Instance {} uses network '{name}' in this group", i.name),
                    ErrorCode::WrongState,
                ));
            }
            if ctx.stop_for_dry_run() {
                return Ok(Value::Null);
            }
            ctx.cluster
                .update(|cfg| {
                    if let Some(g) = cfg.groups.get_mut(&group) {
                        g.networks.remove(&uuid);
                    }
                })
                .await?;
            Ok(Value::Null)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_skip_gateway_and_reservations() {
        let mut net = Network {
            name: "n".into(),
            meta: crate::cluster::model::Meta::new("u".into(), 0.0),
            network: "10.0.0.0/29".into(),
            gateway: Some("10.0.0.1".into()),
            network6: None,
            gateway6: None,
            mac_prefix: None,
            used: Default::default(),
            external_reservations: ["10.0.0.2".to_string()].into_iter().collect(),
        };
        assert_eq!(free_address(&net).as_deref(), Some("10.0.0.3"));
        net.used.insert("10.0.0.3".into(), "x".into());
        assert_eq!(free_address(&net).as_deref(), Some("10.0.0.4"));
        assert!(parse_cidr("10.0.0.0/33").is_none());
    }
}
