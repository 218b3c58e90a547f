//! Ganeti's HTTP error body `{"code", "message", "explain"}`, built in one place.

use serde_json::json;
use warp::http::StatusCode;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {explain}")]
pub struct ApiError {
    pub code: u16,
    pub explain: String,
}

impl ApiError {
    pub fn new(code: u16, explain: impl Into<String>) -> ApiError {
        ApiError {
            code,
            explain: explain.into(),
        }
    }

    pub fn bad_request(explain: impl Into<String>) -> ApiError {
        ApiError::new(400, explain)
    }

    /// 501 for a method the resource does not offer (upstream's wording).
    pub fn unsupported(method: &str) -> ApiError {
        ApiError::new(501, format!("Method {method} is unsupported"))
    }

    pub fn not_found(explain: impl Into<String>) -> ApiError {
        ApiError::new(404, explain)
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "code": self.code,
            "message": self.status().canonical_reason().unwrap_or("Error"),
            "explain": self.explain,
        })
    }
}

impl From<crate::jobqueue::SubmitError> for ApiError {
    fn from(e: crate::jobqueue::SubmitError) -> ApiError {
        use crate::jobqueue::SubmitError::*;
        match e {
            Drained | Full | ShuttingDown | NoSpace { .. } => ApiError::new(503, e.to_string()),
            Invalid(msg) => ApiError::bad_request(format!("Invalid body parameters: {msg}")),
            // Temporary (a full disk, a failed flush): the client may retry later.
            Storage(e) => ApiError::new(503, e.to_string()),
        }
    }
}
