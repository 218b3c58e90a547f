//! gnt-node, gnt-group and gnt-network: nodes, node groups, networks.

use super::conn::{Conn, ConnArgs};
use super::output::{self, ListArgs};
use super::{ClientError, SubmitArgs, query_list, submit_and_follow};
use serde_json::{Map, Value, json};

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: NodeCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum NodeCommand {
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
    /// Set a node's flags: `--offline yes|no`, `--drained yes|no`.
    Modify {
        name: String,
        /// Mark the node offline (unreachable: nothing is asked of it) or back online.
        #[arg(long, value_parser = ["yes", "no"])]
        offline: Option<String>,
        /// Mark the node drained (no new instances are placed on it) or not.
        #[arg(long, value_parser = ["yes", "no"])]
        drained: Option<String>,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Set a node's role: master-candidate, regular, drained or offline.
    Role {
        name: String,
        #[arg(value_parser = ["master-candidate", "regular", "drained", "offline"])]
        /// The new role.
        role: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Live-migrate every primary instance away from a node.
    Migrate {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Move every instance off a node (primaries and secondaries).
    Evacuate {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
}

#[derive(clap::Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: GroupCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum GroupCommand {
    /// List node groups (fields of /2/query/group).
    List(ListArgs),
    /// Show one group.
    Info {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a node group.
    Add {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Remove an empty node group.
    Remove {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Rename a node group.
    Rename {
        name: String,
        new_name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
}

#[derive(clap::Args, Debug)]
pub struct NetworkArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: NetworkCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum NetworkCommand {
    /// List networks (fields of /2/query/network).
    List(ListArgs),
    /// Show one network.
    Info {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a network: `gantry network add net1 --network 192.0.2.0/24 --gateway 192.0.2.1`.
    Add {
        name: String,
        /// The network's address range in CIDR form.
        #[arg(long)]
        network: String,
        /// The gateway address inside the range.
        #[arg(long)]
        gateway: Option<String>,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Remove a network no instance uses.
    Remove {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
}

pub(super) async fn node(a: NodeArgs) -> Result<(), ClientError> {
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
        NodeCommand::Modify {
            name,
            offline,
            drained,
            submit,
        } => {
            let mut body = Map::new();
            for (key, value) in [("offline", offline), ("drained", drained)] {
                if let Some(v) = value {
                    body.insert(key.into(), json!(v == "yes"));
                }
            }
            let target = format!("/2/nodes/{name}/modify");
            submit_and_follow(
                &conn,
                reqwest::Method::POST,
                &target,
                Value::Object(body),
                &submit,
            )
            .await
        }
        NodeCommand::Role { name, role, submit } => {
            let target = format!("/2/nodes/{name}/role");
            submit_and_follow(&conn, reqwest::Method::PUT, &target, json!(role), &submit).await
        }
        NodeCommand::Migrate { name, submit } => {
            let target = format!("/2/nodes/{name}/migrate");
            submit_and_follow(&conn, reqwest::Method::POST, &target, json!({}), &submit).await
        }
        NodeCommand::Evacuate { name, submit } => {
            let target = format!("/2/nodes/{name}/evacuate");
            submit_and_follow(
                &conn,
                reqwest::Method::POST,
                &target,
                json!({"mode": "all"}),
                &submit,
            )
            .await
        }
    }
}

pub(super) async fn group(a: GroupArgs) -> Result<(), ClientError> {
    let conn = Conn::new(&a.conn)?;
    let path = |n: &str| format!("/2/groups/{n}");
    match a.command {
        GroupCommand::List(list) => {
            let fields = list.fields(&["name", "node_cnt", "pinst_cnt", "alloc_policy"]);
            query_list(&conn, "group", &list, &fields).await
        }
        GroupCommand::Info { name, json } => {
            output::print_object(json, &conn.get(&path(&name)).await?);
            Ok(())
        }
        GroupCommand::Add { name, submit } => {
            let body = json!({"name": name});
            submit_and_follow(&conn, reqwest::Method::POST, "/2/groups", body, &submit).await
        }
        GroupCommand::Remove { name, submit } => {
            submit_and_follow(
                &conn,
                reqwest::Method::DELETE,
                &path(&name),
                Value::Null,
                &submit,
            )
            .await
        }
        GroupCommand::Rename {
            name,
            new_name,
            submit,
        } => {
            let target = format!("{}/rename", path(&name));
            let body = json!({"new_name": new_name});
            submit_and_follow(&conn, reqwest::Method::PUT, &target, body, &submit).await
        }
    }
}

pub(super) async fn network(a: NetworkArgs) -> Result<(), ClientError> {
    let conn = Conn::new(&a.conn)?;
    let path = |n: &str| format!("/2/networks/{n}");
    match a.command {
        NetworkCommand::List(list) => {
            let fields =
                list.fields(&["name", "network", "gateway", "free_count", "reserved_count"]);
            query_list(&conn, "network", &list, &fields).await
        }
        NetworkCommand::Info { name, json } => {
            output::print_object(json, &conn.get(&path(&name)).await?);
            Ok(())
        }
        NetworkCommand::Add {
            name,
            network,
            gateway,
            submit,
        } => {
            let mut body = json!({"name": name, "network": network});
            if let Some(g) = gateway {
                body["gateway"] = json!(g);
            }
            submit_and_follow(&conn, reqwest::Method::POST, "/2/networks", body, &submit).await
        }
        NetworkCommand::Remove { name, submit } => {
            submit_and_follow(
                &conn,
                reqwest::Method::DELETE,
                &path(&name),
                Value::Null,
                &submit,
            )
            .await
        }
    }
}
