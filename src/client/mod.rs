//! The command-line client: what gnt-job, gnt-instance, gnt-cluster and gnt-os are to Ganeti
//! admins, spoken over RAPI to any server (gantry or Ganeti), never to a data dir.
//!
//! Exit codes: 0 done, 1 server unreachable or other trouble, 2 usage error, 3 the server
//! refused the request, 4 the job failed, 5 the job was canceled, 130 detached with Ctrl-C.

mod conn;
mod login;
mod output;
mod watch;

use conn::{Conn, ConnArgs};
use output::ListArgs;
use serde_json::{Map, Value, json};
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
}

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(clap::Subcommand, Debug)]
enum JobCommand {
    /// List the jobs the server holds (not archived ones); fields: id, status, summary,
    /// received_ts, start_ts, end_ts, ops, opstatus.
    List(ListArgs),
    /// Show one job: its opcodes, statuses, results and log.
    Info {
        id: u64,
        /// Print the job record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job until it ends, printing its log as it grows.
    Watch { id: u64 },
    /// Cancel a job that has not started running (or tell a running one to stop between opcodes).
    Cancel { id: u64 },
}

#[derive(clap::Args, Debug)]
pub struct InstanceArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: InstanceCommand,
}

#[derive(clap::Subcommand, Debug)]
enum InstanceCommand {
    /// List instances; any field of /2/query/instance (name, status, pnode, snodes, os,
    /// be/memory, oper_state, disk_template...).
    List(ListArgs),
    /// Show one instance's configuration and state.
    Info {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create an instance.
    Add(Box<AddArgs>),
    /// Remove an instance and its disks.
    Remove {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Start an instance.
    Startup {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Stop an instance.
    Shutdown {
        name: String,
        /// Seconds to wait for a clean shutdown before the VM is stopped hard.
        #[arg(long)]
        timeout: Option<u64>,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Reboot an instance.
    Reboot {
        name: String,
        /// soft, hard or full.
        #[arg(long = "type", default_value = "hard")]
        kind: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Migrate an instance to its secondary node or, with --target-node, another node.
    Migrate {
        name: String,
        #[arg(long)]
        target_node: Option<String>,
        /// Stop, move and start instead of a live migration.
        #[arg(long)]
        non_live: bool,
        #[command(flatten)]
        submit: SubmitArgs,
    },
}

/// `gnt-instance add` options, as gnt-instance spells them.
#[derive(clap::Args, Debug)]
pub struct AddArgs {
    name: String,
    /// Disk template: diskless, plain, drbd, file, sharedfile...
    #[arg(short = 't', long = "disk-template")]
    template: String,
    /// OS and variant, e.g. debootstrap+default.
    #[arg(short = 'o', long = "os-type")]
    os: String,
    /// A disk: `0:size=1G` (repeat for more disks).
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// A NIC: `0:ip=192.0.2.10,link=br0` or `0` for defaults (repeat for more).
    #[arg(long = "net")]
    nics: Vec<String>,
    /// Primary node, or `primary:secondary`.
    #[arg(short = 'n', long = "node")]
    node: Option<String>,
    /// Backend parameters: `memory=512,vcpus=2`.
    #[arg(short = 'B', long = "backend-parameters")]
    beparams: Option<String>,
    /// Hypervisor parameters: `kernel_path=/boot/vmlinuz`.
    #[arg(short = 'H', long = "hypervisor-parameters")]
    hvparams: Option<String>,
    /// Do not start the instance after creating it.
    #[arg(long)]
    no_start: bool,
    /// Do not check the name in DNS (and so do not check the IP either).
    #[arg(long)]
    no_name_check: bool,
    /// Do not check that the IP is unused.
    #[arg(long)]
    no_ip_check: bool,
    #[command(flatten)]
    submit: SubmitArgs,
}

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(clap::Subcommand, Debug)]
enum NodeCommand {
    /// List nodes; any field of /2/query/node (name, mtotal, mfree, dtotal, dfree, pinst_cnt,
    /// sinst_cnt, offline, role...).
    List(ListArgs),
    /// Show one node.
    Info {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// Show the cluster's configuration (/2/info).
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify the cluster's configuration and nodes.
    Verify {
        #[command(flatten)]
        submit: SubmitArgs,
    },
}

#[derive(clap::Args, Debug)]
pub struct OsArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(subcommand)]
    command: OsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum OsCommand {
    /// List the OS definitions (with variants) instances can be created with.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
    Cluster(ClusterArgs),
    Os(OsArgs),
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
        Request::Job(a) => job(&Conn::new(&a.conn)?, a.command).await,
        Request::Instance(a) => instance(&Conn::new(&a.conn)?, a.command).await,
        Request::Node(a) => {
            let conn = Conn::new(&a.conn)?;
            match a.command {
                NodeCommand::List(list) => {
                    let fields = list.fields(&[
                        "name",
                        "dtotal",
                        "dfree",
                        "mtotal",
                        "mnode",
                        "mfree",
                        "pinst_cnt",
                        "sinst_cnt",
                    ]);
                    query_list(&conn, "node", &list, &fields).await
                }
                NodeCommand::Info { name, json } => {
                    output::print_object(json, &conn.get(&format!("/2/nodes/{name}")).await?);
                    Ok(())
                }
            }
        }
        Request::Cluster(a) => {
            let conn = Conn::new(&a.conn)?;
            match a.command {
                ClusterCommand::Info { json } => {
                    output::print_object(json, &conn.get("/2/info").await?);
                    Ok(())
                }
                ClusterCommand::Verify { submit } => {
                    let op = json!({"OP_ID": "OP_CLUSTER_VERIFY"});
                    submit_and_follow(
                        &conn,
                        reqwest::Method::POST,
                        "/2/jobs",
                        json!({"ops": [op]}),
                        &submit,
                    )
                    .await
                }
            }
        }
        Request::Os(a) => {
            let conn = Conn::new(&a.conn)?;
            let OsCommand::List { json } = a.command;
            let list = conn.get("/2/os").await?;
            if json {
                output::print_object(true, &list);
            } else {
                for os in list.as_array().into_iter().flatten() {
                    println!("{}", output::text(os));
                }
            }
            Ok(())
        }
    }
}

async fn job(conn: &Conn, command: JobCommand) -> Result<(), ClientError> {
    match command {
        JobCommand::List(list) => {
            let fields = list.fields(&["id", "status", "summary"]);
            let jobs = conn.get("/2/jobs?bulk=1").await?;
            let rows: Vec<Vec<Value>> = jobs
                .as_array()
                .into_iter()
                .flatten()
                .map(|j| fields.iter().map(|f| j[f.as_str()].clone()).collect())
                .collect();
            output::print_rows(&list, &fields, &rows);
            Ok(())
        }
        JobCommand::Info { id, json } => {
            let job = conn.get(&format!("/2/jobs/{id}")).await?;
            if json {
                output::print_object(true, &job);
                return Ok(());
            }
            println!("Job ID: {id}");
            println!("  Status: {}", output::text(&job["status"]));
            for (i, op) in job["ops"].as_array().into_iter().flatten().enumerate() {
                println!("  Opcode {i}: {}", output::text(&op["OP_ID"]));
                println!("    Status: {}", output::text(&job["opstatus"][i]));
                println!("    Result: {}", job["opresult"][i]);
                for entry in job["oplog"][i].as_array().into_iter().flatten() {
                    println!("    Log {}: {}", entry[0], output::text(&entry[3]));
                }
            }
            Ok(())
        }
        JobCommand::Watch { id } => {
            let job = watch::follow(conn, id).await?;
            println!("Job {id}: {}", output::text(&job["status"]));
            watch::outcome(&job)
        }
        JobCommand::Cancel { id } => {
            let answer = conn
                .call(reqwest::Method::DELETE, &format!("/2/jobs/{id}"), None)
                .await?;
            println!("{}", output::text(&answer[1]));
            match answer[0].as_bool() {
                Some(true) => Ok(()),
                _ => Err(ClientError::Api(200, output::text(&answer[1]))),
            }
        }
    }
}

async fn instance(conn: &Conn, command: InstanceCommand) -> Result<(), ClientError> {
    let path = |name: &str, action: &str| format!("/2/instances/{name}/{action}");
    match command {
        InstanceCommand::List(list) => {
            let fields = list.fields(&["name", "os", "pnode", "status", "be/memory"]);
            query_list(conn, "instance", &list, &fields).await
        }
        InstanceCommand::Info { name, json } => {
            output::print_object(json, &conn.get(&format!("/2/instances/{name}")).await?);
            Ok(())
        }
        InstanceCommand::Add(add) => {
            let body = create_body(&add)?;
            submit_and_follow(
                conn,
                reqwest::Method::POST,
                "/2/instances",
                body,
                &add.submit,
            )
            .await
        }
        InstanceCommand::Remove { name, submit } => {
            submit_and_follow(
                conn,
                reqwest::Method::DELETE,
                &format!("/2/instances/{name}"),
                Value::Null,
                &submit,
            )
            .await
        }
        InstanceCommand::Startup { name, submit } => {
            submit_and_follow(
                conn,
                reqwest::Method::PUT,
                &path(&name, "startup"),
                Value::Null,
                &submit,
            )
            .await
        }
        InstanceCommand::Shutdown {
            name,
            timeout,
            submit,
        } => {
            let body = timeout.map_or(Value::Null, |t| json!({"timeout": t}));
            submit_and_follow(
                conn,
                reqwest::Method::PUT,
                &path(&name, "shutdown"),
                body,
                &submit,
            )
            .await
        }
        InstanceCommand::Reboot { name, kind, submit } => {
            let target = format!("{}?type={kind}", path(&name, "reboot"));
            submit_and_follow(conn, reqwest::Method::POST, &target, Value::Null, &submit).await
        }
        InstanceCommand::Migrate {
            name,
            target_node,
            non_live,
            submit,
        } => {
            let mut body = Map::new();
            body.insert(
                "mode".into(),
                json!(if non_live { "non-live" } else { "live" }),
            );
            if let Some(node) = target_node {
                body.insert("target_node".into(), json!(node));
            }
            submit_and_follow(
                conn,
                reqwest::Method::PUT,
                &path(&name, "migrate"),
                Value::Object(body),
                &submit,
            )
            .await
        }
    }
}

/// Lists `kind` objects through `/2/query/<kind>` with the chosen fields.
async fn query_list(
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
async fn submit_and_follow(
    conn: &Conn,
    method: reqwest::Method,
    path: &str,
    body: Value,
    submit: &SubmitArgs,
) -> Result<(), ClientError> {
    let path = if submit.dry_run {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{path}{sep}dry-run=1")
    } else {
        path.to_string()
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

/// The body of `POST /2/instances` (version 1) from gnt-instance-style options.
fn create_body(add: &AddArgs) -> Result<Value, ClientError> {
    let mut body = json!({
        "__version__": 1,
        "mode": "create",
        "name": add.name,
        "disk_template": add.template,
        "os_type": add.os,
        "disks": indexed(&add.disks, "--disk")?,
        "nics": indexed(&add.nics, "--net")?,
        "start": !add.no_start,
        "name_check": !add.no_name_check,
        "ip_check": !(add.no_ip_check || add.no_name_check),
    });
    if let Some(node) = &add.node {
        let mut parts = node.splitn(2, ':');
        body["pnode"] = json!(parts.next().unwrap_or_default());
        if let Some(s) = parts.next() {
            body["snode"] = json!(s);
        }
    }
    if let Some(b) = &add.beparams {
        body["beparams"] = Value::Object(key_values(b, "-B")?);
    }
    if let Some(h) = &add.hvparams {
        body["hvparams"] = Value::Object(key_values(h, "-H")?);
    }
    Ok(body)
}

/// `0:size=1G,mode=rw` options (repeated) → a list of objects in index order.
fn indexed(items: &[String], flag: &str) -> Result<Value, ClientError> {
    let mut out: Vec<Value> = vec![];
    for item in items {
        let (index, rest) = item.split_once(':').unwrap_or((item.as_str(), ""));
        let index: usize = index.parse().map_err(|_| {
            ClientError::Usage(format!("{flag} {item}: expected INDEX:key=value,..."))
        })?;
        if index != out.len() {
            return Err(ClientError::Usage(format!(
                "{flag} {item}: indexes must count up from 0"
            )));
        }
        let mut obj = if rest.is_empty() {
            Map::new()
        } else {
            key_values(rest, flag)?
        };
        if let Some(size) = obj.get("size").and_then(Value::as_str) {
            obj.insert("size".into(), json!(size_mib(size, flag)?));
        }
        out.push(Value::Object(obj));
    }
    Ok(Value::Array(out))
}

/// `memory=512,auto_balance=true` → an object; numbers and booleans are typed.
fn key_values(text: &str, flag: &str) -> Result<Map<String, Value>, ClientError> {
    let mut m = Map::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ClientError::Usage(format!("{flag} {text}: expected key=value")))?;
        let value = serde_json::from_str::<Value>(v)
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or_else(|| json!(v));
        m.insert(k.to_string(), value);
    }
    Ok(m)
}

/// `512`, `512M`, `1G`, `1T` → MiB (gnt-* units).
fn size_mib(text: &str, flag: &str) -> Result<u64, ClientError> {
    let bad = || ClientError::Usage(format!("{flag}: invalid size '{text}' (e.g. 512M, 10G)"));
    let upper = text.to_ascii_uppercase();
    let (digits, factor) = match upper.chars().last() {
        Some('M') => (&upper[..upper.len() - 1], 1),
        Some('G') => (&upper[..upper.len() - 1], 1024),
        Some('T') => (&upper[..upper.len() - 1], 1024 * 1024),
        _ => (upper.as_str(), 1),
    };
    digits.parse::<u64>().map(|n| n * factor).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnt_style_options_become_a_create_body() {
        assert_eq!(size_mib("1G", "--disk").unwrap(), 1024);
        assert_eq!(size_mib("512", "--disk").unwrap(), 512);
        assert!(size_mib("lots", "--disk").is_err());
        let disks = indexed(
            &["0:size=1G".into(), "1:size=128M,mode=ro".into()],
            "--disk",
        )
        .unwrap();
        assert_eq!(disks, json!([{"size": 1024}, {"size": 128, "mode": "ro"}]));
        assert!(indexed(&["1:size=1G".into()], "--disk").is_err());
        assert_eq!(indexed(&["0".into()], "--net").unwrap(), json!([{}]));
        let be = key_values("memory=512,auto_balance=true,name=x", "-B").unwrap();
        assert_eq!(
            Value::Object(be),
            json!({"memory": 512, "auto_balance": true, "name": "x"})
        );
    }
}
