//! Node opcodes: role and parameter changes, power cycle, evacuation and migration (as follow-up
//! jobs), and storage queries.

use super::*;
use crate::locking::{LockLevel, LockMode};
use crate::opcodes::OpId;

pub fn plan(op: &OpCode, cfg: &Config) -> Result<LockPlan, OpError> {
    let mut p = LockPlan::default();
    match op.id() {
        OpId::NodeQueryStorage => {
            for n in op.strings("nodes") {
                p.add(
                    LockLevel::Node,
                    find_node(cfg, &n)?.name.clone(),
                    LockMode::Shared,
                );
            }
        }
        OpId::NodePowercycle => {
            op_node(op, cfg)?;
        }
        OpId::NodeSetParams => {
            let node = op_node(op, cfg)?;
            p.add(LockLevel::Node, node.name.clone(), LockMode::Exclusive);
            p.add(LockLevel::NodeRes, node.name.clone(), LockMode::Exclusive);
        }
        OpId::NodeEvacuate | OpId::NodeMigrate => {
            let node = op_node(op, cfg)?;
            p.add(LockLevel::Node, node.name.clone(), LockMode::Shared);
        }
        OpId::NodeAdd => {
            let name = op.str("node_name").unwrap_or_default().to_string();
            p.add(LockLevel::Node, name.clone(), LockMode::Exclusive);
            p.add(LockLevel::NodeRes, name, LockMode::Exclusive);
        }
        _ => {
            let node = op_node(op, cfg)?;
            p.add(LockLevel::Node, node.name.clone(), LockMode::Exclusive);
        }
    }
    Ok(p)
}

pub async fn execute(ctx: &Ctx) -> Result<Value, OpError> {
    match ctx.op.id() {
        OpId::NodeSetParams => set_params(ctx).await,
        OpId::NodePowercycle => powercycle(ctx).await,
        OpId::NodeEvacuate => evacuate(ctx).await,
        OpId::NodeMigrate => migrate(ctx).await,
        OpId::NodeQueryStorage => query_storage(ctx).await,
        OpId::NodeAdd => add(ctx).await,
        _ => {
            let cfg = ctx.cfg();
            op_node(&ctx.op, &cfg)?;
            let kind = storage_type(&ctx.op)?;
            storage_enabled(&cfg, kind)?;
            // As upstream: only physical volumes change (allocatable), only volume groups repair.
            let (allowed, verb) = match ctx.op.id() {
                OpId::NodeModifyStorage => ("lvm-pv", "modified"),
                _ => ("lvm-vg", "repaired"),
            };
            if kind != allowed {
                return Err(OpError::prereq(
                    format!("Storage units of type '{kind}' can not be {verb}"),
                    ErrorCode::WrongInput,
                ));
            }
            ctx.stop_for_dry_run();
            Ok(Value::Null)
        }
    }
}

/// A storage type is usable only while a disk template that stores on it is enabled.
fn storage_enabled(cfg: &Config, kind: &str) -> Result<(), OpError> {
    let templates: &[&str] = match kind {
        "lvm-vg" | "lvm-pv" => &["plain", "drbd"],
        other => &[other],
    };
    let enabled = &cfg.cluster.enabled_disk_templates;
    if enabled.iter().any(|t| templates.contains(&t.as_str())) {
        return Ok(());
    }
    Err(OpError::prereq_bare(format!(
        "No disk template of storage type '{kind}' is enabled in this cluster. Enabled disk templates are: {}",
        enabled.join(",")
    )))
}

fn storage_type(op: &OpCode) -> Result<&str, OpError> {
    let t = op.str("storage_type").unwrap_or("lvm-vg");
    if ![
        "lvm-vg",
        "lvm-pv",
        "file",
        "sharedfile",
        "gluster",
        "diskless",
    ]
    .contains(&t)
    {
        return Err(OpError::prereq(
            format!("Unknown or unsupported storage type '{t}'"),
            ErrorCode::WrongInput,
        ));
    }
    Ok(t)
}

async fn set_params(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let node = op_node(op, &cfg)?.clone();
    let flag = |k: &str| op.get(k).and_then(Value::as_bool);
    let (mc, off, dr) = (flag("master_candidate"), flag("offline"), flag("drained"));
    let any = [
        mc,
        off,
        dr,
        flag("master_capable"),
        flag("vm_capable"),
        flag("powered"),
    ]
    .iter()
    .any(Option::is_some)
        || op
            .get("ndparams")
            .and_then(Value::as_object)
            .is_some_and(|o| !o.is_empty())
        || op.get("secondary_ip").is_some()
        || op.get("hv_state").is_some()
        || op.get("disk_state").is_some();
    if !any {
        return Err(OpError::prereq(
            "Please pass at least one modification",
            ErrorCode::WrongInput,
        ));
    }
    if let Some(nd) = op.get("ndparams").and_then(Value::as_object) {
        let mut typed = nd.clone();
        crate::cluster::params::force_dict_type(
            &mut typed,
            crate::cluster::params::NODE,
            &["default"],
        )?;
        check_agent_address(nd)?;
    }
    if [mc, off, dr].iter().filter(|f| **f == Some(true)).count() > 1 {
        return Err(OpError::prereq(
            "Can't set the node into more than one state at the same time",
            ErrorCode::WrongInput,
        ));
    }
    let is_master = node.name == cfg.cluster.master;
    if is_master && (off == Some(true) || dr == Some(true) || mc == Some(false)) {
        return Err(OpError::prereq(
            format!(
                "The master role can be changed only via master-failover; node {} is the master",
                node.name
            ),
            ErrorCode::WrongInput,
        ));
    }
    if (off == Some(true) || dr == Some(true)) && !ctx.op.bool("force") {
        let primaries = cfg.primary_instances(&node.name);
        let running: Vec<_> = primaries
            .iter()
            .filter(|i| {
                cfg.instances
                    .get(*i)
                    .is_some_and(|i| i.admin_state == crate::cluster::model::AdminState::Up)
            })
            .collect();
        if off == Some(true) && !running.is_empty() {
            return Err(OpError::prereq(
                format!(
                    "Instance {} is running on node {}, cannot offline it",
                    running[0], node.name
                ),
                ErrorCode::WrongState,
            ));
        }
    }
    let mut changed = vec![];
    let mut updated = node.clone();
    let mut set = |field: &str, target: &mut bool, value: Option<bool>| {
        if let Some(v) = value {
            *target = v;
            changed.push(json!([
                field,
                v.to_string()
                    .to_uppercase()
                    .replace("TRUE", "True")
                    .replace("FALSE", "False")
            ]));
        }
    };
    set("master_candidate", &mut updated.master_candidate, mc);
    set("offline", &mut updated.offline, off);
    set("drained", &mut updated.drained, dr);
    set(
        "master_capable",
        &mut updated.master_capable,
        flag("master_capable"),
    );
    set("vm_capable", &mut updated.vm_capable, flag("vm_capable"));
    set("powered", &mut updated.powered, flag("powered"));
    // Going offline or drained drops candidacy; coming back online from offline does too.
    if off == Some(true) || dr == Some(true) {
        if updated.master_candidate && mc.is_none() {
            updated.master_candidate = false;
            changed.push(json!([
                "master_candidate",
                "auto-demotion due to offline/drain"
            ]));
        }
        if off == Some(true) {
            updated.drained = false;
        } else {
            updated.offline = false;
        }
    }
    if mc == Some(true) {
        updated.offline = false;
        updated.drained = false;
    }
    if let Some(ip) = op.str("secondary_ip") {
        updated.secondary_ip = ip.to_string();
        changed.push(json!(["secondary_ip", ip]));
    }
    if let Some(nd) = op.get("ndparams").and_then(Value::as_object) {
        let mut nd = nd.clone();
        crate::cluster::params::force_dict_type(
            &mut nd,
            crate::cluster::params::NODE,
            &["default"],
        )?;
        for (k, v) in &nd {
            if v.as_str() == Some("default") {
                updated.ndparams.remove(k);
            } else {
                updated.ndparams.insert(k.clone(), v.clone());
            }
            changed.push(json!([format!("ndparams/{k}"), v]));
        }
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Array(changed));
    }
    updated.meta.touch(now());
    ctx.cluster
        .update(|cfg| {
            cfg.nodes.insert(updated.name.clone(), updated);
        })
        .await?;
    Ok(Value::Array(changed))
}

async fn powercycle(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let node = op_node(&ctx.op, &cfg)?.clone();
    if node.name == cfg.cluster.master && !ctx.op.bool("force") {
        return Err(OpError::prereq(
            "The node is the master and the force parameter was not set",
            ErrorCode::WrongInput,
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let out = ctx.backend.powercycle(&node.name).await.map_err(|e| {
        exec_failure(
            &format!("Failed to schedule the reboot of node {}", node.name),
            e,
        )
    })?;
    Ok(Value::String(out))
}

fn instance_op(op_id: OpId, params: Value) -> Result<OpCode, OpError> {
    let map = params.as_object().cloned().unwrap_or_default();
    OpCode::build(op_id, map).map_err(|e| OpError::exec(e.0))
}

async fn evacuate(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let node = op_node(&ctx.op, &cfg)?.clone();
    let mode = ctx.op.str("mode").unwrap_or("all");
    if ctx.op.str("remote_node").is_some() && ctx.op.str("iallocator").is_some() {
        return Err(OpError::prereq(
            "Do not specify both, iallocator and node",
            ErrorCode::WrongInput,
        ));
    }
    if let Some(r) = ctx.op.str("remote_node")
        && find_node(&cfg, r)?.name == node.name
    {
        return Err(OpError::prereq(
            "Can not use evacuated node as a new secondary node",
            ErrorCode::WrongInput,
        ));
    }
    // As upstream's node evacuation: the moves are computed first, and the parent fails when an
    // instance cannot move, instead of reporting success while a child job fails.
    if mode != "secondary-only" {
        let stuck: Vec<String> = cfg
            .primary_instances(&node.name)
            .into_iter()
            .filter(|name| !super::instance::movable(&cfg.instances[name].disk_template))
            .map(|name| {
                let template = &cfg.instances[&name].disk_template;
                format!("{name} (disk layout '{template}' does not allow migrations)")
            })
            .collect();
        if !stuck.is_empty() {
            let list = stuck.join(", ");
            ctx.warn(format!("Unable to evacuate instances {list}"));
            return Err(OpError::exec(format!(
                "Unable to evacuate instances {list}"
            )));
        }
    }
    let mut jobs = vec![];
    let none_primary = mode == "secondary-only" || cfg.primary_instances(&node.name).is_empty();
    let none_secondary = mode == "primary-only" || cfg.secondary_instances(&node.name).is_empty();
    if none_primary && none_secondary {
        ctx.info(format!(
            "No instances to evacuate from node '{}'",
            node.name
        ));
    }
    if mode != "secondary-only" {
        for name in cfg.primary_instances(&node.name) {
            let inst = &cfg.instances[&name];
            let op = if inst.admin_state == crate::cluster::model::AdminState::Up {
                instance_op(
                    OpId::InstanceMigrate,
                    json!({"instance_name": name, "allow_failover": true}),
                )?
            } else {
                instance_op(OpId::InstanceFailover, json!({"instance_name": name}))?
            };
            jobs.push(vec![op]);
        }
    }
    if mode != "primary-only" {
        for name in cfg.secondary_instances(&node.name) {
            let mut params = json!({"instance_name": name, "mode": "replace_new_secondary"});
            match ctx.op.str("remote_node") {
                Some(r) => params["remote_node"] = json!(r),
                None => params["iallocator"] = json!(cfg.cluster.default_iallocator),
            }
            jobs.push(vec![instance_op(OpId::InstanceReplaceDisks, params)?]);
        }
    }
    Ok(json!({"jobs": ctx.submit_children(jobs).await?}))
}

async fn migrate(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let node = op_node(&ctx.op, &cfg)?.clone();
    let mut jobs = vec![];
    for name in cfg.primary_instances(&node.name) {
        let mut params = json!({"instance_name": name});
        for key in [
            "mode",
            "live",
            "target_node",
            "iallocator",
            "allow_runtime_changes",
            "ignore_ipolicy",
        ] {
            if let Some(v) = ctx.op.get(key) {
                params[key] = v.clone();
            }
        }
        jobs.push(vec![instance_op(OpId::InstanceMigrate, params)?]);
    }
    Ok(json!({"jobs": ctx.submit_children(jobs).await?}))
}

async fn query_storage(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let kind = storage_type(&ctx.op)?.to_string();
    let fields = ctx.op.strings("output_fields");
    const KNOWN: &[&str] = &[
        "node",
        "type",
        "name",
        "size",
        "used",
        "free",
        "allocatable",
    ];
    if let Some(bad) = fields.iter().find(|f| !KNOWN.contains(&f.as_str())) {
        return Err(OpError::prereq(
            format!("Unknown output fields selected: {bad}"),
            ErrorCode::WrongInput,
        ));
    }
    let mut rows = vec![];
    for n in ctx.op.strings("nodes") {
        let node = find_node(&cfg, &n)?;
        let info =
            ctx.backend.node_info(&node.name).await.map_err(|e| {
                exec_failure(&format!("Error while querying node {}", node.name), e)
            })?;
        let row: Vec<Value> = fields
            .iter()
            .map(|f| match f.as_str() {
                "node" => json!(node.name),
                "type" => json!(kind),
                "name" => json!(cfg.cluster.volume_group_name),
                "size" => json!(info.disk_total),
                "used" => json!(info.disk_total - info.disk_free),
                "free" => json!(info.disk_free),
                _ => json!(true),
            })
            .collect();
        rows.push(Value::Array(row));
    }
    Ok(Value::Array(rows))
}

/// `gnt-node add`: the backend must reach the node (for a node on another machine, its agent
/// at `ndparams.agent_address`, which must present the cluster certificate) before it joins.
async fn add(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("node_name").unwrap_or_default().to_string();
    if cfg.nodes.contains_key(&name) && !op.bool("readd") {
        return Err(OpError::prereq(
            format!("Node {name} is already in the configuration"),
            ErrorCode::AlreadyExists,
        ));
    }
    let group = match op.str("group") {
        Some(g) => find_group_uuid(&cfg, g)?,
        None => cfg.groups.keys().next().cloned().unwrap_or_default(),
    };
    let mut ndparams = match op.get("ndparams") {
        Some(Value::Object(m)) => m.clone(),
        _ => Default::default(),
    };
    crate::cluster::params::force_dict_type(&mut ndparams, crate::cluster::params::NODE, &[])?;
    check_agent_address(&ndparams)?;
    let spec = node_spec(&name, &ndparams);
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    ctx.backend
        .add_node(spec)
        .await
        .map_err(|e| check_failure(&format!("Cannot add node {name}"), e))?;
    let primary_ip = op.str("primary_ip").unwrap_or("127.0.0.1").to_string();
    let node = Node {
        name: name.clone(),
        meta: crate::cluster::model::Meta::new(crate::util::new_uuid(), now()),
        group,
        secondary_ip: op.str("secondary_ip").unwrap_or(&primary_ip).to_string(),
        primary_ip,
        offline: false,
        drained: false,
        master_candidate: false,
        master_capable: op
            .get("master_capable")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        vm_capable: op
            .get("vm_capable")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        ndparams,
        powered: true,
    };
    ctx.log(format!("* node {name} added"));
    ctx.cluster
        .update(|cfg| {
            cfg.nodes.insert(name, node);
        })
        .await?;
    Ok(Value::Null)
}

/// What the backend is told about a node: its agent's address for a node on another machine,
/// and the simulated capacity the fake hypervisor uses.
pub fn node_spec(
    name: &str,
    ndparams: &crate::cluster::model::Params,
) -> crate::backends::NodeSpec {
    let number = |k: &str, d: u64| ndparams.get(k).and_then(Value::as_u64).unwrap_or(d);
    crate::backends::NodeSpec {
        name: name.to_string(),
        address: ndparams
            .get("agent_address")
            .and_then(Value::as_str)
            .map(String::from),
        memory_mib: number("fake_memory_mib", 16384),
        disk_mib: number("fake_disk_mib", 512 * 1024),
        cpus: number("fake_cpus", 8),
    }
}

/// The master sends the cluster secret to an agent: only over TLS, wherever the address is set.
fn check_agent_address(ndparams: &serde_json::Map<String, Value>) -> Result<(), OpError> {
    match ndparams.get("agent_address") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(a)) if a.starts_with("https://") => Ok(()),
        Some(other) => {
            let shown = other
                .as_str()
                .map_or_else(|| other.to_string(), String::from);
            Err(OpError::prereq(
                format!("The agent address must be an https:// URL, not '{shown}'"),
                ErrorCode::WrongInput,
            ))
        }
    }
}
