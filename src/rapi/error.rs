//! Ganeti's HTTP error body `{"code", "message", "explain"}`, built in one place. As upstream's
//! HTTP server does, `message` carries the specific text (HTML-escaped, or the status's reason
//! phrase when there is none) and `explain` the generic explanation of the status code.

use serde_json::json;
use warp::http::StatusCode;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: u16,
    /// The specific text; empty when only the status's reason phrase applies.
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// An error with nothing more to say than its status (upstream's bare `HttpNotFound()`).
    pub fn plain(code: u16) -> ApiError {
        ApiError::new(code, "")
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// 501 for a method the resource does not offer; [`ApiError::at_path`] names the path.
    pub fn unsupported(method: &str) -> ApiError {
        ApiError::new(501, format!("Method {method} is unsupported"))
    }

    /// Upstream's wording for an unsupported method names the path too.
    pub fn at_path(mut self, path: &str) -> ApiError {
        if self.code == 501 && self.message.ends_with(" is unsupported") {
            self.message = format!("{} for path {path}", self.message);
        }
        self
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, message)
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn body(&self) -> serde_json::Value {
        let message = if self.message.is_empty() {
            self.status()
                .canonical_reason()
                .unwrap_or("Error")
                .to_string()
        } else {
            html_escape(&self.message)
        };
        json!({"code": self.code, "message": message, "explain": explanation(self.code)})
    }
}

/// The escaping upstream applies to error messages (Python's `html.escape`).
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// The long explanation of each status, as Python's `http.server` table words it.
fn explanation(code: u16) -> &'static str {
    match code {
        400 => "Bad request syntax or unsupported method",
        401 => "No permission -- see authorization schemes",
        403 => "Request forbidden -- authorization will not help",
        404 => "Nothing matches the given URI",
        405 => "Specified method is invalid for this resource.",
        408 => "Request timed out; try again later.",
        409 => "Request conflict.",
        411 => "Client must specify Content-Length.",
        413 => "Entity is too large.",
        414 => "URI is too long.",
        415 => "Entity body in unsupported format",
        422 => "The request was well-formed but was unable to be followed due to semantic errors",
        429 => "The user has sent too many requests in a given amount of time (\"rate limiting\").",
        431 => "The server refused this request because the request header fields are too large.",
        500 => "Server got itself in trouble",
        501 => "Server does not support this operation",
        502 => "Invalid responses from another server/proxy",
        503 => "The server cannot process the request due to a high load",
        504 => "The gateway server did not receive a timely response",
        _ => "",
    }
}

impl From<crate::jobqueue::SubmitError> for ApiError {
    fn from(e: crate::jobqueue::SubmitError) -> ApiError {
        use crate::jobqueue::SubmitError::*;
        match e {
            Drained | Full | ShuttingDown | NoSpace { .. } => ApiError::new(503, e.to_string()),
            Invalid(msg) => ApiError::bad_request(format!("Invalid body parameters: {msg}")),
            KeyReused(_) => ApiError::new(422, e.to_string()),
            // Temporary (a full disk, a failed flush): the client may retry later.
            Storage(e) => ApiError::new(503, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specific_text_is_the_message_and_escaped() {
        let body = ApiError::bad_request("Parameter 'x' \"y\" <z> & w").body();
        assert_eq!(
            body["message"],
            "Parameter &#x27;x&#x27; &quot;y&quot; &lt;z&gt; &amp; w"
        );
        assert_eq!(body["explain"], "Bad request syntax or unsupported method");
        let plain = ApiError::plain(404).body();
        assert_eq!(plain["message"], "Not Found");
        assert_eq!(plain["explain"], "Nothing matches the given URI");
    }
}
