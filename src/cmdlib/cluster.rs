//! Cluster-wide opcodes: parameter changes, config redistribution, queries, OS diagnose, and the
//! test delay.

use super::*;
use crate::locking::{LockLevel, LockMode};
use crate::opcodes::OpId;
use std::time::Duration;

pub fn plan(op: &OpCode, cfg: &Config) -> Result<LockPlan, OpError> {
    let mut p = LockPlan::default();
    match op.id() {
        OpId::ClusterSetParams => {
            p.add_all(LockLevel::Node, cfg.nodes.keys().cloned(), LockMode::Shared);
            p.add_all(
                LockLevel::Instance,
                cfg.instances.keys().cloned(),
                LockMode::Shared,
            );
            p.add_all(
                LockLevel::NodeGroup,
                cfg.groups.keys().cloned(),
                LockMode::Shared,
            );
        }
        OpId::ClusterRedistConf => {
            p.add_all(LockLevel::Node, cfg.nodes.keys().cloned(), LockMode::Shared);
        }
        OpId::TestDelay => {
            let duration = op.get("duration").and_then(Value::as_f64).unwrap_or(0.0);
            if duration <= 0.0 {
                return Err(OpError::prereq_bare("Duration must be greater than zero"));
            }
            // Upstream's sleep refuses what the OS cannot sleep ("sleep length is too large").
            if Duration::try_from_secs_f64(duration).is_err() || duration > MAX_DELAY_S {
                return Err(OpError::prereq(
                    format!("Invalid sleep duration {duration}: at most {MAX_DELAY_S} seconds"),
                    ErrorCode::WrongInput,
                ));
            }
            let nodes = delay_nodes(op, cfg)?;
            if !op.get("no_locks").and_then(Value::as_bool).unwrap_or(true) {
                p.add_all(LockLevel::Node, nodes, LockMode::Exclusive);
            }
        }
        OpId::Query | OpId::QueryFields => {
            let what = op.str("what").unwrap_or_default();
            if what != "cluster" && what != "os" {
                return Err(OpError::prereq(
                    format!("Unknown query resource '{what}'"),
                    ErrorCode::WrongInput,
                ));
            }
            if what == "cluster" && op.bool("use_locking") {
                return Err(OpError::prereq(
                    "Can not use locking for cluster queries",
                    ErrorCode::WrongInput,
                ));
            }
        }
        _ => {}
    }
    Ok(p)
}

/// `on_nodes` resolved to node names, plus the master when `on_master`.
fn delay_nodes(op: &OpCode, cfg: &Config) -> Result<Vec<String>, OpError> {
    let mut nodes: Vec<String> = op
        .strings("on_nodes")
        .iter()
        .map(|n| find_node(cfg, n).map(|n| n.name.clone()))
        .collect::<Result<_, _>>()?;
    let on_master = op.get("on_master").and_then(Value::as_bool).unwrap_or(true);
    if on_master && !nodes.contains(&cfg.cluster.master) {
        nodes.push(cfg.cluster.master.clone());
    }
    Ok(nodes)
}

pub async fn execute(ctx: &Ctx) -> Result<Value, OpError> {
    match ctx.op.id() {
        OpId::TestDelay => test_delay(ctx).await,
        OpId::ClusterSetParams => set_params(ctx).await,
        OpId::ClusterQuery => Ok(crate::views::cluster_info(&ctx.cfg())),
        OpId::OsDiagnose => os_diagnose(ctx),
        OpId::Query | OpId::QueryFields => Err(OpError::prereq(
            "Queries are answered directly by /2/query, not through jobs",
            ErrorCode::WrongInput,
        )),
        OpId::ClusterRedistConf => redist_conf(ctx),
        OpId::ClusterVerifyConfig => Ok(verify_config(ctx)),
        other => Err(OpError::exec(format!(
            "Opcode {other} is not a cluster opcode"
        ))),
    }
}

/// Logs each broken invariant as upstream's verify does and answers whether there was none.
fn verify_config(ctx: &Ctx) -> Value {
    ctx.log("* Verifying cluster config");
    let errors = crate::cluster::verify::verify(&ctx.cfg());
    for e in &errors {
        ctx.log(format!("  - ERROR: cluster: {e}"));
    }
    Value::Bool(errors.is_empty())
}

fn redist_conf(ctx: &Ctx) -> Result<Value, OpError> {
    // One master holds the only copy: nothing to send (upstream logs nothing to the job either).
    ctx.stop_for_dry_run();
    Ok(Value::Null)
}

/// One year: longer test delays are a mistake, and very long ones overflow a `Duration`.
const MAX_DELAY_S: f64 = 365.0 * 86400.0;

async fn test_delay(ctx: &Ctx) -> Result<Value, OpError> {
    let op = &ctx.op;
    let duration = op.get("duration").and_then(Value::as_f64).unwrap_or(0.0);
    let nodes = delay_nodes(op, &ctx.cfg())?;
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    let repeat = op.int("repeat").unwrap_or(0).max(0);
    let on_nodes = !op.strings("on_nodes").is_empty();
    for i in 0..repeat.max(1) {
        if repeat > 0 {
            ctx.info(format!("Test delay iteration {i}/{}", repeat - 1));
        }
        if op.bool("interruptible") {
            (ctx.feedback)(
                "delay-test",
                json!([format!("/run/gantry/delay-{}.sock", ctx.job_id)]),
            );
        }
        if on_nodes {
            // Every node sleeps at once; dropping the set on error aborts the others.
            let mut waits = tokio::task::JoinSet::new();
            for node in &nodes {
                let (backend, node) = (ctx.backend.clone(), node.clone());
                waits.spawn(async move { (backend.delay(&node, duration).await, node) });
            }
            while let Some(joined) = waits.join_next().await {
                let (result, node) = joined.map_err(|e| OpError::exec(e.to_string()))?;
                result.map_err(|e| {
                    OpError::exec(format!("Failure during rpc call to node {node}: {e}"))
                })?;
            }
        } else {
            tokio::time::sleep(Duration::from_secs_f64(duration.clamp(0.0, MAX_DELAY_S))).await;
        }
    }
    Ok(Value::Null)
}

const HYPERVISORS: &[&str] = &["kvm", "xen-pvm", "xen-hvm", "chroot", "lxc", "fake"];

async fn set_params(ctx: &Ctx) -> Result<Value, OpError> {
    let op = &ctx.op;
    let cfg = ctx.cfg();
    let mut c = cfg.cluster.clone();
    if let Some(prefix) = op.str("mac_prefix") {
        let ok = prefix.split(':').count() == 3
            && prefix
                .split(':')
                .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
        if !ok {
            return Err(OpError::prereq(
                format!("Invalid MAC address prefix '{prefix}'"),
                ErrorCode::WrongInput,
            ));
        }
        c.mac_prefix = prefix.into();
    }
    if let Some(hvs) = op.get("enabled_hypervisors") {
        let list: Vec<String> = hvs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        if list.is_empty() || list.iter().any(|h| !HYPERVISORS.contains(&h.as_str())) {
            return Err(OpError::prereq(
                "Invalid list of enabled hypervisors",
                ErrorCode::WrongInput,
            ));
        }
        c.enabled_hypervisors = list;
    }
    if let Some(t) = op.get("enabled_disk_templates").and_then(Value::as_array) {
        let list: Vec<String> = t
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        if list.is_empty() {
            return Err(OpError::prereq(
                "Cannot disable all disk templates",
                ErrorCode::WrongInput,
            ));
        }
        c.enabled_disk_templates = list;
    }
    if let Some(vg) = op.str("vg_name") {
        if vg.is_empty()
            && cfg
                .instances
                .values()
                .any(|i| i.disk_template == "plain" || i.disk_template == "drbd")
        {
            return Err(OpError::prereq(
                "Cannot disable lvm storage while lvm-based instances exist",
                ErrorCode::WrongInput,
            ));
        }
        c.volume_group_name = vg.into();
    }
    // Typed first: what is merged below is what the tables allow.
    let op = &typed_cluster_params(op)?;
    let merge = |target: &mut crate::cluster::model::Params, key: &str, nested: bool| {
        if let Some(changes) = op.get(key).and_then(Value::as_object) {
            for (k, v) in changes {
                match (nested, target.get_mut(k), v) {
                    (true, Some(Value::Object(cur)), Value::Object(new)) => {
                        for (k2, v2) in new {
                            cur.insert(k2.clone(), v2.clone());
                        }
                    }
                    _ => {
                        target.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    };
    merge(&mut c.hvparams, "hvparams", true);
    if let Some(be) = op.get("beparams").and_then(Value::as_object) {
        let mut be = be.clone();
        crate::cluster::params::force_dict_type(&mut be, crate::cluster::params::BACKEND, &[])?;
        c.beparams.extend(be);
    }
    merge(&mut c.osparams, "osparams", true);
    merge(&mut c.os_hvp, "os_hvp", true);
    merge(&mut c.nicparams, "nicparams", false);
    merge(&mut c.ndparams, "ndparams", false);
    merge(&mut c.diskparams, "diskparams", true);
    merge(&mut c.ipolicy, "ipolicy", false);
    for (key, slot) in [
        ("candidate_pool_size", &mut c.candidate_pool_size),
        ("max_running_jobs", &mut c.max_running_jobs),
        ("max_tracked_jobs", &mut c.max_tracked_jobs),
        ("master_netmask", &mut c.master_netmask),
    ] {
        if let Some(v) = op.int(key) {
            *slot = v;
        }
    }
    for (key, slot) in [
        ("drbd_helper", &mut c.drbd_usermode_helper),
        ("master_netdev", &mut c.master_netdev),
        ("file_storage_dir", &mut c.file_storage_dir),
        ("shared_file_storage_dir", &mut c.shared_file_storage_dir),
        ("gluster_storage_dir", &mut c.gluster_storage_dir),
        ("install_image", &mut c.install_image),
        (
            "instance_communication_network",
            &mut c.instance_communication_network,
        ),
        ("zeroing_image", &mut c.zeroing_image),
    ] {
        if let Some(v) = op.str(key) {
            *slot = v.into();
        }
    }
    if let Some(a) = op.str("default_iallocator") {
        if !a.is_empty() && a != "hail" {
            return Err(OpError::prereq(
                format!("Invalid default iallocator script '{a}' specified"),
                ErrorCode::WrongInput,
            ));
        }
        c.default_iallocator = a.into();
    }
    for (key, slot) in [
        ("maintain_node_health", &mut c.maintain_node_health),
        ("prealloc_wipe_disks", &mut c.prealloc_wipe_disks),
        ("use_external_mip_script", &mut c.use_external_mip_script),
        ("modify_etc_hosts", &mut c.modify_etc_hosts),
        ("enabled_user_shutdown", &mut c.enabled_user_shutdown),
    ] {
        if let Some(v) = op.get(key).and_then(Value::as_bool) {
            *slot = v;
        }
    }
    for (key, list) in [
        ("hidden_os", &mut c.hidden_os),
        ("blacklisted_os", &mut c.blacklisted_os),
    ] {
        for pair in op.get(key).and_then(Value::as_array).into_iter().flatten() {
            let (Some(action), Some(os)) = (
                pair.get(0).and_then(Value::as_str),
                pair.get(1).and_then(Value::as_str),
            ) else {
                return Err(OpError::prereq(
                    format!("Invalid {key} modification"),
                    ErrorCode::WrongInput,
                ));
            };
            match action {
                "add" if !list.iter().any(|o| o == os) => list.push(os.into()),
                "remove" => list.retain(|o| o != os),
                "add" => {}
                _ => {
                    return Err(OpError::prereq(
                        format!("Invalid {key} action '{action}'"),
                        ErrorCode::WrongInput,
                    ));
                }
            }
        }
    }
    if let Some(v) = op.get("reserved_lvs") {
        c.reserved_lvs = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect();
    }
    if let Some(v) = op.get("uid_pool") {
        c.uid_pool = v.as_array().cloned().unwrap_or_default();
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Null);
    }
    c.meta.touch(now());
    ctx.cluster.update(|cfg| cfg.cluster = c).await?;
    Ok(Value::Null)
}

const OS_FIELDS: &[&str] = &[
    "name",
    "valid",
    "hidden",
    "blacklisted",
    "variants",
    "api_versions",
    "parameters",
    "node_status",
    "os_hvp",
    "osparams",
    "trusted",
];

fn os_diagnose(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let fields = ctx.op.strings("output_fields");
    if let Some(bad) = fields.iter().find(|f| !OS_FIELDS.contains(&f.as_str())) {
        return Err(OpError::prereq(
            format!("Unknown output fields selected: {bad}"),
            ErrorCode::WrongInput,
        ));
    }
    let names = ctx.op.strings("names");
    let wants = |f: &str| fields.iter().any(|x| x == f);
    let mut rows = vec![];
    for os in cfg.os.values() {
        if !names.is_empty() && !names.contains(&os.name) {
            continue;
        }
        let hidden = cfg.cluster.hidden_os.contains(&os.name);
        let blacklisted = cfg.cluster.blacklisted_os.contains(&os.name);
        if (hidden && !wants("hidden")) || (blacklisted && !wants("blacklisted")) {
            continue;
        }
        let row: Vec<Value> = fields
            .iter()
            .map(|f| match f.as_str() {
                "name" => json!(os.name),
                "valid" => json!(true),
                "hidden" => json!(hidden),
                "blacklisted" => json!(blacklisted),
                "variants" => json!(os.variants),
                "api_versions" => json!(os.api_versions),
                "parameters" => json!(os.parameters),
                "trusted" => json!(os.trusted),
                "os_hvp" => cfg
                    .cluster
                    .os_hvp
                    .get(&os.name)
                    .cloned()
                    .unwrap_or(json!({})),
                "osparams" => cfg
                    .cluster
                    .osparams
                    .get(&os.name)
                    .cloned()
                    .unwrap_or(json!({})),
                _ => {
                    let status: serde_json::Map<String, Value> = cfg
                        .nodes
                        .values()
                        .map(|n| {
                            (
                                n.meta.uuid.clone(),
                                json!([[
                                    "/srv/ganeti/os",
                                    true,
                                    "",
                                    os.variants,
                                    os.parameters,
                                    os.api_versions,
                                    os.trusted
                                ]]),
                            )
                        })
                        .collect();
                    Value::Object(status)
                }
            })
            .collect();
        rows.push(Value::Array(row));
    }
    Ok(Value::Array(rows))
}

/// The cluster modification with its parameter dictionaries checked and converted: hvparams
/// per hypervisor, diskparams per template, nicparams, ndparams.
fn typed_cluster_params(op: &OpCode) -> Result<OpCode, OpError> {
    use crate::cluster::params;
    let mut op = op.clone();
    let p = op.params_mut();
    if let Some(Value::Object(m)) = p.get_mut("hvparams") {
        params::check_nested(params::hypervisor_tables(), m, "hypervisor")?;
    }
    if let Some(Value::Object(m)) = p.get_mut("diskparams") {
        params::check_nested(params::disk_tables(), m, "disk template")?;
    }
    if let Some(Value::Object(m)) = p.get_mut("nicparams") {
        params::check_nicparams(m, &[])?;
    }
    if let Some(Value::Object(m)) = p.get_mut("ndparams") {
        params::force_dict_type(m, params::NODE, &[])?;
    }
    if let Some(Value::Object(m)) = p.get_mut("ipolicy") {
        params::check_ipolicy(m, &[])?;
    }
    Ok(op)
}
