//! Node group opcodes.

use super::*;
use crate::cluster::model::Group;
use crate::locking::{LockLevel, LockMode};
use crate::opcodes::OpId;

pub fn plan(op: &OpCode, cfg: &Config) -> Result<LockPlan, OpError> {
    let mut p = LockPlan::default();
    let name = op.str("group_name").unwrap_or_default();
    match op.id() {
        OpId::GroupAdd => {
            if cfg.group_by_name(name).is_some() {
                return Err(OpError::prereq(
                    format!(
                        "Desired group name '{name}' already exists as a node group (UUID: {})",
                        cfg.group_by_name(name)
                            .map(|g| g.meta.uuid.clone())
                            .unwrap_or_default()
                    ),
                    ErrorCode::AlreadyExists,
                ));
            }
            p.add(LockLevel::NodeGroup, name, LockMode::Exclusive);
        }
        OpId::GroupAssignNodes => {
            let target = find_group_uuid(cfg, name)?;
            p.add(LockLevel::NodeGroup, target, LockMode::Exclusive);
            for n in op.strings("nodes") {
                let node = find_node(cfg, &n)?;
                p.add(
                    LockLevel::NodeGroup,
                    node.group.clone(),
                    LockMode::Exclusive,
                );
                p.add(LockLevel::Node, node.name.clone(), LockMode::Exclusive);
            }
        }
        OpId::GroupEvacuate => {
            find_group_uuid(cfg, name)?;
            p.add_all(
                LockLevel::NodeGroup,
                cfg.groups.keys().cloned(),
                LockMode::Shared,
            );
        }
        _ => {
            let uuid = find_group_uuid(cfg, name)?;
            p.add(LockLevel::NodeGroup, uuid, LockMode::Exclusive);
        }
    }
    Ok(p)
}

fn check_alloc_policy(op: &OpCode) -> Result<(), OpError> {
    match op.str("alloc_policy") {
        Some(p) if !["preferred", "last_resort", "unallocable"].contains(&p) => {
            Err(OpError::prereq(
                format!("Invalid allocation policy '{p}'"),
                ErrorCode::WrongInput,
            ))
        }
        _ => Ok(()),
    }
}

fn obj(op: &OpCode, key: &str) -> Option<crate::cluster::model::Params> {
    op.get(key).and_then(Value::as_object).cloned()
}

pub async fn execute(ctx: &Ctx) -> Result<Value, OpError> {
    match ctx.op.id() {
        OpId::GroupAdd => add(ctx).await,
        OpId::GroupRemove => remove(ctx).await,
        OpId::GroupRename => rename(ctx).await,
        OpId::GroupSetParams => set_params(ctx).await,
        OpId::GroupAssignNodes => assign_nodes(ctx).await,
        OpId::GroupEvacuate => evacuate(ctx).await,
        other => Err(OpError::exec(format!(
            "Opcode {other} is not a group opcode"
        ))),
    }
}

async fn add(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("group_name").unwrap_or_default().to_string();
    check_alloc_policy(op)?;
    if cfg.group_by_name(&name).is_some() {
        return Err(OpError::prereq(
            format!("Desired group name '{name}' already exists as a node group"),
            ErrorCode::AlreadyExists,
        ));
    }
    let mut ndparams = obj(op, "ndparams").unwrap_or_default();
    let mut diskparams = obj(op, "diskparams").unwrap_or_default();
    let mut ipolicy = obj(op, "ipolicy").unwrap_or_default();
    {
        use crate::cluster::params;
        params::force_dict_type(&mut ndparams, params::NODE, &[])?;
        params::check_nested(params::disk_tables(), &mut diskparams, "disk template")?;
        params::check_ipolicy(&mut ipolicy, &[])?;
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let meta = crate::cluster::model::Meta::new(crate::util::new_uuid(), now());
    let group = Group {
        name,
        meta,
        alloc_policy: op.str("alloc_policy").unwrap_or("preferred").into(),
        ndparams,
        diskparams,
        ipolicy,
        hv_state: obj(op, "hv_state").unwrap_or_default(),
        disk_state: obj(op, "disk_state").unwrap_or_default(),
        networks: Default::default(),
    };
    ctx.cluster
        .update(|cfg| cfg.groups.insert(group.meta.uuid.clone(), group))
        .await?;
    Ok(Value::Null)
}

async fn remove(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("group_name").unwrap_or_default().to_string();
    check_alloc_policy(op)?;
    let uuid = find_group_uuid(&cfg, &name)?;
    let nodes = cfg.group_nodes(&uuid);
    if !nodes.is_empty() {
        return Err(OpError::prereq(
            format!(
                "Group '{name}' not empty, has the following nodes: {}",
                nodes.join(", ")
            ),
            ErrorCode::WrongState,
        ));
    }
    if cfg.groups.len() == 1 {
        return Err(OpError::prereq(
            format!("Group '{name}' is the only group, cannot be removed"),
            ErrorCode::WrongState,
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    ctx.cluster.update(|cfg| cfg.groups.remove(&uuid)).await?;
    Ok(Value::Null)
}

async fn rename(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("group_name").unwrap_or_default().to_string();
    check_alloc_policy(op)?;
    let uuid = find_group_uuid(&cfg, &name)?;
    let new = op.str("new_name").unwrap_or_default().to_string();
    if cfg.group_by_name(&new).is_some() {
        return Err(OpError::prereq(
            format!("Desired new name '{new}' clashes with existing node group"),
            ErrorCode::AlreadyExists,
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let t = now();
    let n2 = new.clone();
    ctx.cluster
        .update(move |cfg| {
            if let Some(g) = cfg.groups.get_mut(&uuid) {
                g.name = n2;
                g.meta.touch(t);
            }
        })
        .await?;
    Ok(Value::String(new))
}

async fn set_params(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("group_name").unwrap_or_default().to_string();
    check_alloc_policy(op)?;
    let uuid = find_group_uuid(&cfg, &name)?;
    let mut changes = vec![];
    let mut group = cfg.groups[&uuid].clone();
    // Upstream reports the parameter dictionaries it changed, not the policy.
    let policy = op.str("alloc_policy");
    if let Some(p) = policy {
        group.alloc_policy = p.into();
    }
    for (key, target) in [
        ("ndparams", &mut group.ndparams),
        ("diskparams", &mut group.diskparams),
        ("ipolicy", &mut group.ipolicy),
        ("hv_state", &mut group.hv_state),
        ("disk_state", &mut group.disk_state),
    ] {
        if let Some(mut p) = obj(op, key) {
            use crate::cluster::params;
            match key {
                "ndparams" => params::force_dict_type(&mut p, params::NODE, &["default"])?,
                "diskparams" => {
                    params::check_nested(params::disk_tables(), &mut p, "disk template")?
                }
                "ipolicy" => params::check_ipolicy(&mut p, &["default"])?,
                _ => {}
            }
            for (k, v) in p {
                if v.as_str() == Some("default") {
                    target.remove(&k);
                } else {
                    target.insert(k, v);
                }
            }
            changes.push(json!([key, target.clone()]));
        }
    }
    if changes.is_empty() && policy.is_none() {
        return Err(OpError::prereq(
            "Please pass at least one modification",
            ErrorCode::WrongInput,
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Array(changes));
    }
    group.meta.touch(now());
    ctx.cluster
        .update(|cfg| cfg.groups.insert(uuid, group))
        .await?;
    Ok(Value::Array(changes))
}

async fn assign_nodes(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("group_name").unwrap_or_default().to_string();
    check_alloc_policy(op)?;
    let uuid = find_group_uuid(&cfg, &name)?;
    let nodes: Vec<String> = op
        .strings("nodes")
        .iter()
        .map(|n| find_node(&cfg, n).map(|n| n.name.clone()))
        .collect::<Result<_, _>>()?;
    if !op.bool("force") {
        for n in &nodes {
            for i in cfg.instances.values() {
                let spans = i
                    .snodes
                    .iter()
                    .chain(std::iter::once(&i.pnode))
                    .any(|x| x == n)
                    && i.snodes.iter().chain(std::iter::once(&i.pnode)).any(|x| {
                        !nodes.contains(x) && cfg.nodes.get(x).is_some_and(|o| o.group != uuid)
                    });
                if spans {
                    return Err(OpError::prereq(
                        format!(
                            "Hypothetical group assignment would split instance {}; use force to override",
                            i.name
                        ),
                        ErrorCode::WrongState,
                    ));
                }
            }
        }
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let t = now();
    ctx.cluster
        .update(|cfg| {
            for n in &nodes {
                if let Some(node) = cfg.nodes.get_mut(n) {
                    node.group = uuid.clone();
                    node.meta.touch(t);
                }
            }
        })
        .await?;
    Ok(Value::Null)
}

async fn evacuate(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let name = op.str("group_name").unwrap_or_default().to_string();
    check_alloc_policy(op)?;
    let uuid = find_group_uuid(&cfg, &name)?;
    for g in op.strings("target_groups") {
        find_group_uuid(&cfg, &g)?;
    }
    let nodes = cfg.group_nodes(&uuid);
    let targets = op.strings("target_groups");
    if targets
        .iter()
        .any(|g| cfg.group_by_name(g).is_some_and(|t| t.meta.uuid == uuid))
    {
        return Err(OpError::prereq(
            format!("Group '{name}' can't be evacuated into itself"),
            ErrorCode::WrongInput,
        ));
    }
    // Every instance's moves first: the parent fails rather than leave some behind.
    let mut jobs = vec![];
    let mut stuck = vec![];
    for inst in cfg.instances.values().filter(|i| nodes.contains(&i.pnode)) {
        match super::instance::group_moves(&cfg, inst, &targets) {
            Ok(ops) => jobs.push(ops),
            Err(why) => stuck.push(why),
        }
    }
    if !stuck.is_empty() {
        return Err(OpError::prereq(
            format!(
                "Can't compute group evacuation using iallocator '{}': {}",
                cfg.cluster.default_iallocator,
                stuck.join("; ")
            ),
            ErrorCode::InsufficientResources,
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(json!({"jobs": []}));
    }
    let submitted = ctx.submit_children(jobs).await?;
    Ok(json!({"jobs": submitted}))
}
