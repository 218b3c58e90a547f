//! gantry's own logical units (issue 17): leases, pools, checkouts and on-demand requests. Each
//! changes the configuration in one update, like every other opcode, so a lease or a checkout
//! is as durable, dry-runnable and visible in `/2/jobs` as an instance creation.

use super::*;
use crate::cluster::leases::{
    self, BEFORE_END, BeforeEndAction, DEFAULT_LIFETIME, EndAction, Lease, Pool, PoolRequest,
    Reservation,
};
use crate::locking::{LockLevel, LockMode};
use serde_json::Map;
use std::collections::BTreeMap;

pub fn plan(op: &OpCode, cfg: &Config) -> Result<LockPlan, OpError> {
    let mut p = LockPlan::default();
    if op.id() == OpId::GantryLeaseCreate {
        for name in op.strings("instances") {
            let inst = find_instance(cfg, &name)?;
            p.add(LockLevel::Instance, inst.name.clone(), LockMode::Shared);
        }
    }
    Ok(p)
}

pub async fn execute(ctx: &Ctx) -> Result<Value, OpError> {
    match ctx.op.id() {
        OpId::GantryLeaseCreate => lease_create(ctx).await,
        OpId::GantryLeaseModify => lease_modify(ctx).await,
        OpId::GantryLeaseRemove => lease_remove(ctx).await,
        OpId::GantryLeaseEvent => lease_event(ctx).await,
        OpId::GantryPoolSet => pool_set(ctx).await,
        OpId::GantryPoolRemove => pool_remove(ctx).await,
        OpId::GantryPoolCheckout => checkout(ctx).await,
        OpId::GantryPoolRequest => request(ctx).await,
        _ => request_delete(ctx).await,
    }
}

/// Lease, pool and request names: DNS-label characters, at most 63 (a pool's name starts its
/// members' instance names); a lease may have dots, as a checkout's lease is named after its
/// instance.
fn check_name(kind: &str, name: &str) -> Result<(), OpError> {
    let dots = kind == "lease";
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || (dots && c == '.'));
    if ok {
        Ok(())
    } else {
        Err(OpError::prereq(
            format!(
                "Invalid {kind} name '{name}': use letters, digits and '-'{} (at most 63, starting with a letter or digit)",
                if dots { ", '.'" } else { "" }
            ),
            ErrorCode::WrongInput,
        ))
    }
}

fn number(op: &OpCode, name: &str) -> Option<f64> {
    op.get(name).and_then(Value::as_f64)
}

fn unknown_lease(name: &str) -> OpError {
    OpError::prereq(
        format!("Lease '{name}' not known"),
        ErrorCode::UnknownEntity,
    )
}

fn unknown_pool(name: &str) -> OpError {
    OpError::prereq(format!("Pool '{name}' not known"), ErrorCode::UnknownEntity)
}

fn parse<T: serde::de::DeserializeOwned>(op: &OpCode, name: &str) -> Option<T> {
    op.get(name)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// String values of an object parameter (vmpooler tags), refusing anything else.
fn string_map(op: &OpCode, name: &str) -> Result<Option<BTreeMap<String, String>>, OpError> {
    let Some(value) = op.get(name) else {
        return Ok(None);
    };
    let bad = || {
        OpError::prereq(
            format!("Parameter '{name}' must map names to strings"),
            ErrorCode::WrongInput,
        )
    };
    let obj = value.as_object().ok_or_else(bad)?;
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_str().ok_or_else(bad)?.to_string())))
        .collect::<Result<_, OpError>>()
        .map(Some)
}

fn check_window(start: f64, end: f64, before_end: Option<f64>) -> Result<(), OpError> {
    if !(start.is_finite() && end.is_finite() && end > start) {
        return Err(OpError::prereq(
            "A lease must end after it starts",
            ErrorCode::WrongInput,
        ));
    }
    if let Some(b) = before_end
        && !(b.is_finite() && b <= end)
    {
        return Err(OpError::prereq(
            "A lease's before_end time must not be after its end",
            ErrorCode::WrongInput,
        ));
    }
    Ok(())
}

async fn lease_create(ctx: &Ctx) -> Result<Value, OpError> {
    let op = &ctx.op;
    let cfg = ctx.cfg();
    let name = op.str("lease_name").unwrap_or_default().to_string();
    check_name("lease", &name)?;
    if cfg.leases.contains_key(&name) {
        return Err(OpError::prereq(
            format!("Lease '{name}' already exists"),
            ErrorCode::AlreadyExists,
        ));
    }
    let t = now();
    let start = number(op, "start").unwrap_or(t);
    let end = number(op, "end").unwrap_or(t);
    let before_end = number(op, "before_end");
    check_window(start, end, before_end)?;
    if end <= t {
        return Err(OpError::prereq(
            "A lease must end in the future",
            ErrorCode::WrongInput,
        ));
    }
    let mut instances = vec![];
    for n in op.strings("instances") {
        let inst = find_instance(&cfg, &n)?;
        if let Some(other) = leases::lease_of(&cfg, &inst.name) {
            return Err(OpError::prereq(
                format!(
                    "Instance '{}' is already held by lease '{}'",
                    inst.name, other.name
                ),
                ErrorCode::WrongState,
            ));
        }
        instances.push(inst.name.clone());
    }
    let reservation = match op.get("reservation") {
        Some(spec) => Some(reserve(ctx, &cfg, spec, start.max(t), end).await?),
        None => None,
    };
    let lease = Lease {
        name: name.clone(),
        owner: op.str("owner").unwrap_or("admin").to_string(),
        start,
        end,
        before_end,
        before_end_action: parse(op, "before_end_action").unwrap_or(BeforeEndAction::None),
        on_end: parse(op, "on_end").unwrap_or(EndAction::Remove),
        instances,
        reservation,
        pool: op.str("pool").map(String::from),
        tags: string_map(op, "tags")?.unwrap_or_default(),
        done: BTreeMap::new(),
        ctime: t,
    };
    if let Some(r) = &lease.reservation {
        ctx.info(format!(
            "reserving {} MiB memory, {} vCPUs, {} MiB disk on node {}",
            r.memory, r.vcpus, r.disk, r.node
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(lease.to_json());
    }
    let answer = lease.to_json();
    ctx.cluster
        .update(move |cfg| cfg.leases.insert(name, lease))
        .await?;
    Ok(answer)
}

/// Picks the node of the group that can hold `spec` for the whole window (the one with most
/// memory left after other reservations at their fullest in it), as the allocator would for an
/// instance of that size.
async fn reserve(
    ctx: &Ctx,
    cfg: &Config,
    spec: &Value,
    start: f64,
    end: f64,
) -> Result<Reservation, OpError> {
    let bad = |what: &str| {
        OpError::prereq(
            format!("Invalid reservation: {what}"),
            ErrorCode::WrongInput,
        )
    };
    let obj = spec.as_object().ok_or_else(|| bad("not an object"))?;
    for key in obj.keys() {
        if !["group", "memory", "vcpus", "disk"].contains(&key.as_str()) {
            return Err(bad(&format!("unknown key '{key}'")));
        }
    }
    let size = |key: &str| -> Result<u64, OpError> {
        match obj.get(key) {
            None => Ok(0),
            Some(v) => crate::opcodes::parse_size_mib(v).ok_or_else(|| bad(key)),
        }
    };
    let (memory, disk) = (size("memory")?, size("disk")?);
    let vcpus = match obj.get("vcpus") {
        None => 0,
        Some(v) => v.as_u64().ok_or_else(|| bad("vcpus"))?,
    };
    let group_uuid = match obj.get("group").and_then(Value::as_str) {
        Some(g) => find_group_uuid(cfg, g)?,
        None => cfg
            .groups
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| bad("no node group"))?,
    };
    let group_name = cfg
        .groups
        .get(&group_uuid)
        .map(|g| g.name.clone())
        .unwrap_or_default();
    let mut best: Option<(u64, String)> = None;
    for node in cfg.nodes.values() {
        if node.group != group_uuid || node.offline || node.drained || !node.vm_capable {
            continue;
        }
        let Ok(info) = ctx.backend.node_info(&node.name).await else {
            continue;
        };
        let held = leases::held_back_during(cfg, &node.name, start, end);
        let mem_left = info.memory_free.saturating_sub(held.memory);
        let disk_left = info.disk_free.saturating_sub(held.disk);
        if mem_left >= memory
            && disk_left >= disk
            && best.as_ref().is_none_or(|(m, _)| mem_left > *m)
        {
            best = Some((mem_left, node.name.clone()));
        }
    }
    let (_, node) = best.ok_or_else(|| {
        OpError::prereq(
            format!(
                "Not enough free capacity in node group '{group_name}' for a reservation of {memory} MiB memory and {disk} MiB disk"
            ),
            ErrorCode::InsufficientResources,
        )
    })?;
    Ok(Reservation {
        group: group_name,
        node,
        memory,
        vcpus,
        disk,
    })
}

async fn lease_modify(ctx: &Ctx) -> Result<Value, OpError> {
    let op = &ctx.op;
    let cfg = ctx.cfg();
    let name = op.str("lease_name").unwrap_or_default().to_string();
    let mut lease = cfg
        .leases
        .get(&name)
        .cloned()
        .ok_or_else(|| unknown_lease(&name))?;
    if let Some(end) = number(op, "end") {
        lease.end = end;
    }
    if let Some(before) = number(op, "before_end") {
        lease.before_end = Some(before);
    }
    check_window(lease.start, lease.end, lease.before_end)?;
    // A before-end time moved into the future is a new event.
    if lease.before_end.is_some_and(|b| b > now()) {
        lease.done.remove(BEFORE_END);
    }
    if let Some(tags) = string_map(op, "tags")? {
        lease.tags.extend(tags);
    }
    if ctx.stop_for_dry_run() {
        return Ok(lease.to_json());
    }
    let answer = lease.to_json();
    ctx.cluster
        .update(move |cfg| {
            if let Some(l) = cfg.leases.get_mut(&name) {
                *l = lease;
            }
        })
        .await?;
    Ok(answer)
}

async fn lease_remove(ctx: &Ctx) -> Result<Value, OpError> {
    let name = ctx.op.str("lease_name").unwrap_or_default().to_string();
    if !ctx.cfg().leases.contains_key(&name) {
        return Err(unknown_lease(&name));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    ctx.cluster
        .update(move |cfg| cfg.leases.remove(&name))
        .await?;
    Ok(Value::Null)
}

/// The first opcode of an event's job: records the before-end event, or ends the lease (the
/// rest of the job carries the actions).
async fn lease_event(ctx: &Ctx) -> Result<Value, OpError> {
    let name = ctx.op.str("lease_name").unwrap_or_default().to_string();
    let event = ctx.op.str("event").unwrap_or_default().to_string();
    let Some(lease) = ctx.cfg().leases.get(&name).cloned() else {
        ctx.warn(format!("lease {name} no longer exists; nothing to do"));
        return Ok(Value::Null);
    };
    crate::metrics::METRICS.lease_event(&event);
    let left = (lease.end - now()).max(0.0);
    ctx.info(match event.as_str() {
        BEFORE_END => format!(
            "lease {name} ends in {left:.0} s (at {}); before-end action: {:?}",
            lease.end, lease.before_end_action
        ),
        _ => format!("lease {name} ended; end action: {:?}", lease.on_end),
    });
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let job = ctx.job_id;
    ctx.cluster
        .update(move |cfg| {
            if event == BEFORE_END {
                if let Some(l) = cfg.leases.get_mut(&name) {
                    l.done.insert(event, job);
                }
            } else {
                cfg.leases.remove(&name);
            }
        })
        .await?;
    Ok(Value::Null)
}

/// The instance create opcode a pool's template makes for `instance`: the pool tag added, the
/// template's own name and version fields ignored.
pub fn pool_create_op(pool: &str, template: &Params, instance: &str) -> Result<OpCode, OpError> {
    let mut params: Map<String, Value> = template.clone();
    params.remove("__version__");
    params.remove("name");
    // The RAPI body's name for the OS (rlib2 renames it too).
    if let Some(os) = params.remove("os") {
        params.entry("os_type").or_insert(os);
    }
    params.insert("instance_name".into(), json!(instance));
    let mut tags: Vec<Value> = params
        .get("tags")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    tags.push(json!(leases::pool_tag(pool)));
    params.insert("tags".into(), Value::Array(tags));
    params.entry("mode").or_insert(json!("create"));
    OpCode::build(OpId::InstanceCreate, params).map_err(|e| {
        OpError::prereq(
            format!("Invalid pool template: {}", e.0),
            ErrorCode::WrongInput,
        )
    })
}

use crate::cluster::model::Params;

async fn pool_set(ctx: &Ctx) -> Result<Value, OpError> {
    let op = &ctx.op;
    let name = op.str("pool_name").unwrap_or_default().to_string();
    check_name("pool", &name)?;
    let existing = ctx.cfg().pools.get(&name).cloned();
    let template = match (op.get("template"), &existing) {
        (Some(Value::Object(t)), _) => t.clone(),
        (Some(_), _) => {
            return Err(OpError::prereq(
                "A pool's template must be an instance create body",
                ErrorCode::WrongInput,
            ));
        }
        (None, Some(p)) => p.template.clone(),
        (None, None) => {
            return Err(OpError::prereq(
                format!("Pool '{name}' does not exist; creating it needs a template"),
                ErrorCode::WrongInput,
            ));
        }
    };
    pool_create_op(&name, &template, &format!("{name}-check"))?;
    let size = op.int("size").map(|s| s.max(0) as u64);
    if size.is_some_and(|s| s > MAX_POOL_SIZE) {
        return Err(OpError::prereq(
            format!("A pool holds at most {MAX_POOL_SIZE} ready instances"),
            ErrorCode::WrongInput,
        ));
    }
    let lifetime = op.int("lifetime").map(|s| s.max(1) as u64);
    let pool = match existing {
        Some(mut p) => {
            p.template = template;
            p.size = size.unwrap_or(p.size);
            p.lifetime = lifetime.unwrap_or(p.lifetime);
            p
        }
        None => Pool {
            name: name.clone(),
            size: size.unwrap_or(1),
            template,
            lifetime: lifetime.unwrap_or(DEFAULT_LIFETIME),
            checkouts: 0,
            requests: BTreeMap::new(),
            ctime: now(),
        },
    };
    let answer = leases::pool_json(&ctx.cfg(), &pool);
    if ctx.stop_for_dry_run() {
        return Ok(answer);
    }
    ctx.cluster
        .update(move |cfg| cfg.pools.insert(name, pool))
        .await?;
    Ok(answer)
}

async fn pool_remove(ctx: &Ctx) -> Result<Value, OpError> {
    let name = ctx.op.str("pool_name").unwrap_or_default().to_string();
    let cfg = ctx.cfg();
    if !cfg.pools.contains_key(&name) {
        return Err(unknown_pool(&name));
    }
    let ready: Vec<String> = leases::ready_members(&cfg, &name)
        .into_iter()
        .map(|i| i.name.clone())
        .collect();
    if ctx.stop_for_dry_run() {
        return Ok(json!({"jobs": []}));
    }
    ctx.cluster
        .update(move |cfg| cfg.pools.remove(&name))
        .await?;
    let mut jobs = vec![];
    for inst in ready {
        let mut params = Map::new();
        params.insert("instance_name".into(), json!(inst));
        jobs.push(vec![OpCode::build(OpId::InstanceRemove, params).map_err(
            |e| OpError::exec(format!("cannot build the removal of {inst}: {}", e.0)),
        )?]);
    }
    Ok(json!({"jobs": ctx.submit_children(jobs).await?}))
}

async fn checkout(ctx: &Ctx) -> Result<Value, OpError> {
    let op = &ctx.op;
    let pool_name = op.str("pool_name").unwrap_or_default().to_string();
    let requester = op.str("requester").unwrap_or_default().to_string();
    let request = op.str("request_id").map(String::from);
    let tags = string_map(op, "tags")?.unwrap_or_default();
    let lifetime = op.int("lifetime").map(|l| l.max(1) as u64);
    let empty = || {
        OpError::prereq(
            format!("Pool '{pool_name}' has no ready instance"),
            ErrorCode::TempInsufficientResources,
        )
    };
    // Checked on a snapshot first, so a refusal writes nothing; decided again in the update.
    {
        let cfg = ctx.cfg();
        let pool = cfg
            .pools
            .get(&pool_name)
            .ok_or_else(|| unknown_pool(&pool_name))?;
        if let Some(r) = &request
            && pool.requests.get(r).is_none_or(|r| r.missing() == 0)
        {
            return Err(OpError::prereq(
                format!("Request '{r}' of pool '{pool_name}' needs no more instances"),
                ErrorCode::WrongState,
            ));
        }
        if leases::ready_members(&cfg, &pool_name).is_empty() {
            return Err(empty());
        }
        if ctx.stop_for_dry_run() {
            return Ok(Value::Null);
        }
    }
    let t = now();
    let pool_for_update = pool_name.clone();
    let chosen = ctx
        .cluster
        .update(move |cfg| {
            let inst = leases::ready_members(cfg, &pool_for_update)
                .first()
                .map(|i| i.name.clone())?;
            let pool = cfg.pools.get_mut(&pool_for_update)?;
            let lifetime = lifetime
                .or_else(|| {
                    request
                        .as_ref()
                        .and_then(|r| pool.requests.get(r)?.lifetime)
                })
                .unwrap_or(pool.lifetime);
            pool.checkouts += 1;
            if let Some(r) = request.as_ref().and_then(|r| pool.requests.get_mut(r)) {
                r.granted.push(inst.clone());
            }
            if let Some(i) = cfg.instances.get_mut(&inst) {
                i.meta.tags.insert(leases::user_tag(&requester));
                i.meta.touch(t);
            }
            let lease = Lease {
                name: inst.clone(),
                owner: requester,
                start: t,
                end: t + lifetime as f64,
                before_end: None,
                before_end_action: BeforeEndAction::None,
                on_end: EndAction::Remove,
                instances: vec![inst.clone()],
                reservation: None,
                pool: Some(pool_for_update),
                tags,
                done: BTreeMap::new(),
                ctime: t,
            };
            cfg.leases.insert(inst.clone(), lease);
            Some(inst)
        })
        .await?;
    let inst = chosen.ok_or_else(empty)?;
    ctx.info(format!("checked out {inst} from pool {pool_name}"));
    crate::metrics::METRICS.pool_checkout(&pool_name);
    Ok(json!({"instance": inst, "lease": inst, "pool": pool_name}))
}

async fn request(ctx: &Ctx) -> Result<Value, OpError> {
    let op = &ctx.op;
    let id = op.str("request_id").unwrap_or_default().to_string();
    check_name("request", &id)?;
    let cfg = ctx.cfg();
    if cfg.pools.values().any(|p| p.requests.contains_key(&id)) {
        return Err(OpError::prereq(
            format!("Request '{id}' already exists"),
            ErrorCode::AlreadyExists,
        ));
    }
    let wanted = op
        .get("pools")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if wanted.is_empty() {
        return Err(OpError::prereq(
            "A request names at least one pool",
            ErrorCode::WrongInput,
        ));
    }
    let mut counts = vec![];
    for (pool, count) in &wanted {
        if !cfg.pools.contains_key(pool) {
            return Err(unknown_pool(pool));
        }
        // vmpooler sends counts as strings.
        let n = count
            .as_u64()
            .or_else(|| count.as_str().and_then(|s| s.parse().ok()))
            .filter(|n| (1..=MAX_REQUEST).contains(n))
            .ok_or_else(|| {
                OpError::prereq(
                    format!("Invalid count for pool '{pool}': 1 to {MAX_REQUEST}"),
                    ErrorCode::WrongInput,
                )
            })?;
        counts.push((pool.clone(), n));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let requester = op.str("requester").unwrap_or_default().to_string();
    let lifetime = op.int("lifetime").map(|l| l.max(1) as u64);
    let t = now();
    let answer = json!({"request_id": id});
    ctx.cluster
        .update(move |cfg| {
            for (pool, count) in counts {
                if let Some(p) = cfg.pools.get_mut(&pool) {
                    p.requests.insert(
                        id.clone(),
                        PoolRequest {
                            id: id.clone(),
                            requester: requester.clone(),
                            count,
                            lifetime,
                            granted: vec![],
                            ctime: t,
                        },
                    );
                }
            }
        })
        .await?;
    Ok(answer)
}

/// Largest ready size of a pool.
const MAX_POOL_SIZE: u64 = 1000;

/// Largest on-demand request per pool.
const MAX_REQUEST: u64 = 50;

async fn request_delete(ctx: &Ctx) -> Result<Value, OpError> {
    let id = ctx.op.str("request_id").unwrap_or_default().to_string();
    if !ctx
        .cfg()
        .pools
        .values()
        .any(|p| p.requests.contains_key(&id))
    {
        return Err(OpError::prereq(
            format!("Request '{id}' not known"),
            ErrorCode::UnknownEntity,
        ));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let t = now();
    ctx.cluster
        .update(move |cfg| {
            let mut granted = vec![];
            for pool in cfg.pools.values_mut() {
                if let Some(r) = pool.requests.remove(&id) {
                    granted.extend(r.granted);
                }
            }
            // Their leases end now: the engine removes them as at any lease end.
            for lease in cfg.leases.values_mut() {
                if lease.instances.iter().any(|i| granted.contains(i)) {
                    lease.end = lease.end.min(t);
                }
            }
        })
        .await?;
    Ok(Value::Null)
}
