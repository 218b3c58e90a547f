//! Exports and imports through OS definitions (upstream `backup.py`).

use super::*;

/// Export, prepare and remove (`gnt-backup`). An export runs the OS `export` script per disk
/// into the backend's export area; with `shutdown` (the default) a running instance is stopped
/// for it and started again afterwards.
pub(super) async fn backup(ctx: &Ctx) -> Result<Value, OpError> {
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
    let spec = vm_spec(&cfg, &inst)?;
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
