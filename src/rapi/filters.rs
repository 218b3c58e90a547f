//! `/2/filters` and `/2/filters/<uuid>`: the job scheduler's filter rules (not jobs; spec
//! opcodes.md §9.6). Body checks follow upstream `checkFilterParameters`; the rule itself is
//! checked by the queue, as luxid's `ReplaceFilter` does.

use super::State;
use super::error::ApiError;
use super::request::Request;
use crate::jobqueue::FilterRuleError;
use crate::jobqueue::filters::{FILTER_RULE_FIELDS, FilterRule};
use serde_json::{Map, Value, json};

fn full(rule: &FilterRule) -> Value {
    Value::Object(
        FILTER_RULE_FIELDS
            .iter()
            .map(|f| (f.to_string(), rule.field(f).unwrap_or(Value::Null)))
            .collect(),
    )
}

/// Upstream's `CheckParameter` wording for a wrongly typed body key.
fn typed(
    body: &Map<String, Value>,
    name: &str,
    ok: fn(&Value) -> bool,
    want: &str,
) -> Result<Option<Value>, ApiError> {
    match body.get(name) {
        None => Ok(None),
        Some(v) if ok(v) => Ok(Some(v.clone())),
        Some(v) => Err(ApiError::bad_request(format!(
            "'{name}' parameter: Type is '{}', but '{want}' is expected",
            super::objects::python_type_name(v)
        ))),
    }
}

type Rule = (i64, Vec<Value>, Value, Vec<Value>);

fn rule_parameters(req: &Request) -> Result<Rule, ApiError> {
    let Value::Object(body) = &req.body else {
        return Err(ApiError::bad_request(
            "Invalid body contents, not a dictionary",
        ));
    };
    if let Some(k) = body
        .keys()
        .find(|k| !["priority", "predicates", "action", "reason"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid body parameters: filter rule doesn't support the parameter '{k}'"
        )));
    }
    let list = |v: Option<Value>| match v {
        Some(Value::Array(a)) => a,
        _ => vec![],
    };
    let priority = typed(body, "priority", |v| v.is_i64(), "int")?
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    let predicates = list(typed(body, "predicates", Value::is_array, "list")?);
    let action = body.get("action").cloned().unwrap_or(json!("CONTINUE"));
    let reason = list(typed(body, "reason", Value::is_array, "list")?);
    Ok((priority, predicates, action, reason))
}

fn queue_error(e: FilterRuleError) -> ApiError {
    match e {
        FilterRuleError::Invalid(msg) => ApiError::bad_request(msg),
        FilterRuleError::NotFound(_) => ApiError::not_found(e.to_string()),
        FilterRuleError::Storage(e) => ApiError::new(500, e.to_string()),
    }
}

pub async fn collection(state: &State, req: &Request) -> Result<Value, ApiError> {
    match req.method.as_str() {
        "GET" => {
            let rules = state.queue.filter_rules();
            Ok(if req.flag("bulk")? {
                rules.iter().map(full).collect()
            } else {
                rules
                    .iter()
                    .map(|r| json!({"uuid": r.uuid, "uri": format!("/2/filters/{}", r.uuid)}))
                    .collect()
            })
        }
        "POST" => {
            let (priority, predicates, action, reason) = rule_parameters(req)?;
            let uuid = state
                .queue
                .replace_filter(None, priority, predicates, action, reason)
                .await
                .map_err(queue_error)?;
            Ok(json!(uuid))
        }
        m => Err(ApiError::unsupported(m)),
    }
}

pub async fn item(state: &State, req: &Request, uuid: &str) -> Result<Value, ApiError> {
    match req.method.as_str() {
        "GET" => state
            .queue
            .filter_rules()
            .iter()
            .find(|r| r.uuid == uuid)
            .map(full)
            .ok_or_else(|| ApiError::not_found(format!("Filter rule '{uuid}' not found"))),
        "PUT" => {
            let (priority, predicates, action, reason) = rule_parameters(req)?;
            let uuid = state
                .queue
                .replace_filter(Some(uuid.to_string()), priority, predicates, action, reason)
                .await
                .map_err(queue_error)?;
            Ok(json!(uuid))
        }
        "DELETE" => {
            state.queue.delete_filter(uuid).await.map_err(queue_error)?;
            Ok(Value::Null)
        }
        m => Err(ApiError::unsupported(m)),
    }
}
