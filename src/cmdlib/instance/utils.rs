//! Checks and builders shared by the instance units (upstream `instance_utils.py`).

use super::*;

/// Whether the hypervisor reports the instance running on its primary node.
pub async fn is_running(
    ctx: &Ctx,
    inst: &crate::cluster::model::Instance,
) -> Result<bool, OpError> {
    let state = ctx
        .backend
        .instance_state(&inst.pnode, &inst.name)
        .await
        .map_err(|e| check_failure(&format!("Error checking node {}", inst.pnode), e))?;
    Ok(state.is_some_and(|s| s.running))
}

pub(super) fn check_admin_state(
    inst: &crate::cluster::model::Instance,
    allowed: &[AdminState],
    reason: Option<&str>,
) -> Result<(), OpError> {
    if allowed.contains(&inst.admin_state) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
    let default_reason = format!(
        "can't use instance from outside {} states",
        names.join(", ")
    );
    Err(OpError::prereq(
        format!(
            "Instance '{}' is marked to be {}, {}",
            inst.name,
            inst.admin_state.as_str(),
            reason.map(String::from).unwrap_or(default_reason)
        ),
        ErrorCode::WrongState,
    ))
}

pub(super) const ONLINE: &[AdminState] = &[AdminState::Down, AdminState::Up];

pub(super) fn primary<'a>(
    cfg: &'a Config,
    inst: &crate::cluster::model::Instance,
) -> Result<&'a crate::cluster::model::Node, OpError> {
    cfg.nodes.get(&inst.pnode).ok_or_else(|| {
        OpError::prereq(
            format!(
                "Primary node {} of instance {} is missing",
                inst.pnode, inst.name
            ),
            ErrorCode::InternalError,
        )
    })
}

pub(super) async fn set_admin_state(
    ctx: &Ctx,
    name: &str,
    state: AdminState,
    source: &str,
) -> Result<(), OpError> {
    let t = now();
    ctx.cluster
        .update(|cfg| {
            if let Some(i) = cfg.instances.get_mut(name) {
                i.admin_state = state;
                i.admin_state_source = source.to_string();
                i.meta.touch(t);
            }
        })
        .await?;
    Ok(())
}

pub(super) async fn check_free_memory(
    ctx: &Ctx,
    node: &str,
    needed: u64,
    purpose: &str,
) -> Result<(), OpError> {
    let info = ctx
        .backend
        .node_info(node)
        .await
        .map_err(|e| check_failure(&format!("Can't get data from node {node}"), e))?;
    if info.memory_free < needed {
        return Err(OpError::prereq(
            format!(
                "Not enough memory on node {node} for {purpose}: needed {needed} MiB, available {} MiB",
                info.memory_free
            ),
            ErrorCode::InsufficientResources,
        ));
    }
    Ok(())
}

pub fn release_ips(cfg: &mut Config, owner: &str) {
    for net in cfg.networks.values_mut() {
        net.used.retain(|_, o| o != owner);
    }
}

/// The instance named by the opcode, refused if it is only reserved (forthcoming).
pub(super) fn real_instance(
    op: &OpCode,
    cfg: &Config,
) -> Result<crate::cluster::model::Instance, OpError> {
    let inst = op_instance(op, cfg)?;
    if inst.forthcoming {
        return Err(OpError::prereq_bare(
            "forthcoming instances not supported for this operation",
        ));
    }
    Ok(inst.clone())
}

/// Checks the primary node is online; true when it is offline but `ignore_offline_nodes` allows
/// a configuration-only change.
pub(super) fn primary_offline_allowed(
    ctx: &Ctx,
    cfg: &Config,
    inst: &crate::cluster::model::Instance,
) -> Result<bool, OpError> {
    let pnode = primary(cfg, inst)?;
    if ctx.op.bool("ignore_offline_nodes") && pnode.offline {
        return Ok(true);
    }
    check_node_online(pnode, "Cannot use offline primary node ")?;
    Ok(false)
}

/// OS parameters must be ones the OS declares (its `parameters.list`), as the node's OS
/// validation checks; like that check, a failure is an `OpExecError`.
pub fn check_os_params(
    cfg: &Config,
    os_type: &str,
    node: &str,
    params: &crate::cluster::model::Params,
) -> Result<(), OpError> {
    let name = os_type.split('+').next().unwrap_or_default();
    let Some(os) = cfg.os.get(name) else {
        return Ok(());
    };
    let unknown: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|k| !os.parameters.iter().any(|(p, _)| p == k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(OpError::exec(format!(
        "OS Parameters validation failed on node {node}: Unknown parameters: {}",
        unknown.join(", ")
    )))
}

/// The OS parameter check of a node: the names against `parameters.list`, then the OS's own
/// `verify parameters` where the backend has OS definitions on disk.
pub async fn validate_os_params(
    ctx: &Ctx,
    cfg: &Config,
    os_type: &str,
    node: &str,
    params: &crate::cluster::model::Params,
) -> Result<(), OpError> {
    check_os_params(cfg, os_type, node, params)?;
    if params.is_empty() {
        return Ok(());
    }
    let texts = os_param_texts(params);
    ctx.backend
        .verify_os_params(node, os_type, &texts)
        .await
        .map_err(|e| {
            OpError::exec(format!(
                "OS Parameters validation failed on node {node}: {}",
                e.message
            ))
        })
}

/// Checks `name` or `name+variant` against the known OS definitions.
pub fn check_os(
    cfg: &Config,
    os_type: &str,
    node: &str,
    force_variant: bool,
) -> Result<(), OpError> {
    let (name, variant) = match os_type.split_once('+') {
        Some((n, v)) => (n, Some(v)),
        None => (os_type, None),
    };
    let fail = |detail: String| {
        OpError::exec(format!(
            "OS Parameters validation failed on node {node}: {detail}"
        ))
    };
    let Some(os) = cfg.os.get(name) else {
        return Err(fail(format!("OS '{name}' not found")));
    };
    if cfg.cluster.blacklisted_os.iter().any(|b| b == name) {
        return Err(OpError::prereq(
            format!("Guest OS '{name}' is not allowed for installation"),
            ErrorCode::WrongState,
        ));
    }
    match variant {
        Some(v) if !force_variant && !os.variants.iter().any(|x| x == v) => Err(OpError::prereq(
            format!("Unsupported OS variant '{v}'"),
            ErrorCode::WrongInput,
        )),
        None if !os.variants.is_empty() && !force_variant => Err(OpError::prereq(
            "OS name must include a variant",
            ErrorCode::WrongInput,
        )),
        _ => Ok(()),
    }
}

/// Builds a disk record from a client's disk object (spec opcodes.md §2.1).
/// Upstream's refusal when a node lacks the disk space an operation needs.
pub fn check_free_disk(cfg: &Config, node: &str, needed: u64, free: u64) -> Result<(), OpError> {
    if free < needed {
        return Err(OpError::prereq(
            format!(
                "Not enough disk space on target node {node} vg {}: required {needed} MiB, available {free} MiB",
                cfg.cluster.volume_group_name
            ),
            ErrorCode::InsufficientResources,
        ));
    }
    Ok(())
}

/// Sizes no node could hold are refused before any arithmetic can overflow on them.
pub fn check_disk_size(mib: u64) -> Result<(), OpError> {
    if mib > crate::cluster::params::MAX_SIZE_MIB {
        return Err(OpError::prereq(
            format!(
                "Disk size {mib} MiB is larger than the largest supported ({} MiB)",
                crate::cluster::params::MAX_SIZE_MIB
            ),
            ErrorCode::WrongInput,
        ));
    }
    Ok(())
}

pub fn disk_from_json(v: &Value, template: &str, idx: usize) -> Result<Disk, OpError> {
    let obj = v.as_object().ok_or_else(|| {
        OpError::prereq(
            format!("Invalid disk parameters for disk {idx}"),
            ErrorCode::WrongInput,
        )
    })?;
    let size = obj.get("size").and_then(parse_size_mib).ok_or_else(|| {
        OpError::prereq(
            format!("Missing disk size for disk {idx}"),
            ErrorCode::WrongInput,
        )
    })?;
    check_disk_size(size)?;
    let mode = obj.get("mode").and_then(Value::as_str).unwrap_or("rw");
    if mode != "rw" && mode != "ro" {
        return Err(OpError::prereq(
            format!("Invalid disk access mode '{mode}'"),
            ErrorCode::WrongInput,
        ));
    }
    let mut params = Params::new();
    for (k, val) in obj {
        if !["size", "mode", "name", "spindles", "dev_type"].contains(&k.as_str()) {
            params.insert(k.clone(), val.clone());
        }
    }
    Ok(Disk {
        uuid: new_uuid(),
        name: obj.get("name").and_then(Value::as_str).map(String::from),
        size,
        mode: mode.into(),
        spindles: obj.get("spindles").and_then(Value::as_i64),
        dev_type: template.into(),
        params,
    })
}

/// Builds a NIC record from a client's NIC object (spec opcodes.md §2.2).
pub fn nic_from_json(cfg: &Config, v: &Value, taken_macs: &[String]) -> Result<Nic, OpError> {
    let obj = v
        .as_object()
        .ok_or_else(|| OpError::prereq("Invalid NIC parameters", ErrorCode::WrongInput))?;
    let get = |k: &str| obj.get(k).and_then(Value::as_str).map(String::from);
    let network = match get("network") {
        Some(n) if n != "none" => Some(find_network_uuid(cfg, &n)?),
        _ => None,
    };
    // A network with its own MAC prefix gives it to its NICs' generated MACs (upstream).
    let prefix = network
        .as_ref()
        .and_then(|n| cfg.networks.get(n))
        .and_then(|n| n.mac_prefix.clone());
    let mac = nic_mac(cfg, get("mac").as_deref(), taken_macs, prefix.as_deref())?;
    let defaults = &cfg.cluster.nicparams;
    let mode = get("mode")
        .or_else(|| {
            defaults
                .get("mode")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or("bridged".into());
    if !["bridged", "routed", "openvswitch"].contains(&mode.as_str()) {
        return Err(OpError::prereq(
            format!("Invalid NIC mode '{mode}'"),
            ErrorCode::WrongInput,
        ));
    }
    // The cluster's default link belongs to its default mode: a routed NIC on a bridged cluster
    // routes in the main table, not in a table named like the bridge.
    let default_mode = defaults.get("mode").and_then(Value::as_str);
    let link = get("link")
        .or_else(|| get("bridge"))
        .or_else(|| {
            defaults
                .get("link")
                .and_then(Value::as_str)
                .filter(|_| default_mode.is_none_or(|m| m == mode))
                .map(String::from)
        })
        .unwrap_or_default();
    let ip = nic_ip(get("ip"))?;
    if mode == "routed" && ip.is_none() && network.is_none() {
        return Err(OpError::prereq(
            "Routed nic mode requires an ip address if not attached to a network",
            ErrorCode::WrongInput,
        ));
    }
    Ok(Nic {
        uuid: new_uuid(),
        name: get("name"),
        mac,
        ip,
        mode,
        link,
        vlan: get("vlan").unwrap_or_default(),
        network,
    })
}

/// A NIC's IP on create or modify: `none` clears it, `pool` takes one from the network's pool
/// later, anything else must be an IPv4 or IPv6 address (upstream's message).
pub fn nic_ip(given: Option<String>) -> Result<Option<String>, OpError> {
    match given.as_deref() {
        None | Some("none") => Ok(None),
        Some("pool") => Ok(given),
        Some(ip) if ip.parse::<std::net::IpAddr>().is_ok() => Ok(given),
        Some(ip) => Err(OpError::prereq(
            format!("Invalid IP address '{ip}'"),
            ErrorCode::WrongInput,
        )),
    }
}

/// A NIC's MAC on create or modify: generated for `auto`/`generate`/absent, otherwise checked
/// for syntax and for use anywhere in the cluster (upstream's `ReserveMAC`).
pub fn nic_mac(
    cfg: &Config,
    given: Option<&str>,
    taken: &[String],
    prefix: Option<&str>,
) -> Result<String, OpError> {
    let mac = match given {
        None | Some("auto") | Some("generate") => return Ok(generate_mac(cfg, taken, prefix)),
        Some(m) if crate::validate::is_mac(m) => m.to_lowercase(),
        Some(m) => {
            return Err(OpError::prereq(
                format!("Invalid MAC address specified: {m}"),
                ErrorCode::WrongInput,
            ));
        }
    };
    let in_use = taken.contains(&mac)
        || cfg
            .instances
            .values()
            .any(|i| i.nics.iter().any(|n| n.mac == mac));
    if in_use {
        return Err(OpError::prereq(
            format!("MAC address {mac} already in use in cluster"),
            ErrorCode::ResourceNotUnique,
        ));
    }
    Ok(mac)
}

pub(super) fn generate_mac(cfg: &Config, taken: &[String], prefix: Option<&str>) -> String {
    let prefix = prefix.unwrap_or(&cfg.cluster.mac_prefix);
    loop {
        let b = crate::util::random_bytes::<3>();
        let mac = format!("{prefix}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]);
        let used = taken.contains(&mac)
            || cfg
                .instances
                .values()
                .any(|i| i.nics.iter().any(|n| n.mac == mac));
        if !used {
            return mac;
        }
    }
}

pub fn new_meta(t: f64) -> Meta {
    Meta::new(new_uuid(), t)
}
