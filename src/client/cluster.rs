//! gnt-cluster, gnt-os and gnt-filter: the cluster, its OS list, job filter rules.

use super::conn::{Conn, ConnArgs};
use super::instances::key_values;
use super::output::{self, ListArgs};
use super::{ClientError, SubmitArgs, submit_and_follow};
use serde_json::{Value, json};

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: ClusterCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum ClusterCommand {
    /// Show the cluster's configuration (/2/info).
    Info {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify the cluster configuration (OP_CLUSTER_VERIFY_CONFIG; a gantry extension).
    Verify {
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Change cluster parameters: `gantry cluster modify max_running_jobs=50`.
    Modify {
        /// `key=value` pairs (numbers and booleans are typed).
        #[arg(required = true)]
        params: Vec<String>,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// The cluster's tags: list them, or `add`/`remove` some.
    Tags {
        /// list, add or remove.
        #[arg(value_parser = ["list", "add", "remove"], default_value = "list")]
        action: String,
        /// The tags to add or remove.
        tags: Vec<String>,
        #[command(flatten)]
        submit: SubmitArgs,
    },
}

#[derive(clap::Args, Debug)]
pub struct FilterArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: FilterCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum FilterCommand {
    /// List the job filter rules in the order they apply.
    List(ListArgs),
    /// Add a rule: `--action PAUSE|REJECT|ACCEPT|CONTINUE|RATE_LIMIT:N` with predicates as JSON,
    /// e.g. `--predicate '["jobid", [">", "id", 100]]'`.
    Add {
        /// What matching jobs get: ACCEPT, PAUSE, REJECT, CONTINUE or RATE_LIMIT:N.
        #[arg(long)]
        action: String,
        /// Rules are consulted by priority, lowest first.
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// A predicate as JSON (repeat for several; all must match).
        #[arg(long = "predicate")]
        predicates: Vec<String>,
    },
    /// Delete a rule by its uuid.
    Delete { uuid: String },
}

#[derive(clap::Args, Debug)]
pub struct OsArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: OsCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum OsCommand {
    /// List the OS definitions (with variants) instances can be created with.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn cluster(a: ClusterArgs) -> Result<(), ClientError> {
    let conn = Conn::new(&a.conn)?;
    match a.command {
        ClusterCommand::Info { json } => {
            output::print_object(json, &conn.get("/2/info").await?);
            Ok(())
        }
        ClusterCommand::Modify { params, submit } => {
            let body = Value::Object(key_values(&params.join(","), "modify")?);
            submit_and_follow(&conn, reqwest::Method::PUT, "/2/modify", body, &submit).await
        }
        ClusterCommand::Tags {
            action,
            tags,
            submit,
        } => {
            if action == "list" {
                for tag in conn.get("/2/tags").await?.as_array().into_iter().flatten() {
                    println!("{}", output::text(tag));
                }
                return Ok(());
            }
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(tags.iter().map(|t| ("tag", t.as_str())))
                .finish();
            let method = if action == "add" {
                reqwest::Method::PUT
            } else {
                reqwest::Method::DELETE
            };
            submit_and_follow(
                &conn,
                method,
                &format!("/2/tags?{query}"),
                Value::Null,
                &submit,
            )
            .await
        }
        ClusterCommand::Verify { submit } => {
            // A gantry extension (raw opcodes on /2/jobs): Ganeti's RAPI has no verify resource.
            let op = json!({"OP_ID": crate::opcodes::OpId::ClusterVerifyConfig.as_str()});
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

pub(super) async fn filter(a: FilterArgs) -> Result<(), ClientError> {
    let conn = Conn::new(&a.conn)?;
    match a.command {
        FilterCommand::List(list) => {
            let fields = list.fields(&["uuid", "priority", "action", "predicates"]);
            let rules = conn.get("/2/filters?bulk=1").await?;
            let rows: Vec<Vec<Value>> = rules
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| fields.iter().map(|f| r[f.as_str()].clone()).collect())
                .collect();
            output::print_rows(&list, &fields, &rows);
            Ok(())
        }
        FilterCommand::Add {
            action,
            priority,
            predicates,
        } => {
            let predicates = predicates
                .iter()
                .map(|p| serde_json::from_str::<Value>(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Usage(format!("--predicate: not JSON: {e}")))?;
            let action = match action.split_once(':') {
                Some(("RATE_LIMIT", n)) => json!([
                    "RATE_LIMIT",
                    n.parse::<u64>().map_err(|_| ClientError::Usage(format!(
                        "--action {action}: RATE_LIMIT:N"
                    )))?
                ]),
                _ => json!(action),
            };
            let body = json!({"priority": priority, "predicates": predicates, "action": action});
            let uuid = conn
                .call(reqwest::Method::POST, "/2/filters", Some(&body))
                .await?;
            println!("{}", output::text(&uuid));
            Ok(())
        }
        FilterCommand::Delete { uuid } => {
            conn.call(reqwest::Method::DELETE, &format!("/2/filters/{uuid}"), None)
                .await?;
            Ok(())
        }
    }
}

pub(super) async fn os(a: OsArgs) -> Result<(), ClientError> {
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
