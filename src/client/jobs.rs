//! gnt-job: list, info, watch, cancel.

use super::conn::{Conn, ConnArgs};
use super::output::{self, ListArgs};
use super::{ClientError, watch};
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: JobCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum JobCommand {
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

pub(super) async fn run(conn: &Conn, command: JobCommand) -> Result<(), ClientError> {
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
