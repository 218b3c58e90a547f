//! Query field definitions and answer cells. The definitions (name, title, kind, doc of every
//! field of every query resource) are data captured from a real Ganeti 3.0.2
//! (`GET /2/query/<kind>/fields`, see `tools/capture-reference`); `tests/reference_shapes.rs`
//! keeps this file equal to that capture.

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::LazyLock;

/// One field as `/2/query/<kind>/fields` lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Definition {
    pub name: String,
    pub title: String,
    pub kind: String,
    pub doc: String,
}

static TABLE: LazyLock<HashMap<String, Vec<Definition>>> = LazyLock::new(|| {
    let rows: HashMap<String, Vec<(String, String, String, String)>> =
        serde_json::from_str(include_str!("fields.json")).expect("fields.json is valid");
    rows.into_iter()
        .map(|(kind, defs)| {
            let defs = defs
                .into_iter()
                .map(|(name, title, kind, doc)| Definition {
                    name,
                    title,
                    kind,
                    doc,
                })
                .collect();
            (kind, defs)
        })
        .collect()
});

/// Every field of a query resource (`instance`, `node`, `group`, `network`, `job`, `export`,
/// `lock`, `filter`), in upstream's order; `None` for a resource upstream does not query.
pub fn definitions(resource: &str) -> Option<&'static [Definition]> {
    TABLE.get(resource).map(Vec::as_slice)
}

pub fn is_known(resource: &str, field: &str) -> bool {
    definitions(resource).is_some_and(|defs| defs.iter().any(|d| d.name == field))
}

/// A field's definition; an unknown field is described as upstream describes it.
pub fn definition(resource: &str, field: &str) -> Value {
    match definitions(resource).and_then(|defs| defs.iter().find(|d| d.name == field)) {
        Some(d) => json!(d),
        None => json!({
            "name": field,
            "title": field,
            "kind": "unknown",
            "doc": format!("Unknown field '{field}'"),
        }),
    }
}

/// One query answer cell: upstream's result status (`constants.RS_*`) with its value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Normal(Value),
    /// RS_NODATA: the node that knows the value did not answer.
    NoData,
    /// RS_UNAVAIL: the value does not exist for this object (a NIC index past the last NIC,
    /// a hypervisor parameter of another hypervisor, a stopped instance's memory).
    Unavail,
    /// RS_OFFLINE: the node is marked offline.
    Offline,
}

impl Cell {
    /// `Normal(v)`, or `Unavail` when there is no value.
    pub fn or_unavail<T: Serialize>(value: Option<T>) -> Cell {
        value.map_or(Cell::Unavail, |v| Cell::Normal(json!(v)))
    }

    /// The value alone, as RAPI's object views show it (`null` without data).
    pub fn into_value(self) -> Value {
        match self {
            Cell::Normal(v) => v,
            _ => Value::Null,
        }
    }

    /// `[status, value]` as `/2/query` answers it.
    pub fn to_json(&self) -> Value {
        match self {
            Cell::Normal(v) => json!([0, v]),
            Cell::NoData => json!([2, null]),
            Cell::Unavail => json!([3, null]),
            Cell::Offline => json!([4, null]),
        }
    }

    pub fn value(&self) -> Option<&Value> {
        match self {
            Cell::Normal(v) => Some(v),
            _ => None,
        }
    }
}

impl From<Value> for Cell {
    fn from(v: Value) -> Cell {
        Cell::Normal(v)
    }
}
