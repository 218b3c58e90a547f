//! OP_INSTANCE_SET_PARAMS: parameter changes, disk and NIC modification lists, offline state.

use super::*;

/// One parsed modification: (action, identifier, params).
type Modification = (String, Value, Value);

/// Accepts both forms of spec opcodes.md §2.4.
fn parse_mods(list: &Value, kind: &str) -> Result<Vec<Modification>, OpError> {
    let wrong = |m: String| OpError::prereq(m, ErrorCode::WrongInput);
    let items = list
        .as_array()
        .ok_or_else(|| wrong(format!("Invalid {kind} modification list")))?;
    let mut out = vec![];
    let mut legacy_adds = 0;
    for item in items {
        let parts = item
            .as_array()
            .ok_or_else(|| wrong(format!("Invalid {kind} modification")))?;
        match parts.len() {
            3 => out.push((
                parts[0].as_str().unwrap_or_default().to_string(),
                parts[1].clone(),
                parts[2].clone(),
            )),
            2 => match &parts[0] {
                Value::String(a) if ["add", "attach", "remove", "detach"].contains(&a.as_str()) => {
                    legacy_adds += 1;
                    out.push((a.clone(), json!(-1), parts[1].clone()));
                }
                Value::Number(n) => {
                    out.push(("modify".into(), Value::Number(n.clone()), parts[1].clone()))
                }
                _ => return Err(wrong(format!("Invalid {kind} modification"))),
            },
            _ => return Err(wrong(format!("Invalid {kind} modification"))),
        }
    }
    if legacy_adds > 1 {
        return Err(wrong(format!(
            "Only one {kind} add/attach/remove/detach operation is supported at a time"
        )));
    }
    for (action, _, params) in &out {
        if !["add", "attach", "remove", "detach", "modify"].contains(&action.as_str()) {
            return Err(wrong(format!(
                "Invalid {kind} modification action '{action}'"
            )));
        }
        if (action == "remove" || action == "detach")
            && params.as_object().is_some_and(|p| !p.is_empty())
        {
            return Err(wrong(format!(
                "No settings should be passed when removing a {kind}"
            )));
        }
    }
    Ok(out)
}

/// Resolves an identifier (index, -1, name or UUID) to a position.
fn resolve<T>(
    items: &[T],
    ident: &Value,
    kind: &str,
    name_of: impl Fn(&T) -> (Option<&str>, &str),
) -> Result<usize, OpError> {
    let not_found = || {
        OpError::prereq(
            format!("Cannot find {kind} with identifier {}", ident_text(ident)),
            ErrorCode::UnknownEntity,
        )
    };
    if let Some(i) = ident
        .as_i64()
        .or_else(|| ident.as_str().and_then(|s| s.parse().ok()))
    {
        let idx = if i == -1 { items.len() as i64 - 1 } else { i };
        return if idx >= 0 && (idx as usize) < items.len() {
            Ok(idx as usize)
        } else {
            Err(not_found())
        };
    }
    let want = ident.as_str().unwrap_or_default();
    items
        .iter()
        .position(|it| {
            let (name, uuid) = name_of(it);
            name == Some(want) || uuid == want
        })
        .ok_or_else(not_found)
}

fn ident_text(v: &Value) -> String {
    v.as_str()
        .map(String::from)
        .unwrap_or_else(|| v.to_string())
}

fn merge_params(target: &mut Params, changes: &Params, prefix: &str, log: &mut Vec<Value>) {
    for (k, v) in changes {
        if v.as_str() == Some("default") || v.is_null() {
            target.remove(k);
            log.push(json!([format!("{prefix}/{k}"), "default"]));
        } else {
            target.insert(k.clone(), v.clone());
            log.push(json!([format!("{prefix}/{k}"), v]));
        }
    }
}

pub async fn execute(ctx: &Ctx) -> Result<Value, OpError> {
    let cfg = ctx.cfg();
    let op = &ctx.op;
    let mut inst = op_instance(op, &cfg)?.clone();
    let mut changes = vec![];
    let obj = |k: &str| {
        op.get(k)
            .and_then(Value::as_object)
            .filter(|o| !o.is_empty())
            .cloned()
    };
    let any = ["nics", "disks"].iter().any(|k| {
        op.get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    }) || ["beparams", "hvparams", "osparams", "osparams_private"]
        .iter()
        .any(|k| obj(k).is_some())
        || [
            "disk_template",
            "os_name",
            "pnode",
            "runtime_mem",
            "offline",
        ]
        .iter()
        .any(|k| op.get(k).is_some());
    if !any {
        return Err(OpError::prereq(
            "No changes submitted",
            ErrorCode::WrongInput,
        ));
    }
    if op.get("disk_template").is_some()
        && op
            .get("disks")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    {
        return Err(OpError::prereq(
            "Disk template conversion and other disk changes not supported at the same time",
            ErrorCode::WrongInput,
        ));
    }
    let running = is_running(ctx, &inst).await?;
    if let Some(mut be) = obj("beparams") {
        crate::cluster::params::force_dict_type(
            &mut be,
            crate::cluster::params::BACKEND,
            &["default"],
        )?;
        if let Some(mem) = be.remove("memory") {
            be.insert("maxmem".into(), mem.clone());
            be.insert("minmem".into(), mem);
        }
        for key in ["maxmem", "minmem"] {
            if let Some(v) = be
                .get(key)
                .cloned()
                .filter(|v| v.as_str() != Some("default"))
            {
                let mib = parse_size_mib(&v).ok_or_else(|| {
                    OpError::prereq(format!("Invalid {key} value"), ErrorCode::WrongInput)
                })?;
                be.insert(key.into(), json!(mib));
            }
        }
        merge_params(&mut inst.beparams, &be, "be", &mut changes);
    }
    if let Some(mut hv) = obj("hvparams") {
        crate::cluster::params::check_hvparams(&inst.hypervisor, &mut hv, &["default"])?;
        merge_params(&mut inst.hvparams, &hv, "hv", &mut changes);
    }
    if let Some(os) = obj("osparams") {
        merge_params(&mut inst.osparams, &os, "os", &mut changes);
    }
    if let Some(os_name) = op.str("os_name") {
        check_os(&cfg, os_name, &inst.pnode, op.bool("force_variant"))?;
        inst.os = os_name.to_string();
        changes.push(json!(["os", os_name]));
    }
    if obj("osparams").is_some() || op.str("os_name").is_some() {
        validate_os_params(ctx, &cfg, &inst.os, &inst.pnode, &inst.osparams).await?;
    }
    if let Some(mem) = op.get("runtime_mem").and_then(parse_size_mib) {
        if !running {
            return Err(OpError::prereq(
                format!("Instance {} is not running", inst.name),
                ErrorCode::WrongState,
            ));
        }
        changes.push(json!(["runtime_memory", mem]));
    }
    if let Some(off) = op.get("offline").and_then(Value::as_bool) {
        if off && running {
            return Err(OpError::prereq(
                format!(
                    "Instance '{}' is running, can't change to offline without being down first",
                    inst.name
                ),
                ErrorCode::WrongState,
            ));
        }
        if off != (inst.admin_state == AdminState::Offline) {
            inst.admin_state = if off {
                AdminState::Offline
            } else {
                AdminState::Down
            };
            changes.push(json!(["admin_state", inst.admin_state.as_str()]));
        }
    }
    if let Some(t) = op.str("disk_template") {
        if t == inst.disk_template {
            return Err(OpError::prereq(
                format!("Instance already has disk template {t}"),
                ErrorCode::WrongInput,
            ));
        }
        if !cfg.cluster.enabled_disk_templates.iter().any(|e| e == t) {
            return Err(OpError::prereq(
                format!("Disk template '{t}' is not enabled in cluster"),
                ErrorCode::WrongState,
            ));
        }
        if running {
            return Err(OpError::prereq(
                format!(
                    "Instance {} is running, cannot change disk template",
                    inst.name
                ),
                ErrorCode::WrongState,
            ));
        }
        if t == "drbd" {
            let remote = op.str("remote_node").ok_or_else(|| OpError::prereq("Changing the disk template to a mirrored one requires specifying a secondary node", ErrorCode::WrongInput))?;
            inst.snodes = vec![find_node(&cfg, remote)?.name.clone()];
        } else {
            inst.snodes.clear();
        }
        inst.disk_template = t.to_string();
        inst.disks
            .iter_mut()
            .for_each(|d| d.dev_type = t.to_string());
        changes.push(json!(["disk_template", t]));
    }
    let mut new_disks = vec![];
    if let Some(list) = op.get("disks") {
        for (action, ident, params) in parse_mods(list, "disk")? {
            match action.as_str() {
                "add" | "attach" => {
                    if inst.disks.len() >= 16 {
                        return Err(OpError::prereq(
                            "Instance has too many disks (16), cannot add more",
                            ErrorCode::WrongState,
                        ));
                    }
                    let disk = disk_from_json(&params, &inst.disk_template, inst.disks.len())?;
                    let pos = ident
                        .as_i64()
                        .filter(|i| *i >= 0)
                        .map_or(inst.disks.len(), |i| (i as usize).min(inst.disks.len()));
                    changes.push(json!([
                        format!("disk/{pos}"),
                        format!("add:size={},mode={}", disk.size, disk.mode)
                    ]));
                    new_disks.push(disk.size);
                    inst.disks.insert(pos, disk);
                }
                "remove" | "detach" => {
                    let idx = resolve(&inst.disks, &ident, "disk", |d| {
                        (d.name.as_deref(), &d.uuid)
                    })?;
                    if running {
                        ctx.warn(
                            "Disk removal from a running instance takes effect at the next start",
                        );
                    }
                    inst.disks.remove(idx);
                    changes.push(json!([format!("disk/{idx}"), action]));
                }
                _ => {
                    let idx = resolve(&inst.disks, &ident, "disk", |d| {
                        (d.name.as_deref(), &d.uuid)
                    })?;
                    let p = params.as_object().cloned().unwrap_or_default();
                    if p.contains_key("size") {
                        return Err(OpError::prereq(
                            "Disk size change not possible, use grow-disk",
                            ErrorCode::WrongInput,
                        ));
                    }
                    if let Some(m) = p.get("mode").and_then(Value::as_str) {
                        inst.disks[idx].mode = m.into();
                        changes.push(json!([format!("disk.mode/{idx}"), m]));
                    }
                    if let Some(n) = p.get("name") {
                        inst.disks[idx].name = n.as_str().map(String::from);
                        changes.push(json!([format!("disk.name/{idx}"), n]));
                    }
                }
            }
        }
    }
    if let Some(list) = op.get("nics") {
        for (action, ident, params) in parse_mods(list, "NIC")? {
            match action.as_str() {
                "add" | "attach" => {
                    if inst.nics.len() >= 8 {
                        return Err(OpError::prereq(
                            "Instance has too many network interfaces (8), cannot add more",
                            ErrorCode::WrongState,
                        ));
                    }
                    let taken: Vec<String> = inst.nics.iter().map(|n| n.mac.clone()).collect();
                    let mut nic = nic_from_json(&cfg, &params, &taken)?;
                    super::create::reserve_mac(ctx, &nic.mac)?;
                    if let (Some(net), Some(ip)) = (nic.network.clone(), nic.ip.clone()) {
                        nic.ip = Some(super::create::claim_ip(ctx, &net, &ip)?);
                    }
                    let idx = inst.nics.len();
                    changes.push(json!([
                        format!("nic.{idx}"),
                        format!(
                            "add:mac={},ip={},mode={},link={},network={}",
                            nic.mac,
                            nic.ip.clone().unwrap_or("None".into()),
                            nic.mode,
                            nic.link,
                            nic.network.clone().unwrap_or("None".into())
                        )
                    ]));
                    inst.nics.push(nic);
                }
                "remove" | "detach" => {
                    let idx = resolve(&inst.nics, &ident, "NIC", |n| (n.name.as_deref(), &n.uuid))?;
                    inst.nics.remove(idx);
                    changes.push(json!([format!("nic.{idx}"), "remove"]));
                }
                _ => {
                    let idx = resolve(&inst.nics, &ident, "NIC", |n| (n.name.as_deref(), &n.uuid))?;
                    let p = params.as_object().cloned().unwrap_or_default();
                    let nic = &mut inst.nics[idx];
                    for (k, v) in &p {
                        let s = v.as_str().map(String::from);
                        match k.as_str() {
                            "mac" => {
                                let prefix = nic
                                    .network
                                    .as_ref()
                                    .and_then(|n| cfg.networks.get(n))
                                    .and_then(|n| n.mac_prefix.clone());
                                nic.mac = nic_mac(&cfg, s.as_deref(), &[], prefix.as_deref())?;
                                super::create::reserve_mac(ctx, &nic.mac)?;
                            }
                            // On a network, the address must be a free one of it (or `pool`).
                            "ip" => {
                                nic.ip = match (nic.network.clone(), nic_ip(s)?) {
                                    (Some(net), Some(ip)) => {
                                        Some(super::create::claim_ip(ctx, &net, &ip)?)
                                    }
                                    (_, ip) => ip.filter(|ip| ip != "pool"),
                                }
                            }
                            "mode" => nic.mode = s.unwrap_or_default(),
                            "link" => nic.link = s.unwrap_or_default(),
                            "vlan" => nic.vlan = s.unwrap_or_default(),
                            "name" => nic.name = s,
                            other => {
                                return Err(OpError::prereq(
                                    format!("Invalid NIC parameter '{other}'"),
                                    ErrorCode::WrongInput,
                                ));
                            }
                        }
                        changes.push(json!([format!("nic.{k}/{idx}"), v]));
                    }
                }
            }
        }
    }
    if let Some(pn) = op.str("pnode") {
        let target = find_node(&cfg, pn)?.name.clone();
        if running && !op.bool("force") {
            return Err(OpError::prereq(
                format!("Instance is still running on {}", inst.pnode),
                ErrorCode::WrongState,
            ));
        }
        inst.pnode = target.clone();
        changes.push(json!(["pnode", target]));
    }
    if ctx.stop_for_dry_run() {
        return Ok(Value::Array(changes));
    }
    if !new_disks.is_empty() || op.get("disks").is_some() {
        let spec = vm_spec(&cfg, &inst)?;
        for node in std::iter::once(&inst.pnode).chain(inst.snodes.iter()) {
            ctx.backend
                .create_disks(node, &spec)
                .await
                .map_err(|e| exec_failure("Failed to create disks", e))?;
        }
    }
    let t = now();
    inst.meta.touch(t);
    ctx.cluster
        .update(|cfg| {
            // The networks record exactly the addresses the instance's NICs now hold.
            release_ips(cfg, &inst.name);
            for nic in &inst.nics {
                if let (Some(net), Some(ip)) = (&nic.network, &nic.ip)
                    && let Some(n) = cfg.networks.get_mut(net)
                {
                    n.used.insert(ip.clone(), inst.name.clone());
                }
            }
            cfg.instances.insert(inst.name.clone(), inst);
        })
        .await?;
    Ok(Value::Array(changes))
}
