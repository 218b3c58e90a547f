//! `/2/query/<resource>` and `/2/query/<resource>/fields`: new-style `[status, value]` cells.
//! `PUT` takes a query filter (`qfilter`, or the pre-2.7 `filter`) in Ganeti's list language.

use super::State;
use super::error::ApiError;
use super::objects::{live_instances, live_nodes};
use super::request::Request;
use crate::qlang::Filter;
use crate::views::{self, Cell};
use serde_json::{Value, json};

/// The resource's field definitions; 404 for a resource upstream cannot query.
fn resource(what: &str) -> Result<&'static [views::Definition], ApiError> {
    views::definitions(what)
        .ok_or_else(|| ApiError::not_found(format!("Unknown query resource '{what}'")))
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

fn query_filter(req: &Request, what: &str) -> Result<Option<Filter>, ApiError> {
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
    if let Some(f) = filter
        .fields()
        .into_iter()
        .find(|f| !views::is_known(what, f))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid query filter: unknown field '{f}'"
        )));
    }
    Ok(Some(filter))
}

/// `GET /2/query/<resource>/fields[?fields=a,b]`: definitions, all of them by default.
pub fn fields(req: &Request, what: &str) -> Result<Value, ApiError> {
    let defs = resource(what)?;
    let listed: Vec<Value> = match req.query_str("fields") {
        Some(f) => f
            .split(',')
            .map(|name| views::definition(what, name.trim()))
            .collect(),
        None => defs.iter().map(|d| json!(d)).collect(),
    };
    Ok(json!({ "fields": listed }))
}

/// A cell for the answer: unknown fields are `[1, null]` (RS_UNKNOWN).
fn cell(c: Option<Cell>) -> Value {
    c.map_or(json!([1, null]), |c| c.to_json())
}

pub async fn query(state: &State, req: &Request, what: &str) -> Result<Value, ApiError> {
    if req.method != "GET" && req.method != "PUT" {
        return Err(ApiError::unsupported(&req.method));
    }
    resource(what)?;
    let fields = requested(req)?;
    let filter = query_filter(req, what)?;
    let defs: Vec<Value> = fields.iter().map(|f| views::definition(what, f)).collect();
    let cfg = state.config.snapshot();
    // A row is kept when the filter matches; `None` rows are dropped below.
    let row = |get: &dyn Fn(&str) -> Option<Cell>| -> Option<Value> {
        if let Some(f) = &filter
            && !f.matches(&|name| get(name).map(Cell::into_value))
        {
            return None;
        }
        Some(Value::Array(fields.iter().map(|f| cell(get(f))).collect()))
    };
    let normal = |v: Option<Value>| v.map(Cell::Normal);
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
        "lock" => locks(state)
            .iter()
            .map(|l| row(&|f| normal(l.get(f).cloned())))
            .collect(),
        "filter" => state
            .queue
            .filter_rules()
            .iter()
            .map(|r| row(&|f| normal(r.field(f))))
            .collect(),
        "export" => exports(state, &cfg)
            .await
            .into_iter()
            .map(|(node, export)| {
                row(&|f| match f {
                    "node" => Some(Cell::Normal(json!(node))),
                    "export" => Some(export.clone().map_or(Cell::NoData, Cell::Normal)),
                    _ => None,
                })
            })
            .collect(),
        _ => {
            let logs = fields.iter().any(|f| f == "oplog")
                || filter
                    .as_ref()
                    .is_some_and(|f| f.fields().contains(&"oplog"));
            let mut rows = state
                .queue
                .map_jobs(logs, |j| row(&|f| normal(j.field(f))))
                .await;
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
                let archived = state
                    .queue
                    .map_archived(ids, logs, |j| row(&|f| normal(j.field(f))))
                    .await;
                rows.extend(archived);
            }
            rows
        }
    };
    let data: Vec<Value> = data.into_iter().flatten().collect();
    Ok(json!({"fields": defs, "data": data}))
}

/// The lock query's rows (upstream `Ganeti.Query.Locks`): owners and waiters by job id.
fn locks(state: &State) -> Vec<serde_json::Map<String, Value>> {
    use crate::locking::{LockLevel, LockMode};
    let mode = |m: LockMode| match m {
        LockMode::Shared => "shared",
        LockMode::Exclusive => "exclusive",
    };
    state
        .queue
        .lock_snapshot()
        .into_iter()
        .map(|l| {
            let level = match l.level {
                LockLevel::Instance => "instance",
                LockLevel::NodeGroup => "nodegroup",
                LockLevel::Node => "node",
                LockLevel::NodeRes => "node-res",
                LockLevel::Network => "network",
            };
            let held = if l.owners.is_empty() {
                Value::Null
            } else if l.owners.iter().any(|(_, m)| *m == LockMode::Exclusive) {
                json!("exclusive")
            } else {
                json!("shared")
            };
            let mut row = serde_json::Map::new();
            row.insert("name".into(), json!(format!("{level}/{}", l.name)));
            row.insert("mode".into(), held);
            let owners: Vec<String> = l.owners.iter().map(|(j, _)| j.to_string()).collect();
            row.insert("owner".into(), json!(owners));
            let pending: Vec<Value> = l
                .pending
                .iter()
                .map(|(j, m)| json!([mode(*m), [j.to_string()]]))
                .collect();
            row.insert("pending".into(), json!(pending));
            row
        })
        .collect()
}

/// The export query's rows: one per export and node, or one without export for a node that
/// has none (upstream answers RS_NODATA there).
async fn exports(
    state: &State,
    cfg: &crate::cluster::model::Config,
) -> Vec<(String, Option<Value>)> {
    let mut rows = Vec::new();
    for node in cfg.nodes.values().filter(|n| !n.offline) {
        match state.live.list_exports(&node.name).await {
            Ok(names) if !names.is_empty() => {
                rows.extend(
                    names
                        .into_iter()
                        .map(|e| (node.name.clone(), Some(json!(e)))),
                );
            }
            _ => rows.push((node.name.clone(), None)),
        }
    }
    rows
}
