//! Ganeti's query filter language (`lib/qlang.py`): list-form filters such as
//! `["&", ["=", "name", "web1"], ["?", "admin_state"]]`. Used by `/2/query` (`qfilter`) and by
//! the predicates of job filter rules. A filter is parsed once, then evaluated against rows
//! through a field getter.

use regex::Regex;
use serde_json::Value;
use std::cmp::Ordering;
use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
#[error("{0}")]
pub struct QueryFilterError(pub String);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Compare {
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
}

#[derive(Debug, Clone)]
pub enum Filter {
    Or(Vec<Filter>),
    And(Vec<Filter>),
    Not(Box<Filter>),
    /// `["?", field]`: the field's value is truthy.
    Truth(String),
    Compare(Compare, String, Value),
    Regex(String, Regex),
    /// `["=[]", field, value]`: the field is a list holding the value.
    Contains(String, Value),
}

fn field_name(v: Option<&Value>, op: &str) -> Result<String, QueryFilterError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(QueryFilterError(format!(
            "Operator '{op}' needs a field name as its first operand"
        ))),
    }
}

impl Filter {
    pub fn parse(v: &Value) -> Result<Filter, QueryFilterError> {
        let Some(list) = v.as_array() else {
            return Err(QueryFilterError(format!("Filter must be a list, not {v}")));
        };
        let Some(op) = list.first().and_then(Value::as_str) else {
            return Err(QueryFilterError(format!(
                "Filter must start with an operator string: {v}"
            )));
        };
        let args = &list[1..];
        let arity = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(QueryFilterError(format!(
                    "Operator '{op}' takes {n} operand(s), got {}",
                    args.len()
                )))
            }
        };
        let compare = |c: Compare| -> Result<Filter, QueryFilterError> {
            arity(2)?;
            Ok(Filter::Compare(
                c,
                field_name(args.first(), op)?,
                args[1].clone(),
            ))
        };
        match op {
            "|" | "&" => {
                let parts = args.iter().map(Filter::parse).collect::<Result<_, _>>()?;
                Ok(if op == "|" {
                    Filter::Or(parts)
                } else {
                    Filter::And(parts)
                })
            }
            "!" => {
                arity(1)?;
                Ok(Filter::Not(Box::new(Filter::parse(&args[0])?)))
            }
            "?" => {
                arity(1)?;
                Ok(Filter::Truth(field_name(args.first(), op)?))
            }
            "=" | "==" => compare(Compare::Equal),
            "!=" => compare(Compare::NotEqual),
            "<" => compare(Compare::Less),
            "<=" => compare(Compare::LessEqual),
            ">" => compare(Compare::Greater),
            ">=" => compare(Compare::GreaterEqual),
            "=~" => {
                arity(2)?;
                let pattern = args[1].as_str().ok_or_else(|| {
                    QueryFilterError("Regular expression must be a string".into())
                })?;
                let re = Regex::new(pattern)
                    .map_err(|e| QueryFilterError(format!("Invalid regular expression: {e}")))?;
                Ok(Filter::Regex(field_name(args.first(), op)?, re))
            }
            "=[]" => {
                arity(2)?;
                Ok(Filter::Contains(
                    field_name(args.first(), op)?,
                    args[1].clone(),
                ))
            }
            other => Err(QueryFilterError(format!("Unknown operator '{other}'"))),
        }
    }

    /// Every field the filter reads, for checking them against the resource's fields.
    pub fn fields(&self) -> Vec<&str> {
        match self {
            Filter::Or(parts) | Filter::And(parts) => {
                parts.iter().flat_map(Filter::fields).collect()
            }
            Filter::Not(inner) => inner.fields(),
            Filter::Truth(f)
            | Filter::Compare(_, f, _)
            | Filter::Regex(f, _)
            | Filter::Contains(f, _) => vec![f.as_str()],
        }
    }

    /// Literals the filter compares `field` with for equality anywhere (to find archived jobs a
    /// query names by id).
    pub fn equality_literals(&self, field: &str) -> Vec<&Value> {
        match self {
            Filter::Or(parts) | Filter::And(parts) => parts
                .iter()
                .flat_map(|p| p.equality_literals(field))
                .collect(),
            Filter::Not(inner) => inner.equality_literals(field),
            Filter::Compare(Compare::Equal, f, v) if f == field => vec![v],
            _ => vec![],
        }
    }

    /// Replaces every literal equal to `from` by `to` (job filter rules compare ids with the
    /// string "watermark").
    pub fn substitute(&mut self, from: &Value, to: &Value) {
        match self {
            Filter::Or(parts) | Filter::And(parts) => {
                parts.iter_mut().for_each(|p| p.substitute(from, to))
            }
            Filter::Not(inner) => inner.substitute(from, to),
            Filter::Compare(_, _, v) | Filter::Contains(_, v) if v == from => *v = to.clone(),
            _ => {}
        }
    }

    /// Evaluates the filter; `get` answers a field's value (None for an unknown field).
    pub fn matches(&self, get: &dyn Fn(&str) -> Option<Value>) -> bool {
        let value = |f: &str| get(f).unwrap_or(Value::Null);
        match self {
            Filter::Or(parts) => parts.iter().any(|p| p.matches(get)),
            Filter::And(parts) => parts.iter().all(|p| p.matches(get)),
            Filter::Not(inner) => !inner.matches(get),
            Filter::Truth(f) => truthy(&value(f)),
            Filter::Compare(c, f, v) => compare(*c, &value(f), v),
            Filter::Regex(f, re) => value(f).as_str().is_some_and(|s| re.is_match(s)),
            Filter::Contains(f, v) => value(f)
                .as_array()
                .is_some_and(|items| items.iter().any(|i| equal(i, v))),
        }
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// JSON equality, with numbers compared by value (1 == 1.0, as in Python).
fn equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn compare(c: Compare, field: &Value, literal: &Value) -> bool {
    match c {
        Compare::Equal => equal(field, literal),
        Compare::NotEqual => !equal(field, literal),
        _ => order(field, literal).is_some_and(|o| match c {
            Compare::Less => o.is_lt(),
            Compare::LessEqual => o.is_le(),
            Compare::Greater => o.is_gt(),
            _ => o.is_ge(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(f: &str) -> Option<Value> {
        match f {
            "name" => Some(json!("web1.example.com")),
            "memory" => Some(json!(512)),
            "tags" => Some(json!(["prod", "web"])),
            "admin_up" => Some(json!(false)),
            _ => None,
        }
    }

    fn check(filter: Value) -> bool {
        Filter::parse(&filter).unwrap().matches(&row)
    }

    #[test]
    fn operators_evaluate_like_ganeti() {
        assert!(check(json!(["=", "name", "web1.example.com"])));
        assert!(check(json!(["==", "memory", 512.0])));
        assert!(check(json!(["!=", "memory", 256])));
        assert!(check(json!([
            "&",
            [">", "memory", 256],
            ["<=", "memory", 512]
        ])));
        assert!(
            !check(json!(["<", "memory", "a string"])),
            "mixed types never order"
        );
        assert!(check(json!([
            "|",
            ["?", "admin_up"],
            ["=~", "name", "^web\\d"]
        ])));
        assert!(check(json!(["!", ["?", "admin_up"]])));
        assert!(check(json!(["=[]", "tags", "prod"])));
        assert!(!check(json!(["=[]", "tags", "dev"])));
        assert!(check(json!(["&"])), "an empty AND is true");
        assert!(!check(json!(["|"])), "an empty OR is false");
    }

    #[test]
    fn malformed_filters_are_refused_with_a_reason() {
        for (bad, says) in [
            (json!("name"), "must be a list"),
            (json!(["~~", "name", 1]), "Unknown operator '~~'"),
            (json!(["=", "name"]), "takes 2 operand(s)"),
            (json!(["=~", "name", "("]), "Invalid regular expression"),
            (json!(["?", 3]), "needs a field name"),
        ] {
            let err = Filter::parse(&bad).unwrap_err();
            assert!(err.0.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn substitution_replaces_literals_only() {
        let mut f = Filter::parse(&json!(["<", "id", "watermark"])).unwrap();
        f.substitute(&json!("watermark"), &json!(10));
        assert!(f.matches(&|_| Some(json!(9))));
        assert!(!f.matches(&|_| Some(json!(10))));
        assert_eq!(f.fields(), vec!["id"]);
    }
}
