//! Read views of cluster objects for RAPI: lists, bulk lists, single objects, live data.

use super::State;
use super::error::ApiError;
use crate::cluster::model::{Config, Instance, Node};
use crate::views::{self, Live};
use serde_json::{Map, Value, json};

/// Ganeti's field lists for RAPI GETs (`lib/rapi/rlib2.py`), plus the aliases clients read.
pub const I_FIELDS: &[&str] = &[
    "name",
    "admin_state",
    "os",
    "pnode",
    "snodes",
    "disk_template",
    "nic.ips",
    "nic.macs",
    "nic.modes",
    "nic.uuids",
    "nic.names",
    "nic.links",
    "nic.networks",
    "nic.networks.names",
    "nic.bridges",
    "network_port",
    "disk.sizes",
    "disk.spindles",
    "disk_usage",
    "disk.uuids",
    "disk.names",
    "beparams",
    "hvparams",
    "oper_state",
    "oper_ram",
    "oper_vcpus",
    "status",
    "custom_hvparams",
    "custom_beparams",
    "custom_nicparams",
    "ctime",
    "mtime",
    "uuid",
    "serial_no",
    "tags",
];
pub const N_FIELDS: &[&str] = &[
    "name",
    "offline",
    "master_candidate",
    "drained",
    "dtotal",
    "dfree",
    "sptotal",
    "spfree",
    "mtotal",
    "mnode",
    "mfree",
    "pinst_cnt",
    "sinst_cnt",
    "ctotal",
    "cnos",
    "cnodes",
    "csockets",
    "pip",
    "sip",
    "role",
    "pinst_list",
    "sinst_list",
    "master_capable",
    "vm_capable",
    "ndparams",
    "group.uuid",
    "ctime",
    "mtime",
    "uuid",
    "serial_no",
    "tags",
];
pub const G_FIELDS: &[&str] = &[
    "alloc_policy",
    "name",
    "node_cnt",
    "node_list",
    "ipolicy",
    "custom_ipolicy",
    "diskparams",
    "custom_diskparams",
    "ndparams",
    "custom_ndparams",
    "ctime",
    "mtime",
    "uuid",
    "serial_no",
    "tags",
];
pub const NET_FIELDS: &[&str] = &[
    "name",
    "network",
    "gateway",
    "network6",
    "gateway6",
    "mac_prefix",
    "free_count",
    "reserved_count",
    "map",
    "group_list",
    "inst_list",
    "external_reservations",
    "ctime",
    "mtime",
    "uuid",
    "serial_no",
    "tags",
];

/// Asks the backend about these nodes only (instance views need no node data).
pub async fn live_nodes<'a>(state: &State, nodes: impl Iterator<Item = &'a Node>) -> Live {
    let mut live = Live::default();
    for node in nodes.filter(|n| !n.offline) {
        if let Ok(info) = state.live.node_info(&node.name).await {
            live.nodes.insert(node.name.clone(), info);
        }
    }
    live
}

/// Asks the backend about these instances only (node views need no instance data).
pub async fn live_instances<'a>(state: &State, insts: impl Iterator<Item = &'a Instance>) -> Live {
    let mut live = Live::default();
    let backend = &state.live;
    for inst in insts {
        // One failed call marks the node: its other instances are not asked again.
        if live.unreachable.contains(&inst.pnode) {
            continue;
        }
        match backend.instance_state(&inst.pnode, &inst.name).await {
            Ok(Some(s)) => {
                live.instances.insert(inst.name.clone(), s);
            }
            Ok(None) => {}
            Err(e) if e.kind == crate::backends::FailureKind::NodeUnreachable => {
                live.unreachable.insert(inst.pnode.clone());
            }
            Err(_) => {}
        }
    }
    live
}

fn object(fields: &[&str], get: impl Fn(&str) -> Option<views::Cell>) -> Value {
    let mut m = Map::new();
    for f in fields {
        m.insert(
            (*f).to_string(),
            get(f).map_or(Value::Null, views::Cell::into_value),
        );
    }
    Value::Object(m)
}

pub fn instance_json(cfg: &Config, live: &Live, inst: &crate::cluster::model::Instance) -> Value {
    let mut v = object(I_FIELDS, |f| views::instance_field(cfg, live, inst, f));
    // Clients read `beparams.memory` (legacy alias of maxmem).
    if let Some(be) = v.get_mut("beparams").and_then(Value::as_object_mut) {
        let mem = be.get("maxmem").cloned().unwrap_or(json!(128));
        be.insert("memory".into(), mem);
    }
    v
}

pub fn node_json(cfg: &Config, live: &Live, node: &crate::cluster::model::Node) -> Value {
    object(N_FIELDS, |f| views::node_field(cfg, live, node, f))
}

pub fn group_json(cfg: &Config, group: &crate::cluster::model::Group) -> Value {
    object(G_FIELDS, |f| views::group_field(cfg, group, f))
}

pub fn network_json(cfg: &Config, net: &crate::cluster::model::Network) -> Value {
    object(NET_FIELDS, |f| views::network_field(cfg, net, f))
}

/// `[{"id": name, "uri": "/2/<kind>/<name>"}]`.
/// `[{"id"|"name": ..., "uri": ...}]`: upstream names the key `name` for groups and networks
/// (`BuildUriList(..., uri_fields=("name", "uri"))`) and `id` for everything else.
pub fn uri_list<'a>(kind: &str, names: impl Iterator<Item = &'a String>) -> Value {
    let key = if kind == "groups" || kind == "networks" {
        "name"
    } else {
        "id"
    };
    Value::Array(
        names
            .map(|n| json!({key: n, "uri": format!("/2/{kind}/{n}")}))
            .collect(),
    )
}

pub fn unknown(kind: &str, name: &str) -> ApiError {
    let what = match kind {
        "instance" => format!("Instance '{name}' not known"),
        "node" => format!("Node '{name}' not known"),
        "group" => format!("Node group '{name}' not found"),
        _ => format!("Network '{name}' not found"),
    };
    ApiError::not_found(what)
}

/// The Python type name of a JSON value, for upstream's "Type is 'X'" messages.
pub fn python_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "NoneType",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}
