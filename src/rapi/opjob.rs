//! Turning a request into an opcode job the way Ganeti's RAPI does: body parameters, renames,
//! static parameters from the URL (which the body may not override), and the reason trail.

use super::State;
use super::error::ApiError;
use super::request::Request;
use crate::jobqueue::job::Timestamp;
use crate::opcodes::{OpCode, OpId};
use serde_json::{Map, Value, json};

pub struct OpSpec<'a> {
    pub op_id: OpId,
    /// The handler name in the reason trail (`gnt:library:rlib2:<resource>`); None for none.
    pub resource: Option<&'a str>,
    pub body: Map<String, Value>,
    pub statics: Map<String, Value>,
    pub renames: &'a [(&'a str, &'a str)],
}

/// Builds the opcode; every refusal is a 400 and creates no job.
pub fn build(req: &Request, spec: OpSpec) -> Result<OpCode, ApiError> {
    let mut params = spec.body;
    for (old, new) in spec.renames {
        if let Some(v) = params.remove(*old) {
            if params.contains_key(*new) {
                return Err(ApiError::bad_request(format!(
                    "Parameter '{old}' was renamed to '{new}', but both are specified"
                )));
            }
            params.insert((*new).into(), v);
        }
    }
    let mut clashes: Vec<String> = spec
        .statics
        .keys()
        .filter(|k| params.contains_key(*k))
        .cloned()
        .collect();
    if params.contains_key("reason") && spec.resource.is_some() {
        clashes.push("reason".into());
    }
    if !clashes.is_empty() {
        let names: Vec<String> = clashes.iter().map(|k| format!("'{k}'")).collect();
        return Err(ApiError::bad_request(format!(
            "Can't overwrite static parameters {{{}}}",
            names.join(", ")
        )));
    }
    params.extend(spec.statics);
    // `?dry-run=1` applies to every opcode a resource builds (modify and reinstall included).
    if req.dry_run()? {
        params.insert("dry_run".into(), Value::Bool(true));
    }
    let now = Timestamp::now().as_nanos() as u64;
    if let Some(resource) = spec.resource {
        let mut trail = vec![];
        if let Some(text) = req.query_str("reason") {
            trail.push(json!(["gnt:user", text, now]));
        }
        trail.push(json!([format!("gnt:library:rlib2:{resource}"), "", now]));
        params.insert("reason".into(), Value::Array(trail));
    }
    OpCode::build(spec.op_id, params)
        .map_err(|e| ApiError::bad_request(format!("Invalid body parameters: {}", e.0)))
}

/// Submits one job and answers its id as a bare JSON integer; under the request's idempotency
/// key, a retry answers the first job's id.
pub async fn submit(state: &State, req: &Request, ops: Vec<OpCode>) -> Result<Value, ApiError> {
    let id = state
        .queue
        .submit_keyed(ops, req.idempotency.clone())
        .await?;
    Ok(json!(id.0))
}

pub async fn submit_one(state: &State, req: &Request, spec: OpSpec<'_>) -> Result<Value, ApiError> {
    let op = build(req, spec)?;
    submit(state, req, vec![op]).await
}

pub fn statics(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect()
}
