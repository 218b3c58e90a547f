//! The shape of an opcode definition: parameter names, types and defaults.

use serde_json::Value;

/// The JSON type a parameter accepts (the closed set used by `opcodes.json`).
#[derive(Debug, Clone, Copy)]
pub enum ParamType {
    Bool,
    Int,
    IntMin(i64),
    IntRange(i64, i64),
    Number,
    /// An integer in MiB or a string with a unit (`"10G"`).
    Size,
    Str,
    NonEmptyStr,
    Any,
    List,
    ListOfStr,
    ListOfObject,
    ListOfEnum(&'static [&'static str]),
    Enum(&'static [&'static str]),
    Object,
}

/// What happens when a client leaves a parameter out.
#[derive(Debug, Clone, Copy)]
pub enum Default {
    Required,
    /// Optional; absent from the stored opcode when not given.
    Unset,
    /// Filled with this JSON value.
    Value(&'static str),
}

#[derive(Debug)]
pub struct ParamDef {
    pub name: &'static str,
    pub ty: ParamType,
    pub default: Default,
}

#[derive(Debug)]
pub struct OpDef {
    pub id: super::OpId,
    pub params: &'static [ParamDef],
}

impl OpDef {
    pub fn param(&self, name: &str) -> Option<&'static ParamDef> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Upstream's Python class name: `OP_INSTANCE_STARTUP` → `OpInstanceStartup`.
    pub fn class_name(&self) -> String {
        let mut out = String::from("Op");
        for word in self.id.as_str().trim_start_matches("OP_").split('_') {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.push(first);
                out.extend(chars.flat_map(|c| c.to_lowercase()));
            }
        }
        out
    }
}

/// Parses a size in MiB: an integer, or a string with an optional unit (m, g, t; k rounds up).
pub fn parse_size_mib(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64)),
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let num: f64 = num.trim().parse().ok()?;
            if num < 0.0 {
                return None;
            }
            let factor = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "m" | "mb" | "mib" => 1.0,
                "g" | "gb" | "gib" => 1024.0,
                "t" | "tb" | "tib" => 1024.0 * 1024.0,
                "k" | "kb" | "kib" => 1.0 / 1024.0,
                _ => return None,
            };
            Some((num * factor).ceil() as u64)
        }
        _ => None,
    }
}

impl ParamType {
    /// Whether `value` has this type. `null` is handled by the caller.
    pub fn accepts(&self, value: &Value) -> bool {
        match self {
            ParamType::Bool => value.is_boolean(),
            ParamType::Int => value.is_i64() || value.is_u64(),
            ParamType::IntMin(min) => value.as_i64().is_some_and(|v| v >= *min),
            ParamType::IntRange(lo, hi) => value.as_i64().is_some_and(|v| v >= *lo && v <= *hi),
            ParamType::Number => value.is_number(),
            ParamType::Size => parse_size_mib(value).is_some(),
            ParamType::Str => value.is_string(),
            ParamType::NonEmptyStr => value.as_str().is_some_and(|s| !s.is_empty()),
            ParamType::Any => true,
            ParamType::List => value.is_array(),
            ParamType::ListOfStr => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
            ParamType::ListOfObject => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_object)),
            ParamType::ListOfEnum(allowed) => value.as_array().is_some_and(|a| {
                a.iter()
                    .all(|v| v.as_str().is_some_and(|s| allowed.contains(&s)))
            }),
            ParamType::Enum(allowed) => value.as_str().is_some_and(|s| allowed.contains(&s)),
            ParamType::Object => value.is_object(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size_mib(&json!(512)), Some(512));
        assert_eq!(parse_size_mib(&json!("10G")), Some(10240));
        assert_eq!(parse_size_mib(&json!("512M")), Some(512));
        assert_eq!(parse_size_mib(&json!("1.5g")), Some(1536));
        assert_eq!(parse_size_mib(&json!("lots")), None);
        assert_eq!(parse_size_mib(&json!(-1)), None);
    }
}
