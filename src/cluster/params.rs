//! Typed parameter dictionaries (upstream `constants.*_PARAMETER_TYPES` and
//! `utils.ForceDictType`): unknown keys and values of the wrong type are refused, convertible
//! ones are converted (`"2"` → 2 for integers, `"1G"` → 1024 for sizes, `"true"` → true), so
//! the configuration only ever holds what the htools and clients can read.

use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VType {
    Str,
    Bool,
    /// MiB: an integer or a string with a unit.
    Size,
    Int,
    Float,
}

/// Backend parameters (`BES_PARAMETER_TYPES`).
pub const BACKEND: &[(&str, VType)] = &[
    ("always_failover", VType::Bool),
    ("auto_balance", VType::Bool),
    ("maxmem", VType::Size),
    ("memory", VType::Size),
    ("minmem", VType::Size),
    ("spindle_use", VType::Int),
    ("vcpus", VType::Int),
];

/// Node parameters (`NDS_PARAMETER_TYPES`), plus gantry's: a fake node's simulated capacity
/// and a node agent's address.
pub const NODE: &[(&str, VType)] = &[
    ("oob_program", VType::Str),
    ("spindle_count", VType::Int),
    ("exclusive_storage", VType::Bool),
    ("ovs", VType::Bool),
    ("ovs_name", VType::Str),
    ("ovs_link", VType::Str),
    ("ssh_port", VType::Int),
    ("cpu_speed", VType::Float),
    ("fake_memory_mib", VType::Int),
    ("fake_disk_mib", VType::Int),
    ("fake_cpus", VType::Int),
    ("agent_address", VType::Str),
];

/// NIC parameters (`NICS_PARAMETER_TYPES`).
pub const NIC: &[(&str, VType)] = &[
    ("mode", VType::Str),
    ("link", VType::Str),
    ("vlan", VType::Str),
];

pub const NIC_MODES: &[&str] = &["bridged", "routed", "openvswitch"];

/// The type of a default value: what upstream's tables say for every parameter whose default
/// is a bool, an integer or a string (hypervisor and disk parameters).
fn type_of(default: &Value) -> VType {
    match default {
        Value::Bool(_) => VType::Bool,
        Value::Number(n) if n.is_f64() => VType::Float,
        Value::Number(_) => VType::Int,
        _ => VType::Str,
    }
}

/// A parameter table from a dictionary of defaults (`hvparams.kvm`, `diskparams.drbd`...).
fn table_of(defaults: &Map<String, Value>) -> Vec<(String, VType)> {
    defaults
        .iter()
        .map(|(k, v)| (k.clone(), type_of(v)))
        .collect()
}

/// Named parameter tables: hypervisor or disk template → its parameters' types.
pub type Tables = Vec<(String, Vec<(String, VType)>)>;

/// Built once: checks run per instance (config verification walks them all).
static HV_TABLES: std::sync::LazyLock<Tables> =
    std::sync::LazyLock::new(|| nested_tables("hvparams"));
static DISK_TABLES: std::sync::LazyLock<Tables> =
    std::sync::LazyLock::new(|| nested_tables("diskparams"));

/// Every hypervisor's parameters, from Ganeti 3.0's defaults.
pub fn hypervisor_tables() -> &'static Tables {
    &HV_TABLES
}

/// Every disk template's parameters, from Ganeti 3.0's defaults; its names are the known
/// disk templates.
pub fn disk_tables() -> &'static Tables {
    &DISK_TABLES
}

fn nested_tables(key: &str) -> Tables {
    super::bootstrap::defaults(key)
        .iter()
        .filter_map(|(name, d)| Some((name.clone(), table_of(d.as_object()?))))
        .collect()
}

/// A refusal of hypervisor parameters: unknown to every hypervisor (`TypeEnforcementError`),
/// or not one of this hypervisor's (`HypervisorError`), as upstream words them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HvParamsError {
    #[error("{0}")]
    Type(#[from] TypeEnforcementError),
    #[error("Parameter '{0}' is not supported")]
    NotSupported(String),
}

/// Checks and converts an instance's hypervisor parameters for hypervisor `hv`.
pub fn check_hvparams(
    hv: &str,
    target: &mut Map<String, Value>,
    allowed: &[&str],
) -> Result<(), HvParamsError> {
    let tables = hypervisor_tables();
    let any = |key: &str| {
        tables
            .iter()
            .flat_map(|(_, t)| t.iter())
            .find(|(k, _)| k == key)
            .map(|(_, ty)| *ty)
    };
    force_with(target, &any, allowed)?;
    let own = tables.iter().find(|(name, _)| name == hv).map(|(_, t)| t);
    if let Some(key) = target
        .keys()
        .find(|k| !own.is_some_and(|t| t.iter().any(|(name, _)| name == *k)))
    {
        return Err(HvParamsError::NotSupported(key.clone()));
    }
    Ok(())
}

/// Checks cluster-level parameters nested per hypervisor or disk template.
pub fn check_nested(
    tables: &Tables,
    target: &mut Map<String, Value>,
    what: &str,
) -> Result<(), TypeEnforcementError> {
    for (name, params) in target.iter_mut() {
        let Some((_, table)) = tables.iter().find(|(n, _)| n == name) else {
            return Err(TypeEnforcementError(format!("Unknown {what} '{name}'")));
        };
        let Some(params) = params.as_object_mut() else {
            return Err(TypeEnforcementError(format!(
                "Invalid {what} parameters for '{name}': not a dictionary"
            )));
        };
        force_with(
            params,
            &|k| table.iter().find(|(n, _)| n == k).map(|(_, t)| *t),
            &[],
        )?;
    }
    Ok(())
}

/// Checks NIC parameters: types, then the mode (`ConfigurationError` upstream).
pub fn check_nicparams(
    target: &mut Map<String, Value>,
    allowed: &[&str],
) -> Result<(), NicParamsError> {
    force_dict_type(target, NIC, allowed)?;
    match target.get("mode").and_then(Value::as_str) {
        Some(m) if !NIC_MODES.contains(&m) && !allowed.contains(&m) => {
            Err(NicParamsError::Mode(m.to_string()))
        }
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NicParamsError {
    #[error("{0}")]
    Type(#[from] TypeEnforcementError),
    #[error("Invalid NIC mode '{0}'")]
    Mode(String),
}

/// The instance specs an instance policy bounds (`ISPECS_PARAMETER_TYPES`).
pub const ISPECS: &[(&str, VType)] = &[
    ("memory-size", VType::Int),
    ("cpu-count", VType::Int),
    ("disk-count", VType::Int),
    ("disk-size", VType::Int),
    ("nic-count", VType::Int),
    ("spindle-use", VType::Int),
];

/// Checks and converts an instance policy (cluster or group): `minmax` pairs and `std` of
/// instance specs, `disk-templates` among the known ones, the two ratios as floats; unknown
/// keys are refused. Values in `allowed` (`"default"` in a group) pass.
pub fn check_ipolicy(
    policy: &mut Map<String, Value>,
    allowed: &[&str],
) -> Result<(), TypeEnforcementError> {
    for (key, value) in policy.iter_mut() {
        if value.as_str().is_some_and(|s| allowed.contains(&s)) {
            continue;
        }
        match key.as_str() {
            "minmax" => {
                let pairs = value.as_array_mut().ok_or_else(|| {
                    TypeEnforcementError("Invalid instance policy: 'minmax' is not a list".into())
                })?;
                for pair in pairs {
                    let pair = pair.as_object_mut().ok_or_else(|| {
                        TypeEnforcementError(
                            "Invalid instance policy: a 'minmax' item is not a dictionary".into(),
                        )
                    })?;
                    for (end, specs) in pair.iter_mut() {
                        if end != "min" && end != "max" {
                            return Err(TypeEnforcementError(format!(
                                "Invalid keys in ipolicy/minmax: {end}"
                            )));
                        }
                        let specs = specs.as_object_mut().ok_or_else(|| {
                            TypeEnforcementError(format!(
                                "Invalid instance policy: '{end}' is not a dictionary"
                            ))
                        })?;
                        force_dict_type(specs, ISPECS, &[])?;
                    }
                }
            }
            "std" => {
                let specs = value.as_object_mut().ok_or_else(|| {
                    TypeEnforcementError(
                        "Invalid instance policy: 'std' is not a dictionary".into(),
                    )
                })?;
                force_dict_type(specs, ISPECS, &[])?;
            }
            "disk-templates" => {
                let list = value.as_array().ok_or_else(|| {
                    TypeEnforcementError(
                        "Invalid instance policy: 'disk-templates' is not a list".into(),
                    )
                })?;
                if let Some(bad) = list.iter().find(|t| {
                    !t.as_str()
                        .is_some_and(|t| disk_tables().iter().any(|(n, _)| n == t))
                }) {
                    return Err(TypeEnforcementError(format!(
                        "Invalid disk template specified: {}",
                        shown(bad)
                    )));
                }
            }
            "vcpu-ratio" | "spindle-ratio" => *value = convert(key, VType::Float, value)?,
            other => {
                return Err(TypeEnforcementError(format!(
                    "Invalid keys in ipolicy: {other}"
                )));
            }
        }
    }
    Ok(())
}

/// The largest size accepted, in MiB (16 PiB): more than any node holds, far below overflow.
pub const MAX_SIZE_MIB: u64 = 1 << 34;
/// The largest integer accepted.
pub const MAX_INT: i64 = i32::MAX as i64;

/// Upstream's `TypeEnforcementError` message for a refused dictionary.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TypeEnforcementError(pub String);

/// How upstream prints a value in its messages (`%s` of the Python value).
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

/// Checks and converts `target` in place against `types`; values in `allowed` (such as
/// `"default"` in a modification) pass as they are.
pub fn force_dict_type(
    target: &mut Map<String, Value>,
    types: &[(&str, VType)],
    allowed: &[&str],
) -> Result<(), TypeEnforcementError> {
    force_with(
        target,
        &|key| types.iter().find(|(k, _)| *k == key).map(|(_, t)| *t),
        allowed,
    )
}

/// `force_dict_type` with the table as a lookup.
fn force_with(
    target: &mut Map<String, Value>,
    type_of: &dyn Fn(&str) -> Option<VType>,
    allowed: &[&str],
) -> Result<(), TypeEnforcementError> {
    for (key, value) in target.iter_mut() {
        let Some(ty) = type_of(key) else {
            return Err(TypeEnforcementError(format!("Unknown parameter '{key}'")));
        };
        if value.as_str().is_some_and(|s| allowed.contains(&s)) {
            continue;
        }
        *value = convert(key, ty, value)?;
    }
    Ok(())
}

/// One value checked and converted to its type.
fn convert(key: &str, ty: VType, value: &Value) -> Result<Value, TypeEnforcementError> {
    let bad = |what: &str| {
        TypeEnforcementError(format!(
            "'{key}' (value {}) is not a valid {what}",
            shown(value)
        ))
    };
    Ok(match ty {
        VType::Str => match value {
            Value::String(_) => value.clone(),
            Value::Bool(false) => json!(""),
            _ => return Err(bad("string")),
        },
        VType::Bool => match value {
            Value::String(s) if s.eq_ignore_ascii_case("true") => json!(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => json!(false),
            Value::String(s) if !s.is_empty() => return Err(bad("boolean")),
            Value::Bool(_) => value.clone(),
            Value::Null => json!(false),
            Value::Number(n) => json!(n.as_f64().is_some_and(|f| f != 0.0)),
            Value::String(_) | Value::Array(_) | Value::Object(_) => {
                json!(!is_empty(value))
            }
        },
        VType::Int => {
            let n = match value {
                Value::Number(n) => n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && f.abs() <= MAX_INT as f64)
                        .map(|f| f.trunc() as i64)
                }),
                Value::String(s) => s.trim().parse::<i64>().ok(),
                Value::Bool(b) => Some(i64::from(*b)),
                _ => None,
            };
            match n {
                Some(n) if (-MAX_INT..=MAX_INT).contains(&n) => json!(n),
                _ => return Err(bad("integer")),
            }
        }
        VType::Float => {
            let f = match value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                _ => None,
            };
            match f {
                Some(f) if f.is_finite() => json!(f),
                _ => return Err(bad("float")),
            }
        }
        VType::Size => match crate::opcodes::parse_size_mib(value) {
            Some(mib) if mib <= MAX_SIZE_MIB => json!(mib),
            Some(_) => {
                return Err(TypeEnforcementError(format!(
                    "'{key}' (value {}) is not a valid size. error: larger than {MAX_SIZE_MIB} MiB",
                    shown(value)
                )));
            }
            None => {
                return Err(TypeEnforcementError(format!(
                    "'{key}' (value {}) is not a valid size. error: Invalid size",
                    shown(value)
                )));
            }
        },
    })
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(v: Value) -> Result<Value, String> {
        let mut m = v.as_object().unwrap().clone();
        force_dict_type(&mut m, BACKEND, &["default"])
            .map(|_| Value::Object(m))
            .map_err(|e| e.0)
    }

    #[test]
    fn converts_like_upstream() {
        assert_eq!(
            check(json!({"vcpus": "2", "maxmem": "1G", "auto_balance": "False"})).unwrap(),
            json!({"vcpus": 2, "maxmem": 1024, "auto_balance": false})
        );
        assert_eq!(
            check(json!({"minmem": "default"})).unwrap(),
            json!({"minmem": "default"})
        );
    }

    #[test]
    fn refuses_like_upstream() {
        assert_eq!(
            check(json!({"bogus": 1})).unwrap_err(),
            "Unknown parameter 'bogus'"
        );
        assert_eq!(
            check(json!({"vcpus": "x"})).unwrap_err(),
            "'vcpus' (value x) is not a valid integer"
        );
        assert_eq!(
            check(json!({"auto_balance": "yes"})).unwrap_err(),
            "'auto_balance' (value yes) is not a valid boolean"
        );
        assert!(
            check(json!({"memory": 1e20}))
                .unwrap_err()
                .contains("not a valid size")
        );
        assert!(
            check(json!({"default": {}}))
                .unwrap_err()
                .contains("Unknown parameter")
        );
    }
}
