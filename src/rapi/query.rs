//! `/2/query/<resource>` and `/2/query/<resource>/fields`: new-style `[status, value]` cells.
//! Query filters are not evaluated yet: a request with a filter is refused with 501.

use super::State;
use super::error::ApiError;
use super::objects::{live_instances, live_nodes};
use super::request::Request;
use crate::cluster::views;
use serde_json::{Value, json};

fn known_fields(what: &str) -> Result<Vec<&'static str>, ApiError> {
    Ok(match what {
        "instance" => views::INSTANCE_FIELDS.to_vec(),
        "node" => views::NODE_FIELDS.to_vec(),
        "group" => views::GROUP_FIELDS.to_vec(),
        "network" => views::NETWORK_FIELDS.to_vec(),
        "job" => crate::jobqueue::job::JOB_FIELDS.to_vec(),
        other => {
            return Err(ApiError::not_found(format!(
                "Unknown query resource '{other}'"
            )));
        }
    })
}

fn definition(name: &str) -> Value {
    json!({"name": name, "title": name.to_uppercase(), "kind": "other", "doc": name})
}

fn requested(req: &Request) -> Result<Vec<String>, ApiError> {
    if let Some(f) = req.query_str("fields") {
        return Ok(f
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect());
    }
    match req.body.get("fields") {
        Some(Value::Array(a)) => Ok(a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()),
        _ => Err(ApiError::bad_request(
            "Missing the required 'fields' parameter",
        )),
    }
}

pub fn fields(req: &Request, what: &str) -> Result<Value, ApiError> {
    let known = known_fields(what)?;
    let wanted: Vec<String> = match req.query_str("fields") {
        Some(f) => f.split(',').map(String::from).collect(),
        None => known.iter().map(|s| s.to_string()).collect(),
    };
    Ok(
        json!({"fields": wanted.iter().map(|f| if known.contains(&f.as_str()) { definition(f) } else { json!({"name": f, "title": f, "kind": "unknown", "doc": "Unknown field"}) }).collect::<Vec<_>>()}),
    )
}

pub async fn query(state: &State, req: &Request, what: &str) -> Result<Value, ApiError> {
    if req.method != "GET" && req.method != "PUT" {
        return Err(ApiError::new(
            501,
            format!("Method {} is unsupported", req.method),
        ));
    }
    let known = known_fields(what)?;
    let fields = requested(req)?;
    if req.body.get("qfilter").is_some_and(|f| !f.is_null()) || req.query_str("qfilter").is_some() {
        return Err(ApiError::new(
            501,
            "Query filters are not implemented by gantry yet",
        ));
    }
    let cell = |v: Option<Value>| match v {
        Some(Value::Null) => json!([2, null]),
        Some(v) => json!([0, v]),
        None => json!([1, null]),
    };
    let defs: Vec<Value> = fields
        .iter()
        .map(|f| {
            if known.contains(&f.as_str()) {
                definition(f)
            } else {
                json!({"name": f, "title": f, "kind": "unknown", "doc": "Unknown field"})
            }
        })
        .collect();
    let cfg = state.queue.cluster().snapshot();
    let row = |get: &dyn Fn(&str) -> Option<Value>| -> Value {
        Value::Array(fields.iter().map(|f| cell(get(f))).collect())
    };
    let data: Vec<Value> = match what {
        "instance" => {
            let live = live_instances(state, cfg.instances.values()).await;
            cfg.instances
                .values()
                .map(|i| row(&|f| views::instance_field(&cfg, &live, i, f)))
                .collect()
        }
        "node" => {
            let live = live_nodes(state, cfg.nodes.values()).await;
            cfg.nodes
                .values()
                .map(|n| row(&|f| views::node_field(&cfg, &live, n, f)))
                .collect()
        }
        "group" => cfg
            .groups
            .values()
            .map(|g| row(&|f| views::group_field(&cfg, g, f)))
            .collect(),
        "network" => cfg
            .networks
            .values()
            .map(|n| row(&|f| views::network_field(&cfg, n, f)))
            .collect(),
        _ => state.queue.live_jobs(|j| row(&|f| j.field(f))),
    };
    Ok(json!({"fields": defs, "data": data}))
}
