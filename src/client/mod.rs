//! The command-line client: what gnt-job, gnt-instance, gnt-cluster and gnt-os are to Ganeti
//! admins, spoken over RAPI to any server (gantry or Ganeti), never to a data dir.
//!
//! Exit codes: 0 done, 1 server unreachable or other trouble, 2 usage error, 3 the server
//! refused the request, 4 the job failed, 5 the job was canceled, 130 detached with Ctrl-C.

mod cluster;
mod conn;
mod instances;
mod jobs;
mod leases;
mod login;
mod nodes;
mod output;
mod watch;

pub use cluster::{ClusterArgs, FilterArgs, OsArgs};
pub use instances::InstanceArgs;
pub use jobs::JobArgs;
pub use leases::{LeaseArgs, PoolArgs, TokenArgs};
pub use nodes::{GroupArgs, NetworkArgs, NodeArgs};

use conn::Conn;
use output::ListArgs;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {0}")]
    Connect(String),
    #[error("the server refused: {1} (HTTP {0})")]
    Api(u16, String),
    #[error("job {0} failed: {1}")]
    JobFailed(u64, String),
    #[error("job {0} was canceled")]
    JobCanceled(u64),
    #[error(
        "detached from job {0}: follow it again with `gantry job watch {0}`, cancel it with `gantry job cancel {0}`"
    )]
    Detached(u64),
}

impl ClientError {
    fn code(&self) -> u8 {
        match self {
            ClientError::Connect(_) => 1,
            ClientError::Usage(_) => 2,
            ClientError::Api(..) => 3,
            ClientError::JobFailed(..) => 4,
            ClientError::JobCanceled(_) => 5,
            ClientError::Detached(_) => 130,
        }
    }
}

/// How a mutating command treats its job.
#[derive(clap::Args, Debug, Clone)]
pub struct SubmitArgs {
    /// Print the job id and return at once instead of following the job.
    #[arg(long)]
    submit: bool,
    /// Only check: the job runs the opcode's checks and stops before changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Why, for the job's reason trail (gnt-* --reason).
    #[arg(long)]
    reason: Option<String>,
}

/// `gantry login`: remember a server and trust its certificate.
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The server's base URL, e.g. https://cluster.example.com:5080.
    url: String,
    /// The user to log in as from now on (the password is never saved).
    #[arg(long)]
    user: Option<String>,
    /// Trust the certificate without asking (compare its fingerprint first!).
    #[arg(long)]
    yes: bool,
}

/// The client commands, each with its connection options.
pub enum Request {
    Login(LoginArgs),
    Job(JobArgs),
    Instance(InstanceArgs),
    Node(NodeArgs),
    Group(GroupArgs),
    Network(NetworkArgs),
    Filter(FilterArgs),
    Cluster(ClusterArgs),
    Os(OsArgs),
    Lease(LeaseArgs),
    Pool(PoolArgs),
    Token(TokenArgs),
}

/// `gantry job list | head` ends quietly, as other tools do, instead of failing to print. Only
/// for commands that print and exit: a server must see EPIPE on a socket as an error instead.
pub fn quiet_pipe() {
    // SAFETY: setting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn main(request: Request) -> ExitCode {
    quiet_pipe();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gantry: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(request)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gantry: {e}");
            ExitCode::from(e.code())
        }
    }
}

async fn run(request: Request) -> Result<(), ClientError> {
    match request {
        Request::Login(a) => login::login(&a.url, a.user, a.yes).await,
        Request::Job(a) => jobs::run(&Conn::new(&a.conn)?, a.command).await,
        Request::Instance(a) => instances::run(&Conn::new(&a.conn)?, a.command).await,
        Request::Node(a) => nodes::node(a).await,
        Request::Group(a) => nodes::group(a).await,
        Request::Network(a) => nodes::network(a).await,
        Request::Filter(a) => cluster::filter(a).await,
        Request::Cluster(a) => cluster::cluster(a).await,
        Request::Os(a) => cluster::os(a).await,
        Request::Lease(a) => leases::lease(a).await,
        Request::Pool(a) => leases::pool(a).await,
        Request::Token(a) => leases::token(a).await,
    }
}

/// Lists `kind` objects through `/2/query/<kind>` with the chosen fields.
pub(super) async fn query_list(
    conn: &Conn,
    kind: &str,
    list: &ListArgs,
    fields: &[String],
) -> Result<(), ClientError> {
    let answer = conn
        .get(&format!("/2/query/{kind}?fields={}", fields.join(",")))
        .await?;
    let rows: Vec<Vec<Value>> = answer["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| {
            row.as_array()
                .into_iter()
                .flatten()
                .map(|cell| cell[1].clone())
                .collect()
        })
        .collect();
    output::print_rows(list, fields, &rows);
    Ok(())
}

/// Submits, then prints the job id (`--submit`) or follows the job to its end.
pub(super) async fn submit_and_follow(
    conn: &Conn,
    method: reqwest::Method,
    path: &str,
    body: Value,
    submit: &SubmitArgs,
) -> Result<(), ClientError> {
    let mut query: Vec<(&str, &str)> = vec![];
    if submit.dry_run {
        query.push(("dry-run", "1"));
    }
    if let Some(reason) = &submit.reason {
        query.push(("reason", reason));
    }
    let path = if query.is_empty() {
        path.to_string()
    } else {
        let sep = if path.contains('?') { '&' } else { '?' };
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        format!("{path}{sep}{encoded}")
    };
    let body = (!body.is_null()).then_some(&body);
    let answer = conn.call(method, &path, body).await?;
    let id = answer
        .as_u64()
        .or_else(|| answer.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| ClientError::Api(200, format!("expected a job id, got {answer}")))?;
    if submit.submit {
        println!("{id}");
        return Ok(());
    }
    let job = watch::follow(conn, id).await?;
    watch::outcome(&job)
}
