//! Which master answers (issue 16): with one master it is always this one. With several over
//! etcd, only the leader holds a queue and a configuration; the others hand every request on
//! to it (`Elsewhere`, in `ha/forward.rs`) and relay the answer, so a client may use any master.

use super::State;
use super::auth::UserDb;
use crate::jobqueue::job::{Job, JobId};
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use warp::http::{HeaderMap, Method, Response};

/// What this master serves with: the queue and configuration while it leads (always, with one
/// master), and where to send requests while it does not.
#[derive(Clone)]
pub struct Serving {
    pub state: watch::Receiver<Option<Arc<State>>>,
    pub elsewhere: Option<Arc<dyn Elsewhere>>,
    /// Who may ask this master about itself (its role, its metrics) while it follows.
    pub local: LocalAuth,
    /// The jobs a follower reads itself (`follower.rs`); none with one master.
    pub jobs: Option<FollowerJobs>,
}

/// Job records as the leader stored them (in etcd), for a follower to read without the leader.
pub trait StoredJobs: Send + Sync {
    /// The job with its log; `Err` when the store cannot be read now.
    fn job(&self, id: JobId) -> Result<Option<Job>, String>;
}

impl StoredJobs for crate::jobqueue::Store {
    fn job(&self, id: JobId) -> Result<Option<Job>, String> {
        self.any_job(id).map_err(|e| e.to_string())
    }
}

/// What a follower answers `GET /2/jobs/N` and `/2/jobs/N/wait` from.
#[derive(Clone)]
pub struct FollowerJobs {
    /// Filled once the follower reaches the store; until then requests go to the leader.
    pub store: Arc<std::sync::OnceLock<Arc<dyn StoredJobs>>>,
    /// `--wait-timeout`: how long a wait goes on without a change.
    pub wait_timeout: std::time::Duration,
    /// Which jobs' records changed, as the follower's etcd watch hears it: `Some(id)`, or
    /// `None` when anything may have (the watch reopened). Waits wake on it.
    pub changes: tokio::sync::broadcast::Sender<Option<JobId>>,
}

/// The users file, which every master reads for itself. API tokens live in the leader's store:
/// a follower's own answers take passwords only.
#[derive(Clone)]
pub struct LocalAuth {
    pub users: UserDb,
    pub require_auth: bool,
}

impl Serving {
    /// One master: it always leads.
    pub fn alone(state: Arc<State>) -> Serving {
        Serving {
            local: LocalAuth {
                users: state.users.clone(),
                require_auth: state.require_auth,
            },
            state: watch::channel(Some(state)).1,
            elsewhere: None,
            jobs: None,
        }
    }

    pub fn current(&self) -> Option<Arc<State>> {
        self.state.borrow().clone()
    }
}

/// A request as received, for another master.
pub struct Received {
    pub method: Method,
    /// Path and query, as the client sent them.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub type Answer = Pin<Box<dyn Future<Output = Response<Bytes>> + Send>>;

pub trait Elsewhere: Send + Sync {
    /// Has the leader answer `request`.
    fn forward(&self, request: Received) -> Answer;
    /// Where the leader's event stream is (event streams are redirected, not relayed).
    fn leader_url(&self) -> Pin<Box<dyn Future<Output = Option<String>> + Send + '_>>;
    /// This master's role and the current leader, for `/gantry/v1/leader`.
    fn describe(&self) -> Pin<Box<dyn Future<Output = serde_json::Value> + Send + '_>>;
}

/// A follower's request reached the routes that need the leader's state.
#[derive(Debug)]
pub struct NotLeading;
impl warp::reject::Reject for NotLeading {}

/// What a follower answers (503) when no master leads within its patience.
pub const NO_LEADER: &str = "No master leads the cluster at the moment (an election is under \
     way, or etcd has lost its quorum); retry shortly";

/// An error answer in Ganeti's format (`{"code", "message", "explain"}`).
pub fn refusal(code: u16, message: &str) -> Response<Bytes> {
    super::error_response(&super::error::ApiError::new(code, message))
}
