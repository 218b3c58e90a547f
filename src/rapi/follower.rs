//! What a follower answers itself instead of relaying: `GET /2/jobs/N` and `/2/jobs/N/wait`,
//! read from the store the leader writes (etcd). A client polling or waiting on a job through
//! a follower goes on without a pause while the leadership moves, and the leader is spared the
//! polls. The store holds only committed state, so a follower is never ahead of what survives
//! the leader. Anything else, a request with an API token (tokens live in the leader's store),
//! and any read the store cannot answer now go to the leader as before.

use super::leading::{FollowerJobs, StoredJobs};
use super::routes::{self, WaitArgs};
use super::{ApiError, authorize, error_response, json_response, parse_body, percent_decode};
use crate::jobqueue::job::{Job, JobId};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use warp::http::{HeaderMap, Method, Response, StatusCode};

/// How often a wait looks at the store again.
const POLL: Duration = Duration::from_millis(100);

/// The answer, or `None` for the leader to give.
pub async fn answer(
    jobs: &FollowerJobs,
    local: &super::leading::LocalAuth,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response<Bytes>> {
    let store = jobs.store.get()?.clone();
    if method != Method::GET || !query.is_empty() || super::tokens::presented(headers).is_some() {
        return None;
    }
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (id, waits) = match segs.as_slice() {
        ["2", "jobs", id] => (*id, false),
        ["2", "jobs", id, "wait"] => (*id, true),
        _ => return None,
    };
    let access = routes::access_for("GET", &segs);
    if let Err(e) = authorize(&local.users, local.require_auth, None, headers, access) {
        return Some(error_response(&e));
    }
    let answered = match routes::job_id(id) {
        Err(e) => Err(e),
        Ok(id) if waits => match parse_body(headers, body, false) {
            Err(e) => Err(e),
            Ok(body) => wait(store, id, &body, jobs.wait_timeout).await?,
        },
        Ok(id) => match read(&store, id).await? {
            Some(job) => Ok(routes::job_answer(&job)),
            None => Err(routes::job_not_found(id)),
        },
    };
    Some(match answered {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(e) => error_response(&e),
    })
}

/// The job as stored; `None` when the store cannot be read now (the leader answers then).
async fn read(store: &Arc<dyn StoredJobs>, id: JobId) -> Option<Option<Job>> {
    let store = store.clone();
    // etcd is reached from a runtime of its own; this thread only waits for it.
    match tokio::task::spawn_blocking(move || store.job(id)).await {
        Ok(Ok(job)) => Some(job),
        Ok(Err(e)) => {
            tracing::debug!(job = %id, "the store did not answer ({e}): asking the leader");
            None
        }
        Err(_) => None,
    }
}

/// A wait on the stored job: looked at again every `POLL` until it changes for the client, or
/// answered null after `timeout`, as the leader does.
async fn wait(
    store: Arc<dyn StoredJobs>,
    id: JobId,
    body: &serde_json::Value,
    timeout: Duration,
) -> Option<Result<serde_json::Value, ApiError>> {
    let args = match WaitArgs::parse(body) {
        Ok(args) => args,
        Err(e) => return Some(Err(e)),
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let Some(job) = read(&store, id).await? else {
            return Some(Err(routes::job_not_found(id)));
        };
        let changes = job.changes_for(&args.fields, args.previous.as_ref(), args.serial);
        if changes.is_some() || tokio::time::Instant::now() >= deadline {
            return Some(Ok(routes::wait_answer(changes)));
        }
        tokio::time::sleep(POLL).await;
    }
}
