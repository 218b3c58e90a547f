//! Starting, stopping, rebooting and reinstalling instances, and their consoles (upstream `instance_operation.py`).

use super::*;

pub(super) async fn startup(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = real_instance(&ctx.op, &cfg)?;
    check_admin_state(&inst, ONLINE, None)?;
    let offline_ok = primary_offline_allowed(ctx, &cfg, &inst)?;
    let mut spec = vm_spec(&cfg, &inst)?;
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

pub(super) async fn shutdown(ctx: &Ctx) -> Result<Value, OpError> {
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

pub(super) async fn reboot(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let inst = op_instance(&ctx.op, &cfg)?.clone();
    check_admin_state(&inst, ONLINE, None)?;
    check_node_online(primary(&cfg, &inst)?, "Cannot use offline primary node ")?;
    let running = is_running(ctx, &inst).await?;
    let spec = vm_spec(&cfg, &inst)?;
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

pub(super) async fn reinstall(ctx: &Ctx) -> Result<Value, OpError> {
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
    // As upstream: empty OS parameters (the recorded default) leave the instance's alone.
    let osparams = ctx
        .op
        .get("osparams")
        .and_then(Value::as_object)
        .filter(|p| !p.is_empty())
        .cloned();
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
    let mut spec = vm_spec(&cfg, &inst)?;
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

pub(super) async fn console(ctx: &Ctx) -> Result<Value, OpError> {
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

pub(super) async fn check_start_memory(
    ctx: &Ctx,
    inst: &crate::cluster::model::Instance,
    needed: u64,
) -> Result<(), OpError> {
    let purpose = format!("starting instance {}", inst.name);
    check_free_memory(ctx, &inst.pnode, needed, &purpose).await
}
