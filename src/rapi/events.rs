//! `GET /gantry/v1/events`: the job event stream as Server-Sent Events (a gantry extension).
//! One event per job status change (`status`) and per log entry (`log`), each with its id;
//! `Last-Event-ID` or `?since=` resumes; `?job=1,2`, `?opcode=`, `?status=`, `?instance=`,
//! `?node=` select. A client asking for events no longer kept first gets a `reset` event (re-read
//! the jobs, then follow); one that falls too far behind gets a final `dropped` event.

use super::State;
use super::error::ApiError;
use crate::jobqueue::events::Event;
use crate::metrics::METRICS;
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use warp::http::HeaderMap;
use warp::sse::Event as Sse;

/// What a follower selects; empty parts select everything.
#[derive(Default)]
struct Selection {
    jobs: HashSet<u64>,
    opcodes: HashSet<String>,
    statuses: HashSet<String>,
    names: Vec<String>,
}

impl Selection {
    fn parse(query: &[(String, String)]) -> Result<(Selection, Option<u64>), ApiError> {
        let mut s = Selection::default();
        let mut since = None;
        let list = |v: &str| {
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        };
        for (k, v) in query {
            match k.as_str() {
                "job" => {
                    for id in list(v) {
                        s.jobs.insert(id.parse().map_err(|_| {
                            ApiError::bad_request(format!("Invalid job id '{id}'"))
                        })?);
                    }
                }
                "opcode" => s.opcodes.extend(list(v)),
                "status" => s.statuses.extend(list(v)),
                "instance" | "node" => s.names.extend(list(v)),
                "since" => {
                    since =
                        Some(v.parse().map_err(|_| {
                            ApiError::bad_request(format!("Invalid event id '{v}'"))
                        })?)
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "Unknown event stream parameter '{other}'"
                    )));
                }
            }
        }
        Ok((s, since))
    }

    fn wants(&self, e: &Event) -> bool {
        (self.jobs.is_empty() || self.jobs.contains(&e.job))
            && (self.opcodes.is_empty()
                || e.subjects.opcodes.iter().any(|o| self.opcodes.contains(o)))
            && (self.statuses.is_empty() || self.statuses.contains(e.status))
            && (self.names.is_empty()
                || e.subjects.names.iter().any(|n| {
                    self.names.iter().any(|w| {
                        n == w
                            || n.strip_prefix(w.as_str())
                                .is_some_and(|r| r.starts_with('.'))
                    })
                }))
    }
}

/// Counts a follower while its stream exists.
struct Following;

impl Following {
    fn new() -> Following {
        METRICS.event_followers.inc();
        Following
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        METRICS.event_followers.dec();
    }
}

fn frame(e: &Event) -> Sse {
    METRICS.events_sent.inc();
    Sse::default()
        .id(e.id.to_string())
        .event(e.kind)
        .data(e.data.clone())
}

/// Where to resume: `Last-Event-ID` (what browsers send on reconnect) wins over `?since=`.
fn resume_point(headers: &HeaderMap, since: Option<u64>) -> Result<Option<u64>, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(since),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("Invalid Last-Event-ID header")),
    }
}

/// The stream of one follower.
pub fn follow(
    state: &State,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<impl Stream<Item = Result<Sse, Infallible>> + Send + use<>, ApiError> {
    let (selection, since) = Selection::parse(query)?;
    let since = resume_point(headers, since)?;
    let sub = state.queue.follow_events(since);
    let selection = Arc::new(selection);
    let mut last = since.unwrap_or(0);
    let reset = sub.reset.then(|| {
        Sse::default().event("reset").data(
            json!({"reason": "events after the requested id are no longer kept: re-read the jobs"})
                .to_string(),
        )
    });
    let wanted = selection.clone();
    let backlog: Vec<Sse> = sub
        .backlog
        .iter()
        .filter(|e| wanted.wants(e))
        .inspect(|e| last = last.max(e.id))
        .map(|e| frame(e))
        .collect();
    if let Some(e) = sub.backlog.last() {
        last = last.max(e.id);
    }
    let live = stream::unfold(
        (sub.live, selection, last, false, Following::new()),
        |(mut rx, selection, mut last, done, following)| async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    // Already sent from the backlog.
                    Ok(e) if e.id <= last => continue,
                    Ok(e) => {
                        last = e.id;
                        if selection.wants(&e) {
                            return Some((frame(&e), (rx, selection, last, false, following)));
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        METRICS.event_follower_drops.inc();
                        let bye = Sse::default().event("dropped").data(
                            json!({"reason": "this client fell too far behind", "missed": missed, "last_event_id": last})
                                .to_string(),
                        );
                        return Some((bye, (rx, selection, last, true, following)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(stream::iter(reset.into_iter().chain(backlog))
        .chain(live)
        .map(Ok))
}
