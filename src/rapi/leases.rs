//! `/gantry/v1/leases` and `/gantry/v1/pools` (issue 17): gantry's own resources, outside `/2/`
//! so upstream can never claim their names. Reads answer from the configuration; every change
//! is an opcode job (`OP_GANTRY_*`) whose id is the answer, with `?dry-run=1` as everywhere.

use super::State;
use super::error::ApiError;
use super::opjob::{OpSpec, build, submit};
use super::request::Request;
use crate::cluster::leases;
use crate::opcodes::OpId;
use serde_json::{Map, Value, json};

type R = Result<Value, ApiError>;

/// The caller's name, recorded as a lease's owner or a checkout's requester.
pub fn caller_name(req: &Request) -> String {
    req.caller
        .as_ref()
        .map_or_else(|| "anonymous".to_string(), |c| c.user.clone())
}

/// Builds one opcode from `body` (renamed) and `statics` (which the body may not set).
pub fn opcode(
    req: &Request,
    op_id: OpId,
    body: Map<String, Value>,
    statics: Vec<(&str, Value)>,
    renames: &[(&str, &str)],
) -> Result<crate::opcodes::OpCode, ApiError> {
    let mut statics: Map<String, Value> = statics
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let now = crate::jobqueue::job::Timestamp::now().as_nanos() as u64;
    statics.insert(
        "reason".into(),
        json!([["gantry:api", req.segments.join("/"), now]]),
    );
    build(
        req,
        OpSpec {
            op_id,
            resource: None,
            body,
            statics,
            renames,
        },
    )
}

async fn job(
    state: &State,
    req: &Request,
    op_id: OpId,
    body: Map<String, Value>,
    statics: Vec<(&str, Value)>,
    renames: &[(&str, &str)],
) -> R {
    let op = opcode(req, op_id, body, statics, renames)?;
    submit(state, req, vec![op]).await
}

fn list(req: &Request, kind: &str, names: Vec<String>, full: Vec<Value>) -> R {
    if req.flag("bulk")? {
        return Ok(Value::Array(full));
    }
    Ok(Value::Array(
        names
            .into_iter()
            .map(|n| json!({"id": n, "uri": format!("/gantry/v1/{kind}/{n}")}))
            .collect(),
    ))
}

/// Seconds-relative times a client may give instead of absolute ones: `duration` (from the
/// start) and `before_end_seconds` (before the end).
fn lease_times(body: &mut Map<String, Value>) -> Result<(), ApiError> {
    let secs = |v: &Value, what: &str| {
        v.as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| ApiError::bad_request(format!("Invalid {what}: seconds expected")))
    };
    if let Some(d) = body.remove("duration") {
        let start = body
            .get("start")
            .and_then(Value::as_f64)
            .unwrap_or_else(crate::util::now_f64);
        body.insert("end".into(), json!(start + secs(&d, "duration")?));
    }
    if let Some(b) = body.remove("before_end_seconds") {
        let end = body.get("end").and_then(Value::as_f64).ok_or_else(|| {
            ApiError::bad_request("before_end_seconds needs an end or a duration")
        })?;
        body.insert(
            "before_end".into(),
            json!(end - secs(&b, "before_end_seconds")?),
        );
    }
    Ok(())
}

pub async fn leases(state: &State, req: &Request, rest: &[&str]) -> R {
    let cfg = state.config.snapshot();
    let m = req.method.as_str();
    match (m, rest) {
        ("GET", []) => list(
            req,
            "leases",
            cfg.leases.keys().cloned().collect(),
            cfg.leases.values().map(leases::Lease::to_json).collect(),
        ),
        ("POST", []) => {
            let mut body = req.body_object()?;
            lease_times(&mut body)?;
            let owner = json!(caller_name(req));
            job(
                state,
                req,
                OpId::GantryLeaseCreate,
                body,
                vec![("owner", owner)],
                &[("name", "lease_name")],
            )
            .await
        }
        ("GET", [name]) => cfg
            .leases
            .get(*name)
            .map(leases::Lease::to_json)
            .ok_or_else(|| ApiError::not_found(format!("Lease '{name}' not found"))),
        ("PUT", [name]) => {
            let mut body = req.body_object()?;
            // `extend`: seconds added to the current end.
            if let Some(ext) = body.remove("extend") {
                let end = cfg.leases.get(*name).map(|l| l.end).unwrap_or(0.0);
                let ext = ext
                    .as_f64()
                    .filter(|s| s.is_finite())
                    .ok_or_else(|| ApiError::bad_request("Invalid extend: seconds expected"))?;
                body.insert("end".into(), json!(end + ext));
            }
            lease_times(&mut body)?;
            job(
                state,
                req,
                OpId::GantryLeaseModify,
                body,
                vec![("lease_name", json!(name))],
                &[],
            )
            .await
        }
        ("DELETE", [name]) => {
            job(
                state,
                req,
                OpId::GantryLeaseRemove,
                Map::new(),
                vec![("lease_name", json!(name))],
                &[],
            )
            .await
        }
        // Ends the window now: the engine runs the end action at once (a "return").
        ("POST", [name, "end"]) => {
            let now = json!(crate::util::now_f64());
            let statics = vec![("lease_name", json!(name)), ("end", now)];
            job(
                state,
                req,
                OpId::GantryLeaseModify,
                Map::new(),
                statics,
                &[],
            )
            .await
        }
        // An instance created for the lease: it may use the lease's reservation and joins it.
        ("POST", [name, "instances"]) => {
            if !cfg.leases.contains_key(*name) {
                return Err(ApiError::not_found(format!("Lease '{name}' not found")));
            }
            let mut body = req.body_object()?;
            body.remove("__version__");
            let now = crate::jobqueue::job::Timestamp::now().as_nanos() as u64;
            let mut op = opcode(
                req,
                OpId::InstanceCreate,
                body,
                vec![],
                &[("name", "instance_name"), ("os", "os_type")],
            )?;
            op.set(
                "reason",
                json!([[leases::lease_source(name), "create", now]]),
            );
            submit(state, req, vec![op]).await
        }
        (_, [] | [_] | [_, "end" | "instances"]) => Err(ApiError::unsupported(m)),
        _ => Err(ApiError::plain(404)),
    }
}

pub async fn pools(state: &State, req: &Request, rest: &[&str]) -> R {
    let cfg = state.config.snapshot();
    let m = req.method.as_str();
    match (m, rest) {
        ("GET", []) => list(
            req,
            "pools",
            cfg.pools.keys().cloned().collect(),
            cfg.pools
                .values()
                .map(|p| leases::pool_json(&cfg, p))
                .collect(),
        ),
        ("POST", []) => {
            job(
                state,
                req,
                OpId::GantryPoolSet,
                req.body_object()?,
                vec![],
                &[("name", "pool_name")],
            )
            .await
        }
        ("GET", [name]) => cfg
            .pools
            .get(*name)
            .map(|p| leases::pool_json(&cfg, p))
            .ok_or_else(|| ApiError::not_found(format!("Pool '{name}' not found"))),
        ("PUT", [name]) => {
            job(
                state,
                req,
                OpId::GantryPoolSet,
                req.body_object()?,
                vec![("pool_name", json!(name))],
                &[],
            )
            .await
        }
        ("DELETE", [name]) => {
            job(
                state,
                req,
                OpId::GantryPoolRemove,
                Map::new(),
                vec![("pool_name", json!(name))],
                &[],
            )
            .await
        }
        ("POST", [name, "checkout"]) => {
            let statics = vec![
                ("pool_name", json!(name)),
                ("requester", json!(caller_name(req))),
            ];
            job(
                state,
                req,
                OpId::GantryPoolCheckout,
                req.body_object()?,
                statics,
                &[],
            )
            .await
        }
        (_, [] | [_] | [_, "checkout"]) => Err(ApiError::unsupported(m)),
        _ => Err(ApiError::plain(404)),
    }
}
