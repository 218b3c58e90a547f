//! Instance opcodes: create, remove, start, stop, reboot, reinstall, rename, modify, migrate,
//! failover, disks, console, query data, export.

use super::*;
use crate::backends::RebootKind;
use crate::cluster::model::{AdminState, Disk, Meta, Nic, Params};
use crate::locking::{LockLevel::*, LockMode::*};
use crate::opcodes::OpId;
use crate::opcodes::parse_size_mib;
use crate::util::new_uuid;

mod create;
mod modify;

pub fn plan(op: &OpCode, cfg: &Config) -> Result<LockPlan, OpError> {
    let mut p = LockPlan::default();
    match op.id() {
        OpId::InstanceCreate => return create::plan(op, cfg),
        OpId::InstanceMultiAlloc => {
            p.add_all(Node, cfg.nodes.keys().cloned(), Shared);
            p.add_all(NodeRes, cfg.nodes.keys().cloned(), Shared);
            return Ok(p);
        }
        OpId::InstanceConsole | OpId::InstanceQueryData => {
            for name in op.strings("instances") {
                p.add(Instance, find_instance(cfg, &name)?.name.clone(), Shared);
            }
            if op.str("instance_name").is_some() {
                p.add(Instance, op_instance(op, cfg)?.name.clone(), Shared);
            }
            return Ok(p);
        }
        OpId::BackupRemove => {
            p.add_all(Node, cfg.nodes.keys().cloned(), Exclusive);
            return Ok(p);
        }
        _ => {}
    }
    let inst = op_instance(op, cfg)?;
    p.add(Instance, inst.name.clone(), Exclusive);
    let nodes: Vec<String> = std::iter::once(inst.pnode.clone())
        .chain(inst.snodes.iter().cloned())
        .collect();
    match op.id() {
        OpId::InstanceStartup => p.add(NodeRes, inst.pnode.clone(), Exclusive),
        OpId::InstanceRename => {
            let new = op.str("new_name").unwrap_or_default().to_lowercase();
            if op.bool("ip_check") && !op.bool("name_check") {
                return Err(OpError::prereq(
                    "IP address check requires a name check",
                    ErrorCode::WrongInput,
                ));
            }
            if cfg.instances.contains_key(&new) && new != inst.name {
                return Err(OpError::prereq(
                    format!("Instance '{new}' is already in the cluster"),
                    ErrorCode::AlreadyExists,
                ));
            }
            p.add(Instance, new, Exclusive);
        }
        OpId::InstanceRemove
        | OpId::InstanceGrowDisk
        | OpId::InstanceRecreateDisks
        | OpId::InstanceReplaceDisks => {
            p.add_all(Node, nodes.clone(), Exclusive);
            p.add_all(NodeRes, nodes, Exclusive);
        }
        OpId::InstanceActivateDisks | OpId::InstanceDeactivateDisks => {
            p.add_all(Node, nodes, Exclusive);
        }
        OpId::InstanceMigrate | OpId::InstanceFailover => {
            let mut all = nodes;
            if let Some(target) = op.str("target_node") {
                all.push(find_node(cfg, target)?.name.clone());
            } else if inst.snodes.is_empty() {
                // Shared storage without a target: the allocator may pick any node.
                all.extend(cfg.nodes.keys().cloned());
            }
            p.add_all(Node, all.clone(), Exclusive);
            p.add_all(NodeRes, all, Exclusive);
        }
        OpId::InstanceSetParams => {
            if let Some(g) = cfg.nodes.get(&inst.pnode).map(|n| n.group.clone()) {
                p.add(NodeGroup, g, Shared);
            }
            let mut all = nodes;
            if let Some(pn) = op.str("pnode") {
                all.push(find_node(cfg, pn)?.name.clone());
            }
            p.add_all(Node, all.clone(), Exclusive);
            p.add_all(NodeRes, all, Exclusive);
        }
        OpId::InstanceChangeGroup => {
            p.add_all(NodeGroup, cfg.groups.keys().cloned(), Shared);
        }
        OpId::BackupExport => {
            if let Some(t) = op.get("target_node").and_then(Value::as_str)
                && let Ok(n) = find_node(cfg, t)
            {
                p.add(Node, n.name.clone(), Exclusive);
            }
        }
        _ => {}
    }
    Ok(p)
}

pub async fn execute(ctx: &Ctx) -> Result<Value, OpError> {
    match ctx.op.id() {
        OpId::InstanceCreate => create::execute(ctx).await,
        OpId::InstanceMultiAlloc => create::multi_alloc(ctx).await,
        OpId::InstanceSetParams => modify::execute(ctx).await,
        OpId::InstanceRemove => remove(ctx).await,
        OpId::InstanceStartup => startup(ctx).await,
        OpId::InstanceShutdown => shutdown(ctx).await,
        OpId::InstanceReboot => reboot(ctx).await,
        OpId::InstanceReinstall => reinstall(ctx).await,
        OpId::InstanceRename => rename(ctx).await,
        OpId::InstanceMigrate | OpId::InstanceFailover => migrate(ctx).await,
        OpId::InstanceGrowDisk => grow_disk(ctx).await,
        OpId::InstanceActivateDisks => activate_disks(ctx).await,
        OpId::InstanceDeactivateDisks => deactivate_disks(ctx).await,
        OpId::InstanceRecreateDisks => recreate_disks(ctx).await,
        OpId::InstanceReplaceDisks => replace_disks(ctx).await,
        OpId::InstanceConsole => console(ctx).await,
        OpId::InstanceQueryData => query_data(ctx).await,
        OpId::InstanceChangeGroup => change_group(ctx).await,
        OpId::BackupPrepare | OpId::BackupExport | OpId::BackupRemove => backup(ctx).await,
        other => Err(OpError::exec(format!("Opcode {other} is not implemented"))),
    }
}

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

fn check_admin_state(
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

const ONLINE: &[AdminState] = &[AdminState::Down, AdminState::Up];

fn primary<'a>(
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

async fn set_admin_state(
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

async fn check_free_memory(
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

async fn remove(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let ignore = ctx.op.bool("ignore_failures");
    let timeout = ctx.op.int("shutdown_timeout").unwrap_or(120) as u64;
    ctx.log(format!("* shutting down instance {}", inst.name));
    if let Err(e) = ctx.backend.stop(&inst.pnode, &inst.name, timeout).await {
        if !ignore {
            return Err(exec_failure(
                &format!("Could not shutdown instance {}", inst.name),
                e,
            ));
        }
        ctx.warn(format!("Could not shutdown instance {}: {e}", inst.name));
    }
    ctx.log("* removing instance disks");
    for node in std::iter::once(&inst.pnode).chain(inst.snodes.iter()) {
        if let Err(e) = ctx.backend.remove_disks(node, &inst.name).await {
            if !ignore {
                return Err(exec_failure("Can't remove instance's disks", e));
            }
            ctx.warn(format!("Could not remove disks on node {node}: {e}"));
        }
    }
    ctx.cluster
        .update(|cfg| {
            cfg.instances.remove(&inst.name);
            release_ips(cfg, &inst.name);
        })
        .await?;
    Ok(Value::Null)
}

pub fn release_ips(cfg: &mut Config, owner: &str) {
    for net in cfg.networks.values_mut() {
        net.used.retain(|_, o| o != owner);
    }
}

/// The instance named by the opcode, refused if it is only reserved (forthcoming).
fn real_instance(op: &OpCode, cfg: &Config) -> Result<crate::cluster::model::Instance, OpError> {
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
fn primary_offline_allowed(
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

async fn check_start_memory(
    ctx: &Ctx,
    inst: &crate::cluster::model::Instance,
    needed: u64,
) -> Result<(), OpError> {
    let purpose = format!("starting instance {}", inst.name);
    check_free_memory(ctx, &inst.pnode, needed, &purpose).await
}

async fn startup(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = real_instance(&ctx.op, &cfg)?;
    check_admin_state(&inst, ONLINE, None)?;
    let offline_ok = primary_offline_allowed(ctx, &cfg, &inst)?;
    let mut spec = vm_spec(&cfg, &inst);
    if let Some(mem) = ctx
        .op
        .get("beparams")
        .and_then(|b| b.get("maxmem"))
        .and_then(parse_size_mib)
    {
        spec.memory_mib = mem;
    }
    let running = !offline_ok && is_running(ctx, &inst).await?;
    if !running && !offline_ok {
        check_start_memory(ctx, &inst, spec.memory_mib).await?;
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    if !ctx.op.bool("no_remember") {
        set_admin_state(ctx, &inst.name, AdminState::Up, "admin").await?;
    }
    if offline_ok {
        ctx.info("Primary node offline, marked instance as started");
        return Ok(Value::Null);
    }
    ctx.backend
        .start(&inst.pnode, &spec)
        .await
        .map_err(|e| exec_failure(&format!("Could not start instance {}", inst.name), e))?;
    Ok(Value::Null)
}

async fn shutdown(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = real_instance(&ctx.op, &cfg)?;
    if !ctx.op.bool("force") {
        check_admin_state(&inst, ONLINE, None)?;
    }
    let offline_ok = primary_offline_allowed(ctx, &cfg, &inst)?;
    if ctx.op.str("admin_state_source") == Some("user") {
        return Err(OpError::prereq_bare(format!(
            "Instance '{}' was not shutdown by the user",
            inst.name
        )));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    if !ctx.op.bool("no_remember") && inst.admin_state != AdminState::Offline {
        set_admin_state(ctx, &inst.name, AdminState::Down, "admin").await?;
    }
    if offline_ok {
        ctx.info("Primary node offline, marked instance as stopped");
        return Ok(Value::Null);
    }
    let timeout = ctx.op.int("timeout").unwrap_or(120) as u64;
    if let Err(e) = ctx.backend.stop(&inst.pnode, &inst.name, timeout).await {
        ctx.warn(format!("Could not shutdown instance: {e}"));
    }
    Ok(Value::Null)
}

async fn reboot(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    check_admin_state(&inst, ONLINE, None)?;
    check_node_online(primary(&cfg, &inst)?, "Cannot use offline primary node ")?;
    let running = is_running(ctx, &inst).await?;
    let spec = vm_spec(&cfg, &inst);
    if !running {
        check_start_memory(ctx, &inst, spec.memory_mib).await?;
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let kind = ctx.op.str("reboot_type").unwrap_or("hard");
    let fail = |e| exec_failure(&format!("Could not reboot instance {}", inst.name), e);
    if !running {
        ctx.info(format!(
            "Instance {} was already stopped, starting now",
            inst.name
        ));
        ctx.backend.start(&inst.pnode, &spec).await.map_err(fail)?;
    } else if kind == "full" {
        let timeout = ctx.op.int("shutdown_timeout").unwrap_or(120) as u64;
        ctx.backend
            .stop(&inst.pnode, &inst.name, timeout)
            .await
            .map_err(fail)?;
        ctx.backend.start(&inst.pnode, &spec).await.map_err(fail)?;
    } else {
        let k = if kind == "soft" {
            RebootKind::Soft
        } else {
            RebootKind::Hard
        };
        ctx.backend
            .reboot(&inst.pnode, &inst.name, k)
            .await
            .map_err(fail)?;
    }
    set_admin_state(ctx, &inst.name, AdminState::Up, "admin").await?;
    Ok(Value::Null)
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
    let texts = params
        .iter()
        .map(|(k, v)| {
            let text = v
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string());
            (k.clone(), text)
        })
        .collect();
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

async fn reinstall(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = real_instance(&ctx.op, &cfg)?;
    let pnode = primary(&cfg, &inst)?;
    check_node_online(pnode, "Instance primary node offline, cannot reinstall: ")?;
    if inst.disks.is_empty() {
        return Err(OpError::prereq(
            format!("Instance '{}' has no disks", inst.name),
            ErrorCode::WrongInput,
        ));
    }
    check_admin_state(
        &inst,
        &[AdminState::Down, AdminState::Offline],
        Some("cannot reinstall"),
    )?;
    if is_running(ctx, &inst).await? {
        return Err(OpError::prereq(
            format!("Instance {} is running, cannot reinstall", inst.name),
            ErrorCode::WrongState,
        ));
    }
    let os = ctx.op.str("os_type").unwrap_or(&inst.os).to_string();
    check_os(&cfg, &os, &inst.pnode, ctx.op.bool("force_variant"))?;
    if let Some(Value::Object(params)) = ctx.op.get("osparams") {
        validate_os_params(ctx, &cfg, &os, &inst.pnode, params).await?;
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let osparams = ctx.op.get("osparams").and_then(Value::as_object).cloned();
    let t = now();
    ctx.cluster
        .update(|cfg| {
            if let Some(i) = cfg.instances.get_mut(&inst.name) {
                i.os = os.clone();
                if let Some(p) = osparams {
                    i.osparams = p;
                }
                i.meta.touch(t);
            }
        })
        .await?;
    ctx.log(format!(
        "* running the instance OS create scripts ({os})..."
    ));
    let mut spec = vm_spec(&cfg, &inst);
    spec.os = os;
    spec.reinstall = true;
    let output = ctx
        .backend
        .install_os(&inst.pnode, &spec)
        .await
        .map_err(|e| exec_failure("Could not install OS for instance", e))?;
    output.into_iter().for_each(|line| ctx.log(line));
    Ok(Value::Null)
}

async fn rename(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    let new = ctx
        .op
        .str("new_name")
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_lowercase();
    if !create::valid_hostname(&new) {
        return Err(OpError::prereq(
            format!("Invalid hostname '{new}'"),
            ErrorCode::WrongInput,
        ));
    }
    if cfg.instances.contains_key(&new) {
        return Err(OpError::prereq(
            format!("Instance '{new}' is already in the cluster"),
            ErrorCode::AlreadyExists,
        ));
    }
    check_node_online(primary(&cfg, &inst)?, "Cannot use offline primary node ")?;
    if is_running(ctx, &inst).await? {
        return Err(OpError::prereq(
            format!("Instance {} is running, cannot rename", inst.name),
            ErrorCode::WrongState,
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    for node in std::iter::once(&inst.pnode).chain(inst.snodes.iter()) {
        ctx.backend
            .rename(node, &inst.name, &new)
            .await
            .map_err(|e| exec_failure("Could not rename instance", e))?;
    }
    let t = now();
    ctx.cluster
        .update(|cfg| {
            if let Some(mut i) = cfg.instances.remove(&inst.name) {
                i.name = new.clone();
                i.meta.touch(t);
                cfg.instances.insert(new.clone(), i);
            }
            for net in cfg.networks.values_mut() {
                for owner in net.used.values_mut() {
                    if *owner == inst.name {
                        *owner = new.clone();
                    }
                }
            }
        })
        .await?;
    Ok(Value::String(new))
}

const MIRRORED: &[&str] = &["drbd"];
const SHARED: &[&str] = &[
    "sharedfile",
    "rbd",
    "ext",
    "gluster",
    "blockdev",
    "diskless",
];

async fn migrate(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    let failover = ctx.op.id() == OpId::InstanceFailover;
    let verb = if failover { "failover" } else { "migrate" };
    let action = if failover { "failovers" } else { "migrations" };
    let template = inst.disk_template.as_str();
    if !MIRRORED.contains(&template) && !SHARED.contains(&template) {
        return Err(OpError::prereq(
            format!("Instance's disk layout '{template}' does not allow {action}"),
            ErrorCode::WrongState,
        ));
    }
    let target = if MIRRORED.contains(&template) {
        if let Some(t) = ctx.op.str("target_node") {
            let t = find_node(&cfg, t)?;
            if !inst.snodes.contains(&t.name) {
                return Err(OpError::prereq(
                    format!(
                        "Instances with disk template {template} cannot be migrated to arbitrary nodes"
                    ),
                    ErrorCode::WrongInput,
                ));
            }
        }
        inst.snodes.first().cloned().ok_or_else(|| {
            OpError::prereq("Instance has no secondary node", ErrorCode::WrongState)
        })?
    } else {
        match ctx.op.str("target_node") {
            Some(t) => find_node(&cfg, t)?.name.clone(),
            None => cfg
                .nodes
                .values()
                .find(|n| n.name != inst.pnode && !n.offline && !n.drained && n.vm_capable)
                .map(|n| n.name.clone())
                .ok_or_else(|| {
                    OpError::prereq("No target node available", ErrorCode::InsufficientResources)
                })?,
        }
    };
    if target == inst.pnode {
        return Err(OpError::prereq(
            format!("Instance {} is already on the node {target}", inst.name),
            ErrorCode::WrongInput,
        ));
    }
    let target_node = find_node(&cfg, &target)?;
    check_node_online(target_node, "Cannot migrate to offline node ")?;
    let running = inst.admin_state == AdminState::Up && is_running(ctx, &inst).await?;
    if !failover && !running {
        if ctx.op.bool("allow_failover") {
            ctx.warn("Instance is not running, falling back to failover");
        } else {
            return Err(OpError::prereq(
                format!("Instance {} is not running, cannot migrate", inst.name),
                ErrorCode::WrongState,
            ));
        }
    }
    if running {
        let mem = crate::cluster::model::instance_memory(&cfg, &inst);
        check_free_memory(ctx, &target, mem, &format!("{verb} instance {}", inst.name)).await?;
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let live = !failover
        && ctx.op.str("mode") != Some("non-live")
        && ctx.op.get("live").and_then(Value::as_bool) != Some(false);
    ctx.log(format!(
        "* {verb} instance {} from {} to {target}",
        inst.name, inst.pnode
    ));
    let fail = |e| exec_failure(&format!("Could not {verb} instance {}", inst.name), e);
    if failover && running {
        // A failover is a restart elsewhere: shut down, move, start on the target.
        let timeout = ctx.op.int("shutdown_timeout").unwrap_or(120).max(0) as u64;
        ctx.log(format!(
            "* shutting down instance {} on {}",
            inst.name, inst.pnode
        ));
        ctx.backend
            .stop(&inst.pnode, &inst.name, timeout)
            .await
            .map_err(fail)?;
        ctx.backend
            .migrate(&inst.pnode, &target, &inst.name, false)
            .await
            .map_err(fail)?;
        ctx.log(format!("* starting instance {} on {target}", inst.name));
        ctx.backend
            .start(&target, &vm_spec(&cfg, &inst))
            .await
            .map_err(fail)?;
    } else {
        ctx.backend
            .migrate(&inst.pnode, &target, &inst.name, live)
            .await
            .map_err(fail)?;
    }
    let (old, t) = (inst.pnode.clone(), now());
    ctx.cluster
        .update(|cfg| {
            if let Some(i) = cfg.instances.get_mut(&inst.name) {
                i.pnode = target.clone();
                if MIRRORED.contains(&i.disk_template.as_str()) {
                    i.snodes = vec![old.clone()];
                }
                i.meta.touch(t);
            }
        })
        .await?;
    Ok(Value::Null)
}

fn disk_index(inst: &crate::cluster::model::Instance, op: &OpCode) -> Result<usize, OpError> {
    let idx = op.int("disk").unwrap_or(0);
    if idx < 0 || idx as usize >= inst.disks.len() {
        return Err(OpError::prereq(
            format!("Invalid disk index {idx} for instance {}", inst.name),
            ErrorCode::WrongInput,
        ));
    }
    Ok(idx as usize)
}

async fn grow_disk(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    let idx = disk_index(&inst, &ctx.op)?;
    let amount = ctx.op.get("amount").and_then(parse_size_mib).unwrap_or(0);
    let current = inst.disks[idx].size;
    let new_size = if ctx.op.bool("absolute") {
        if amount < current {
            return Err(OpError::prereq(
                format!("Requested size ({amount}) is smaller than current disk size ({current})"),
                ErrorCode::WrongInput,
            ));
        }
        amount
    } else {
        current + amount
    };
    for node in std::iter::once(&inst.pnode).chain(inst.snodes.iter()) {
        let info = ctx
            .backend
            .node_info(node)
            .await
            .map_err(|e| check_failure(&format!("Can't get data from node {node}"), e))?;
        let needed = new_size - current;
        if info.disk_free < needed {
            return Err(OpError::prereq(
                format!(
                    "Not enough disk space on target node {node} vg {}: required {needed} MiB, available {} MiB",
                    cfg.cluster.volume_group_name, info.disk_free
                ),
                ErrorCode::InsufficientResources,
            ));
        }
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    ctx.log(format!(
        "Growing disk {idx} of instance '{}' by {} to {}",
        inst.name,
        new_size - current,
        new_size
    ));
    for node in std::iter::once(&inst.pnode).chain(inst.snodes.iter()) {
        ctx.backend
            .grow_disk(node, &inst.name, idx, new_size)
            .await
            .map_err(|e| exec_failure(&format!("Grow request failed to node {node}"), e))?;
    }
    let t = now();
    ctx.cluster
        .update(|cfg| {
            if let Some(i) = cfg.instances.get_mut(&inst.name) {
                i.disks[idx].size = new_size;
                i.meta.touch(t);
            }
        })
        .await?;
    Ok(Value::Null)
}

async fn set_disks_active(ctx: &Ctx, name: &str, active: bool) -> Result<(), OpError> {
    ctx.cluster
        .update(|cfg| {
            if let Some(i) = cfg.instances.get_mut(name) {
                i.disks_active = active;
            }
        })
        .await?;
    Ok(())
}

async fn activate_disks(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    check_node_online(primary(&cfg, &inst)?, "Cannot use offline primary node ")?;
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    set_disks_active(ctx, &inst.name, true).await?;
    let paths: Vec<Value> = inst
        .disks
        .iter()
        .enumerate()
        .map(|(i, _)| {
            json!([
                inst.pnode,
                format!("disk/{i}"),
                format!("/dev/gantry/{}/disk{i}", inst.name)
            ])
        })
        .collect();
    Ok(Value::Array(paths))
}

async fn deactivate_disks(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    if !ctx.op.bool("force") && is_running(ctx, &inst).await? {
        return Err(OpError::prereq(
            format!("Instance {} is running, cannot deactivate disks", inst.name),
            ErrorCode::WrongState,
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    set_disks_active(ctx, &inst.name, false).await?;
    Ok(Value::Null)
}

async fn recreate_disks(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    check_admin_state(
        &inst,
        &[AdminState::Down, AdminState::Offline],
        Some("cannot recreate disks"),
    )?;
    if is_running(ctx, &inst).await? {
        return Err(OpError::prereq(
            format!("Instance {} is running, cannot recreate disks", inst.name),
            ErrorCode::WrongState,
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let spec = vm_spec(&cfg, &inst);
    for node in std::iter::once(&inst.pnode).chain(inst.snodes.iter()) {
        ctx.backend
            .create_disks(node, &spec)
            .await
            .map_err(|e| exec_failure("Can't create disks", e))?;
    }
    Ok(Value::Null)
}

async fn replace_disks(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    if !MIRRORED.contains(&inst.disk_template.as_str()) {
        return Err(OpError::prereq(
            "Can only run replace disks for DRBD8-based instances".to_string(),
            ErrorCode::WrongInput,
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    ctx.log("STEP 1/1 Replacing disks (fake: data is already in sync)");
    Ok(Value::Null)
}

async fn console(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    if !is_running(ctx, &inst).await? {
        return Err(OpError::prereq(
            format!("Instance {} is not running", inst.name),
            ErrorCode::WrongState,
        ));
    }
    Ok(crate::views::console_info(&inst))
}

async fn query_data(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let names = ctx.op.strings("instances");
    let selected: Vec<_> = if names.is_empty() {
        cfg.instances.values().cloned().collect()
    } else {
        names
            .iter()
            .map(|n| find_instance(&cfg, n).cloned())
            .collect::<Result<_, _>>()?
    };
    let static_only = ctx.op.bool("static");
    let mut out = serde_json::Map::new();
    for inst in selected {
        let run_state = if static_only {
            Value::Null
        } else {
            let running = is_running(ctx, &inst).await.unwrap_or(false);
            json!(if running { "up" } else { "down" })
        };
        out.insert(
            inst.name.clone(),
            json!({
                "name": inst.name,
                "config_state": inst.admin_state.as_str(),
                "run_state": run_state,
                "pnode": inst.pnode,
                "snodes": inst.snodes,
                "os": inst.os,
                "hypervisor": inst.hypervisor,
                "disk_template": inst.disk_template,
                "network_port": inst.network_port,
                "hv_instance": inst.hvparams,
                "hv_actual": cfg.effective_hvparams(&inst),
                "be_instance": inst.beparams,
                "be_actual": cfg.effective_beparams(&inst),
                "os_instance": inst.osparams,
                "os_actual": inst.osparams,
                "nics": inst.nics.iter().map(|n| json!({"name": n.name, "uuid": n.uuid, "mac": n.mac, "ip": n.ip, "mode": n.mode, "link": n.link, "vlan": n.vlan, "network": n.network})).collect::<Vec<_>>(),
                "disks": inst.disks.iter().enumerate().map(|(i, d)| json!({"iv_name": format!("disk/{i}"), "size": d.size, "mode": d.mode, "name": d.name, "uuid": d.uuid, "dev_type": d.dev_type})).collect::<Vec<_>>(),
                "uuid": inst.meta.uuid,
                "ctime": inst.meta.ctime,
                "mtime": inst.meta.mtime,
                "tags": inst.meta.tags,
            }),
        );
    }
    Ok(Value::Object(out))
}

async fn change_group(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    op_instance(&ctx.op, &cfg)?;
    for g in ctx.op.strings("target_groups") {
        find_group_uuid(&cfg, &g)?;
    }
    // Moving instances between groups is not computed yet: no follow-up jobs (see issue note).
    ctx.stop_for_dry_run();
    Ok(json!({"jobs": []}))
}

/// Export, prepare and remove (`gnt-backup`). An export runs the OS `export` script per disk
/// into the backend's export area; with `shutdown` (the default) a running instance is stopped
/// for it and started again afterwards.
async fn backup(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    if ctx.op.id() == OpId::BackupRemove {
        // The export of a removed instance is named by its old full name: it must at least be
        // a valid host name, which also keeps it one path component under the export area.
        let given = ctx.op.str("instance_name").unwrap_or_default();
        let name = match find_instance(&cfg, given) {
            Ok(inst) => inst.name.clone(),
            Err(_) => crate::validate::hostname(given).ok_or_else(|| {
                OpError::prereq(format!("Invalid hostname '{given}'"), ErrorCode::WrongInput)
            })?,
        };
        if ctx.stop_for_dry_run() {
            return Ok(Value::Null);
        }
        let node = cfg.cluster.master.clone();
        ctx.backend.remove_export(&node, &name).await.map_err(|e| {
            exec_failure(&format!("Could not remove export for instance {name}"), e)
        })?;
        return Ok(Value::Null);
    }
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    if ctx.op.id() == OpId::BackupPrepare {
        return Ok(Value::Null);
    }
    let running = is_running(ctx, &inst).await?;
    let shutdown = ctx
        .op
        .get("shutdown")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let spec = vm_spec(&cfg, &inst);
    if running && shutdown {
        ctx.log("Shutting down instance");
        let timeout = ctx.op.int("shutdown_timeout").unwrap_or(120).max(0) as u64;
        ctx.backend
            .stop(&inst.pnode, &inst.name, timeout)
            .await
            .map_err(|e| exec_failure("Could not shutdown instance for export", e))?;
    }
    ctx.log(format!("Exporting instance {}", inst.name));
    let exported = ctx.backend.export_instance(&inst.pnode, &spec).await;
    if running && shutdown {
        ctx.log("Starting instance again");
        ctx.backend
            .start(&inst.pnode, &spec)
            .await
            .map_err(|e| exec_failure("Could not start instance after export", e))?;
    }
    let output = exported.map_err(|e| exec_failure("Export failed", e))?;
    output.into_iter().for_each(|line| ctx.log(line));
    let disks: Vec<bool> = inst.disks.iter().map(|_| true).collect();
    Ok(json!([true, disks]))
}

/// Builds a disk record from a client's disk object (spec opcodes.md §2.1).
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
    let mac = nic_mac(cfg, get("mac").as_deref(), taken_macs)?;
    let network = match get("network") {
        Some(n) if n != "none" => Some(find_network_uuid(cfg, &n)?),
        _ => None,
    };
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
    let link = get("link")
        .or_else(|| get("bridge"))
        .or_else(|| {
            defaults
                .get("link")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_default();
    let ip = get("ip").filter(|ip| ip != "none");
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

/// A NIC's MAC on create or modify: generated for `auto`/`generate`/absent, otherwise checked
/// for syntax and for use anywhere in the cluster (upstream's `ReserveMAC`).
pub fn nic_mac(cfg: &Config, given: Option<&str>, taken: &[String]) -> Result<String, OpError> {
    let mac = match given {
        None | Some("auto") | Some("generate") => return Ok(generate_mac(cfg, taken)),
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

fn generate_mac(cfg: &Config, taken: &[String]) -> String {
    loop {
        let b = crate::util::random_bytes::<3>();
        let mac = format!(
            "{}:{:02x}:{:02x}:{:02x}",
            cfg.cluster.mac_prefix, b[0], b[1], b[2]
        );
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
