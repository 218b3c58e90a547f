//! Network opcodes: IPv4 pools with reservations, connected to node groups.

use super::*;
use crate::cluster::addresses::{contains, parse_cidr};
use crate::cluster::model::{Network, NetworkLink};
use crate::locking::{LockLevel, LockMode};
use crate::opcodes::OpId;

pub fn plan(op: &OpCode, cfg: &Config) -> Result<LockPlan, OpError> {
    let mut p = LockPlan::default();
    let name = op.str("network_name").unwrap_or_default();
    if op.id() == OpId::NetworkAdd {
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
        OpId::NetworkConnect | OpId::NetworkDisconnect => {
            let g = find_group_uuid(cfg, op.str("group_name").unwrap_or_default())?;
            // As upstream: the group's instances too (shared), for the conflicts check.
            let members = cfg.group_nodes(&g);
            let instances = cfg
                .instances
                .values()
                .filter(|i| members.contains(&i.pnode));
            p.add_all(
                LockLevel::Instance,
                instances.map(|i| i.name.clone()),
                LockMode::Shared,
            );
            p.add(LockLevel::NodeGroup, g, LockMode::Exclusive);
            p.add(LockLevel::Network, uuid, LockMode::Shared);
        }
        OpId::NetworkRemove => {
            // Every group, to know none is still connected.
            p.add_all(
                LockLevel::NodeGroup,
                cfg.groups.keys().cloned(),
                LockMode::Shared,
            );
            p.add(LockLevel::Network, uuid, LockMode::Exclusive);
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
    match ctx.op.id() {
        OpId::NetworkAdd => add(ctx).await,
        OpId::NetworkRemove => remove(ctx).await,
        OpId::NetworkRename => rename(ctx).await,
        OpId::NetworkSetParams => set_params(ctx).await,
        OpId::NetworkConnect => connect(ctx).await,
        OpId::NetworkDisconnect => disconnect(ctx).await,
        other => Err(OpError::exec(format!(
            "Opcode {other} is not a network opcode"
        ))),
    }
}

async fn add(ctx: &Ctx) -> Result<Value, OpError> {
    let op = &ctx.op;
    let name = op.str("network_name").unwrap_or_default().to_string();
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

async fn remove(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("network_name").unwrap_or_default().to_string();
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

async fn rename(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("network_name").unwrap_or_default().to_string();
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

async fn set_params(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("network_name").unwrap_or_default().to_string();
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

async fn connect(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("network_name").unwrap_or_default().to_string();
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

async fn disconnect(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("network_name").unwrap_or_default().to_string();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_lock_plans_are_upstreams() {
        let mut cfg = crate::cluster::bootstrap::initial_config(&Default::default());
        let net = crate::cluster::model::Network {
            name: "n".into(),
            meta: crate::cluster::model::Meta::new("net-uuid".into(), 0.0),
            network: "10.0.0.0/24".into(),
            gateway: None,
            network6: None,
            gateway6: None,
            mac_prefix: None,
            used: Default::default(),
            external_reservations: Default::default(),
        };
        cfg.networks.insert("net-uuid".into(), net);
        let op = |id, extra: serde_json::Value| {
            let mut params = serde_json::json!({"network_name": "n"});
            params
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            OpCode::build(id, params.as_object().unwrap().clone()).unwrap()
        };
        let group = cfg.groups.keys().next().unwrap().clone();
        let connect = plan(
            &op(
                OpId::NetworkConnect,
                serde_json::json!({"group_name": "default", "network_mode": "bridged", "network_link": "br0"}),
            ),
            &cfg,
        )
        .unwrap();
        let locks: Vec<_> = connect
            .iter()
            .map(|((l, n), m)| (*l, n.clone(), *m))
            .collect();
        assert!(locks.contains(&(LockLevel::Network, "net-uuid".into(), LockMode::Shared)));
        assert!(locks.contains(&(LockLevel::NodeGroup, group.clone(), LockMode::Exclusive)));
        let remove = plan(&op(OpId::NetworkRemove, serde_json::json!({})), &cfg).unwrap();
        let locks: Vec<_> = remove
            .iter()
            .map(|((l, n), m)| (*l, n.clone(), *m))
            .collect();
        assert!(locks.contains(&(LockLevel::Network, "net-uuid".into(), LockMode::Exclusive)));
        assert!(locks.contains(&(LockLevel::NodeGroup, group, LockMode::Shared)));
    }
}
