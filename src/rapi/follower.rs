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
use crate::metrics::METRICS;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use warp::http::{HeaderMap, Method, Response, StatusCode};

/// How often a wait looks at the store again without hearing of a change (the watch may be
/// down, or reopening).
const POLL: Duration = Duration::from_secs(2);

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
            Ok(body) => wait(jobs, store, id, &body).await?,
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

/// A wait on the stored job: looked at again whenever the follower's etcd watch hears that its
/// records changed (and every `POLL` in case the watch is down), until it changes for the
/// client, or answered null after `timeout`, as the leader does.
async fn wait(
    jobs: &FollowerJobs,
    store: Arc<dyn StoredJobs>,
    id: JobId,
    body: &serde_json::Value,
) -> Option<Result<serde_json::Value, ApiError>> {
    let args = match WaitArgs::parse(body) {
        Ok(args) => args,
        Err(e) => return Some(Err(e)),
    };
    // Listening before the first read: a change between the read and the wait is not missed.
    let mut changes = jobs.changes.subscribe();
    let deadline = tokio::time::Instant::now() + jobs.wait_timeout;
    loop {
        let Some(job) = read(&store, id).await? else {
            return Some(Err(routes::job_not_found(id)));
        };
        let changes_seen = job.changes_for(&args.fields, args.previous.as_ref(), args.serial);
        if changes_seen.is_some() || tokio::time::Instant::now() >= deadline {
            return Some(Ok(routes::wait_answer(changes_seen)));
        }
        let woken_by = tokio::select! {
            () = changed(&mut changes, id) => "watch",
            () = tokio::time::sleep(POLL) => "poll",
            () = tokio::time::sleep_until(deadline) => "timeout",
        };
        METRICS.follower_wait_wakeup(woken_by);
    }
}

/// Returns when job `id`'s records may have changed.
async fn changed(changes: &mut broadcast::Receiver<Option<JobId>>, id: JobId) {
    loop {
        match changes.recv().await {
            Ok(Some(other)) if other != id => continue,
            // This job, anything (the watch reopened), or more changes than were kept.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return,
            // The watch is gone for good: the polls remain.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}
