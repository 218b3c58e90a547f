//! The RAPI v2 HTTP(S) server: warp turns each request into a `Request`, authentication is
//! checked, and `routes::dispatch` answers. Connections are served by hyper directly so that a
//! header-read timeout and a connection cap protect the server from slow clients.

pub mod auth;
mod cache;
mod error;
mod events;
mod filters;
mod follower;
pub mod leading;
mod leases;
mod objects;
pub mod openapi;
mod opjob;
mod query;
mod request;
mod routes;
pub mod table;
pub mod tokens;
mod vmpooler;

use crate::backends::LiveState;
use crate::cluster::ConfigReader;
use crate::http::{ServerOptions, serve_filter};
use crate::jobqueue::JobQueue;
use crate::jobqueue::idempotency::Idempotency;
use auth::{REALM, UserDb};
use error::ApiError;
use md5::{Digest, Md5};
use request::Request;
use routes::Access;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use warp::Filter;
use warp::http::{HeaderMap, Method, Response, StatusCode};

pub const MAX_BODY: u64 = 4 * 1024 * 1024;
/// How much of an oversized chunked body is read and discarded before answering 413.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

pub struct StateInner {
    pub queue: JobQueue,
    /// The configuration, read-only: the RAPI changes it only by submitting jobs.
    pub config: ConfigReader,
    /// What the hypervisor reports now, read-only.
    pub live: LiveState,
    pub users: UserDb,
    pub require_auth: bool,
    pub wait_timeout: Duration,
    /// Serialized answers that are still valid (`cache.rs`).
    pub answers: cache::Answers,
    /// API tokens (`tokens.rs`).
    pub tokens: tokens::Tokens,
}

pub type State = StateInner;

fn json_response(status: StatusCode, body: &Value) -> Response<bytes::Bytes> {
    bytes_response(status, serde_json::to_vec(body).unwrap_or_default().into())
}

/// A JSON answer already serialized (shared, not copied, when it comes from the cache).
fn bytes_response(status: StatusCode, body: bytes::Bytes) -> Response<bytes::Bytes> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(body)
        .unwrap_or_default()
}

/// A plain GET whose answer may be cached: `Some(job id)` for `/2/jobs/N`, `Some(0)` for
/// `/2/info`.
fn cacheable(method: &Method, segments: &[&str], query: &str, body: &[u8]) -> Option<u64> {
    if *method != Method::GET || !query.is_empty() || !body.is_empty() {
        return None;
    }
    match segments {
        ["2", "info"] => Some(0),
        ["2", "jobs", id] => id.parse().ok().filter(|id| *id > 0),
        _ => None,
    }
}

fn error_response(e: &ApiError) -> Response<bytes::Bytes> {
    let mut resp = json_response(e.status(), &e.body());
    if e.code == 401 {
        resp.headers_mut().insert(
            "WWW-Authenticate",
            format!("Basic realm=\"{REALM}\"")
                .parse()
                .expect("static header"),
        );
    }
    resp
}

/// Checks the credentials against the access the request needs; answers the user's name.
fn check_auth(
    state: &State,
    headers: &HeaderMap,
    access: Access,
) -> Result<Option<request::Caller>, ApiError> {
    authorize(
        &state.users,
        state.require_auth,
        Some(&state.tokens),
        headers,
        access,
    )
}

/// `check_auth` for a master with or without a store of API tokens (a follower has none).
fn authorize(
    users: &auth::UserDb,
    require_auth: bool,
    tokens: Option<&tokens::Tokens>,
    headers: &HeaderMap,
    access: Access,
) -> Result<Option<request::Caller>, ApiError> {
    let caller = match tokens::presented(headers) {
        // A token's rights are cut to what its user may do now; a user no longer in the users
        // file takes their tokens along.
        Some(token) => {
            let record = tokens
                .and_then(|tokens| tokens.authenticate(&token))
                .ok_or_else(|| ApiError::plain(401))?;
            let user = users
                .get(&record.user)
                .ok_or_else(|| ApiError::plain(401))?;
            Some(request::Caller {
                can_write: record.rights == tokens::Rights::Write && user.can_write(),
                can_read: user.can_read(),
                user: record.user,
                by_token: true,
            })
        }
        None => {
            let creds = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(|h| auth::basic_credentials(h).ok_or_else(|| ApiError::plain(401)));
            match creds {
                Some(Ok((name, password))) => {
                    let user = users
                        .authenticate(&name, &password)
                        .ok_or_else(|| ApiError::plain(401))?;
                    Some(request::Caller {
                        can_write: user.can_write(),
                        can_read: user.can_read(),
                        user: name,
                        by_token: false,
                    })
                }
                Some(Err(e)) => return Err(e),
                None => None,
            }
        }
    };
    let needs_user = access != Access::Open || require_auth;
    match (caller, access) {
        // Upstream says no more than the status for either.
        (None, _) if needs_user => Err(ApiError::plain(401)),
        (Some(c), Access::Write) if !c.can_write => Err(ApiError::plain(403)),
        (Some(c), Access::Read) if !c.can_read => Err(ApiError::plain(403)),
        (caller, _) => Ok(caller),
    }
}

/// Answers one request, timing it by method and route (`gantry_http_request_seconds`).
async fn handle(
    state: Arc<State>,
    method: Method,
    path: warp::path::FullPath,
    query: String,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response<bytes::Bytes>, std::convert::Infallible> {
    let since = std::time::Instant::now();
    let segments: Vec<String> = path
        .as_str()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let seg_refs: Vec<&str> = segments.iter().map(String::as_str).collect();
    // Static labels: no allocation per request.
    let labels = crate::metrics::RouteLabels {
        method: match method {
            Method::GET => "GET",
            Method::PUT => "PUT",
            Method::POST => "POST",
            Method::DELETE => "DELETE",
            _ => "other",
        },
        route: openapi::route_of(&seg_refs),
    };
    let answer = answer(state, method, path, query, headers, body, segments).await;
    crate::metrics::METRICS
        .http_request_seconds
        .get_or_create(&labels)
        .observe(since.elapsed().as_secs_f64());
    answer
}

async fn answer(
    state: Arc<State>,
    method: Method,
    path: warp::path::FullPath,
    query: String,
    headers: HeaderMap,
    body: bytes::Bytes,
    segments: Vec<String>,
) -> Result<Response<bytes::Bytes>, std::convert::Infallible> {
    let seg_refs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let access = routes::access_for(method.as_str(), &seg_refs);
    let caller = match check_auth(&state, &headers, access) {
        Ok(caller) => caller,
        Err(e) => return Ok(error_response(&e)),
    };
    let user = caller.as_ref().map(|c| c.user.clone());
    let cacheable = cacheable(&method, &seg_refs, &query, &body);
    match cacheable {
        Some(0) => {
            let info = state.answers.info(state.config.snapshot());
            return Ok(bytes_response(StatusCode::OK, info));
        }
        Some(id) => {
            if let Some(answer) = state.answers.job(id) {
                return Ok(bytes_response(StatusCode::OK, answer));
            }
        }
        None => {}
    }
    let query_pairs = parse_query(&query);
    let idempotency = match idempotency_key(
        &method,
        path.as_str(),
        &query,
        &query_pairs,
        user,
        &headers,
        &body,
    ) {
        Ok(k) => k,
        Err(e) => return Ok(error_response(&e)),
    };
    // vmpooler's clients (and its documented `curl -d`) send JSON under any content type.
    let vmpooler = matches!(seg_refs.as_slice(), ["api", "v1", ..]);
    let body = match parse_body(&headers, &body, vmpooler) {
        Ok(b) => b,
        Err(e) => return Ok(error_response(&e)),
    };
    let req = Request {
        method: method.as_str().to_string(),
        segments,
        query: query_pairs,
        body,
        idempotency,
        caller,
    };
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    if let ["api", "v1", rest @ ..] = segs.as_slice() {
        let (code, body) = vmpooler::answer(&state, &req, rest).await;
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(json_response(status, &body));
    }
    Ok(match routes::dispatch(&state, &req).await {
        Ok(v) => {
            let bytes = bytes::Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
            let finished = v
                .get("status")
                .and_then(Value::as_str)
                .is_some_and(|s| ["success", "error", "canceled"].contains(&s));
            if let Some(id) = cacheable.filter(|_| finished) {
                state.answers.finished_job(id, bytes.clone());
            }
            bytes_response(StatusCode::OK, bytes)
        }
        Err(e) => error_response(&e.at_path(path.as_str())),
    })
}

/// Counts every RAPI answer by status code (`gantry_http_responses_total`).
fn count_answer(response: Response<bytes::Bytes>) -> Response<bytes::Bytes> {
    crate::metrics::METRICS
        .http_responses
        .get_or_create(&crate::metrics::CodeLabel {
            code: response.status().as_str().to_string(),
        })
        .inc();
    response
}

/// The `Idempotency-Key` of a mutating request, with the digest of everything that makes the
/// request what it is; none for reads and dry runs (they create nothing to remember).
fn idempotency_key(
    method: &Method,
    path: &str,
    raw_query: &str,
    query: &[(String, String)],
    user: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<Idempotency>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid Idempotency-Key header: 1 to 255 visible ASCII characters expected",
            )
        })?;
    let dry_run = query
        .iter()
        .any(|(k, v)| k == "dry-run" && v.parse::<i64>().is_ok_and(|n| n != 0));
    if *method == Method::GET || dry_run {
        return Ok(None);
    }
    let user = user.unwrap_or_default();
    let mut digest = Md5::new();
    for part in [
        method.as_str().as_bytes(),
        path.as_bytes(),
        raw_query.as_bytes(),
        user.as_bytes(),
        body,
    ] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    let digest: [u8; 16] = digest.finalize().into();
    Ok(Some(Idempotency {
        user,
        key: key.to_string(),
        digest: digest.iter().map(|b| format!("{b:02x}")).collect(),
    }))
}

fn parse_body(headers: &HeaderMap, body: &[u8], any_type: bool) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let mime = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !mime.is_empty() && !any_type {
        return Err(ApiError::new(
            415,
            format!("Unsupported Content-Type '{ctype}'"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Unable to parse JSON data: {e}")))
}

/// Decodes `%XX` in a path segment; `+` stays a plus there (it is a space only in queries).
/// Invalid UTF-8 becomes U+FFFD rather than an error.
fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// `a=1&b=two+words` as (key, value) pairs, form-decoded.
fn parse_query(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

#[derive(Debug)]
struct TooLarge;
impl warp::reject::Reject for TooLarge {}

#[derive(Debug)]
struct BrokenBody;
impl warp::reject::Reject for BrokenBody {}

/// Collects a request body, refusing it once it grows past `MAX_BODY`. The Content-Length check
/// above refuses announced oversize bodies early; this catches chunked ones.
async fn read_limited<S, B>(stream: S) -> Result<bytes::Bytes, warp::Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures_util::StreamExt;
    let mut stream = std::pin::pin!(stream);
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|_| warp::reject::custom(BrokenBody))?;
        if body.len() + chunk.remaining() > MAX_BODY as usize {
            // Read (and drop) the rest, up to a bound, so the client is not cut off mid-upload
            // and actually sees the 413.
            let mut seen = body.len() + chunk.remaining();
            while seen < DRAIN_LIMIT {
                match stream.next().await {
                    Some(Ok(more)) => seen += more.remaining(),
                    _ => break,
                }
            }
            return Err(warp::reject::custom(TooLarge));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

/// Serves RAPI until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    serving: leading::Serving,
    opts: ServerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // A follower has no state: its requests fall through to `forward`.
    let current = serving.clone();
    let with_state = warp::any().and_then(move || {
        let state = current.current();
        async move { state.ok_or_else(|| warp::reject::custom(leading::NotLeading)) }
    });
    let with_serving = warp::any().map(move || serving.clone());
    let leader = warp::path!("gantry" / "v1" / "leader")
        .and(warp::get())
        .and(with_serving.clone())
        .and(warp::header::headers_cloned())
        .then(|serving: leading::Serving, headers: HeaderMap| async move {
            if let Err(e) = authorize_here(&serving, &headers, Access::Open) {
                return error_response(&e);
            }
            let mut described = match &serving.elsewhere {
                Some(elsewhere) => elsewhere.describe().await,
                None => serde_json::json!({"store": "sled"}),
            };
            let role = if serving.current().is_some() {
                "leader"
            } else {
                "follower"
            };
            described["role"] = role.into();
            json_response(StatusCode::OK, &described)
        });
    let events = warp::path!("gantry" / "v1" / "events")
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .map(|state: Arc<State>, headers: HeaderMap, query: String| {
            use warp::Reply;
            let followed = check_auth(&state, &headers, Access::Open)
                .and_then(|_| events::follow(&state, &headers, &parse_query(&query)));
            match followed {
                Ok(stream) => {
                    warp::sse::reply(warp::sse::keep_alive().stream(stream)).into_response()
                }
                Err(e) => error_response(&e).into_response(),
            }
        });
    // Every master answers with its own metrics (a follower's: its leadership and etcd).
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_serving.clone())
        .and(warp::header::headers_cloned())
        .map(|serving: leading::Serving, headers: HeaderMap| {
            use warp::Reply;
            match authorize_here(&serving, &headers, Access::Read) {
                Ok(_) => warp::reply::with_header(
                    {
                        if let Some(state) = serving.current() {
                            crate::metrics::count_instances(&state.config.snapshot());
                        }
                        crate::metrics::render()
                    },
                    "Content-Type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .into_response(),
                Err(e) => error_response(&e).into_response(),
            }
        });
    let routes = with_state
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(
            warp::header::optional::<u64>("content-length")
                .and_then(|len: Option<u64>| async move {
                    match len {
                        Some(n) if n > MAX_BODY => Err(warp::reject::custom(TooLarge)),
                        _ => Ok(()),
                    }
                })
                .untuple_one(),
        )
        .and(warp::body::stream().and_then(read_limited))
        .and_then(handle)
        .map(count_answer)
        .recover(|rej: warp::Rejection| async move {
            if rej.find::<leading::NotLeading>().is_some() {
                return Err(rej);
            }
            Ok(rejected(&rej))
        });
    let forward = with_serving
        .and(warp::method())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream().and_then(read_limited))
        .then(forward)
        .recover(|rej: warp::Rejection| async move {
            Ok::<_, std::convert::Infallible>(rejected(&rej))
        });
    let all = leader.or(events).or(metrics).or(routes).or(forward);
    serve_filter(listener, all, opts, shutdown).await;
}

/// Checks a request this master answers itself, leading or not: a follower has the users file
/// but no API tokens (they are in the leader's store).
fn authorize_here(
    serving: &leading::Serving,
    headers: &HeaderMap,
    access: Access,
) -> Result<Option<request::Caller>, ApiError> {
    match serving.current() {
        Some(state) => check_auth(&state, headers, access),
        None => {
            let local = &serving.local;
            authorize(&local.users, local.require_auth, None, headers, access)
        }
    }
}

fn rejected(rej: &warp::Rejection) -> Response<bytes::Bytes> {
    let e = if rej.find::<TooLarge>().is_some() {
        ApiError::new(413, "Request body too large")
    } else {
        ApiError::bad_request("Malformed request")
    };
    error_response(&e)
}

/// A follower's request: the leader answers it (event streams are redirected to the leader).
async fn forward(
    serving: leading::Serving,
    method: Method,
    path: warp::path::FullPath,
    query: String,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response<bytes::Bytes> {
    let Some(elsewhere) = &serving.elsewhere else {
        return error_response(&ApiError::new(503, "This master is not serving yet"));
    };
    let target = if query.is_empty() {
        path.as_str().to_string()
    } else {
        format!("{}?{query}", path.as_str())
    };
    if let Some(jobs) = &serving.jobs
        && let Some(answer) = follower::answer(
            jobs,
            &serving.local,
            &method,
            path.as_str(),
            &query,
            &headers,
            &body,
        )
        .await
    {
        return answer;
    }
    if path.as_str() == "/gantry/v1/events" {
        return match elsewhere.leader_url().await {
            Some(url) => {
                let mut resp = Response::new(bytes::Bytes::new());
                *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
                if let Ok(location) = format!("{url}{target}").parse() {
                    resp.headers_mut().insert("Location", location);
                }
                resp
            }
            None => error_response(&ApiError::new(503, leading::NO_LEADER)),
        };
    }
    elsewhere
        .forward(leading::Received {
            method,
            target,
            headers,
            body,
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_is_literal_in_paths_and_a_space_in_queries() {
        assert_eq!(percent_decode("debootstrap+default"), "debootstrap+default");
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        // Once a panic on a multi-byte character after a lone '%'.
        assert_eq!(
            parse_query("a=%a\u{e9}"),
            vec![("a".into(), "%a\u{e9}".into())]
        );
        assert_eq!(percent_decode("%a\u{e9}%"), "%a\u{e9}%");
        assert_eq!(
            parse_query("os=debootstrap%2Bdefault&reason=two+words&bulk"),
            vec![
                ("os".into(), "debootstrap+default".into()),
                ("reason".into(), "two words".into()),
                ("bulk".into(), String::new()),
            ]
        );
    }
}
