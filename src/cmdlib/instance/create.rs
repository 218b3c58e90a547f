//! OP_INSTANCE_CREATE and OP_INSTANCE_MULTI_ALLOC: argument checks, allocation, creation.

use super::*;
use crate::cluster::leases;
use crate::cluster::model::Instance;
use crate::cluster::params::{self, force_dict_type};
use crate::cluster::reservations::Conflict;
use crate::opcodes::OpId;

fn instance_name(op: &OpCode) -> String {
    op.str("instance_name")
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_lowercase()
}

fn template(op: &OpCode, cfg: &Config) -> String {
    op.str("disk_template")
        .map(String::from)
        .or_else(|| cfg.cluster.enabled_disk_templates.first().cloned())
        .unwrap_or_else(|| "plain".into())
}

/// Argument checks and name expansion (before locks).
fn check_arguments(op: &OpCode, cfg: &Config) -> Result<(), OpError> {
    let wrong = |m: &str| Err(OpError::prereq(m, ErrorCode::WrongInput));
    if op.bool("forthcoming") && op.bool("commit") {
        return wrong("Forthcoming generation and committing are mutually exclusive");
    }
    let name = instance_name(op);
    if !crate::validate::is_safe_component(&name) {
        return Err(OpError::prereq(
            format!("Invalid hostname '{name}'"),
            ErrorCode::WrongInput,
        ));
    }
    if op.bool("ip_check") && !op.bool("name_check") {
        return wrong("Cannot do IP address check without a name check");
    }
    if op.str("iallocator").is_some() && op.str("pnode").is_some() {
        return wrong("Do not specify both, iallocator and node");
    }
    if op.str("pnode").is_none()
        && op.str("iallocator").is_none()
        && cfg.cluster.default_iallocator.is_empty()
    {
        return wrong(
            "No iallocator or node given and no cluster-wide default iallocator found; please specify either an iallocator or a node, or set a cluster-wide default iallocator",
        );
    }
    if op.bool("opportunistic_locking")
        && op.str("iallocator").is_none()
        && op.str("pnode").is_some()
    {
        return wrong(
            "Opportunistic locking is only available in combination with an instance allocator",
        );
    }
    let tmpl = template(op, cfg);
    if tmpl == "drbd" && op.str("pnode").is_some() && op.str("snode").is_none() {
        return wrong("The networked disk templates need a mirror node");
    }
    if op.str("mode") == Some("create") && op.str("os_type").is_none() && !op.bool("no_install") {
        return wrong("No guest OS or OS image specified");
    }
    let mut names = std::collections::HashSet::new();
    for d in op
        .get("disks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(n) = d.get("name").and_then(Value::as_str)
            && !names.insert(format!("disk:{n}"))
        {
            return Err(OpError::prereq(
                format!("Duplicated disk name '{n}'"),
                ErrorCode::WrongInput,
            ));
        }
    }
    if !op.bool("commit") && cfg.instances.contains_key(&name) {
        return Err(OpError::prereq(
            format!("Instance '{name}' is already in the cluster"),
            ErrorCode::AlreadyExists,
        ));
    }
    for key in ["pnode", "snode"] {
        if let Some(n) = op.str(key) {
            find_node(cfg, n)?;
        }
    }
    Ok(())
}

pub fn plan(op: &OpCode, cfg: &Config) -> Result<LockPlan, OpError> {
    check_arguments(op, cfg)?;
    let mut p = LockPlan::default();
    p.add(Instance, instance_name(op), Exclusive);
    let nodes: Vec<String> = match op.str("pnode") {
        Some(pn) => {
            let mut v = vec![find_node(cfg, pn)?.name.clone()];
            if let Some(sn) = op.str("snode") {
                v.push(find_node(cfg, sn)?.name.clone());
            }
            v
        }
        None => cfg.nodes.keys().cloned().collect(),
    };
    for n in &nodes {
        if let Some(node) = cfg.nodes.get(n) {
            p.add(NodeGroup, node.group.clone(), Shared);
        }
    }
    p.add_all(Node, nodes.clone(), Exclusive);
    p.add_all(NodeRes, nodes, Exclusive);
    Ok(p)
}

pub const KNOWN_IALLOCATOR: &str = "hail";

/// Takes from a node's free figures what open lease reservations hold back there, unless the
/// creation belongs to that lease (its reason trail names it).
fn hold_back(ctx: &Ctx, cfg: &Config, node: &str, info: &mut crate::backends::NodeInfo) {
    let own = leases::lease_in_reason(ctx.op.get("reason"));
    let held = leases::held_back(cfg, node, now(), own.as_deref());
    info.memory_free = info.memory_free.saturating_sub(held.memory);
    info.disk_free = info.disk_free.saturating_sub(held.disk);
}

/// Picks nodes like an iallocator: most free memory among nodes with room for the disks.
async fn allocate(
    ctx: &Ctx,
    cfg: &Config,
    group: Option<&str>,
    count: usize,
    memory: u64,
    disk: u64,
) -> Result<Vec<String>, OpError> {
    let allocator = ctx
        .op
        .str("iallocator")
        .map(String::from)
        .unwrap_or_else(|| cfg.cluster.default_iallocator.clone());
    // The built-in allocator stands in for htools' `hail`, the only one gantry has.
    if allocator != KNOWN_IALLOCATOR {
        return Err(OpError::exec(format!(
            "Failure while running the iallocator script: iallocator module '{allocator}' not found in the search path"
        )));
    }
    let mut candidates = vec![];
    for node in cfg.nodes.values() {
        if node.offline || node.drained || !node.vm_capable {
            continue;
        }
        if group.is_some_and(|g| g != node.group) {
            continue;
        }
        let Ok(mut info) = ctx.backend.node_info(&node.name).await else {
            continue;
        };
        hold_back(ctx, cfg, &node.name, &mut info);
        if info.memory_free >= memory && info.disk_free >= disk {
            candidates.push((info.memory_free, info.disk_free, node.name.clone()));
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    if candidates.len() < count {
        return Err(OpError::prereq(
            format!(
                "Can't compute nodes using iallocator '{allocator}': Request failed: No valid allocation solutions found ({} of {count} nodes with enough resources)",
                candidates.len()
            ),
            ErrorCode::InsufficientResources,
        ));
    }
    Ok(candidates.into_iter().take(count).map(|c| c.2).collect())
}

pub async fn execute(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    check_arguments(op, &cfg)?;
    let name = instance_name(op);
    let tmpl = template(op, &cfg);
    if !cfg.cluster.enabled_disk_templates.contains(&tmpl) {
        return Err(OpError::prereq_bare(format!(
            "Disk template {tmpl} is not enabled in cluster. Enabled disk templates are: {}",
            cfg.cluster.enabled_disk_templates.join(",")
        )));
    }
    let hv = match op.str("hypervisor") {
        None | Some("auto") => cfg
            .cluster
            .enabled_hypervisors
            .first()
            .cloned()
            .unwrap_or_default(),
        Some(h) => h.to_string(),
    };
    if !cfg.cluster.enabled_hypervisors.contains(&hv) {
        return Err(OpError::prereq(
            format!(
                "Selected hypervisor ({hv}) not enabled in the cluster ({})",
                cfg.cluster.enabled_hypervisors.join(",")
            ),
            ErrorCode::WrongState,
        ));
    }
    let tags = op.strings("tags");
    for t in &tags {
        check_tag(t)?;
    }
    let disks: Vec<_> = op
        .get("disks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, d)| disk_from_json(d, &tmpl, i))
        .collect::<Result<_, _>>()?;
    if tmpl == "diskless" && !disks.is_empty() {
        return Err(OpError::prereq(
            "Diskless instances cannot have disks",
            ErrorCode::WrongInput,
        ));
    }
    let mut macs = vec![];
    let mut nics = vec![];
    for n in op
        .get("nics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let nic = nic_from_json(&cfg, &n, &macs)?;
        reserve_mac(ctx, &nic.mac)?;
        macs.push(nic.mac.clone());
        nics.push(nic);
    }
    let mut beparams = op
        .get("beparams")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    force_dict_type(&mut beparams, params::BACKEND, &[])?;
    let mut hvparams = op
        .get("hvparams")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    params::check_hvparams(&hv, &mut hvparams, &[])?;
    if let Some(mem) = beparams.remove("memory") {
        let mib = parse_size_mib(&mem)
            .ok_or_else(|| OpError::prereq("Invalid memory size", ErrorCode::WrongInput))?;
        beparams.insert("maxmem".into(), json!(mib));
        beparams.insert("minmem".into(), json!(mib));
    }
    for key in ["maxmem", "minmem"] {
        if let Some(v) = beparams.get(key).cloned() {
            let mib = parse_size_mib(&v).ok_or_else(|| {
                OpError::prereq(format!("Invalid {key} value"), ErrorCode::WrongInput)
            })?;
            beparams.insert(key.into(), json!(mib));
        }
    }
    let os = op.str("os_type").unwrap_or_default().to_string();
    let mut probe = Instance {
        name: name.clone(),
        meta: new_meta(now()),
        os: os.clone(),
        hypervisor: hv,
        pnode: String::new(),
        snodes: vec![],
        disk_template: tmpl.clone(),
        disks,
        nics,
        beparams,
        hvparams,
        osparams: op
            .get("osparams")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
        admin_state: AdminState::Down,
        admin_state_source: "admin".into(),
        network_port: None,
        disks_active: true,
        forthcoming: op.bool("forthcoming"),
    };
    probe.meta.tags = tags.into_iter().collect();
    let memory = crate::cluster::model::instance_memory(&cfg, &probe);
    let disk_total: u64 = probe.disks.iter().map(|d| d.size).sum();
    let wanted = if tmpl == "drbd" { 2 } else { 1 };
    let nodes = match op.str("pnode") {
        Some(pn) => {
            let mut v = vec![find_node(&cfg, pn)?.name.clone()];
            if tmpl == "drbd" {
                if let Some(sn) = op.str("snode") {
                    v.push(find_node(&cfg, sn)?.name.clone());
                }
            } else if op.str("snode").is_some() {
                ctx.warn("Secondary node will be ignored on non-mirrored disk template");
            }
            v
        }
        None => {
            let group = match op.str("group_name") {
                Some(g) => Some(find_group_uuid(&cfg, g)?),
                None => None,
            };
            let start_mem = if op.bool("start") { memory } else { 0 };
            allocate(ctx, &cfg, group.as_deref(), wanted, start_mem, disk_total).await?
        }
    };
    check_placement(ctx, &cfg, &nodes, memory, disk_total).await?;
    if !op.bool("no_install") && !probe.forthcoming {
        check_os(&cfg, &os, &nodes[0], op.bool("force_variant"))?;
        validate_os_params(ctx, &cfg, &os, &nodes[0], &probe.osparams).await?;
    }
    check_nic_networks(ctx, &cfg, &mut probe, &nodes[0])?;
    if ctx.stop_for_dry_run() {
        let uuids: Vec<Value> = nodes
            .iter()
            .filter_map(|n| cfg.nodes.get(n).map(|n| json!(n.meta.uuid)))
            .collect();
        return Ok(Value::Array(uuids));
    }
    probe.pnode = nodes[0].clone();
    probe.snodes = nodes[1..].to_vec();
    create_instance(ctx, &cfg, probe, &nodes).await?;
    Ok(json!(nodes))
}

async fn check_placement(
    ctx: &Ctx,
    cfg: &Config,
    nodes: &[String],
    memory: u64,
    disk: u64,
) -> Result<(), OpError> {
    if nodes.len() == 2 && nodes[0] == nodes[1] {
        return Err(OpError::prereq(
            "The secondary node cannot be the primary node",
            ErrorCode::WrongInput,
        ));
    }
    for (i, n) in nodes.iter().enumerate() {
        let node = find_node(cfg, n)?;
        let role = if i == 0 { "primary" } else { "secondary" };
        if node.offline {
            return Err(OpError::prereq(
                format!("Cannot use offline {role} node '{n}'"),
                ErrorCode::WrongState,
            ));
        }
        if node.drained {
            return Err(OpError::prereq(
                format!("Cannot use drained {role} node '{n}'"),
                ErrorCode::WrongState,
            ));
        }
        if !node.vm_capable {
            return Err(OpError::prereq(
                format!("Cannot use non-vm_capable {role} node '{n}'"),
                ErrorCode::WrongState,
            ));
        }
        let mut info = ctx
            .backend
            .node_info(n)
            .await
            .map_err(|e| check_failure(&format!("Can't get data from node {n}"), e))?;
        hold_back(ctx, cfg, n, &mut info);
        check_free_disk(cfg, n, disk, info.disk_free)?;
        if i == 0 && ctx.op.bool("start") && info.memory_free < memory {
            return Err(OpError::prereq(
                format!(
                    "Not enough memory on node {n} for starting instance {}: needed {memory} MiB, available {} MiB",
                    instance_name(&ctx.op),
                    info.memory_free
                ),
                ErrorCode::InsufficientResources,
            ));
        }
    }
    Ok(())
}

/// Claims a MAC for this job, against the configuration and other running jobs.
pub fn reserve_mac(ctx: &Ctx, mac: &str) -> Result<(), OpError> {
    ctx.cluster
        .reserve(|cfg, r| r.reserve_mac(cfg, ctx.job_id, mac))
        .map_err(conflict)
}

/// Upstream's messages for a reservation that failed.
/// Claims an address of a network for this job (`pool`: a free one): no other job can take it
/// until this one ends, and one already used or outside the network is refused.
pub fn claim_ip(ctx: &Ctx, net_uuid: &str, ip: &str) -> Result<String, OpError> {
    let wanted = (ip != "pool").then_some(ip);
    ctx.cluster
        .reserve(|cfg, r| r.reserve_ip(cfg, ctx.job_id, net_uuid, wanted))
        .map_err(conflict)
}

fn conflict(c: Conflict) -> OpError {
    match c {
        Conflict::MacInUse(mac) => OpError::prereq(
            format!("MAC address {mac} already in use in cluster"),
            ErrorCode::ResourceNotUnique,
        ),
        Conflict::IpInUse(ip, net) => OpError::prereq(
            format!("IP address {ip} already in use or does not belong to network {net}"),
            ErrorCode::ResourceNotUnique,
        ),
        Conflict::PoolExhausted(net) => OpError::prereq(
            format!("Network '{net}' has no free addresses"),
            ErrorCode::WrongState,
        ),
        Conflict::UnknownNetwork(net) => OpError::prereq(
            format!("Network '{net}' not found"),
            ErrorCode::UnknownEntity,
        ),
    }
}

/// NICs on a network take mode/link from the group's connection; `ip: pool` takes a free address.
fn check_nic_networks(
    ctx: &Ctx,
    cfg: &Config,
    inst: &mut Instance,
    pnode: &str,
) -> Result<(), OpError> {
    let group = cfg
        .nodes
        .get(pnode)
        .map(|n| n.group.clone())
        .unwrap_or_default();
    for nic in &mut inst.nics {
        let Some(net_uuid) = nic.network.clone() else {
            continue;
        };
        let net = &cfg.networks[&net_uuid];
        let link = cfg
            .groups
            .get(&group)
            .and_then(|g| g.networks.get(&net_uuid))
            .ok_or_else(|| {
                OpError::prereq(
                    format!(
                        "Network '{}' is not connected to node group of node {pnode}",
                        net.name
                    ),
                    ErrorCode::WrongInput,
                )
            })?;
        nic.mode = link.mode.clone();
        nic.link = link.link.clone();
        // Claimed now, atomically: parallel creates never share an address.
        if let Some(ip) = nic.ip.clone() {
            nic.ip = Some(claim_ip(ctx, &net_uuid, &ip)?);
        }
    }
    Ok(())
}

async fn create_instance(
    ctx: &Ctx,
    cfg: &Config,
    mut inst: Instance,
    nodes: &[String],
) -> Result<(), OpError> {
    let spec = vm_spec(cfg, &inst)?;
    if !inst.forthcoming {
        ctx.log("* creating instance disks...");
        for (i, node) in nodes.iter().enumerate() {
            if let Err(e) = ctx.backend.create_disks(node, &spec).await {
                for done in &nodes[..i] {
                    let _ = ctx.backend.remove_disks(done, &inst.name).await;
                }
                return Err(exec_failure("Can't create instance disks", e));
            }
        }
    }
    let start = ctx.op.bool("start") && !ctx.op.bool("no_install") && !inst.forthcoming;
    inst.network_port = None;
    let name = inst.name.clone();
    let ips: Vec<(String, String)> = inst
        .nics
        .iter()
        .filter_map(|n| Some((n.network.clone()?, n.ip.clone()?)))
        .collect();
    let lease = leases::lease_in_reason(ctx.op.get("reason"));
    ctx.cluster
        .update(move |cfg| {
            for (net, ip) in ips {
                if let Some(n) = cfg.networks.get_mut(&net) {
                    n.used.insert(ip, name.clone());
                }
            }
            // A creation for a lease joins it (`gantry:lease:<name>` in its reason trail).
            if let Some(lease) = lease.and_then(|l| cfg.leases.get_mut(&l)) {
                lease.instances.push(inst.name.clone());
            }
            cfg.instances.insert(inst.name.clone(), inst);
        })
        .await?;
    if inst_needs_install(ctx) {
        ctx.log(format!(
            "* running the instance OS create scripts ({})...",
            spec.os
        ));
        let output = ctx
            .backend
            .install_os(&nodes[0], &spec)
            .await
            .map_err(|e| {
                exec_failure(
                    &format!(
                        "Could not add os for instance {} on node {}",
                        spec.name, nodes[0]
                    ),
                    e,
                )
            })?;
        output.into_iter().for_each(|line| ctx.log(line));
    }
    if ctx.op.str("mode") == Some("import") && !ctx.op.bool("no_install") {
        let source = ctx
            .op
            .str("src_path")
            .unwrap_or(spec.name.as_str())
            .to_string();
        ctx.log(format!("* importing instance disks from {source}..."));
        let output = ctx
            .backend
            .import_instance(&nodes[0], &spec, &source)
            .await
            .map_err(|e| exec_failure(&format!("Could not import instance {}", spec.name), e))?;
        output.into_iter().for_each(|line| ctx.log(line));
    }
    if start {
        set_admin_state(ctx, &spec.name, AdminState::Up, "admin").await?;
        ctx.log("* starting instance...");
        ctx.backend
            .start(&nodes[0], &spec)
            .await
            .map_err(|e| exec_failure(&format!("Could not start instance {}", spec.name), e))?;
    }
    Ok(())
}

fn inst_needs_install(ctx: &Ctx) -> bool {
    !ctx.op.bool("no_install")
        && !ctx.op.bool("forthcoming")
        && ctx.op.str("mode") == Some("create")
}

pub async fn multi_alloc(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let insts = ctx
        .op
        .get("instances")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ops = vec![];
    let mut seen = std::collections::HashSet::new();
    for v in &insts {
        let op = OpCode::from_json(v).map_err(|e| OpError::prereq(e.0, ErrorCode::WrongInput))?;
        if op.id() != OpId::InstanceCreate {
            return Err(OpError::prereq(
                "Only OP_INSTANCE_CREATE opcodes can be allocated",
                ErrorCode::WrongInput,
            ));
        }
        if op.str("iallocator").is_some() {
            return Err(OpError::prereq(
                "iallocator are not allowed to be set on instance objects",
                ErrorCode::WrongInput,
            ));
        }
        if !seen.insert(instance_name(&op)) {
            return Err(OpError::prereq(
                "There are instance objects with the same name",
                ErrorCode::WrongInput,
            ));
        }
        ops.push(op);
    }
    let with_nodes = ops.iter().filter(|o| o.str("pnode").is_some()).count();
    if with_nodes != 0 && with_nodes != ops.len() {
        return Err(OpError::prereq(
            "There are instance objects providing pnode/snode while others do not",
            ErrorCode::WrongInput,
        ));
    }
    let (mut allocatable, mut failed, mut jobs) = (vec![], vec![], vec![]);
    for mut op in ops {
        let name = instance_name(&op);
        if op.str("pnode").is_none() {
            let tmpl = template(&op, &cfg);
            let probe_disks: u64 = op
                .get("disks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|d| d.get("size").and_then(parse_size_mib))
                .sum();
            let count = if tmpl == "drbd" { 2 } else { 1 };
            match allocate(ctx, &cfg, None, count, 0, probe_disks).await {
                Ok(nodes) => {
                    op.set("pnode", json!(nodes[0]));
                    if let Some(s) = nodes.get(1) {
                        op.set("snode", json!(s));
                    }
                }
                Err(_) => {
                    failed.push(name);
                    continue;
                }
            }
        }
        allocatable.push(name);
        jobs.push(vec![op]);
    }
    let submitted = ctx.submit_children(jobs).await?;
    Ok(json!({"allocatable": allocatable, "failed": failed, "jobs": submitted}))
}
