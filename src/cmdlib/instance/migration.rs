//! Migration and failover between nodes, and group changes (upstream `instance_migration.py`).

use super::*;

pub(super) const MIRRORED: &[&str] = &["drbd"];
pub(super) const SHARED: &[&str] = &[
    "sharedfile",
    "rbd",
    "ext",
    "gluster",
    "blockdev",
    "diskless",
];

/// Whether an instance with this disk template can move to another node (migrate, failover).
pub fn movable(template: &str) -> bool {
    MIRRORED.contains(&template) || SHARED.contains(&template)
}

pub(super) async fn migrate(ctx: &Ctx) -> Result<Value, OpError> {
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
            .start(&target, &vm_spec(&cfg, &inst)?)
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

pub(super) async fn change_group(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    let targets = ctx.op.strings("target_groups");
    let current = cfg.nodes.get(&inst.pnode).map(|n| n.group.clone());
    for g in &targets {
        let uuid = find_group_uuid(&cfg, g)?;
        if Some(&uuid) == current.as_ref() {
            return Err(OpError::prereq(
                format!(
                    "Can't use group(s) '{g}' as targets, they are used by the instance '{}'",
                    inst.name
                ),
                ErrorCode::WrongInput,
            ));
        }
    }
    // Computed up front, as the allocator does: no job runs when the move is impossible.
    let ops = group_moves(&cfg, &inst, &targets).map_err(|why| {
        OpError::prereq(
            format!(
                "Can't compute solution for changing group of instance '{}' using iallocator '{}': {why}",
                inst.name, cfg.cluster.default_iallocator
            ),
            ErrorCode::InsufficientResources,
        )
    })?;
    if ctx.stop_for_dry_run() {
        return Ok(json!({"jobs": []}));
    }
    Ok(json!({"jobs": ctx.submit_children(vec![ops]).await?}))
}

/// The opcodes that move `inst` to a node group among `targets` (every other group when
/// empty), as upstream's allocator plans a group change: shared storage migrates (or fails
/// over when stopped) to a node there; DRBD replaces its secondary with a node there, moves,
/// and replaces the old primary's half too; node-local storage cannot change group.
pub fn group_moves(
    cfg: &Config,
    inst: &crate::cluster::model::Instance,
    targets: &[String],
) -> Result<Vec<OpCode>, String> {
    let current = cfg.nodes.get(&inst.pnode).map(|n| n.group.clone());
    let groups: Vec<String> = if targets.is_empty() {
        cfg.groups
            .iter()
            .filter(|(uuid, g)| Some(*uuid) != current.as_ref() && g.alloc_policy != "unallocable")
            .map(|(uuid, _)| uuid.clone())
            .collect()
    } else {
        targets
            .iter()
            .filter_map(|g| cfg.group_by_name(g).map(|g| g.meta.uuid.clone()))
            .collect()
    };
    // Candidates: usable nodes of the target groups, least loaded first.
    let mut nodes: Vec<&crate::cluster::model::Node> = cfg
        .nodes
        .values()
        .filter(|n| groups.contains(&n.group) && n.vm_capable && !n.offline && !n.drained)
        .filter(|n| n.name != inst.pnode && !inst.snodes.contains(&n.name))
        .collect();
    nodes.sort_by_key(|n| (cfg.primary_instances(&n.name).len(), n.name.clone()));
    let op = |id, params: Value| {
        OpCode::build(id, params.as_object().cloned().unwrap_or_default()).map_err(|e| e.0)
    };
    let running = inst.admin_state == crate::cluster::model::AdminState::Up;
    let template = inst.disk_template.as_str();
    if SHARED.contains(&template) {
        let target = nodes.first().ok_or("no usable node in the target groups")?;
        let params = json!({"instance_name": inst.name, "target_node": target.name});
        return Ok(vec![if running {
            let mut p = params;
            p["allow_failover"] = json!(true);
            op(OpId::InstanceMigrate, p)?
        } else {
            op(OpId::InstanceFailover, params)?
        }]);
    }
    if MIRRORED.contains(&template) {
        let [first, second, ..] = nodes.as_slice() else {
            return Err("a DRBD instance needs two usable nodes in the target groups".into());
        };
        let replace = |node: &str| {
            op(
                OpId::InstanceReplaceDisks,
                json!({"instance_name": inst.name, "mode": "replace_new_secondary",
                       "remote_node": node, "early_release": false}),
            )
        };
        let moved = if running {
            op(
                OpId::InstanceMigrate,
                json!({"instance_name": inst.name, "allow_failover": true}),
            )?
        } else {
            op(OpId::InstanceFailover, json!({"instance_name": inst.name}))?
        };
        return Ok(vec![replace(&first.name)?, moved, replace(&second.name)?]);
    }
    Err(format!(
        "instance {} has a non-mirrored disk template ('{template}'): its disks cannot leave the node",
        inst.name
    ))
}
