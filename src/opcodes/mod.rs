//! Typed opcodes: every operation a client can submit, validated against the catalog generated from
//! the spec, with Ganeti's wire names (`OP_ID`, parameter names) kept at the serde edge.

mod catalog;
pub mod schema;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

pub use catalog::OpId;
pub use schema::{OpDef, ParamType, parse_size_mib};

/// The ten ecodes of Ganeti's `OpPrereqError` (spec jobs.md §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ResolverError,
    InsufficientResources,
    TempInsufficientResources,
    WrongInput,
    WrongState,
    UnknownEntity,
    AlreadyExists,
    ResourceNotUnique,
    InternalError,
    EnvironmentError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ResolverError => "resolver_error",
            ErrorCode::InsufficientResources => "insufficient_resources",
            ErrorCode::TempInsufficientResources => "temp_insufficient_resources",
            ErrorCode::WrongInput => "wrong_input",
            ErrorCode::WrongState => "wrong_state",
            ErrorCode::UnknownEntity => "unknown_entity",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::ResourceNotUnique => "resource_not_unique",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::EnvironmentError => "environment_error",
        }
    }
}

/// A refused opcode: always Ganeti's `OpPrereqError` with `wrong_input`.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{0}")]
pub struct ValidationError(pub String);

/// The priorities a client may submit (spec jobs.md §9.1).
pub const PRIORITIES: [i64; 3] = [-10, 0, 10];

/// Parameters every opcode accepts besides its own.
const COMMON: &[&str] = &[
    "dry_run",
    "debug_level",
    "priority",
    "depends",
    "comment",
    "reason",
];

/// A validated opcode: its definition and its parameters with defaults applied.
#[derive(Debug, Clone)]
pub struct OpCode {
    def: &'static OpDef,
    params: Map<String, Value>,
}

pub fn definition(op_id: &str) -> Option<&'static OpDef> {
    OpId::parse(op_id).map(OpId::def)
}

impl OpId {
    /// This opcode's parameter table.
    pub fn def(self) -> &'static OpDef {
        // The generated table lists the opcodes in the enum's order (tests check it).
        &catalog::OPCODES[self as usize]
    }
}

impl std::fmt::Display for OpId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn all_definitions() -> &'static [OpDef] {
    catalog::OPCODES
}

impl OpCode {
    /// Validates a client's opcode object completely; no job may be created from a refused one.
    pub fn from_json(value: &Value) -> Result<OpCode, ValidationError> {
        let obj = value
            .as_object()
            .ok_or_else(|| ValidationError("Opcode must be a JSON object".into()))?;
        let op_id = obj
            .get("OP_ID")
            .and_then(Value::as_str)
            .ok_or_else(|| ValidationError("Opcode is missing the OP_ID field".into()))?;
        let def = definition(op_id)
            .ok_or_else(|| ValidationError(format!("Unknown opcode '{op_id}'")))?;
        let mut params = Map::new();
        for (key, val) in obj {
            if key == "OP_ID" {
                continue;
            }
            if def.param(key).is_none() && !COMMON.contains(&key.as_str()) {
                return Err(ValidationError(format!(
                    "Object {} doesn't support the parameter '{key}'",
                    def.class_name()
                )));
            }
            params.insert(key.clone(), val.clone());
        }
        let mut op = OpCode { def, params };
        op.check_and_fill()?;
        Ok(op)
    }

    /// Builds an opcode from parameters, e.g. in RAPI handlers; validated like a client's.
    pub fn build(op_id: OpId, params: Map<String, Value>) -> Result<OpCode, ValidationError> {
        let mut obj = params;
        obj.insert("OP_ID".into(), Value::String(op_id.as_str().into()));
        OpCode::from_json(&Value::Object(obj))
    }

    /// Loads an opcode this process stored earlier; it was validated on submission.
    pub fn from_stored(value: &Value) -> Option<OpCode> {
        let obj = value.as_object()?;
        let def = definition(obj.get("OP_ID")?.as_str()?)?;
        let mut params = obj.clone();
        params.remove("OP_ID");
        Some(OpCode { def, params })
    }

    fn fails(&self, name: &str) -> ValidationError {
        ValidationError(format!(
            "Parameter '{}.{name}' fails validation",
            self.def.id
        ))
    }

    fn check_and_fill(&mut self) -> Result<(), ValidationError> {
        for p in self.def.params {
            match self.params.get(p.name) {
                Some(Value::Null) | None => {
                    self.params.remove(p.name);
                    match p.default {
                        schema::Default::Required => return Err(self.fails(p.name)),
                        schema::Default::Unset => {}
                        schema::Default::Value(text) => {
                            let v = serde_json::from_str(text).expect("catalog default is JSON");
                            self.params.insert(p.name.into(), v);
                        }
                    }
                }
                Some(v) if !p.ty.accepts(v) => return Err(self.fails(p.name)),
                Some(_) => {}
            }
        }
        self.check_common()
    }

    fn check_common(&mut self) -> Result<(), ValidationError> {
        let p = &mut self.params;
        for flag in ["dry_run"] {
            match p.get(flag) {
                Some(Value::Null) => {
                    p.remove(flag);
                }
                Some(v) if !v.is_boolean() => return Err(self.fails(flag)),
                _ => {}
            }
        }
        match p.get("debug_level") {
            // Upstream's base opcode default, shown in every job record.
            None | Some(Value::Null) => {
                p.insert("debug_level".into(), Value::from(0));
            }
            Some(v) if v.as_u64().is_none() => return Err(self.fails("debug_level")),
            _ => {}
        }
        match p.get("priority").cloned() {
            None | Some(Value::Null) => {
                p.insert("priority".into(), Value::from(0));
            }
            Some(v) if !v.as_i64().is_some_and(|x| PRIORITIES.contains(&x)) => {
                return Err(self.fails("priority"));
            }
            _ => {}
        }
        match p.get("comment") {
            None => {
                p.insert("comment".into(), Value::Null);
            }
            Some(Value::Null) | Some(Value::String(_)) => {}
            Some(_) => return Err(self.fails("comment")),
        }
        match p.get("reason") {
            None | Some(Value::Null) => {
                p.insert("reason".into(), Value::Array(vec![]));
            }
            Some(Value::Array(entries)) if entries.iter().all(valid_reason_entry) => {}
            Some(_) => return Err(self.fails("reason")),
        }
        match p.get("depends").cloned() {
            None | Some(Value::Null) => {
                p.insert("depends".into(), Value::Null);
            }
            Some(Value::Array(deps)) => {
                let mut normalized = Vec::with_capacity(deps.len());
                for dep in &deps {
                    normalized
                        .push(normalize_dependency(dep).ok_or_else(|| self.fails("depends"))?);
                }
                self.params
                    .insert("depends".into(), Value::Array(normalized));
            }
            Some(_) => return Err(self.fails("depends")),
        }
        Ok(())
    }

    pub fn def(&self) -> &'static OpDef {
        self.def
    }

    pub fn id(&self) -> OpId {
        self.def.id
    }

    pub fn params(&self) -> &Map<String, Value> {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut Map<String, Value> {
        &mut self.params
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.params.get(name).filter(|v| !v.is_null())
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    pub fn bool(&self, name: &str) -> bool {
        self.get(name).and_then(Value::as_bool).unwrap_or(false)
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    pub fn strings(&self, name: &str) -> Vec<String> {
        self.get(name)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn dry_run(&self) -> bool {
        self.bool("dry_run")
    }

    pub fn priority(&self) -> i64 {
        self.int("priority").unwrap_or(0)
    }

    /// `[(job id, [statuses])]`; ids may be relative (negative) until the queue resolves them.
    pub fn depends(&self) -> Vec<(i64, Vec<String>)> {
        let Some(Value::Array(deps)) = self.params.get("depends") else {
            return vec![];
        };
        deps.iter()
            .filter_map(|d| {
                let id = d.get(0)?.as_i64()?;
                let statuses = d
                    .get(1)?
                    .as_array()?
                    .iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect();
                Some((id, statuses))
            })
            .collect()
    }

    pub fn set(&mut self, name: &str, value: Value) {
        self.params.insert(name.into(), value);
    }

    pub fn append_reason(&mut self, source: &str, text: &str, ts_ns: u128) {
        let entry = serde_json::json!([source, text, ts_ns as u64]);
        match self.params.get_mut("reason") {
            Some(Value::Array(list)) => list.push(entry),
            _ => {
                self.params
                    .insert("reason".into(), Value::Array(vec![entry]));
            }
        }
    }

    /// The one-line summary (spec jobs.md §2.5).
    pub fn summary(&self) -> String {
        let short = self.def.id.as_str().trim_start_matches("OP_");
        let value = match self.def.id {
            OpId::InstanceRename
            | OpId::GroupRename
            | OpId::NetworkRename
            | OpId::InstanceMultiAlloc
            | OpId::TagsSet
            | OpId::TagsDel
            | OpId::TagsGet
            | OpId::InstanceQueryData
            | OpId::NodeQueryStorage => None,
            OpId::TestDelay => self
                .get("duration")
                .and_then(Value::as_f64)
                .map(|d| format!("{} ns", (d * 1e9).round() as i64)),
            OpId::TagsSearch => self.str("pattern").map(String::from),
            OpId::Query | OpId::QueryFields => self.str("what").map(String::from),
            _ => ["instance_name", "node_name", "group_name", "network_name"]
                .iter()
                .find_map(|f| self.str(f).map(String::from)),
        };
        match value {
            Some(v) => format!("{short}({v})"),
            None => short.to_string(),
        }
    }

    /// The reason-trail source for the queue's own entry: `gnt:opcode:instance_startup`.
    pub fn reason_source(&self) -> String {
        format!(
            "gnt:opcode:{}",
            self.def
                .id
                .as_str()
                .trim_start_matches("OP_")
                .to_lowercase()
        )
    }

    pub fn to_json(&self) -> Value {
        let mut obj = Map::with_capacity(self.params.len() + 1);
        obj.insert("OP_ID".into(), Value::String(self.def.id.as_str().into()));
        for (k, v) in &self.params {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj)
    }
}

impl PartialEq for OpCode {
    fn eq(&self, other: &Self) -> bool {
        self.def.id == other.def.id && self.params == other.params
    }
}

/// Parameters whose values are never shown (upstream's `Private`): `osparams_private` in any
/// answer, `osparams_secret` in any answer and on disk.
const PRIVATE_PARAMS: [&str; 2] = ["osparams_private", "osparams_secret"];
const SECRET_PARAMS: [&str; 1] = ["osparams_secret"];
pub const REDACTED: &str = "<redacted>";

fn redact(mut obj: Value, names: &[&str]) -> Value {
    for name in names {
        if let Some(Value::Object(params)) = obj.get_mut(*name) {
            for v in params.values_mut() {
                *v = Value::String(REDACTED.into());
            }
        }
    }
    obj
}

impl OpCode {
    /// The opcode as API answers show it: private and secret values replaced by `<redacted>`.
    pub fn to_public_json(&self) -> Value {
        redact(self.to_json(), &PRIVATE_PARAMS)
    }
}

/// How a job record stores the opcode: secret values never reach the disk. (gantry passes no
/// secret parameter to a backend yet; when it does, it must use the in-memory opcode.)
impl Serialize for OpCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        redact(self.to_json(), &SECRET_PARAMS).serialize(s)
    }
}

impl<'de> Deserialize<'de> for OpCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        OpCode::from_stored(&v).ok_or_else(|| serde::de::Error::custom("invalid stored opcode"))
    }
}

fn valid_reason_entry(entry: &Value) -> bool {
    entry.as_array().is_some_and(|e| {
        e.len() == 3 && e[0].is_string() && e[1].is_string() && (e[2].is_u64() || e[2].is_i64())
    })
}

const FINAL_STATUSES: [&str; 3] = ["success", "error", "canceled"];

/// Checks one `[job_id, [status...]]` pair and stores its id as an integer.
fn normalize_dependency(dep: &Value) -> Option<Value> {
    let pair = dep.as_array().filter(|p| p.len() == 2)?;
    let id = match &pair[0] {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
            s.parse().ok()?
        }
        _ => return None,
    };
    let statuses = pair[1].as_array()?;
    if !statuses
        .iter()
        .all(|s| s.as_str().is_some_and(|s| FINAL_STATUSES.contains(&s)))
    {
        return None;
    }
    Some(serde_json::json!([id, statuses]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn catalog_has_every_opcode() {
        // The 52 of the spec plus OP_NODE_ADD and OP_CLUSTER_VERIFY_CONFIG, and gantry's nine
        // OP_GANTRY_* (leases, pools, on-demand requests).
        assert_eq!(all_definitions().len(), 63);
        assert!(definition("OP_TEST_DELAY").is_some());
        assert!(definition("OP_NO_SUCH_THING").is_none());
        // `OpId::def` indexes the table by the enum's discriminant.
        for (n, id) in OpId::ALL.iter().enumerate() {
            assert_eq!(all_definitions()[n].id, *id);
            assert_eq!(OpId::parse(id.as_str()), Some(*id));
            assert_eq!(id.def().id, *id);
        }
        for def in all_definitions() {
            for p in def.params {
                if let schema::Default::Value(text) = p.default {
                    serde_json::from_str::<Value>(text).expect("default parses");
                }
            }
        }
    }

    #[test]
    fn defaults_are_filled_and_unset_params_omitted() {
        let op =
            OpCode::from_json(&json!({"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "web1"}))
                .unwrap();
        let v = op.to_json();
        assert_eq!(v["force"], json!(false));
        assert_eq!(v["shutdown_timeout"], json!(120));
        assert_eq!(v["hvparams"], json!({}));
        assert_eq!(v["depends"], Value::Null);
        assert_eq!(v["comment"], Value::Null);
        assert_eq!(v["priority"], json!(0));
        assert!(v.get("instance_uuid").is_none());
        assert_eq!(op.summary(), "INSTANCE_STARTUP(web1)");
    }

    #[test]
    fn refusals_name_the_field() {
        let unknown = OpCode::from_json(
            &json!({"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "a", "bogus": 1}),
        );
        assert_eq!(
            unknown.unwrap_err().0,
            "Object OpInstanceStartup doesn't support the parameter 'bogus'"
        );
        let missing = OpCode::from_json(&json!({"OP_ID": "OP_INSTANCE_STARTUP"}));
        assert_eq!(
            missing.unwrap_err().0,
            "Parameter 'OP_INSTANCE_STARTUP.instance_name' fails validation"
        );
        let wrong = OpCode::from_json(
            &json!({"OP_ID": "OP_INSTANCE_REBOOT", "instance_name": "a", "reboot_type": "gentle"}),
        );
        assert!(
            wrong
                .unwrap_err()
                .0
                .contains("OP_INSTANCE_REBOOT.reboot_type")
        );
        let prio =
            OpCode::from_json(&json!({"OP_ID": "OP_TEST_DELAY", "duration": 1, "priority": 5}));
        assert!(prio.unwrap_err().0.contains("priority"));
    }

    #[test]
    fn dependencies_are_normalized() {
        let op = OpCode::from_json(&json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.1,
            "depends": [["12", ["success"]], [-1, []]]}))
        .unwrap();
        assert_eq!(
            op.depends(),
            vec![(12, vec!["success".into()]), (-1, vec![])]
        );
        let bad = OpCode::from_json(&json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.1,
            "depends": [[1, ["running"]]]}));
        assert!(bad.is_err());
    }

    #[test]
    fn summaries_follow_upstream_quirks() {
        let delay = OpCode::from_json(&json!({"OP_ID": "OP_TEST_DELAY", "duration": 2.5})).unwrap();
        assert_eq!(delay.summary(), "TEST_DELAY(2500000000 ns)");
        let rename = OpCode::from_json(
            &json!({"OP_ID": "OP_INSTANCE_RENAME", "instance_name": "a", "new_name": "b"}),
        )
        .unwrap();
        assert_eq!(rename.summary(), "INSTANCE_RENAME");
        assert_eq!(rename.reason_source(), "gnt:opcode:instance_rename");
    }
}
