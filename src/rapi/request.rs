//! One parsed HTTP request as handlers see it: method, path segments, query flags, JSON body.

use super::error::ApiError;
use serde_json::{Map, Value};

pub struct Request {
    pub method: String,
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Value,
    /// The request's `Idempotency-Key` (not for dry runs): its job is remembered under it.
    pub idempotency: Option<crate::jobqueue::idempotency::Idempotency>,
    /// Who asked, when they authenticated.
    pub caller: Option<Caller>,
}

/// An authenticated caller and what they may do now.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub can_write: bool,
    pub can_read: bool,
    /// Authenticated by an API token, not by the users file's password.
    pub by_token: bool,
}

impl Request {
    pub fn query_str(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Ganeti's integer query flags (`?bulk=1`); a non-integer value is a 400.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.query_str(name) {
            None | Some("") => Ok(false),
            Some(v) => v.parse::<i64>().map(|n| n != 0).map_err(|_| {
                ApiError::bad_request(format!(
                    "Invalid value for '{name}': {v}, must be an integer"
                ))
            }),
        }
    }

    pub fn dry_run(&self) -> Result<bool, ApiError> {
        self.flag("dry-run")
    }

    /// The body as an object; an absent body counts as `{}`.
    pub fn body_object(&self) -> Result<Map<String, Value>, ApiError> {
        body_object(&self.body)
    }
}

/// A JSON body as an object; an absent body (`Null`) counts as `{}`.
pub fn body_object(body: &Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Null => Ok(Map::new()),
        Value::Object(m) => Ok(m.clone()),
        _ => Err(ApiError::bad_request(
            "Invalid body contents, expected a dictionary",
        )),
    }
}
