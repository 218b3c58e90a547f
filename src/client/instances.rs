//! gnt-instance: list, info, add (gnt-style options), remove, start, stop, reboot, rename,
//! modify, grow-disk, reinstall, failover, migrate, disks, console.

use super::conn::{Conn, ConnArgs};
use super::output::{self, ListArgs};
use super::{ClientError, SubmitArgs, query_list, submit_and_follow};
use serde_json::{Map, Value, json};

#[derive(clap::Args, Debug)]
pub struct InstanceArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: InstanceCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum InstanceCommand {
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
    /// Rename an instance.
    Rename {
        name: String,
        new_name: String,
        /// Do not check the new name in DNS (nor its IP).
        #[arg(long)]
        no_name_check: bool,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Change an instance's parameters (applied at its next start where they need one).
    Modify {
        name: String,
        /// Backend parameters: `memory=1024,vcpus=2`.
        #[arg(short = 'B', long = "backend-parameters")]
        beparams: Option<String>,
        /// Hypervisor parameters.
        #[arg(short = 'H', long = "hypervisor-parameters")]
        hvparams: Option<String>,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Grow one disk by an amount (`1G`, `512M`).
    GrowDisk {
        name: String,
        /// The disk's index (0 for the first).
        disk: u32,
        /// How much to add: `512M`, `1G`.
        amount: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Reinstall the OS (the disks are overwritten).
    Reinstall {
        name: String,
        /// Another OS to install.
        #[arg(short = 'o', long = "os-type")]
        os: Option<String>,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Fail an instance over to its secondary node (stop, move, start).
    Failover {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Activate an instance's disks.
    ActivateDisks {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Deactivate a stopped instance's disks.
    DeactivateDisks {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Connect to the serial console (runs the server's console command when the server is
    /// this host; elsewhere, prints what to run on the master).
    Console { name: String },
    /// Migrate an instance to its secondary node or, with --target-node, another node.
    Migrate {
        name: String,
        /// Migrate to this node instead of the secondary (shared storage templates).
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

pub(super) async fn run(conn: &Conn, command: InstanceCommand) -> Result<(), ClientError> {
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
        InstanceCommand::Rename {
            name,
            new_name,
            no_name_check,
            submit,
        } => {
            let check = !no_name_check;
            let body = json!({"new_name": new_name, "name_check": check, "ip_check": check});
            submit_and_follow(
                conn,
                reqwest::Method::PUT,
                &path(&name, "rename"),
                body,
                &submit,
            )
            .await
        }
        InstanceCommand::Modify {
            name,
            beparams,
            hvparams,
            submit,
        } => {
            let mut body = Map::new();
            if let Some(b) = beparams {
                body.insert("beparams".into(), Value::Object(key_values(&b, "-B")?));
            }
            if let Some(h) = hvparams {
                body.insert("hvparams".into(), Value::Object(key_values(&h, "-H")?));
            }
            if body.is_empty() {
                return Err(ClientError::Usage(
                    "nothing to change: give -B or -H".into(),
                ));
            }
            submit_and_follow(
                conn,
                reqwest::Method::PUT,
                &path(&name, "modify"),
                Value::Object(body),
                &submit,
            )
            .await
        }
        InstanceCommand::GrowDisk {
            name,
            disk,
            amount,
            submit,
        } => {
            let body = json!({"amount": size_mib(&amount, "grow-disk")?});
            let target = path(&name, &format!("disk/{disk}/grow"));
            submit_and_follow(conn, reqwest::Method::POST, &target, body, &submit).await
        }
        InstanceCommand::Reinstall { name, os, submit } => {
            let body = os.map_or(Value::Null, |o| json!({"os": o}));
            submit_and_follow(
                conn,
                reqwest::Method::POST,
                &path(&name, "reinstall"),
                body,
                &submit,
            )
            .await
        }
        InstanceCommand::Failover { name, submit } => {
            submit_and_follow(
                conn,
                reqwest::Method::PUT,
                &path(&name, "failover"),
                json!({}),
                &submit,
            )
            .await
        }
        InstanceCommand::ActivateDisks { name, submit } => {
            submit_and_follow(
                conn,
                reqwest::Method::PUT,
                &path(&name, "activate-disks"),
                Value::Null,
                &submit,
            )
            .await
        }
        InstanceCommand::DeactivateDisks { name, submit } => {
            submit_and_follow(
                conn,
                reqwest::Method::PUT,
                &path(&name, "deactivate-disks"),
                Value::Null,
                &submit,
            )
            .await
        }
        InstanceCommand::Console { name } => console(conn, &name).await,
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

/// The serial console: the server's own command when it runs on this host.
async fn console(conn: &Conn, name: &str) -> Result<(), ClientError> {
    let info = conn.get(&format!("/2/instances/{name}/console")).await?;
    let command: Vec<String> = info["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let Some((program, args)) = command.split_first() else {
        return Err(ClientError::Api(
            200,
            format!("no console command for {name}: {info}"),
        ));
    };
    let host = info["host"].as_str().unwrap_or_default();
    if !conn.is_local() {
        println!(
            "The console of {name} is on {host}; run this there:\n  {}",
            command.join(" ")
        );
        return Ok(());
    }
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| ClientError::Usage(format!("cannot run {program}: {e} (install it?)")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ClientError::Usage(format!("{program} ended with {status}")))
    }
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
pub(super) fn key_values(text: &str, flag: &str) -> Result<Map<String, Value>, ClientError> {
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
