//! Tag opcodes on the cluster, instances, nodes, groups and networks.

use super::*;
use crate::locking::{LockLevel, LockMode};
use crate::opcodes::OpId;
use std::collections::BTreeSet;

/// The lock and the object an opcode's `kind`/`name` designate.
fn target(op: &OpCode, cfg: &Config) -> Result<(String, Option<(LockLevel, String)>), OpError> {
    let name = op.str("name").unwrap_or_default();
    let kind = op.str("kind").unwrap_or("cluster");
    Ok(match kind {
        "cluster" => ("cluster".into(), None),
        "instance" => {
            let n = find_instance(cfg, name)?.name.clone();
            (n.clone(), Some((LockLevel::Instance, n)))
        }
        "node" => {
            let n = find_node(cfg, name)?.name.clone();
            (n.clone(), Some((LockLevel::Node, n)))
        }
        "nodegroup" => {
            let u = find_group_uuid(cfg, name)?;
            (u.clone(), Some((LockLevel::NodeGroup, u)))
        }
        _ => {
            let u = find_network_uuid(cfg, name)?;
            (u.clone(), Some((LockLevel::Network, u)))
        }
    })
}

pub fn plan(op: &OpCode, cfg: &Config) -> Result<LockPlan, OpError> {
    let mut p = LockPlan::default();
    if op.id() == OpId::TagsSearch {
        return Ok(p);
    }
    if let (_, Some((level, name))) = target(op, cfg)? {
        let mode = if op.id() == OpId::TagsGet {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        };
        p.add(level, name, mode);
    }
    Ok(p)
}

/// The tag set of the object `kind`/`key` in `cfg`.
pub fn tags_of<'a>(cfg: &'a mut Config, kind: &str, key: &str) -> Option<&'a mut BTreeSet<String>> {
    match kind {
        "cluster" => Some(&mut cfg.cluster.meta.tags),
        "instance" => cfg.instances.get_mut(key).map(|o| &mut o.meta.tags),
        "node" => cfg.nodes.get_mut(key).map(|o| &mut o.meta.tags),
        "nodegroup" => cfg.groups.get_mut(key).map(|o| &mut o.meta.tags),
        _ => cfg.networks.get_mut(key).map(|o| &mut o.meta.tags),
    }
}

const MAX_TAGS: usize = 4096;

pub async fn execute(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    if op.id() == OpId::TagsSearch {
        return search(&cfg, op.str("pattern").unwrap_or_default());
    }
    let kind = op.str("kind").unwrap_or("cluster").to_string();
    let (key, _) = target(op, &cfg)?;
    let mut scratch = (*cfg).clone();
    let current = tags_of(&mut scratch, &kind, &key)
        .cloned()
        .unwrap_or_default();
    let tags = op.strings("tags");
    match op.id() {
        OpId::TagsGet => Ok(json!(current)),
        OpId::TagsSet => {
            for t in &tags {
                check_tag(t)?;
            }
            if current.len() + tags.len() > MAX_TAGS {
                return Err(OpError::tag("Too many tags"));
            }
            if ctx.stop_for_dry_run() {
                return Ok(Value::Null);
            }
            let t = now();
            ctx.cluster
                .update(|cfg| {
                    if let Some(set) = tags_of(cfg, &kind, &key) {
                        set.extend(tags);
                    }
                    touch(cfg, &kind, &key, t);
                })
                .await?;
            Ok(Value::Null)
        }
        _ => {
            for t in &tags {
                check_tag(t)?;
            }
            let missing: Vec<&String> = tags.iter().filter(|t| !current.contains(*t)).collect();
            if !missing.is_empty() {
                let list: Vec<String> = missing.iter().map(|t| format!("'{t}'")).collect();
                return Err(OpError::prereq(
                    format!("Tag(s) {} not found", list.join(", ")),
                    ErrorCode::WrongInput,
                ));
            }
            if ctx.stop_for_dry_run() {
                return Ok(Value::Null);
            }
            let t = now();
            ctx.cluster
                .update(|cfg| {
                    if let Some(set) = tags_of(cfg, &kind, &key) {
                        for tag in &tags {
                            set.remove(tag);
                        }
                    }
                    touch(cfg, &kind, &key, t);
                })
                .await?;
            Ok(Value::Null)
        }
    }
}

fn touch(cfg: &mut Config, kind: &str, key: &str, t: f64) {
    let meta = match kind {
        "cluster" => Some(&mut cfg.cluster.meta),
        "instance" => cfg.instances.get_mut(key).map(|o| &mut o.meta),
        "node" => cfg.nodes.get_mut(key).map(|o| &mut o.meta),
        "nodegroup" => cfg.groups.get_mut(key).map(|o| &mut o.meta),
        _ => cfg.networks.get_mut(key).map(|o| &mut o.meta),
    };
    if let Some(m) = meta {
        m.touch(t);
    }
}

/// Substring search: gantry has no regex engine; a plain pattern matches as a substring and the
/// anchors `^`/`$` are honoured, which covers what `gnt-cluster search-tags` users type.
fn search(cfg: &Config, pattern: &str) -> Result<Value, OpError> {
    let (anchored_start, rest) = match pattern.strip_prefix('^') {
        Some(r) => (true, r),
        None => (false, pattern),
    };
    let (anchored_end, needle) = match rest.strip_suffix('$') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let matches = |t: &str| match (anchored_start, anchored_end) {
        (true, true) => t == needle,
        (true, false) => t.starts_with(needle),
        (false, true) => t.ends_with(needle),
        (false, false) => t.contains(needle),
    };
    let mut out = vec![];
    let mut add = |path: String, tags: &BTreeSet<String>| {
        for t in tags.iter().filter(|t| matches(t)) {
            out.push(json!([path.clone(), t]));
        }
    };
    add("/cluster".into(), &cfg.cluster.meta.tags);
    for i in cfg.instances.values() {
        add(format!("/instances/{}", i.name), &i.meta.tags);
    }
    for n in cfg.nodes.values() {
        add(format!("/nodes/{}", n.name), &n.meta.tags);
    }
    for g in cfg.groups.values() {
        add(format!("/nodegroup/{}", g.name), &g.meta.tags);
    }
    for n in cfg.networks.values() {
        add(format!("/networks/{}", n.name), &n.meta.tags);
    }
    Ok(Value::Array(out))
}
