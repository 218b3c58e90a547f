//! The vmpooler API v1 face (`/api/v1/...`, issue 17): what vmpooler's clients (vmfloaty, CI
//! plugins) call, with vmpooler's answer shapes and status codes, mapped onto gantry's pools,
//! leases and tokens. A checkout is an `OP_GANTRY_POOL_CHECKOUT` job this handler waits for, so
//! it answers with hostnames as vmpooler does and is still a job in `/2/jobs`. Hostnames are
//! instance names; lifetimes are hours, as vmpooler counts them.

use super::State;
use super::error::ApiError;
use super::leases::{caller_name, opcode};
use super::request::Request;
use super::tokens::{DEFAULT_TTL, Rights};
use crate::cluster::leases::{self, Lease};
use crate::cluster::model::Config;
use crate::jobqueue::job::{JobId, Status};
use crate::opcodes::{OpCode, OpId};
use serde_json::{Map, Value, json};
use std::time::Duration;

pub type Answer = (u16, Value);

/// How long a request waits for its jobs (a checkout of a ready instance takes milliseconds).
const JOB_WAIT: Duration = Duration::from_secs(60);

fn fail(code: u16) -> Answer {
    (code, json!({"ok": false}))
}

fn failed(code: u16, message: &str) -> Answer {
    (code, json!({"ok": false, "message": message}))
}

fn ok() -> Answer {
    (200, json!({"ok": true}))
}

pub async fn answer(state: &State, req: &Request, rest: &[&str]) -> Answer {
    let m = req.method.as_str();
    match (m, rest) {
        ("GET", ["vm"]) => (
            200,
            json!(state.config.snapshot().pools.keys().collect::<Vec<_>>()),
        ),
        ("POST", ["vm"]) => match counts(&req.body) {
            Some(wanted) => checkout_all(state, req, wanted).await,
            None => failed(400, "body must map pool names to counts"),
        },
        ("GET", ["vm", host]) => vm(&state.config.snapshot(), host),
        ("POST", ["vm", pools]) => {
            let mut wanted: Vec<(String, u64)> = vec![];
            for p in pools.split('+').filter(|p| !p.is_empty()) {
                match wanted.iter_mut().find(|(n, _)| n == p) {
                    Some((_, n)) => *n += 1,
                    None => wanted.push((p.to_string(), 1)),
                }
            }
            checkout_all(state, req, wanted).await
        }
        ("PUT", ["vm", host]) => modify(state, req, host).await,
        ("DELETE", ["vm", host]) => give_back(state, req, host).await,
        ("POST", ["vm", host, "disk", size]) => add_disk(state, req, host, size).await,
        ("GET", ["status"]) => (200, status(state)),
        ("GET", ["summary"]) => summary(state, req).await,
        (_, ["token", ..]) => token(state, req, &rest[1..]).await,
        ("POST", ["ondemandvm"]) => ondemand_create(state, req).await,
        ("GET", ["ondemandvm", id]) => ondemand_status(&state.config.snapshot(), id),
        ("DELETE", ["ondemandvm", id]) => {
            let op = opcode(
                req,
                OpId::GantryPoolRequestDelete,
                Map::new(),
                vec![("request_id", json!(id))],
                &[],
            );
            match run(state, req, op).await {
                Ok(_) => ok(),
                Err(_) => fail(404),
            }
        }
        _ => fail(404),
    }
}

/// `{"pool": "2", ...}` (vmpooler sends counts as strings) into (pool, count).
fn counts(body: &Value) -> Option<Vec<(String, u64)>> {
    body.as_object()?
        .iter()
        .map(|(pool, n)| {
            let n = n.as_u64().or_else(|| n.as_str()?.parse().ok())?;
            Some((pool.clone(), n))
        })
        .collect()
}

/// Submits one opcode as a job under the request's idempotency key and waits for its end: its
/// result, or a message.
async fn run(state: &State, req: &Request, op: Result<OpCode, ApiError>) -> Result<Value, String> {
    submit_and_wait(state, req.idempotency.clone(), op).await
}

/// As `run`, for a request that makes several jobs (none of them is the request's keyed one).
async fn run_unkeyed(state: &State, op: Result<OpCode, ApiError>) -> Result<Value, String> {
    submit_and_wait(state, None, op).await
}

async fn submit_and_wait(
    state: &State,
    key: Option<crate::jobqueue::idempotency::Idempotency>,
    op: Result<OpCode, ApiError>,
) -> Result<Value, String> {
    let op = op.map_err(|e| e.message)?;
    let id = state
        .queue
        .submit_keyed(vec![op], key)
        .await
        .map_err(|e| e.to_string())?;
    finished(state, id).await
}

async fn finished(state: &State, id: JobId) -> Result<Value, String> {
    let job = state
        .queue
        .finished(id, JOB_WAIT)
        .await
        .ok_or_else(|| format!("job {id} did not finish in time"))?;
    let result = job
        .ops
        .first()
        .map(|o| o.result.clone())
        .unwrap_or_default();
    match job.status() {
        Status::Success => Ok(result),
        _ => Err(result
            .pointer("/1/0")
            .and_then(Value::as_str)
            .unwrap_or("the job failed")
            .to_string()),
    }
}

/// Checks out every requested VM or none: on any refusal the ones already taken end at once.
async fn checkout_all(state: &State, req: &Request, wanted: Vec<(String, u64)>) -> Answer {
    let cfg = state.config.snapshot();
    if wanted.is_empty() || wanted.iter().any(|(p, _)| !cfg.pools.contains_key(p)) {
        return fail(404);
    }
    let lifetime = lifetime_of(req);
    let mut got: Vec<(String, String)> = vec![];
    let mut refused = false;
    'all: for (pool, n) in &wanted {
        for _ in 0..*n {
            let mut statics = vec![
                ("pool_name", json!(pool)),
                ("requester", json!(caller_name(req))),
            ];
            if let Some(l) = lifetime {
                statics.push(("lifetime", json!(l)));
            }
            let op = opcode(req, OpId::GantryPoolCheckout, Map::new(), statics, &[]);
            let op = op.map(|mut o| {
                // One request makes several jobs: none of them is the request's keyed job.
                o.set("comment", json!("vmpooler checkout"));
                o
            });
            match run_unkeyed(state, op).await {
                Ok(result) => got.push((
                    pool.clone(),
                    result["instance"].as_str().unwrap_or_default().to_string(),
                )),
                Err(_) => {
                    refused = true;
                    break 'all;
                }
            }
        }
    }
    if refused {
        for (_, host) in &got {
            let _ = end_now(state, req, host).await;
        }
        return fail(503);
    }
    let mut body = Map::new();
    body.insert("ok".into(), json!(true));
    for (pool, _) in &wanted {
        let hosts: Vec<&String> = got
            .iter()
            .filter(|(p, _)| p == pool)
            .map(|(_, h)| h)
            .collect();
        let hostname = match hosts.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        body.insert(pool.clone(), json!({"hostname": hostname}));
    }
    (200, Value::Object(body))
}

/// A lifetime in hours from a token holder's request (vmpooler's `X-AUTH-TOKEN` lifetime), in
/// seconds; none: the pool's default.
fn lifetime_of(req: &Request) -> Option<u64> {
    req.query_str("lifetime")
        .and_then(|h| h.parse::<u64>().ok())
        .map(hours_to_seconds)
}

/// Longest lifetime a VM may be given: a year, in hours.
const MAX_LIFETIME_HOURS: u64 = 24 * 366;

fn hours_to_seconds(hours: u64) -> u64 {
    hours.clamp(1, MAX_LIFETIME_HOURS) * 3600
}

fn checked_out<'a>(cfg: &'a Config, host: &str) -> Option<&'a Lease> {
    leases::lease_of(cfg, host).filter(|l| l.pool.is_some())
}

fn hours(secs: f64) -> f64 {
    (secs / 3600.0 * 100.0).round() / 100.0
}

fn vm(cfg: &Config, host: &str) -> Answer {
    let (Some(lease), Some(inst)) = (checked_out(cfg, host), cfg.instances.get(host)) else {
        return fail(404);
    };
    let now = crate::util::now_f64();
    let template_disks = cfg
        .pools
        .get(lease.pool.as_deref().unwrap_or_default())
        .and_then(|p| p.template.get("disks")?.as_array().map(Vec::len))
        .unwrap_or(1);
    let disks: Vec<String> = inst
        .disks
        .iter()
        .skip(template_disks)
        .map(|d| format!("+{}gb", d.size / 1024))
        .collect();
    let state = match inst.admin_state.as_str() {
        "up" => "running",
        _ => "stopped",
    };
    let mut info = json!({
        "template": lease.pool,
        "lifetime": ((lease.end - lease.start) / 3600.0).round() as u64,
        "running": hours(now - lease.start),
        "remaining": hours((lease.end - now).max(0.0)),
        "start_time": chrono_time(lease.start),
        "end_time": chrono_time(lease.end),
        "state": state,
        "tags": lease.tags,
        "ip": inst.nics.first().and_then(|n| n.ip.clone()).unwrap_or_default(),
        "host": inst.pnode,
    });
    if !disks.is_empty() {
        info["disk"] = json!(disks);
    }
    (200, json!({"ok": true, host: info}))
}

/// vmpooler's time format (`2015-04-28 19:17:47 -0700`), in UTC.
fn chrono_time(secs: f64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S +0000").to_string())
        .unwrap_or_default()
}

async fn modify(state: &State, req: &Request, host: &str) -> Answer {
    let cfg = state.config.snapshot();
    let Some(lease) = checked_out(&cfg, host) else {
        return fail(404);
    };
    let Some(body) = req.body.as_object() else {
        return fail(400);
    };
    let mut params = Map::new();
    for (key, value) in body {
        match key.as_str() {
            "lifetime" => {
                let Some(h) = value
                    .as_u64()
                    .or_else(|| value.as_str()?.parse().ok())
                    .filter(|h| (1..=MAX_LIFETIME_HOURS).contains(h))
                else {
                    return fail(400);
                };
                params.insert(
                    "end".into(),
                    json!(lease.start + hours_to_seconds(h) as f64),
                );
            }
            "tags" => {
                let Some(tags) = value.as_object() else {
                    return fail(400);
                };
                let tags: Map<String, Value> = tags
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            json!(v.as_str().map_or_else(|| v.to_string(), String::from)),
                        )
                    })
                    .collect();
                params.insert("tags".into(), Value::Object(tags));
            }
            _ => return fail(400),
        }
    }
    let op = opcode(
        req,
        OpId::GantryLeaseModify,
        Map::new(),
        vec![("lease_name", json!(lease.name))],
        &[],
    )
    .map(|mut op| {
        for (k, v) in params {
            op.set(&k, v);
        }
        op
    });
    match run(state, req, op).await {
        Ok(_) => ok(),
        Err(_) => fail(400),
    }
}

async fn end_now(state: &State, req: &Request, lease: &str) -> Result<Value, String> {
    let statics = vec![
        ("lease_name", json!(lease)),
        ("end", json!(crate::util::now_f64())),
    ];
    run_unkeyed(
        state,
        opcode(req, OpId::GantryLeaseModify, Map::new(), statics, &[]),
    )
    .await
}

/// vmpooler's DELETE: the VM's lease ends now, and the engine removes it as at any lease end.
async fn give_back(state: &State, req: &Request, host: &str) -> Answer {
    let cfg = state.config.snapshot();
    let Some(lease) = checked_out(&cfg, host) else {
        return fail(404);
    };
    match end_now(state, req, &lease.name).await {
        Ok(_) => ok(),
        Err(_) => fail(404),
    }
}

/// Adds a disk of `size` GB; answers at once, as vmpooler does (the job attaches it).
async fn add_disk(state: &State, req: &Request, host: &str, size: &str) -> Answer {
    let cfg = state.config.snapshot();
    if checked_out(&cfg, host).is_none() {
        return fail(404);
    }
    let Some(gb) = size.parse::<u64>().ok().filter(|g| (1..=4096).contains(g)) else {
        return fail(400);
    };
    let body: Map<String, Value> = [("disks".to_string(), json!([["add", {"size": gb * 1024}]]))]
        .into_iter()
        .collect();
    let op = opcode(
        req,
        OpId::InstanceSetParams,
        body,
        vec![("instance_name", json!(host))],
        &[],
    );
    let submitted = match op {
        Ok(op) => state
            .queue
            .submit(vec![op])
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.message),
    };
    match submitted {
        Ok(_) => (200, json!({"ok": true, host: {"disk": format!("+{gb}gb")}})),
        Err(_) => fail(400),
    }
}

/// Refills in flight by pool.
fn pending(state: &State) -> std::collections::HashMap<String, u64> {
    let mut pending = std::collections::HashMap::new();
    let refills = state.queue.map_unfinished(|job| {
        let op = &job.ops.first()?.input;
        if op.id() != OpId::InstanceCreate {
            return None;
        }
        leases::pool_in_reason(op.get("reason"))
    });
    for pool in refills.into_iter().flatten() {
        *pending.entry(pool).or_insert(0) += 1;
    }
    pending
}

fn status(state: &State) -> Value {
    let cfg = state.config.snapshot();
    let pending = pending(state);
    let (mut ready, mut running, mut total, mut waiting) = (0usize, 0usize, 0u64, 0u64);
    let mut empty = vec![];
    let mut pools = Map::new();
    for pool in cfg.pools.values() {
        let r = leases::ready_members(&cfg, &pool.name).len();
        let out = leases::checked_out(&cfg, &pool.name);
        let p = pending.get(&pool.name).copied().unwrap_or(0);
        if r == 0 && pool.size > 0 {
            empty.push(pool.name.clone());
        }
        ready += r;
        running += out;
        total += pool.size;
        waiting += p;
        pools.insert(
            pool.name.clone(),
            json!({"ready": r, "running": out, "pending": p, "max": pool.size}),
        );
    }
    let percent = if total == 0 {
        0.0
    } else {
        (ready as f64 * 1000.0 / total as f64).round() / 10.0
    };
    let status = if empty.is_empty() {
        json!({"ok": true, "message": "Battle station fully armed and operational."})
    } else {
        json!({"ok": false, "message": format!("Found {} empty pools.", empty.len()), "empty": empty})
    };
    json!({
        "capacity": {"current": ready, "total": total, "percent": percent},
        "queue": {
            "pending": waiting, "cloning": waiting, "booting": 0, "ready": ready,
            "running": running, "completed": 0, "total": waiting + ready as u64 + running as u64,
        },
        "status": status,
        "pools": pools,
    })
}

/// Durations as vmpooler's summary shows them.
#[derive(Default)]
struct Durations(Vec<f64>);

impl Durations {
    fn json(&self, daily: bool) -> Value {
        let n = self.0.len();
        let total = self.0.iter().fold(0.0, |a, b| a + b);
        let round = |x: f64| (x * 100.0).round() / 100.0;
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(0.0, f64::max);
        let avg = if n == 0 { 0.0 } else { total / n as f64 };
        let count = if daily {
            json!({"total": n})
        } else {
            json!({"average": n, "min": n, "max": n, "total": n})
        };
        json!({
            "duration": {"average": round(avg), "min": round(if n == 0 { 0.0 } else { min }), "max": round(max), "total": round(total)},
            "count": count,
        })
    }
}

/// `GET /summary[?from=YYYY-MM-DD[&to=YYYY-MM-DD]]`: clone (refill job run) durations per day
/// from the job history, and the tags of the VMs checked out now.
async fn summary(state: &State, req: &Request) -> Answer {
    use chrono::NaiveDate;
    let today = chrono::Utc::now().date_naive();
    let date = |name: &str| match req.query_str(name) {
        None => Some(today),
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(),
    };
    let (Some(from), Some(to)) = (date("from"), date("to")) else {
        return failed(400, "from and to are dates: YYYY-MM-DD");
    };
    if to < from || (to - from).num_days() > 366 {
        return failed(400, "from must not be after to, at most a year apart");
    }
    let clones = state
        .queue
        .map_jobs(false, |job| {
            let op = &job.ops.first()?.input;
            let from_pool = op.id() == OpId::InstanceCreate
                && leases::pool_in_reason(op.get("reason")).is_some();
            if !from_pool || job.status() != Status::Success {
                return None;
            }
            let (start, end) = (job.start_ts?.as_secs_f64(), job.end_ts?.as_secs_f64());
            let day = chrono::DateTime::from_timestamp(start as i64, 0)?.date_naive();
            Some((day, end - start))
        })
        .await;
    let mut overall = Durations::default();
    let mut daily = vec![];
    let mut day = from;
    while day <= to {
        let mut d = Durations::default();
        for (when, secs) in clones.iter().flatten() {
            if *when == day {
                d.0.push(*secs);
                overall.0.push(*secs);
            }
        }
        daily.push(json!({"date": day.format("%Y-%m-%d").to_string(), "boot": Durations::default().json(true), "clone": d.json(true), "tag": {}}));
        let Some(next) = day.succ_opt() else { break };
        day = next;
    }
    let cfg = state.config.snapshot();
    let mut tags: Map<String, Value> = Map::new();
    for lease in cfg.leases.values().filter(|l| l.pool.is_some()) {
        for (k, v) in &lease.tags {
            let counts = tags.entry(k.clone()).or_insert_with(|| json!({"total": 0}));
            counts[v.as_str()] = json!(counts[v.as_str()].as_u64().unwrap_or(0) + 1);
            counts["total"] = json!(counts["total"].as_u64().unwrap_or(0) + 1);
        }
    }
    (
        200,
        json!({"boot": Durations::default().json(false), "clone": overall.json(false), "tag": tags, "daily": daily}),
    )
}

/// `/token[/<token>]`: the caller's API tokens in vmpooler's shapes (password only).
async fn token(state: &State, req: &Request, rest: &[&str]) -> Answer {
    let Some(caller) = req.caller.as_ref().filter(|c| !c.by_token) else {
        return fail(401);
    };
    let id_of = |t: &str| {
        t.strip_prefix("gt_")
            .and_then(|r| r.split_once('_'))
            .map_or_else(|| t.to_string(), |(id, _)| id.to_string())
    };
    let cfg = state.config.snapshot();
    match (req.method.as_str(), rest) {
        ("GET", []) => {
            let mut body = Map::new();
            body.insert("ok".into(), json!(true));
            for t in state.tokens.list(&caller.user) {
                body.insert(
                    t.id.clone(),
                    json!({"created": chrono_time(t.created as f64)}),
                );
            }
            (200, Value::Object(body))
        }
        ("POST", []) => {
            let rights = if caller.can_write {
                Rights::Write
            } else {
                Rights::Read
            };
            match state.tokens.create(&caller.user, rights, DEFAULT_TTL).await {
                Ok((secret, _)) => (200, json!({"ok": true, "token": secret})),
                Err(_) => fail(500),
            }
        }
        ("GET", [given]) => {
            let id = id_of(given);
            let Some(t) = state
                .tokens
                .list(&caller.user)
                .into_iter()
                .find(|t| t.id == id)
            else {
                return fail(404);
            };
            let running: Vec<&String> = cfg
                .leases
                .values()
                .filter(|l| l.pool.is_some() && l.owner == caller.user)
                .flat_map(|l| &l.instances)
                .collect();
            let info = json!({
                "user": t.user,
                "created": chrono_time(t.created as f64),
                "last": t.last_used.map(|l| chrono_time(l as f64)),
                "vms": {"running": running},
            });
            (200, json!({"ok": true, *given: info}))
        }
        ("DELETE", [given]) => match state.tokens.revoke(&caller.user, &id_of(given)).await {
            Ok(true) => ok(),
            Ok(false) => fail(404),
            Err(_) => fail(500),
        },
        _ => fail(404),
    }
}

async fn ondemand_create(state: &State, req: &Request) -> Answer {
    let Some(body) = req.body.as_object().filter(|b| !b.is_empty()) else {
        return failed(400, "body must map pool names to counts");
    };
    let cfg = state.config.snapshot();
    if body.keys().any(|p| !cfg.pools.contains_key(p)) {
        return fail(404);
    }
    let id = crate::util::new_uuid();
    let mut statics = vec![
        ("request_id", json!(id)),
        ("pools", Value::Object(body.clone())),
        ("requester", json!(caller_name(req))),
    ];
    if let Some(l) = lifetime_of(req) {
        statics.push(("lifetime", json!(l)));
    }
    let op = opcode(req, OpId::GantryPoolRequest, Map::new(), statics, &[]);
    match run(state, req, op).await {
        Ok(_) => (201, json!({"ok": true, "request_id": id})),
        Err(e) if e.contains("Invalid count") => failed(403, &e),
        Err(e) => failed(400, &e),
    }
}

fn ondemand_status(cfg: &Config, id: &str) -> Answer {
    let mut body = Map::new();
    body.insert("ok".into(), json!(true));
    body.insert("request_id".into(), json!(id));
    let mut found = false;
    let mut ready = true;
    let mut parts = vec![];
    for pool in cfg.pools.values() {
        let Some(r) = pool.requests.get(id) else {
            continue;
        };
        found = true;
        ready &= r.missing() == 0;
        parts.push((pool.name.clone(), r.granted.clone(), r.missing()));
    }
    if !found {
        return fail(404);
    }
    body.insert("ready".into(), json!(ready));
    for (pool, granted, missing) in parts {
        let part = if ready {
            json!({"hostname": granted})
        } else {
            json!({"ready": granted.len().to_string(), "pending": missing.to_string()})
        };
        body.insert(pool, part);
    }
    (if ready { 200 } else { 202 }, Value::Object(body))
}
