//! Disks of existing instances: grow, activate, deactivate, recreate, replace (upstream `instance_storage.py`).

use super::*;

pub(super) fn disk_index(
    inst: &crate::cluster::model::Instance,
    op: &OpCode,
) -> Result<usize, OpError> {
    let idx = op.int("disk").unwrap_or(0);
    if idx < 0 || idx as usize >= inst.disks.len() {
        return Err(OpError::prereq(
            format!("Invalid disk index {idx} for instance {}", inst.name),
            ErrorCode::WrongInput,
        ));
    }
    Ok(idx as usize)
}

pub(super) async fn grow_disk(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    let idx = disk_index(&inst, &ctx.op)?;
    let amount = ctx.op.get("amount").and_then(parse_size_mib).unwrap_or(0);
    check_disk_size(amount)?;
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
        current.saturating_add(amount)
    };
    check_disk_size(new_size)?;
    if !ctx.op.bool("ignore_ipolicy") {
        check_disk_policy(&cfg, &inst, idx, new_size)?;
    }
    for node in std::iter::once(&inst.pnode).chain(inst.snodes.iter()) {
        let info = ctx
            .backend
            .node_info(node)
            .await
            .map_err(|e| check_failure(&format!("Can't get data from node {node}"), e))?;
        check_free_disk(&cfg, node, new_size - current, info.disk_free)?;
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

pub(super) async fn set_disks_active(ctx: &Ctx, name: &str, active: bool) -> Result<(), OpError> {
    ctx.cluster
        .update(|cfg| {
            if let Some(i) = cfg.instances.get_mut(name) {
                i.disks_active = active;
            }
        })
        .await?;
    Ok(())
}

pub(super) async fn activate_disks(ctx: &Ctx) -> Result<Value, OpError> {
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

pub(super) async fn deactivate_disks(ctx: &Ctx) -> Result<Value, OpError> {
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

pub(super) async fn recreate_disks(ctx: &Ctx) -> Result<Value, OpError> {
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
    let spec = vm_spec(&cfg, &inst)?;
    for node in std::iter::once(&inst.pnode).chain(inst.snodes.iter()) {
        ctx.backend
            .create_disks(node, &spec)
            .await
            .map_err(|e| exec_failure("Can't create disks", e))?;
    }
    Ok(Value::Null)
}

pub(super) async fn replace_disks(ctx: &Ctx) -> Result<Value, OpError> {
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

/// The instance policy of the primary node's group bounds a grown disk's size (upstream's
/// `ComputeIPolicyDiskSizesViolation` on grow): it must fit one of the policy's min/max pairs.
fn check_disk_policy(
    cfg: &Config,
    inst: &crate::cluster::model::Instance,
    idx: usize,
    size: u64,
) -> Result<(), OpError> {
    let Some(group) = cfg
        .nodes
        .get(&inst.pnode)
        .and_then(|n| cfg.groups.get(&n.group))
    else {
        return Ok(());
    };
    let policy = cfg.effective_ipolicy(group);
    let bounds: Vec<(u64, u64)> = policy
        .get("minmax")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|pair| {
            let get = |end: &str| pair.get(end)?.get("disk-size")?.as_u64();
            Some((get("min")?, get("max")?))
        })
        .collect();
    match bounds.first() {
        Some(&(min, max)) if !bounds.iter().any(|(lo, hi)| (*lo..=*hi).contains(&size)) => {
            Err(OpError::prereq(
                format!(
                    "Growing disk {idx} violates policy: disk-size/{idx} value {size} is not in range [{min}, {max}]"
                ),
                ErrorCode::WrongInput,
            ))
        }
        _ => Ok(()),
    }
}
