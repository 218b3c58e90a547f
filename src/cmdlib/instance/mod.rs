//! Instance opcodes: create, remove, start, stop, reboot, reinstall, rename, modify, migrate,
//! failover, disks, console, query data, export.

use super::*;
use crate::backends::RebootKind;
use crate::cluster::model::{AdminState, Disk, Meta, Nic, Params};
use crate::locking::{LockLevel::*, LockMode::*};
use crate::opcodes::OpId;
use crate::opcodes::parse_size_mib;
use crate::util::new_uuid;

mod backup;
mod create;
mod migration;
mod modify;
mod operation;
mod query;
mod storage;
mod utils;

use backup::*;
use migration::*;
pub use migration::{group_moves, movable};
use operation::*;
use query::*;
use storage::*;
pub use utils::*;

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

async fn remove(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let ignore = ctx.op.bool("ignore_failures");
    let timeout = ctx.op.int("shutdown_timeout").unwrap_or(120) as u64;
    // Upstream logs these steps to its daemon log only, not to the job.
    tracing::info!(instance = %inst.name, "shutting down instance");
    if let Err(e) = ctx.backend.stop(&inst.pnode, &inst.name, timeout).await {
        if !ignore {
            return Err(exec_failure(
                &format!("Could not shutdown instance {}", inst.name),
                e,
            ));
        }
        ctx.warn(format!("Could not shutdown instance {}: {e}", inst.name));
    }
    tracing::info!(instance = %inst.name, "removing instance disks");
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

async fn rename(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    let new = ctx
        .op
        .str("new_name")
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_lowercase();
    if !crate::validate::is_safe_component(&new) {
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
