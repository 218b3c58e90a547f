//! Following a job as gnt-* does: each log entry with its time as it arrives (through
//! `/2/jobs/N/wait`), a spinner on a terminal, and the outcome as the exit code. Ctrl-C
//! detaches without touching the job.

use super::{ClientError, conn::Conn};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::io::IsTerminal;

const FINAL: &[&str] = &["success", "error", "canceled"];

/// Follows job `id` until it ends; answers its final job record.
pub async fn follow(conn: &Conn, id: u64) -> Result<Value, ClientError> {
    tokio::select! {
        result = follow_inner(conn, id) => result,
        _ = tokio::signal::ctrl_c() => Err(ClientError::Detached(id)),
    }
}

async fn follow_inner(conn: &Conn, id: u64) -> Result<Value, ClientError> {
    let spinner = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} job {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let say = |line: String| match &spinner {
        Some(bar) => bar.println(line),
        None => println!("{line}"),
    };
    let mut previous = Value::Null;
    let mut serial = Value::Null;
    loop {
        let body = json!({"fields": ["status"], "previous_job_info": previous,
                          "previous_log_serial": serial});
        let answer = conn
            .call(
                reqwest::Method::GET,
                &format!("/2/jobs/{id}/wait"),
                Some(&body),
            )
            .await?;
        if answer.is_null() {
            continue;
        }
        for entry in answer["log_entries"].as_array().into_iter().flatten() {
            serial = entry[0].clone();
            say(log_line(entry));
        }
        let status = answer["job_info"][0].as_str().unwrap_or("").to_string();
        if let Some(bar) = &spinner {
            bar.set_message(format!("{id}: {status}"));
        }
        if FINAL.contains(&status.as_str()) {
            if let Some(bar) = spinner {
                bar.finish_and_clear();
            }
            return conn.get(&format!("/2/jobs/{id}")).await;
        }
        previous = answer["job_info"].clone();
    }
}

/// `Wed Dec  2 07:47:38 2026 message`, as gnt-* prints a job's log.
fn log_line(entry: &Value) -> String {
    let secs = entry[1][0].as_i64().unwrap_or(0);
    let micros = entry[1][1].as_u64().unwrap_or(0) as u32;
    let when = chrono::DateTime::from_timestamp(secs, micros * 1000)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%a %b %e %H:%M:%S %Y")
                .to_string()
        })
        .unwrap_or_default();
    let message = match &entry[3] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!("{when} {message}")
}

/// The exit status a finished job record stands for.
pub fn outcome(job: &Value) -> Result<(), ClientError> {
    let id = job["id"].as_u64().unwrap_or(0);
    match job["status"].as_str() {
        Some("success") => Ok(()),
        Some("canceled") => Err(ClientError::JobCanceled(id)),
        _ => {
            let why = job["opresult"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r.is_array())
                .map(|r| match &r[1] {
                    Value::Array(parts) => format!(
                        "{}: {}",
                        r[0].as_str().unwrap_or("error"),
                        parts.first().map(super::output::text).unwrap_or_default()
                    ),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| "failed".into());
            Err(ClientError::JobFailed(id, why))
        }
    }
}
