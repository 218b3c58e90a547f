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
    for (key, value) in target.iter_mut() {
        let Some((_, ty)) = types.iter().find(|(k, _)| k == key) else {
            return Err(TypeEnforcementError(format!("Unknown parameter '{key}'")));
        };
        if value.as_str().is_some_and(|s| allowed.contains(&s)) {
            continue;
        }
        *value = convert(key, *ty, value)?;
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
