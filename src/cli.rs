//! Command line: `gantry serve` (RAPI + queue + executor in one process), `gantry agent` (a
//! node agent), `gantry users hash`, `gantry queue drain|undrain|info` on a data dir, and the RAPI
//! client commands of `client/` (`gantry job|instance|cluster|os ...`).

use crate::backends::{Backend, fake::FakeBackend};
use crate::cluster::{ClusterStore, InitOptions};
use crate::http::{ServerOptions, tls};
use crate::jobqueue::{JobQueue, QueueOptions, Store};
use crate::kv::Database;
use crate::rapi::{self, StateInner, auth::UserDb, leading::Serving};
use crate::storage::GroupCommit;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "gantry",
    version,
    about = "A Ganeti RAPI v2 compatible job-queue engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` (coloured only on a terminal, and never with NO_COLOR set) or as
    /// `json`, one object per line.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the master daemon: RAPI, job queue and executor.
    Serve(Box<ServeArgs>),
    /// Users file helpers.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Run a node agent: this host's QEMU backend, served to the master over HTTPS.
    Agent(Box<NodeArgs>),
    /// Read every record of a stopped server's database and report what is damaged.
    CheckDb {
        /// The server's data directory.
        #[arg(long, default_value = "gantry-data")]
        data_dir: PathBuf,
    },
    /// Remember a RAPI server, its user and its certificate (trusted on first use, like ssh).
    Login(crate::client::LoginArgs),
    /// Jobs on a RAPI server (gnt-job): list, info, watch, cancel.
    Job(crate::client::JobArgs),
    /// Instances on a RAPI server (gnt-instance): list, info, add, remove, startup, shutdown,
    /// reboot, migrate.
    Instance(crate::client::InstanceArgs),
    /// Nodes on a RAPI server (gnt-node): list, info.
    Node(crate::client::NodeArgs),
    /// Node groups on a RAPI server (gnt-group): list, info, add, remove, rename.
    Group(crate::client::GroupArgs),
    /// Networks on a RAPI server (gnt-network): list, info, add, remove.
    Network(crate::client::NetworkArgs),
    /// Job filter rules on a RAPI server (gnt-filter): list, add, delete.
    Filter(crate::client::FilterArgs),
    /// The cluster behind a RAPI server (gnt-cluster): info, verify, modify, tags.
    Cluster(crate::client::ClusterArgs),
    /// OS definitions on a RAPI server (gnt-os): list.
    Os(crate::client::OsArgs),
    /// Leases on a gantry server: instances bound to a time window (list, show, create,
    /// extend, end, remove).
    Lease(crate::client::LeaseArgs),
    /// Pools of ready instances on a gantry server (list, show, create, resize, checkout,
    /// return, remove).
    Pool(crate::client::PoolArgs),
    /// Your API tokens on a gantry server (list, create, revoke).
    Token(crate::client::TokenArgs),
    /// The job queue's drain flag, like `gnt-cluster queue`; works while the server runs (on
    /// the data dir, or with --store etcd on the masters' etcd).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
        /// The server's data directory.
        #[arg(long, default_value = "gantry-data", global = true)]
        data_dir: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write a backup of a data dir (database, certificates, users) to FILE (tar.gz); works while
    /// the server runs: jobs and configuration are copied from one instant.
    Backup {
        /// The server's data directory.
        #[arg(long, default_value = "gantry-data")]
        data_dir: PathBuf,
        /// The archive to write.
        file: PathBuf,
    },
    /// Unpack a backup into a new data dir, then start `gantry serve --data-dir` on it.
    Restore {
        /// The data directory to create (it must not hold a database).
        #[arg(long, default_value = "gantry-data")]
        data_dir: PathBuf,
        /// The archive `gantry backup` wrote.
        file: PathBuf,
    },
    /// The master IP of several masters over etcd: `drop` removes it from this host. For
    /// systemd's `ExecStopPost` (contrib/systemd/gantry.service), so a master whose process
    /// died on a live host hands the address on at once.
    #[cfg(feature = "etcd")]
    MasterIp {
        #[command(subcommand)]
        command: MasterIpCommand,
        /// The address, as given to `gantry serve --master-ip`.
        #[arg(long, global = true)]
        master_ip: Option<String>,
        /// Its device, as given to `gantry serve --master-netdev`.
        #[arg(long, global = true)]
        master_netdev: Option<String>,
    },
    /// Print a shell completion script: `gantry completions bash > /etc/bash_completion.d/gantry`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff): `gantry man | man -l -`.
    Man,
}

#[cfg(feature = "etcd")]
#[derive(Subcommand)]
enum MasterIpCommand {
    /// Remove the address from this host if it holds it (exit 0 either way).
    Drop,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Refuse new job submissions (queued and running jobs go on).
    Drain,
    /// Accept submissions again.
    Undrain,
    /// Print whether the queue is drained.
    Info,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Print a users-file line with an {HA1} password hash.
    Hash {
        user: String,
        /// The password; read from standard input when omitted.
        password: Option<String>,
        /// Options for the line, e.g. "write".
        #[arg(long, default_value = "")]
        options: String,
    },
    /// Add a user to a users file with an {HA1} password (asked for on a terminal, else read
    /// from standard input); the server picks it up within a second.
    Add {
        user: String,
        /// May submit jobs (and read).
        #[arg(long)]
        write: bool,
        /// May use queries and consoles.
        #[arg(long)]
        read: bool,
        /// The users file.
        #[arg(long, default_value = "gantry-data/users")]
        file: PathBuf,
    },
    /// API tokens of the server running on a data dir.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Issue an API token for a user of the users file and print it (shown this once). Use it
    /// as `Authorization: Bearer`, `X-AUTH-TOKEN` or `X-Api-Key`.
    Create {
        user: String,
        /// Lifetime in seconds (default 30 days, at most a year).
        #[arg(long, default_value_t = 30 * 24 * 3600)]
        ttl: u64,
        /// Read only, even for a user who may write.
        #[arg(long, conflicts_with = "write")]
        read: bool,
        /// Read and write (the user must have write).
        #[arg(long)]
        write: bool,
        /// The running server's data directory.
        #[arg(long, default_value = "gantry-data")]
        data_dir: PathBuf,
        /// With --store etcd: the users file the masters read (default: <data-dir>/users).
        #[arg(long)]
        users: Option<PathBuf>,
        /// Several masters: the token is written to their etcd (any master accepts it at once).
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Parser)]
struct NodeArgs {
    /// Address and port to listen on (Ganeti's node daemon uses 1811).
    #[arg(long, default_value = "0.0.0.0:1811")]
    listen: String,
    /// Address the master and other nodes reach this host at (migration streams come here).
    #[arg(long, default_value = "127.0.0.1")]
    advertise: String,
    /// Holds cluster.pem, cluster.key and cluster.secret, copied from the master's data dir.
    #[arg(long)]
    cluster_dir: PathBuf,
    /// Instance disks; the same shared file system on every node (NFS or similar).
    #[arg(long)]
    storage_dir: PathBuf,
    /// Sockets, pidfiles, runtime records; short and local to this host.
    #[arg(long)]
    run_dir: PathBuf,
    #[command(flatten)]
    qemu: QemuArgs,
}

/// How this host runs VMs: shared by `serve --hypervisor kvm` and `agent`.
#[derive(Args)]
struct QemuArgs {
    /// QEMU accelerator for the kvm hypervisor (`tcg`; `kvm` only when the host really supports it).
    #[arg(long, default_value = "tcg")]
    qemu_accel: String,
    /// Ganeti OS definition directories, colon separated (kvm hypervisor).
    #[arg(long, default_value = "/srv/ganeti/os")]
    os_search_path: String,
    /// Directories the hvparams kernel_path and initrd_path may name, colon separated.
    #[arg(long, default_value = "/boot")]
    boot_dir: String,
    /// Give every NIC QEMU's user-mode network (NAT out, unreachable from outside) instead of a
    /// tap on its bridge, route or switch: for hosts without bridges.
    #[arg(long)]
    user_networking: bool,
}

#[derive(Parser)]
struct ServeArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 5080)]
    port: u16,
    /// Address to bind: this host only by default (as Debian's Ganeti RAPI); `0.0.0.0` for
    /// every interface.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Data directory (sled database, certificate, default users file).
    #[arg(long, default_value = "gantry-data")]
    data_dir: PathBuf,
    /// Users file (default: <data-dir>/users).
    #[arg(long)]
    users: Option<PathBuf>,
    /// Require authentication for every request, reads included.
    #[arg(long)]
    require_authentication: bool,
    /// Serve plain HTTP instead of HTTPS.
    #[arg(long)]
    no_ssl: bool,
    /// TLS certificate (PEM) to serve; default: a self-signed one created in the data dir.
    #[arg(long, requires = "ssl_key")]
    ssl_cert: Option<PathBuf>,
    /// The private key (PEM) of --ssl-cert.
    #[arg(long, requires = "ssl_cert")]
    ssl_key: Option<PathBuf>,
    /// Every fake-hypervisor operation takes this long (to observe parallelism).
    #[arg(long, default_value_t = 0)]
    fake_delay_ms: u64,
    /// Append a line per fake-hypervisor operation to this file (tests count executions).
    #[arg(long)]
    fake_journal: Option<PathBuf>,
    /// Hypervisor for a new cluster: `fake` (in memory) or `kvm` (real QEMU processes).
    #[arg(long, default_value = "fake", value_parser = ["fake", "kvm"])]
    hypervisor: String,
    #[command(flatten)]
    qemu: QemuArgs,
    /// Where QEMU sockets and pidfiles live; short, as unix socket paths are limited to 107 bytes
    /// (default: /tmp/gantry-<id of the data dir>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Node names for a new cluster (comma separated). Default: node1..3.example.com on the fake
    /// hypervisor; this host's name on kvm (more names make more local nodes on this host).
    #[arg(long, value_delimiter = ',')]
    nodes: Option<Vec<String>>,
    /// Cluster name for a new cluster.
    #[arg(long, default_value = "cluster.example.com")]
    cluster_name: String,
    /// Memory of each fake node in MiB.
    #[arg(long, default_value_t = 16384)]
    node_memory: u64,
    /// Disk of each fake node in MiB.
    #[arg(long, default_value_t = 524288)]
    node_disk: u64,
    /// Refuse submissions while this many jobs are unfinished (queued, waiting or running).
    #[arg(long, default_value_t = 10_000)]
    queue_limit: usize,
    /// Finished jobs kept unarchived (listed by GET /2/jobs); beyond it the oldest are archived.
    #[arg(long, default_value_t = 20_000)]
    keep_finished: usize,
    /// Archive finalized jobs older than this many seconds.
    #[arg(long, default_value_t = 6 * 3600)]
    archive_age: u64,
    /// Seconds between automatic archiving runs (expired idempotency keys are swept then too).
    #[arg(long, default_value_t = 300)]
    archive_interval: u64,
    /// Seconds an Idempotency-Key is remembered: a retry within it gets the first job.
    #[arg(long, default_value_t = 24 * 3600)]
    idempotency_ttl: u64,
    /// Job events kept for event-stream clients that resume with Last-Event-ID.
    #[arg(long, default_value_t = 100_000)]
    event_retention: usize,
    /// Events an event-stream client may fall behind before it is dropped.
    #[arg(long, default_value_t = 4096)]
    event_buffer: usize,
    /// Seconds a /2/jobs/N/wait request waits for a change.
    #[arg(long, default_value_t = 10)]
    wait_timeout: u64,
    /// Seconds a client has to send its request headers.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Open connections served at once; when all are taken, a new connection replaces the one
    /// idle the longest.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Open connections from one client address at once.
    #[arg(long, default_value_t = 64)]
    max_connections_per_ip: usize,
    /// Seconds a client has to finish the TLS handshake.
    #[arg(long, default_value_t = 5)]
    handshake_timeout: u64,
    /// MiB of disk held in reserve in the data dir: new jobs are refused (503) when free space
    /// falls below half of it, and the reserve is released for running jobs. 0 disables.
    #[arg(long, default_value_t = 32)]
    reserve_space_mib: u64,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// Where the store is: the data dir's sled, or an etcd cluster (`--features etcd`).
#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Where jobs and the configuration live: `sled` (the data dir, one master) or `etcd`
    /// (several masters share an etcd cluster; one leads and executes, every one answers).
    #[arg(long, default_value = "sled", value_parser = ["sled", "etcd"], global = true)]
    pub store: String,
    /// etcd client URLs, comma separated (https:// with --etcd-ca).
    #[arg(
        long,
        value_delimiter = ',',
        env = "GANTRY_ETCD_ENDPOINTS",
        global = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// Every key of this cluster lives under this prefix (clusters may share an etcd).
    #[arg(long, default_value = "/gantry", global = true)]
    pub etcd_prefix: String,
    /// CA certificate (PEM) that signed the etcd members' certificates.
    #[arg(long, global = true)]
    pub etcd_ca: Option<PathBuf>,
    /// etcd user (etcd's RBAC); the password comes from GANTRY_ETCD_PASSWORD.
    #[arg(long, global = true)]
    pub etcd_user: Option<String>,
}

#[cfg(not(feature = "etcd"))]
const NO_ETCD: &str = "this gantry was built without etcd support: build it with `--features etcd`";

impl StoreArgs {
    /// The masters' etcd as a database, for a command that changes a record of a running
    /// cluster (the drain flag, a token).
    #[cfg(feature = "etcd")]
    fn etcd_database(&self) -> Result<Database, String> {
        let kv =
            crate::ha::EtcdKv::connect(&self.etcd_options(5)?, None).map_err(|e| e.to_string())?;
        Ok(Database::replicated(Arc::new(kv)))
    }

    #[cfg(not(feature = "etcd"))]
    fn etcd_database(&self) -> Result<Database, String> {
        Err(NO_ETCD.into())
    }

    /// How to reach etcd, with a leader key that outlives its leader by `ttl` seconds.
    #[cfg(feature = "etcd")]
    fn etcd_options(&self, ttl: i64) -> Result<crate::ha::EtcdOptions, String> {
        if self.etcd_endpoints.is_empty() {
            return Err("--store etcd needs --etcd-endpoints".into());
        }
        let password = std::env::var("GANTRY_ETCD_PASSWORD").unwrap_or_default();
        Ok(crate::ha::EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.trim_end_matches('/').to_string(),
            ca: self.etcd_ca.clone(),
            user: self.etcd_user.clone().map(|u| (u, password)),
            ttl: ttl.max(2),
        })
    }
}

/// Several masters over etcd (`--store etcd`; a build with `--features etcd`).
#[derive(Args, Clone)]
pub struct EtcdArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Seconds the leader's key outlives the leader: failover takes about this long.
    #[arg(long, default_value_t = 5)]
    pub etcd_ttl: i64,
    /// This master's name among the masters (default: this host's name and the port).
    #[arg(long)]
    pub master_name: Option<String>,
    /// The URL the other masters reach this one at (default: the scheme, --bind and --port;
    /// 127.0.0.1 when bound to every interface).
    #[arg(long)]
    pub advertise_url: Option<String>,
    /// An address that moves with the leadership (`A.B.C.D/PREFIX`, as Ganeti's master IP):
    /// the leader adds it to --master-netdev and announces it with gratuitous ARP (arping).
    #[arg(long, requires = "master_netdev")]
    pub master_ip: Option<String>,
    /// The network device that carries --master-ip on every master.
    #[arg(long, requires = "master_ip")]
    pub master_netdev: Option<String>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Users {
            command:
                UsersCommand::Add {
                    user,
                    write,
                    read,
                    file,
                },
        } => match add_user(&user, write, read, &file) {
            Ok(()) => {
                println!("{user} added to {}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gantry: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Users {
            command:
                UsersCommand::Token {
                    command:
                        TokenCommand::Create {
                            user,
                            ttl,
                            read,
                            write,
                            data_dir,
                            users,
                            store,
                        },
                },
        } => {
            use crate::rapi::tokens::Rights;
            let rights = match (read, write) {
                (true, _) => Some(Rights::Read),
                (_, true) => Some(Rights::Write),
                _ => None,
            };
            if store.store == "etcd" {
                let users = users.unwrap_or_else(|| data_dir.join("users"));
                return report(token_on_etcd(&store, &users, &user, rights, ttl));
            }
            let request = crate::control::Control::CreateToken { user, rights, ttl };
            report(crate::control::ask(&data_dir, &request).unwrap_or_else(|| {
                Err(format!(
                    "no gantry server answers on {} (tokens are issued by the running server)",
                    data_dir.display()
                ))
            }))
        }
        Command::Users {
            command:
                UsersCommand::Hash {
                    user,
                    password,
                    options,
                },
        } => {
            let password = password.unwrap_or_else(|| {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                line.trim_end_matches(['\n', '\r']).to_string()
            });
            let line = format!(
                "{user} {{HA1}}{} {options}",
                rapi::auth::ha1(&user, &password)
            );
            println!("{}", line.trim_end());
            ExitCode::SUCCESS
        }
        Command::Agent(args) => run_daemon(&cli.log_format, node_agent(*args)),
        Command::Node(a) => crate::client::main(crate::client::Request::Node(a)),
        Command::Group(a) => crate::client::main(crate::client::Request::Group(a)),
        Command::Network(a) => crate::client::main(crate::client::Request::Network(a)),
        Command::Filter(a) => crate::client::main(crate::client::Request::Filter(a)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            crate::client::quiet_pipe();
            clap_complete::generate(shell, &mut Cli::command(), "gantry", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            use clap::CommandFactory;
            crate::client::quiet_pipe();
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gantry: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Backup { data_dir, file } => report(backup(&data_dir, &file)),
        Command::Restore { data_dir, file } => report(crate::backup::restore(&file, &data_dir)),
        #[cfg(feature = "etcd")]
        Command::MasterIp {
            command: MasterIpCommand::Drop,
            master_ip,
            master_netdev,
        } => report(drop_master_ip(master_ip, master_netdev)),
        Command::Queue { command, store, .. } if store.store == "etcd" => {
            report(queue_on_etcd(&command, &store))
        }
        Command::Queue {
            command, data_dir, ..
        } => {
            // Only a data dir gets a flag: a typo must not leave a stray file anywhere.
            if !data_dir.join("db").is_dir() {
                eprintln!(
                    "gantry: {} is not a gantry data dir (it has no db/); give the server's \
                     --data-dir",
                    data_dir.display()
                );
                return ExitCode::FAILURE;
            }
            let file = data_dir.join(crate::jobqueue::DRAIN_FILE);
            let result = match command {
                QueueCommand::Drain => crate::jobqueue::set_drain_file(&file, true),
                QueueCommand::Undrain => crate::jobqueue::set_drain_file(&file, false),
                QueueCommand::Info => {
                    println!(
                        "The drain flag is {}",
                        if file.exists() { "set" } else { "unset" }
                    );
                    Ok(())
                }
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gantry: {}: {e}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => run_daemon(&cli.log_format, serve(*args)),
        Command::Login(a) => crate::client::main(crate::client::Request::Login(a)),
        Command::Job(a) => crate::client::main(crate::client::Request::Job(a)),
        Command::Instance(a) => crate::client::main(crate::client::Request::Instance(a)),
        Command::Cluster(a) => crate::client::main(crate::client::Request::Cluster(a)),
        Command::Os(a) => crate::client::main(crate::client::Request::Os(a)),
        Command::Lease(a) => crate::client::main(crate::client::Request::Lease(a)),
        Command::Pool(a) => crate::client::main(crate::client::Request::Pool(a)),
        Command::Token(a) => crate::client::main(crate::client::Request::Token(a)),
        Command::CheckDb { data_dir } => match check_db(&data_dir) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gantry: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Appends `user {HA1}digest options` to a users file, refusing a user it already has; the file
/// is created readable by its owner and group only (it holds password digests).
fn add_user(user: &str, write: bool, read: bool, file: &Path) -> Result<(), String> {
    use std::io::{IsTerminal, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c == '#') {
        return Err(format!("invalid user name {user:?}"));
    }
    let existing = std::fs::read_to_string(file).unwrap_or_default();
    if existing
        .lines()
        .any(|l| l.split_whitespace().next() == Some(user))
    {
        return Err(format!("{}: {user} is there already", file.display()));
    }
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {user}: "))
            .map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        return Err("an empty password is not allowed".into());
    }
    let options: Vec<&str> = [("write", write), ("read", read)]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect();
    let mut line = format!("{user} {{HA1}}{}", rapi::auth::ha1(user, &password));
    if !options.is_empty() {
        line.push(' ');
        line.push_str(&options.join(","));
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let separator = if existing.is_empty() || existing.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    writeln!(out, "{separator}{line}").map_err(|e| format!("{}: {e}", file.display()))
}

/// Opens the database and decodes every record: the configuration, jobs, log entries, rules.
fn check_db(data_dir: &Path) -> Result<String, String> {
    let db_dir = data_dir.join("db");
    if !db_dir.is_dir() {
        return Err(format!("{}: no database here", db_dir.display()));
    }
    let commit = GroupCommit::open(&db_dir).map_err(|e| e.to_string())?;
    let config = crate::cluster::check_stored(&commit)
        .map_err(|e| format!("{}: configuration: {e}", db_dir.display()))?;
    let store = Store::open(&commit).map_err(|e| e.to_string())?;
    let (unfinished, finished, archived, logs) = store
        .check()
        .map_err(|e| format!("{}: job queue: {e}", db_dir.display()))?;
    let cluster = match config {
        Some(c) => format!(
            "cluster {} ({} nodes, {} instances)",
            c.cluster.name,
            c.nodes.len(),
            c.instances.len()
        ),
        None => "no cluster yet".into(),
    };
    Ok(format!(
        "{}: {cluster}; {unfinished} unfinished, {finished} finished and {archived} archived jobs, \
         {logs} log entries: all readable",
        db_dir.display()
    ))
}

/// Runs a daemon (`serve`, `agent`) on a fresh runtime with logging to stderr. A fatal error is
/// printed once, as `gantry: ...`.
fn run_daemon(
    log_format: &str,
    daemon: impl std::future::Future<Output = Result<(), String>>,
) -> ExitCode {
    init_logging(log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gantry: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        builder.with_ansi(colour).init();
    }
}

async fn node_agent(args: NodeArgs) -> Result<(), String> {
    for dir in [&args.storage_dir, &args.run_dir] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let opts = crate::agent::AgentOptions {
        listen: args.listen.clone(),
        cluster_dir: args.cluster_dir.clone(),
        qemu: qemu_settings(
            args.storage_dir.clone(),
            args.run_dir.clone(),
            &args.qemu,
            Some(args.advertise.clone()),
        )?,
    };
    crate::agent::run(opts, shutdown_signal()).await
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    // The port first: a server that cannot listen must not create a cluster or a certificate.
    let addr = format!("{}:{}", args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "cannot listen on {addr}: the port is in use (another gantry or Ganeti RAPI?); \
                 choose another one with --port"
            ),
            _ => format!("cannot listen on {addr}: {e}"),
        })?;
    if args.data_dir.exists() && !args.data_dir.is_dir() {
        return Err(format!(
            "{} is a file, not a directory: give --data-dir a directory",
            args.data_dir.display()
        ));
    }
    crate::util::create_private_dir(&args.data_dir).map_err(|e| {
        format!(
            "cannot create the data dir {}: {e}",
            args.data_dir.display()
        )
    })?;
    // The database holds job records and the configuration: its owner's only.
    let db_dir = args.data_dir.join("db");
    crate::util::create_private_dir(&db_dir).map_err(|e| format!("{}: {e}", db_dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", db_dir.display()))?;
    }
    let tls = if args.no_ssl {
        None
    } else {
        Some(tls::load_or_create(
            args.ssl_cert.as_deref(),
            args.ssl_key.as_deref(),
            &args.data_dir,
        )?)
    };
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let server = ServerOptions {
        header_timeout: Duration::from_secs(args.header_timeout.max(1)),
        max_connections: args.max_connections.max(1),
        max_per_ip: args.max_connections_per_ip.max(1),
        handshake_timeout: Duration::from_secs(args.handshake_timeout.max(1)),
        tls,
    };
    if args.etcd.store.store == "etcd" {
        return serve_replicated(listener, args, server, scheme).await;
    }
    if args.etcd.master_ip.is_some() {
        return Err(
            "--master-ip moves with the leadership among several masters: it needs \
                    --store etcd (one master is reached at its own address)"
                .into(),
        );
    }
    let commit = GroupCommit::open(&db_dir).map_err(|e| held_by_another(&args.data_dir, e))?;
    write_pid_file(&args.data_dir);
    let space = Arc::new(crate::space::SpaceGuard::new(
        &args.data_dir,
        args.reserve_space_mib << 20,
    ));
    // Someone else may fill the disk: give up the reserve within a moment, not at the next job.
    let watcher = space.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            watcher.check();
        }
    });
    let state = start_master(Database::from(&commit), Some(space), users_of(&args), &args).await?;
    crate::metrics::METRICS.leader.set(1);
    let queue = state.queue.clone();
    // Bound before the banner: whoever waits for it may run `gantry users token` next.
    if let Err(e) = crate::control::serve(crate::control::Context {
        data_dir: args.data_dir.clone(),
        commit: commit.clone(),
        users: state.users.clone(),
        tokens: state.tokens.clone(),
    }) {
        tracing::warn!(
            "no control socket (`gantry backup` and `gantry users token` will not reach this server): {e}"
        );
    }
    tracing::info!(%local, tls = server.tls.is_some(), "gantry RAPI listening");
    warn_cleartext_writers(&state, &local);
    banner(&format!("gantry listening on {scheme}://{local}"));
    rapi::serve(listener, Serving::alone(state), server, shutdown_signal()).await;
    tracing::info!("shutting down: waiting for running jobs");
    queue.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// The start-up line (the URL last, for scripts). Whoever started the server may have stopped
/// reading: a closed stdout must not stop it (a master restarting as follower prints it again).
fn banner(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn warn_cleartext_writers(state: &StateInner, local: &std::net::SocketAddr) {
    let writers = state.users.cleartext_writers();
    if !local.ip().is_loopback() && !writers.is_empty() {
        tracing::warn!(
            users = %writers.join(","),
            "users with write access have clear-text passwords while the RAPI listens beyond \
             this host: store {{HA1}} digests instead (gantry users hash NAME)"
        );
    }
}

/// `gantry queue` on several masters' etcd: the flag is a record of the store, which the
/// leader reads at most a second later.
fn queue_on_etcd(command: &QueueCommand, store: &StoreArgs) -> Result<String, String> {
    let store = Store::open(store.etcd_database()?).map_err(|e| e.to_string())?;
    match command {
        QueueCommand::Drain => store.set_drain_flag(true),
        QueueCommand::Undrain => store.set_drain_flag(false),
        QueueCommand::Info => Ok(()),
    }
    .and_then(|()| store.drain_flag())
    .map(|on| format!("The drain flag is {}", if on { "set" } else { "unset" }))
    .map_err(|e| e.to_string())
}

/// `gantry users token create` on several masters' etcd: the token record is written there,
/// where every master looks tokens up.
fn token_on_etcd(
    store: &StoreArgs,
    users: &Path,
    user: &str,
    rights: Option<crate::rapi::tokens::Rights>,
    ttl: u64,
) -> Result<String, String> {
    if !users.is_file() {
        return Err(format!(
            "{}: no users file (give the masters' with --users)",
            users.display()
        ));
    }
    let tokens = crate::rapi::tokens::Tokens::new(store.etcd_database()?.records("tokens"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        // (Loading starts the file's watcher, a task.)
        let users = UserDb::load(Some(users.to_path_buf()));
        tokens.issue(&users, user, rights, ttl).await
    })
}

/// The users file `serve` reads (and follows while it runs).
fn users_of(args: &ServeArgs) -> UserDb {
    let path = args
        .users
        .clone()
        .unwrap_or_else(|| args.data_dir.join("users"));
    UserDb::load(Some(path))
}

/// Opens the configuration and the job queue on `db`, recovers what a previous master left
/// (after a crash, or on another master before a failover), and starts executing: what the
/// leader serves with.
async fn start_master(
    db: Database,
    space: Option<Arc<crate::space::SpaceGuard>>,
    users: UserDb,
    args: &ServeArgs,
) -> Result<Arc<StateInner>, String> {
    let init = InitOptions {
        hypervisor: args.hypervisor.clone(),
        cluster_name: args.cluster_name.clone(),
        node_names: args
            .nodes
            .clone()
            .unwrap_or_else(|| default_nodes(&args.hypervisor)),
        node_memory_mib: args.node_memory,
        node_disk_mib: args.node_disk,
        ..InitOptions::default()
    };
    let cluster = ClusterStore::open(db.clone(), &init).map_err(|e| e.to_string())?;
    // The hypervisor is fixed when the cluster is created; the flag only matters the first time.
    let backend: Arc<dyn Backend> = if cluster
        .snapshot()
        .cluster
        .enabled_hypervisors
        .iter()
        .any(|h| h == "kvm")
    {
        // The OS list is read from the search path whenever an opcode needs it.
        let qemu = qemu_backend(args)?;
        // Nodes on other machines are reached through their agents with these.
        let creds = tls::cluster_credentials(&args.data_dir, true)?;
        Arc::new(crate::backends::cluster::ClusterBackend::new(
            Arc::new(qemu),
            creds.secret,
            creds.cert_der,
        ))
    } else {
        let fake = FakeBackend::new(Duration::from_millis(args.fake_delay_ms));
        Arc::new(match &args.fake_journal {
            Some(path) => fake
                .with_journal(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
            None => fake,
        })
    };
    adopt(&*backend, &cluster).await;
    let store = Store::open(db.clone()).map_err(|e| e.to_string())?;
    let opts = QueueOptions {
        hard_limit: args.queue_limit,
        keep_finished: args.keep_finished,
        archive_age: Duration::from_secs(args.archive_age),
        archive_interval: Duration::from_secs(args.archive_interval.max(1)),
        space,
        idempotency_ttl: Duration::from_secs(args.idempotency_ttl),
        event_retention: args.event_retention,
        event_buffer: args.event_buffer,
    };
    let config = cluster.reader();
    let live = crate::backends::LiveState::new(backend.clone());
    let queue = JobQueue::start(store, cluster, backend, opts)
        .await
        .map_err(|e| e.to_string())?;
    crate::automation::start(queue.clone());
    Ok(Arc::new(StateInner {
        queue,
        config,
        live,
        users,
        require_auth: args.require_authentication,
        wait_timeout: Duration::from_secs(args.wait_timeout),
        answers: Default::default(),
        tokens: crate::rapi::tokens::Tokens::new(db.records("tokens")),
    }))
}

#[cfg(not(feature = "etcd"))]
async fn serve_replicated(
    _: tokio::net::TcpListener,
    _: ServeArgs,
    _: ServerOptions,
    _: &str,
) -> Result<(), String> {
    Err(NO_ETCD.into())
}

/// Several masters over etcd: this one answers at once, and leads when it wins the election
/// (`ha/master.rs`).
#[cfg(feature = "etcd")]
async fn serve_replicated(
    listener: tokio::net::TcpListener,
    args: ServeArgs,
    server: ServerOptions,
    scheme: &str,
) -> Result<(), String> {
    write_pid_file(&args.data_dir);
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let cert = match &server.tls {
        Some(_) => Some(tls::served_certificate(
            args.ssl_cert.as_deref(),
            &args.data_dir,
        )?),
        None => None,
    };
    let advertise = args.etcd.advertise_url.clone().unwrap_or_else(|| {
        let host = if local.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            local.ip().to_string()
        };
        format!("{scheme}://{host}:{}", local.port())
    });
    let name = args.etcd.master_name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        format!("{host}:{}", local.port())
    });
    let master = crate::ha::master::Master {
        etcd: args.etcd.store.etcd_options(args.etcd.etcd_ttl)?,
        me: crate::ha::master::MasterRecord {
            name,
            url: advertise,
            cert,
        },
        local: crate::rapi::leading::LocalAuth {
            users: users_of(&args),
            require_auth: args.require_authentication,
        },
        master_ip: match (&args.etcd.master_ip, &args.etcd.master_netdev) {
            (Some(ip), Some(dev)) => Some(crate::ha::master_ip::MasterIp::parse(ip, dev)?),
            _ => None,
        },
        wait_timeout: Duration::from_secs(args.wait_timeout),
    };
    banner(&format!(
        "gantry master {} (etcd store, a follower until elected) listening on {scheme}://{local}",
        master.me.name
    ));
    let args = Arc::new(args);
    let users = master.local.users.clone();
    let lead = move |db: Database| {
        let args = args.clone();
        async move {
            let state = start_master(db, None, users, &args).await?;
            warn_cleartext_writers(&state, &local);
            Ok(state)
        }
    };
    master.run(listener, server, lead, shutdown_signal()).await
}

/// The pid of the server using a data dir, for the message a second one prints.
const PID_FILE: &str = "gantry.pid";

fn write_pid_file(data_dir: &Path) {
    if let Err(e) = std::fs::write(data_dir.join(PID_FILE), std::process::id().to_string()) {
        tracing::warn!("cannot write {}: {e}", data_dir.join(PID_FILE).display());
    }
}

/// A database another server holds: say which process, and where.
fn held_by_another(data_dir: &Path, e: crate::storage::StorageError) -> String {
    if !matches!(e, crate::storage::StorageError::InUse(_)) {
        return e.to_string();
    }
    let pid = std::fs::read_to_string(data_dir.join(PID_FILE))
        .ok()
        .map(|p| format!(" (pid {})", p.trim()))
        .unwrap_or_default();
    format!(
        "another gantry process{pid} is using the data dir {}: stop it first, or give this \
         one another --data-dir",
        data_dir.display()
    )
}

fn default_nodes(hypervisor: &str) -> Vec<String> {
    if hypervisor == "kvm" {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        vec![if host.is_empty() {
            "localhost".into()
        } else {
            host
        }]
    } else {
        (1..=3).map(|i| format!("node{i}.example.com")).collect()
    }
}

fn find_tool(name: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.exists())
        })
        .ok_or_else(|| format!("{name} not found in PATH; the kvm hypervisor needs QEMU"))
}

/// QEMU settings shared by `serve --hypervisor kvm` and `node`.
fn qemu_settings(
    storage_dir: PathBuf,
    run_root: PathBuf,
    host: &QemuArgs,
    migration_host: Option<String>,
) -> Result<crate::backends::qemu::QemuSettings, String> {
    let qemu = find_tool("qemu-system-x86_64")?;
    let probe = crate::backends::qemu::probe::probe(&qemu)?;
    tracing::info!(
        qemu = %qemu.display(),
        version = format!("{}.{}", probe.version.0, probe.version.1),
        machine = %probe.machine,
        "QEMU found"
    );
    Ok(crate::backends::qemu::QemuSettings {
        qemu,
        qemu_img: find_tool("qemu-img")?,
        machine: probe.machine,
        storage_dir,
        run_root,
        accel: host.qemu_accel.clone(),
        // Absolute from the start: OS scripts run inside their own directory, where a relative
        // search path (`--os-search-path ./os`, as in the README) no longer leads anywhere.
        os_search_path: absolute_paths(&host.os_search_path),
        migration_host,
        user_networking: host.user_networking,
        boot_dirs: absolute_paths(&host.boot_dir),
    })
}

/// A colon-separated list of directories, each made absolute against the working directory.
fn absolute_paths(list: &str) -> Vec<PathBuf> {
    std::env::split_paths(list)
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect()
}

fn qemu_backend(args: &ServeArgs) -> Result<crate::backends::qemu::QemuBackend, String> {
    let data_dir = std::fs::canonicalize(&args.data_dir).map_err(|e| e.to_string())?;
    let run_root = args.run_dir.clone().unwrap_or_else(|| {
        let id = crate::backends::qemu::short_id(&data_dir.display().to_string());
        PathBuf::from(format!("/tmp/gantry-{id}"))
    });
    Ok(crate::backends::qemu::QemuBackend::new(qemu_settings(
        data_dir.join("storage"),
        run_root,
        &args.qemu,
        None,
    )?))
}

/// `gantry backup`: asks the server running on `data_dir`, or copies the database itself
/// when no server runs there.
fn backup(data_dir: &Path, file: &Path) -> Result<String, String> {
    if !data_dir.join("db").is_dir() {
        return Err(format!(
            "{} is not a gantry data dir (it has no db/); give the server's --data-dir",
            data_dir.display()
        ));
    }
    let file = std::path::absolute(file).map_err(|e| format!("{}: {e}", file.display()))?;
    match crate::control::ask(data_dir, &crate::control::Control::Backup(file.clone())) {
        Some(answer) => answer,
        // No server (or a stale socket): the database is ours to open.
        None => {
            let commit = crate::storage::GroupCommit::open_offline(&data_dir.join("db"))
                .map_err(|e| e.to_string())?;
            crate::backup::write_backup(data_dir, &commit, &file)
        }
    }
}

/// Prints a tool's summary, or its error and fails.
#[cfg(feature = "etcd")]
fn drop_master_ip(ip: Option<String>, device: Option<String>) -> Result<String, String> {
    let (Some(ip), Some(device)) = (ip, device) else {
        return Err("give --master-ip and --master-netdev as to `gantry serve`".into());
    };
    let master_ip = crate::ha::master_ip::MasterIp::parse(&ip, &device)?;
    Ok(match master_ip.drop_now()? {
        true => format!("dropped {ip} from {device}"),
        false => format!("{ip} is not on {device} here"),
    })
}

fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gantry: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Tells the backend about nodes and instances, so a restart reports running VMs as running.
pub async fn adopt(backend: &dyn Backend, cluster: &ClusterStore) {
    let cfg = cluster.snapshot();
    let nodes = cfg
        .nodes
        .values()
        .map(|n| crate::cmdlib::node_spec(&n.name, &n.ndparams))
        .collect();
    let vms = cfg
        .instances
        .values()
        .filter_map(|i| match crate::cmdlib::vm_spec(&cfg, i) {
            Ok(spec) => Some((i, spec)),
            Err(e) => {
                tracing::error!("not adopting an instance: {e}");
                None
            }
        })
        .flat_map(|(i, spec)| {
            let up = i.admin_state == crate::cluster::model::AdminState::Up;
            std::iter::once((i.pnode.clone(), spec.clone(), up)).chain(
                i.snodes
                    .iter()
                    .map(move |s| (s.clone(), spec.clone(), false)),
            )
        })
        .collect();
    backend.adopt(nodes, vms).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod help_tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every option of every command says what it does (`gantry <command> --help`).
    #[test]
    fn every_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = vec![];
        walk(&Cli::command(), "gantry", &mut missing);
        assert!(missing.is_empty(), "options without help: {missing:#?}");
    }
}
