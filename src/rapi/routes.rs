//! The RAPI v2 resources: one match over (method, path), each arm a thin translation to a read of
//! the cluster model or an opcode job.

use super::State;
use super::error::ApiError;
use super::objects::*;
use super::opjob::{OpSpec, build, statics, submit, submit_one};
use super::request::Request;
use super::table::{self, OpRoute};
use crate::cluster::model::{Group, Instance, Network, Node};
use crate::cluster::names;
use crate::jobqueue::job::{JOB_FIELDS, JobId};
use crate::opcodes::OpCode;
use crate::opcodes::OpId;
use crate::views::{self, Live};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// In the order Ganeti 3.0 lists them.
pub const FEATURES: &[&str] = &[
    "instance-reinstall-reqv1",
    "instance-create-reqv1",
    "node-migrate-reqv1",
    "node-evac-res1",
];

/// Which access a request needs beyond "anonymous GET".
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Open,
    Read,
    Write,
}

pub fn access_for(method: &str, segments: &[&str]) -> Access {
    // A query with a filter in the body changes nothing: read users may send it.
    if method == "PUT" && matches!(segments, ["2", "query", _]) {
        return Access::Read;
    }
    // Any user manages their own tokens (a read user, read tokens); the handler checks.
    if let ["gantry", "v1", "tokens", ..] | ["api", "v1", "token", ..] = segments {
        return Access::Read;
    }
    if method != "GET" {
        return Access::Write;
    }
    match segments {
        ["2", "jobs", _, "wait"] | ["2", "nodes", _, "storage"] => Access::Write,
        ["2", "query", ..] | ["2", "instances", _, "console"] => Access::Read,
        _ => Access::Open,
    }
}

type R = Result<Value, ApiError>;

pub async fn dispatch(state: &State, req: &Request) -> R {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    if let Some((route, params)) = table::find(m, &segs) {
        return submit_route(state, req, route, &params).await;
    }
    let answer = handwritten(state, req, &segs).await;
    match answer {
        // A path the table serves with other methods.
        Err(e) if e.code == 404 && e.message.is_empty() && table::knows_path(&segs) => {
            Err(ApiError::unsupported(m))
        }
        other => other,
    }
}

/// The resources with special code (as in upstream's rlib2).
async fn handwritten(state: &State, req: &Request, segs: &[&str]) -> R {
    let m = req.method.as_str();
    match segs {
        [] | ["2"] => only(m, &["GET"]).map(|_| Value::Null),
        ["version"] => only(m, &["GET"]).map(|_| json!(2)),
        ["openapi.json"] => only(m, &["GET"]).map(|_| super::openapi::document()),
        ["gantry", "v1", "tokens"] => super::tokens::resource(state, req, None).await,
        ["gantry", "v1", "tokens", id] => super::tokens::resource(state, req, Some(id)).await,
        ["gantry", "v1", "leases", rest @ ..] => super::leases::leases(state, req, rest).await,
        ["gantry", "v1", "pools", rest @ ..] => super::leases::pools(state, req, rest).await,
        ["2", "info"] => only(m, &["GET"]).map(|_| views::cluster_info(&state.config.snapshot())),
        ["2", "features"] => only(m, &["GET"]).map(|_| json!(FEATURES)),
        ["2", "modify"] => {
            only(m, &["PUT"])?;
            let body = req.body_object()?;
            if body.contains_key("compression_tools") {
                return Err(ApiError::new(
                    403,
                    "The parameter compression_tools cannot be set via RAPI",
                ));
            }
            op(
                state,
                req,
                OpId::ClusterSetParams,
                "cluster_modify",
                body,
                vec![],
            )
            .await
        }
        ["2", "tags"] => tags(state, req, "cluster", None).await,
        ["2", "os"] => os_list(state, req).await,
        ["2", "jobs"] => jobs(state, req).await,
        ["2", "jobs", id] => job(state, req, id).await,
        ["2", "jobs", id, "wait"] => wait(state, req, id).await,
        ["2", "filters"] => super::filters::collection(state, req).await,
        ["2", "filters", uuid] => super::filters::item(state, req, uuid).await,
        ["2", "instances"] => instances(state, req).await,
        ["2", "instances-multi-alloc"] => multi_alloc(state, req).await,
        ["2", "instances", name] => instance(state, req, name).await,
        ["2", "instances", name, "tags"] => tags(state, req, "instance", Some(name)).await,
        ["2", "instances", name, "disk", idx, "grow"] => {
            only(m, &["POST"])?;
            let idx: i64 = idx
                .parse()
                .map_err(|_| ApiError::bad_request("Invalid disk index"))?;
            let s = vec![("instance_name", json!(name)), ("disk", json!(idx))];
            op(
                state,
                req,
                OpId::InstanceGrowDisk,
                "instances_name_disk_grow",
                req.body_object()?,
                s,
            )
            .await
        }
        ["2", "instances", name, action] => instance_action(state, req, name, action).await,
        ["2", "nodes"] => {
            only(m, &["GET"])?;
            let cfg = state.config.snapshot();
            let bulk = req.flag("bulk")?;
            let live = match bulk {
                true => live_nodes(state, cfg.nodes.values()).await,
                false => Live::default(),
            };
            let full = |n: &Node| node_json(&cfg, &live, n);
            collection(bulk, "nodes", cfg.nodes.values(), |n| &n.name, full)
        }
        ["2", "nodes", name] => {
            only(m, &["GET"])?;
            let cfg = state.config.snapshot();
            let node = find(names::node(&cfg, name), "node", name)?;
            let live = live_nodes(state, std::iter::once(node)).await;
            // Upstream shows the secondary IP under this name too, here only.
            let mut answer = node_json(&cfg, &live, node);
            answer["secondary_ip"] = json!(node.secondary_ip);
            Ok(answer)
        }
        ["2", "nodes", name, "tags"] => tags(state, req, "node", Some(name)).await,
        ["2", "nodes", name, rest @ ..] => node_action(state, req, name, rest).await,
        ["2", "groups"] => groups(state, req).await,
        ["2", "groups", name] => group(state, req, name).await,
        ["2", "groups", name, "tags"] => tags(state, req, "nodegroup", Some(name)).await,
        ["2", "networks"] => networks(state, req).await,
        ["2", "networks", name] => network(state, req, name).await,
        ["2", "networks", name, "tags"] => tags(state, req, "network", Some(name)).await,
        ["2", "query", what] => super::query::query(state, req, what).await,
        ["2", "query", what, "fields"] => super::query::fields(req, what),
        _ => Err(ApiError::plain(404)),
    }
}

fn only(method: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&method) {
        Ok(())
    } else {
        Err(ApiError::unsupported(method))
    }
}

/// `GET` on a collection: `[{"id", "uri"}]` sorted by name, or every object in full with `bulk`.
fn collection<'a, T: 'a>(
    bulk: bool,
    kind: &str,
    items: impl Iterator<Item = &'a T>,
    name: impl Fn(&T) -> &String,
    full: impl Fn(&T) -> Value,
) -> R {
    let mut items: Vec<&T> = items.collect();
    items.sort_by(|a, b| name(a).cmp(name(b)));
    if bulk {
        Ok(Value::Array(items.into_iter().map(full).collect()))
    } else {
        Ok(uri_list(kind, items.into_iter().map(name)))
    }
}

fn find<T>(found: Option<T>, kind: &str, name: &str) -> Result<T, ApiError> {
    found.ok_or_else(|| unknown(kind, name))
}

/// A resource of the table: path parameters, query parameters and (maybe) the body.
async fn submit_route(
    state: &State,
    req: &Request,
    route: &OpRoute,
    params: &[(&'static str, &str)],
) -> R {
    let body = if route.body {
        req.body_object()?
    } else {
        Map::new()
    };
    let mut stat: Vec<(&str, Value)> = params.iter().map(|(k, v)| (*k, json!(v))).collect();
    for p in route.params {
        let value = p.value(|q| req.flag(q), |q| req.query_str(q).map(String::from))?;
        stat.extend(value);
    }
    op_renamed(
        state,
        req,
        route.op,
        route.resource,
        body,
        stat,
        route.renames,
    )
    .await
}

/// Resources whose rlib2 handler always passes `dry_run` (false unless asked), so upstream's
/// job records show it; the others pass it only when `?dry-run=1` is given.
const ALWAYS_DRY_RUN: &[&str] = &[
    "groups",
    "groups_name",
    "groups_name_assign_nodes",
    "groups_name_rename",
    "instances",
    "instances_name",
    "instances_name_reboot",
    "instances_name_shutdown",
    "instances_name_startup",
    "instances_name_tags",
    "instances_multi_alloc",
    "nodes_name_tags",
    "groups_name_tags",
    "networks_name_tags",
    "tags",
    "networks",
    "networks_name",
    "networks_name_connect",
    "networks_name_disconnect",
    "nodes_name_evacuate",
];

/// The common case: body + statics (+ dry-run) into one opcode job.
async fn op(
    state: &State,
    req: &Request,
    op_id: OpId,
    resource: &str,
    body: Map<String, Value>,
    stat: Vec<(&str, Value)>,
) -> R {
    op_renamed(state, req, op_id, resource, body, stat, &[]).await
}

/// As `op`, with body keys renamed first (`name` → `group_name`, ...).
async fn op_renamed(
    state: &State,
    req: &Request,
    op_id: OpId,
    resource: &str,
    body: Map<String, Value>,
    mut stat: Vec<(&str, Value)>,
    renames: &[(&str, &str)],
) -> R {
    let dry_run = req.dry_run()?;
    if dry_run || ALWAYS_DRY_RUN.contains(&resource) {
        stat.push(("dry_run", json!(dry_run)));
    }
    let spec = OpSpec {
        op_id,
        resource: Some(resource),
        body,
        statics: statics(&stat),
        renames,
    };
    submit_one(state, req, spec).await
}

// ---- jobs ----

async fn jobs(state: &State, req: &Request) -> R {
    match req.method.as_str() {
        "GET" => {
            if req.flag("bulk")? {
                Ok(Value::Array(
                    state
                        .queue
                        .map_jobs(false, |j| job_fields(j, JOB_BULK))
                        .await,
                ))
            } else {
                let ids = state.queue.job_ids();
                Ok(Value::Array(
                    ids.into_iter()
                        .map(|id| json!({"id": id.0, "uri": format!("/2/jobs/{id}")}))
                        .collect(),
                ))
            }
        }
        // gantry extension: submit raw opcodes, e.g. OP_TEST_DELAY (spec opcodes.md §10).
        "POST" => {
            let ops = req
                .body
                .get("ops")
                .and_then(Value::as_array)
                .ok_or_else(|| ApiError::bad_request("Body must be {\"ops\": [opcode, ...]}"))?;
            let ops = ops
                .iter()
                .map(OpCode::from_json)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::bad_request(format!("Invalid body parameters: {}", e.0)))?;
            submit(state, req, ops).await
        }
        m => Err(ApiError::unsupported(m)),
    }
}

fn job_fields(job: &crate::jobqueue::job::Job, fields: &[&str]) -> Value {
    let mut m = Map::new();
    for f in fields {
        m.insert((*f).to_string(), job.field(f).unwrap_or(Value::Null));
    }
    Value::Object(m)
}

pub(super) fn job_id(text: &str) -> Result<JobId, ApiError> {
    text.parse::<u64>()
        .map(JobId)
        .map_err(|_| ApiError::bad_request(format!("Invalid job ID '{text}'")))
}

async fn job(state: &State, req: &Request, id: &str) -> R {
    let id = job_id(id)?;
    match req.method.as_str() {
        "GET" => {
            let job = state.queue.job(id).ok_or_else(|| job_not_found(id))?;
            Ok(job_answer(&job))
        }
        "DELETE" => {
            let (ok, msg) = state.queue.cancel(id).await;
            Ok(json!([ok, msg]))
        }
        m => Err(ApiError::unsupported(m)),
    }
}

/// A job in `GET /2/jobs?bulk=1`; `GET /2/jobs/N` adds its log and results.
const JOB_BULK: &[&str] = &[
    "id",
    "ops",
    "status",
    "summary",
    "opstatus",
    "received_ts",
    "start_ts",
    "end_ts",
];

/// `GET /2/jobs/N`.
pub(super) fn job_answer(job: &crate::jobqueue::job::Job) -> Value {
    let mut answer = job_fields(job, JOB_BULK);
    for field in ["oplog", "opresult"] {
        answer[field] = job.field(field).unwrap_or(Value::Null);
    }
    answer
}

pub(super) fn job_not_found(id: JobId) -> ApiError {
    ApiError::not_found(format!("Job {id} not found"))
}

/// What `GET /2/jobs/N/wait` asks: the fields, what the client saw of them, its last log serial.
pub(super) struct WaitArgs {
    pub fields: Vec<String>,
    pub previous: Option<Value>,
    pub serial: Option<u64>,
}

impl WaitArgs {
    /// From the request's JSON body (`Value::Null` when it had none).
    pub(super) fn parse(body: &Value) -> Result<WaitArgs, ApiError> {
        let body = super::request::body_object(body)?;
        let fields: Vec<String> = match body.get("fields") {
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => {
                return Err(ApiError::bad_request(
                    "The 'fields' parameter should be a list",
                ));
            }
        };
        let previous = match body.get("previous_job_info") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Array(_)) => Some(v.clone()),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "The 'previous_job_info' parameter should be a list",
                ));
            }
        };
        let serial = match body.get("previous_log_serial") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                ApiError::bad_request("The 'previous_log_serial' parameter should be a number")
            })?),
        };
        if let Some(bad) = fields.iter().find(|f| !JOB_FIELDS.contains(&f.as_str())) {
            return Err(ApiError::bad_request(format!(
                "Unknown output fields selected: {bad}"
            )));
        }
        Ok(WaitArgs {
            fields,
            previous,
            serial,
        })
    }
}

/// The answer to a wait: what changed, or null when nothing did before the timeout.
pub(super) fn wait_answer(
    changes: Option<(Vec<Value>, Vec<crate::jobqueue::job::LogEntry>)>,
) -> Value {
    match changes {
        None => Value::Null,
        Some((info, logs)) => json!({"job_info": info, "log_entries": logs}),
    }
}

async fn wait(state: &State, req: &Request, id: &str) -> R {
    only(&req.method, &["GET"])?;
    let id = job_id(id)?;
    let args = WaitArgs::parse(&req.body)?;
    let answer = state
        .queue
        .wait_for_change(
            id,
            &args.fields,
            args.previous.as_ref(),
            args.serial,
            state.wait_timeout,
        )
        .await
        .map_err(|e| match e {
            crate::jobqueue::WaitError::NotFound(_) => ApiError::not_found(e.to_string()),
            other => ApiError::bad_request(other.to_string()),
        })?;
    Ok(wait_answer(answer))
}

// ---- cluster-wide ----

async fn os_list(state: &State, req: &Request) -> R {
    only(&req.method, &["GET"])?;
    let bulk = req.flag("bulk")?;
    let fields: Vec<&str> = if bulk {
        vec![
            "name",
            "valid",
            "variants",
            "parameters",
            "api_versions",
            "blacklisted",
            "hidden",
            "trusted",
        ]
    } else {
        vec!["name", "variants"]
    };
    let mut p = Map::new();
    p.insert("output_fields".into(), json!(fields));
    p.insert("names".into(), json!([]));
    let opc = OpCode::build(OpId::OsDiagnose, p).map_err(|e| ApiError::new(500, e.0))?;
    let id = state.queue.submit(vec![opc]).await?;
    // Upstream waits for the job inside the request.
    let job = loop {
        match state
            .queue
            .wait_for_change(
                id,
                &["status".into()],
                Some(&json!(["queued"])),
                None,
                Duration::from_secs(10),
            )
            .await
        {
            Ok(_) => {}
            Err(_) => return Err(ApiError::new(502, "Can't get OS list")),
        }
        let job = state
            .queue
            .job(id)
            .ok_or_else(|| ApiError::new(502, "Can't get OS list"))?;
        if job.is_finalized() {
            break job;
        }
    };
    let Some(Value::Array(rows)) = job.ops.first().map(|o| o.result.clone()) else {
        return Err(ApiError::new(502, "Can't get OS list"));
    };
    if bulk {
        return Ok(Value::Array(
            rows.iter()
                .map(|r| {
                    let mut m = Map::new();
                    for (i, f) in fields.iter().enumerate() {
                        m.insert((*f).to_string(), r.get(i).cloned().unwrap_or(Value::Null));
                    }
                    Value::Object(m)
                })
                .collect(),
        ));
    }
    let mut names = vec![];
    for r in rows {
        let name = r
            .get(0)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let variants: Vec<String> = r
            .get(1)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        if variants.is_empty() {
            names.push(json!(name));
        } else {
            names.extend(variants.iter().map(|v| json!(format!("{name}+{v}"))));
        }
    }
    Ok(Value::Array(names))
}

async fn tags(state: &State, req: &Request, kind: &str, name: Option<&str>) -> R {
    let cfg = state.config.snapshot();
    let current: Vec<String> = match (kind, name) {
        ("cluster", _) => cfg.cluster.meta.tags.iter().cloned().collect(),
        ("instance", Some(n)) => find(names::instance(&cfg, n), "instance", n)?
            .meta
            .tags
            .iter()
            .cloned()
            .collect(),
        ("node", Some(n)) => find(names::node(&cfg, n), "node", n)?
            .meta
            .tags
            .iter()
            .cloned()
            .collect(),
        ("nodegroup", Some(n)) => cfg
            .group_by_name(n)
            .ok_or_else(|| unknown("group", n))?
            .meta
            .tags
            .iter()
            .cloned()
            .collect(),
        (_, Some(n)) => cfg
            .network_by_name(n)
            .ok_or_else(|| unknown("network", n))?
            .meta
            .tags
            .iter()
            .cloned()
            .collect(),
        _ => vec![],
    };
    let resource = match kind {
        "cluster" => "tags",
        "instance" => "instances_name_tags",
        "node" => "nodes_name_tags",
        "nodegroup" => "groups_name_tags",
        _ => "networks_name_tags",
    };
    let op_id = match req.method.as_str() {
        "GET" => return Ok(json!(current)),
        "PUT" => OpId::TagsSet,
        "DELETE" => OpId::TagsDel,
        m => return Err(ApiError::unsupported(m)),
    };
    let tags: Vec<&str> = req
        .query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.as_str())
        .collect();
    if op_id == OpId::TagsDel && tags.is_empty() {
        return Err(ApiError::bad_request(
            "To delete tags you must specify them with the 'tag' parameter",
        ));
    }
    let mut s = vec![("kind", json!(kind)), ("tags", json!(tags))];
    if let Some(n) = name {
        s.push(("name", json!(n)));
    }
    op(state, req, op_id, resource, Map::new(), s).await
}

// ---- instances ----

async fn instances(state: &State, req: &Request) -> R {
    match req.method.as_str() {
        "GET" => {
            let cfg = state.config.snapshot();
            let bulk = req.flag("bulk")?;
            let live = match bulk {
                true => live_instances(state, cfg.instances.values()).await,
                false => Live::default(),
            };
            let full = |i: &Instance| instance_json(&cfg, &live, i);
            collection(bulk, "instances", cfg.instances.values(), |i| &i.name, full)
        }
        "POST" => {
            let mut body = req.body_object()?;
            match body.remove("__version__") {
                Some(v) if v == json!(1) => {}
                None => {
                    return Err(ApiError::bad_request(
                        "Instance creation request version 0 is no longer supported",
                    ));
                }
                Some(v) if v == json!(0) => {
                    return Err(ApiError::bad_request(
                        "Instance creation request version 0 is no longer supported",
                    ));
                }
                Some(_) => return Err(ApiError::bad_request("Unsupported request data version")),
            }
            normalize_hvparams(&mut body);
            let renames = &[("name", "instance_name"), ("os", "os_type")];
            op_renamed(
                state,
                req,
                OpId::InstanceCreate,
                "instances",
                body,
                vec![],
                renames,
            )
            .await
        }
        m => Err(ApiError::unsupported(m)),
    }
}

/// `hvparams.usb_devices` spaces become commas, as upstream does.
fn normalize_hvparams(body: &mut Map<String, Value>) {
    if let Some(Value::Object(hv)) = body.get_mut("hvparams")
        && let Some(Value::String(usb)) = hv.get_mut("usb_devices")
    {
        *usb = usb.replace(' ', ",");
    }
}

async fn multi_alloc(state: &State, req: &Request) -> R {
    only(&req.method, &["POST"])?;
    let mut body = req.body_object()?;
    let Some(Value::Array(list)) = body.remove("instances") else {
        return Err(ApiError::bad_request(
            "Missing or invalid 'instances' parameter",
        ));
    };
    let mut ops = vec![];
    for inst in list {
        let Value::Object(mut m) = inst else {
            return Err(ApiError::bad_request(
                "Instance definitions must be objects",
            ));
        };
        for (old, new) in [("name", "instance_name"), ("os", "os_type")] {
            if let Some(v) = m.remove(old) {
                m.insert(new.into(), v);
            }
        }
        m.remove("__version__");
        m.insert("OP_ID".into(), json!(OpId::InstanceCreate.as_str()));
        let op = OpCode::from_json(&Value::Object(m))
            .map_err(|e| ApiError::bad_request(format!("Invalid body parameters: {}", e.0)))?;
        ops.push(inner_create_record(&op));
    }
    body.insert("instances".into(), Value::Array(ops));
    op(
        state,
        req,
        OpId::InstanceMultiAlloc,
        "instances_multi_alloc",
        body,
        vec![],
    )
    .await
}

/// An instance of a multi-allocation as upstream stores it inside the job: every parameter of
/// the create opcode, unset ones as null, and a comment naming the parent.
fn inner_create_record(op: &OpCode) -> Value {
    let mut record = op.to_json();
    for p in op.def().params {
        record
            .as_object_mut()
            .map(|m| m.entry(p.name).or_insert(Value::Null));
    }
    for secret in ["osparams_private", "osparams_secret"] {
        if record[secret].is_null() {
            record[secret] = json!({});
        }
    }
    record["dry_run"] = Value::Null;
    record["comment"] = json!("Submitted by OP_INSTANCE_MULTI_ALLOC");
    record
}

async fn instance(state: &State, req: &Request, name: &str) -> R {
    match req.method.as_str() {
        "GET" => {
            let cfg = state.config.snapshot();
            let inst = find(names::instance(&cfg, name), "instance", name)?;
            let live = live_instances(state, std::iter::once(inst)).await;
            Ok(instance_json(&cfg, &live, inst))
        }
        m => Err(ApiError::unsupported(m)),
    }
}

async fn instance_action(state: &State, req: &Request, name: &str, action: &str) -> R {
    let n = json!(name);
    let m = req.method.as_str();
    let body = || req.body_object();
    match action {
        "info" => {
            only(m, &["GET"])?;
            let s = vec![
                ("instances", json!([name])),
                ("static", json!(req.flag("static")?)),
            ];
            op(
                state,
                req,
                OpId::InstanceQueryData,
                "instances_name_info",
                Map::new(),
                s,
            )
            .await
        }
        "reinstall" => reinstall(state, req, name).await,
        "modify" => {
            only(m, &["PUT"])?;
            let mut b = body()?;
            normalize_hvparams(&mut b);
            let spec = OpSpec {
                op_id: OpId::InstanceSetParams,
                resource: Some("instances_name_modify"),
                body: b,
                statics: statics(&[("instance_name", n)]),
                renames: &[
                    ("custom_beparams", "beparams"),
                    ("custom_hvparams", "hvparams"),
                ],
            };
            submit_one(state, req, spec).await
        }
        "replace-disks" => {
            only(m, &["POST"])?;
            let mut b = body()?;
            // The legacy interface (and the official client) passes everything in the query.
            if b.is_empty() {
                for key in ["remote_node", "mode", "disks", "iallocator"] {
                    if let Some(v) = req.query_str(key) {
                        b.insert(key.into(), json!(v));
                    }
                }
            }
            match b.remove("disks") {
                Some(Value::String(d)) if !d.is_empty() => {
                    let list: Result<Vec<i64>, _> =
                        d.split(',').map(|s| s.trim().parse::<i64>()).collect();
                    let list = list.map_err(|e| {
                        ApiError::bad_request(format!("Invalid disk index passed: {e}"))
                    })?;
                    b.insert("disks".into(), json!(list));
                }
                Some(Value::String(_)) | None => {}
                Some(other) => {
                    b.insert("disks".into(), other);
                }
            }
            op(
                state,
                req,
                OpId::InstanceReplaceDisks,
                "instances_name_replace_disks",
                b,
                vec![("instance_name", n)],
            )
            .await
        }
        "console" => {
            only(m, &["GET"])?;
            let cfg = state.config.snapshot();
            let inst = find(names::instance(&cfg, name), "instance", name)?;
            let running = matches!(state.live.instance_state(&inst.pnode, &inst.name).await, Ok(Some(s)) if s.running);
            if !running {
                return Err(ApiError::new(
                    503,
                    format!("Instance {} is down", inst.name),
                ));
            }
            match state.live.console(&inst.pnode, &inst.name).await {
                Some(console) => Ok(console),
                None => Ok(views::console_info(inst)),
            }
        }
        _ => Err(ApiError::plain(404)),
    }
}

async fn reinstall(state: &State, req: &Request, name: &str) -> R {
    only(&req.method, &["POST"])?;
    let body = req.body_object()?;
    let legacy = req.query_str("os").is_some() || req.query_str("nostartup").is_some();
    if legacy && !body.is_empty() {
        return Err(ApiError::bad_request(
            "Can't combine query and body parameters",
        ));
    }
    let (os, start, osparams) = if legacy {
        (
            req.query_str("os").map(|s| json!(s)),
            !req.flag("nostartup")?,
            None,
        )
    } else {
        (
            body.get("os").cloned().filter(|v| !v.is_null()),
            body.get("start").and_then(Value::as_bool).unwrap_or(true),
            body.get("osparams").cloned().filter(|v| !v.is_null()),
        )
    };
    let mk = |id: OpId, pairs: Vec<(&str, Value)>| {
        build(
            req,
            OpSpec {
                op_id: id,
                resource: None,
                body: Map::new(),
                statics: statics(&pairs),
                renames: &[],
            },
        )
    };
    let mut reinstall = vec![("instance_name", json!(name))];
    if let Some(os) = os {
        reinstall.push(("os_type", os));
    }
    if let Some(p) = osparams {
        reinstall.push(("osparams", p));
    }
    let mut ops = vec![
        mk(OpId::InstanceShutdown, vec![("instance_name", json!(name))])?,
        mk(OpId::InstanceReinstall, reinstall)?,
    ];
    if start {
        ops.push(mk(
            OpId::InstanceStartup,
            vec![("instance_name", json!(name)), ("force", json!(false))],
        )?);
    }
    submit(state, req, ops).await
}

// ---- nodes ----

const ROLES: &[(&str, &str)] = &[
    ("M", "master"),
    ("C", "master-candidate"),
    ("R", "regular"),
    ("D", "drained"),
    ("O", "offline"),
];

async fn node_action(state: &State, req: &Request, name: &str, rest: &[&str]) -> R {
    let n = json!(name);
    let m = req.method.as_str();
    match rest {
        ["role"] => match m {
            "GET" => {
                let cfg = state.config.snapshot();
                let node = find(names::node(&cfg, name), "node", name)?;
                let letter = views::node_role(&cfg, node);
                Ok(json!(
                    ROLES.iter().find(|(l, _)| *l == letter).map(|(_, r)| *r)
                ))
            }
            "PUT" => {
                let role = req
                    .body
                    .as_str()
                    .ok_or_else(|| ApiError::bad_request("Body contents must be a string"))?;
                let (mc, off, dr) = match role {
                    "regular" => (json!(false), json!(false), json!(false)),
                    "master-candidate" => (json!(true), Value::Null, Value::Null),
                    "drained" => (Value::Null, Value::Null, json!(true)),
                    "offline" => (Value::Null, json!(true), Value::Null),
                    other => {
                        return Err(ApiError::bad_request(format!("Can't set '{other}' role")));
                    }
                };
                let s = vec![
                    ("node_name", n),
                    ("master_candidate", mc),
                    ("offline", off),
                    ("drained", dr),
                    ("force", json!(req.flag("force")?)),
                    ("auto_promote", json!(req.flag("auto-promote")?)),
                ];
                op(
                    state,
                    req,
                    OpId::NodeSetParams,
                    "nodes_name_role",
                    Map::new(),
                    s,
                )
                .await
            }
            _ => Err(ApiError::unsupported(m)),
        },
        ["migrate"] => {
            only(m, &["POST"])?;
            let body = if req.query_str("live").is_some() || req.query_str("mode").is_some() {
                if req.query_str("live").is_some() && req.query_str("mode").is_some() {
                    return Err(ApiError::bad_request(
                        "Only one of 'live' and 'mode' should be passed",
                    ));
                }
                let mode = match req.query_str("live") {
                    Some(_) => {
                        if req.flag("live")? {
                            "live"
                        } else {
                            "non-live"
                        }
                    }
                    None => req.query_str("mode").unwrap_or("live"),
                };
                let mut b = Map::new();
                b.insert("mode".into(), json!(mode));
                b
            } else {
                req.body_object()?
            };
            op(
                state,
                req,
                OpId::NodeMigrate,
                "nodes_name_migrate",
                body,
                vec![("node_name", n)],
            )
            .await
        }
        ["storage"] => {
            only(m, &["GET"])?;
            let fields = req
                .query_str("output_fields")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    ApiError::bad_request("Missing the required 'output_fields' parameter")
                })?;
            let mut s = vec![
                ("nodes", json!([name])),
                (
                    "output_fields",
                    json!(fields.split(',').collect::<Vec<_>>()),
                ),
            ];
            if let Some(t) = req.query_str("storage_type") {
                s.push(("storage_type", json!(t)));
            }
            op(
                state,
                req,
                OpId::NodeQueryStorage,
                "nodes_name_storage",
                Map::new(),
                s,
            )
            .await
        }
        ["storage", "modify"] | ["storage", "repair"] => {
            only(m, &["PUT"])?;
            let sname = req
                .query_str("name")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ApiError::bad_request("Missing the required 'name' parameter"))?;
            let mut s = vec![("node_name", n), ("name", json!(sname))];
            if let Some(t) = req.query_str("storage_type") {
                s.push(("storage_type", json!(t)));
            }
            if rest[1] == "modify" {
                let mut changes = Map::new();
                if req.query_str("allocatable").is_some() {
                    changes.insert("allocatable".into(), json!(req.flag("allocatable")?));
                }
                s.push(("changes", Value::Object(changes)));
                op(
                    state,
                    req,
                    OpId::NodeModifyStorage,
                    "nodes_name_storage_modify",
                    Map::new(),
                    s,
                )
                .await
            } else {
                if req.query_str("ignore_consistency").is_some() {
                    s.push(("ignore_consistency", json!(req.flag("ignore_consistency")?)));
                }
                op(
                    state,
                    req,
                    OpId::RepairNodeStorage,
                    "nodes_name_storage_repair",
                    Map::new(),
                    s,
                )
                .await
            }
        }
        _ => Err(ApiError::plain(404)),
    }
}

// ---- groups ----

async fn groups(state: &State, req: &Request) -> R {
    match req.method.as_str() {
        "GET" => {
            let cfg = state.config.snapshot();
            let full = |g: &Group| group_json(&cfg, g);
            collection(
                req.flag("bulk")?,
                "groups",
                cfg.groups.values(),
                |g| &g.name,
                full,
            )
        }
        m => Err(ApiError::unsupported(m)),
    }
}

async fn group(state: &State, req: &Request, name: &str) -> R {
    match req.method.as_str() {
        "GET" => {
            let cfg = state.config.snapshot();
            let g = cfg
                .group_by_name(name)
                .ok_or_else(|| unknown("group", name))?;
            Ok(group_json(&cfg, g))
        }
        m => Err(ApiError::unsupported(m)),
    }
}

// ---- networks ----

async fn networks(state: &State, req: &Request) -> R {
    match req.method.as_str() {
        "GET" => {
            let cfg = state.config.snapshot();
            let full = |n: &Network| network_json(&cfg, n);
            collection(
                req.flag("bulk")?,
                "networks",
                cfg.networks.values(),
                |n| &n.name,
                full,
            )
        }
        m => Err(ApiError::unsupported(m)),
    }
}

async fn network(state: &State, req: &Request, name: &str) -> R {
    match req.method.as_str() {
        "GET" => {
            let cfg = state.config.snapshot();
            let n = cfg
                .network_by_name(name)
                .ok_or_else(|| unknown("network", name))?;
            Ok(network_json(&cfg, n))
        }
        m => Err(ApiError::unsupported(m)),
    }
}
