//! `/2/query/<resource>` and `/2/query/<resource>/fields`: new-style `[status, value]` cells.
//! `PUT` takes a query filter (`qfilter`, or the pre-2.7 `filter`) in Ganeti's list language.

use super::State;
use super::error::ApiError;
use super::objects::{live_instances, live_nodes};
use super::request::Request;
use crate::qlang::Filter;
use crate::views;
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

/// GET reads `fields` from the query string only; PUT from the body, then the query string.
fn requested(req: &Request) -> Result<Vec<String>, ApiError> {
    if req.method == "PUT"
        && let Some(f) = req.body.get("fields")
    {
        return match f {
            Value::Array(a) if a.iter().all(Value::is_string) => Ok(a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()),
            _ => Err(ApiError::bad_request(
                "The 'fields' parameter should be a list of strings",
            )),
        };
    }
    match req.query_str("fields") {
        Some(f) => Ok(f.split(',').map(|s| s.trim().to_string()).collect()),
        None => Err(ApiError::bad_request("Missing 'fields' query argument")),
    }
}

fn query_filter(req: &Request, known: &[&str]) -> Result<Option<Filter>, ApiError> {
    if req.method != "PUT" {
        return Ok(None);
    }
    let raw = match req.body.get("qfilter") {
        None | Some(Value::Null) => req.body.get("filter"),
        given => given,
    };
    let Some(raw) = raw.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let filter = Filter::parse(raw)
        .map_err(|e| ApiError::bad_request(format!("Invalid query filter: {e}")))?;
    if let Some(f) = filter.fields().into_iter().find(|f| !known.contains(f)) {
        return Err(ApiError::bad_request(format!(
            "Invalid query filter: unknown field '{f}'"
        )));
    }
    Ok(Some(filter))
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
        return Err(ApiError::unsupported(&req.method));
    }
    let known = known_fields(what)?;
    let fields = requested(req)?;
    let filter = query_filter(req, &known)?;
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
    let cfg = state.config.snapshot();
    // A row is kept when the filter matches; `None` rows are dropped below.
    let row = |get: &dyn Fn(&str) -> Option<Value>| -> Option<Value> {
        if let Some(f) = &filter
            && !f.matches(get)
        {
            return None;
        }
        Some(Value::Array(fields.iter().map(|f| cell(get(f))).collect()))
    };
    let data: Vec<Option<Value>> = match what {
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
        _ => {
            let mut rows = state.queue.live_jobs(|j| row(&|f| j.field(f)));
            // Archived jobs appear only when asked for: by id in the filter, or by the field.
            let named: Vec<u64> = filter
                .as_ref()
                .map(|f| {
                    f.equality_literals("id")
                        .into_iter()
                        .filter_map(Value::as_u64)
                        .collect()
                })
                .unwrap_or_default();
            if !named.is_empty() || fields.iter().any(|f| f == "archived") {
                let ids = (!named.is_empty()).then_some(named.as_slice());
                let logs = fields.iter().any(|f| f == "oplog")
                    || filter
                        .as_ref()
                        .is_some_and(|f| f.fields().contains(&"oplog"));
                let archived = state
                    .queue
                    .map_archived(ids, logs, |j| row(&|f| j.field(f)))
                    .await;
                rows.extend(archived);
            }
            rows
        }
    };
    let data: Vec<Value> = data.into_iter().flatten().collect();
    Ok(json!({"fields": defs, "data": data}))
}
