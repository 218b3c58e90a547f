//! `gantry lease`, `gantry pool` and `gantry token`: gantry's own resources (`/gantry/v1/...`),
//! with the conventions of the other commands (lists as gnt-* prints them, jobs followed to
//! their end unless `--submit`, `--dry-run`).

use super::conn::{Conn, ConnArgs};
use super::output::{self, ListArgs};
use super::{ClientError, SubmitArgs, submit_and_follow};
use reqwest::Method;
use serde_json::{Map, Value, json};

/// A duration as people write it (`90s`, `30m`, `12h`, `2d`), in seconds.
fn seconds(text: &str) -> Result<f64, String> {
    humantime::parse_duration(text)
        .map(|d| d.as_secs_f64())
        .map_err(|e| format!("'{text}': {e} (e.g. 30m, 12h, 2d)"))
}

#[derive(clap::Args, Debug)]
pub struct LeaseArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: LeaseCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum LeaseCommand {
    /// List the leases.
    List(ListArgs),
    /// Show one lease.
    Show {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bind instances to a window: `gantry lease create night --for 8h --instance web1
    /// --before-end 15m --before-end-action shutdown`.
    Create {
        name: String,
        /// How long from now (or from --start-in).
        #[arg(long = "for", value_parser = seconds)]
        duration: f64,
        /// Start later than now (reservations hold from then).
        #[arg(long, value_parser = seconds)]
        start_in: Option<f64>,
        /// An instance the lease holds (repeat for several).
        #[arg(long = "instance")]
        instances: Vec<String>,
        /// When the before-end action runs, before the end.
        #[arg(long, value_parser = seconds)]
        before_end: Option<f64>,
        /// none, notify, shutdown or snapshot.
        #[arg(long, default_value = "notify")]
        before_end_action: String,
        /// What happens at the end: remove or shutdown.
        #[arg(long, default_value = "remove")]
        on_end: String,
        /// Reserve capacity for the window: `memory=4G,vcpus=2,disk=20G[,group=NAME]`.
        #[arg(long)]
        reserve: Option<String>,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Move a lease's end: `--by 2h` (later), `--by -30m` (sooner) or `--in 1h` (from now).
    Extend {
        name: String,
        /// Move the end by this much (negative: sooner).
        #[arg(long, value_parser = signed_seconds, allow_hyphen_values = true)]
        by: Option<f64>,
        /// Set the end this far from now.
        #[arg(long = "in", value_parser = seconds)]
        from_now: Option<f64>,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// End a lease now: its end action runs at once.
    End {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Forget a lease without running its actions (its instances stay).
    Remove {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
}

fn signed_seconds(text: &str) -> Result<f64, String> {
    match text.strip_prefix('-') {
        Some(rest) => seconds(rest).map(|s| -s),
        None => seconds(text),
    }
}

/// `memory=4G,vcpus=2,disk=20G,group=default` into the reservation object.
fn reservation(text: &str) -> Result<Value, ClientError> {
    let mut obj = Map::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ClientError::Usage(format!("--reserve: '{pair}' is not key=value")))?;
        let value = match k {
            "vcpus" => json!(v.parse::<u64>().map_err(|_| {
                ClientError::Usage(format!("--reserve: vcpus={v} is not a number"))
            })?),
            "memory" | "disk" | "group" => json!(v),
            _ => {
                return Err(ClientError::Usage(format!(
                    "--reserve: unknown key '{k}' (memory, vcpus, disk, group)"
                )));
            }
        };
        obj.insert(k.to_string(), value);
    }
    Ok(Value::Object(obj))
}

fn when(v: &Value) -> Value {
    v.as_f64()
        .and_then(|t| chrono::DateTime::from_timestamp(t as i64, 0))
        .map_or(Value::Null, |t| {
            json!(t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        })
}

pub(super) async fn lease(a: LeaseArgs) -> Result<(), ClientError> {
    let conn = Conn::new(&a.conn)?;
    match a.command {
        LeaseCommand::List(list) => {
            let fields = list.fields(&["name", "owner", "end", "on_end", "instances", "pool"]);
            let leases = conn.get("/gantry/v1/leases?bulk=1").await?;
            let rows: Vec<Vec<Value>> = leases
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    fields
                        .iter()
                        .map(|f| match f.as_str() {
                            "start" | "end" | "before_end" if !list.json => when(&l[f.as_str()]),
                            other => l[other].clone(),
                        })
                        .collect()
                })
                .collect();
            output::print_rows(&list, &fields, &rows);
            Ok(())
        }
        LeaseCommand::Show { name, json } => {
            let lease = conn.get(&format!("/gantry/v1/leases/{name}")).await?;
            output::print_object(json, &lease);
            Ok(())
        }
        LeaseCommand::Create {
            name,
            duration,
            start_in,
            instances,
            before_end,
            before_end_action,
            on_end,
            reserve,
            submit,
        } => {
            let start = crate::util::now_f64() + start_in.unwrap_or(0.0);
            let mut body = json!({"name": name, "start": start, "duration": duration,
                "instances": instances, "on_end": on_end});
            if let Some(b) = before_end {
                body["before_end_seconds"] = json!(b);
                body["before_end_action"] = json!(before_end_action);
            }
            if let Some(r) = reserve {
                body["reservation"] = reservation(&r)?;
            }
            submit_and_follow(&conn, Method::POST, "/gantry/v1/leases", body, &submit).await
        }
        LeaseCommand::Extend {
            name,
            by,
            from_now,
            submit,
        } => {
            let body = match (by, from_now) {
                (Some(by), None) => json!({"extend": by}),
                (None, Some(d)) => json!({"end": crate::util::now_f64() + d}),
                _ => {
                    return Err(ClientError::Usage(
                        "give one of --by DURATION or --in DURATION".into(),
                    ));
                }
            };
            let path = format!("/gantry/v1/leases/{name}");
            submit_and_follow(&conn, Method::PUT, &path, body, &submit).await
        }
        LeaseCommand::End { name, submit } => {
            let path = format!("/gantry/v1/leases/{name}/end");
            submit_and_follow(&conn, Method::POST, &path, Value::Null, &submit).await
        }
        LeaseCommand::Remove { name, submit } => {
            let path = format!("/gantry/v1/leases/{name}");
            submit_and_follow(&conn, Method::DELETE, &path, Value::Null, &submit).await
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct PoolArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: PoolCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum PoolCommand {
    /// List the pools with their ready and checked-out counts.
    List(ListArgs),
    /// Show one pool.
    Show {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a pool: `gantry pool create ci --size 3 --template ci.json` (a /2/instances body).
    Create {
        name: String,
        /// How many ready instances the pool keeps.
        #[arg(long)]
        size: u64,
        /// A JSON file holding an instance create body (without a name).
        #[arg(long)]
        template: std::path::PathBuf,
        /// Default checkout lifetime.
        #[arg(long, value_parser = seconds)]
        lifetime: Option<f64>,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Change a pool's ready size (a job).
    Resize {
        name: String,
        size: u64,
        #[command(flatten)]
        submit: SubmitArgs,
    },
    /// Check out a ready instance; prints its name.
    Checkout {
        name: String,
        /// How long the instance is yours (default: the pool's, 12h unless set).
        #[arg(long, value_parser = seconds)]
        lifetime: Option<f64>,
    },
    /// Give a checked-out instance back: it is removed.
    Return { instance: String },
    /// Remove a pool and its ready instances.
    Remove {
        name: String,
        #[command(flatten)]
        submit: SubmitArgs,
    },
}

pub(super) async fn pool(a: PoolArgs) -> Result<(), ClientError> {
    let conn = Conn::new(&a.conn)?;
    match a.command {
        PoolCommand::List(list) => {
            let fields = list.fields(&["name", "size", "ready", "checked_out", "checkouts"]);
            let pools = conn.get("/gantry/v1/pools?bulk=1").await?;
            let rows: Vec<Vec<Value>> = pools
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| fields.iter().map(|f| p[f.as_str()].clone()).collect())
                .collect();
            output::print_rows(&list, &fields, &rows);
            Ok(())
        }
        PoolCommand::Show { name, json } => {
            let pool = conn.get(&format!("/gantry/v1/pools/{name}")).await?;
            output::print_object(json, &pool);
            Ok(())
        }
        PoolCommand::Create {
            name,
            size,
            template,
            lifetime,
            submit,
        } => {
            let text = std::fs::read_to_string(&template)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", template.display())))?;
            let template: Value = serde_json::from_str(&text).map_err(|e| {
                ClientError::Usage(format!("{}: not JSON: {e}", template.display()))
            })?;
            let mut body = json!({"name": name, "size": size, "template": template});
            if let Some(l) = lifetime {
                body["lifetime"] = json!(l.max(1.0) as u64);
            }
            submit_and_follow(&conn, Method::POST, "/gantry/v1/pools", body, &submit).await
        }
        PoolCommand::Resize { name, size, submit } => {
            let path = format!("/gantry/v1/pools/{name}");
            submit_and_follow(&conn, Method::PUT, &path, json!({"size": size}), &submit).await
        }
        PoolCommand::Checkout { name, lifetime } => {
            let mut body = json!({});
            if let Some(l) = lifetime {
                body["lifetime"] = json!(l.max(1.0) as u64);
            }
            let path = format!("/gantry/v1/pools/{name}/checkout");
            let id = conn.call(Method::POST, &path, Some(&body)).await?;
            let id = id
                .as_u64()
                .ok_or_else(|| ClientError::Api(200, format!("expected a job id, got {id}")))?;
            // The job's log first (as every followed job), its instance last: `| tail -1`.
            let job = super::watch::follow(&conn, id).await?;
            super::watch::outcome(&job)?;
            println!("{}", output::text(&job["opresult"][0]["instance"]));
            Ok(())
        }
        PoolCommand::Return { instance } => {
            let path = format!("/gantry/v1/leases/{instance}/end");
            let quiet = SubmitArgs {
                submit: false,
                dry_run: false,
                reason: None,
            };
            submit_and_follow(&conn, Method::POST, &path, Value::Null, &quiet).await
        }
        PoolCommand::Remove { name, submit } => {
            let path = format!("/gantry/v1/pools/{name}");
            submit_and_follow(&conn, Method::DELETE, &path, Value::Null, &submit).await
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    pub(super) conn: ConnArgs,
    #[command(subcommand)]
    pub(super) command: TokenCommand,
}

#[derive(clap::Subcommand, Debug)]
pub(super) enum TokenCommand {
    /// List your API tokens (never their secrets).
    List(ListArgs),
    /// Create an API token; prints it once. Needs your password, not a token.
    Create {
        /// How long it is valid.
        #[arg(long, value_parser = seconds)]
        ttl: Option<f64>,
        /// Only read, even if you may write.
        #[arg(long)]
        read: bool,
    },
    /// Revoke one of your tokens by its id.
    Revoke { id: String },
}

pub(super) async fn token(a: TokenArgs) -> Result<(), ClientError> {
    let conn = Conn::new(&a.conn)?;
    match a.command {
        TokenCommand::List(list) => {
            let fields = list.fields(&["id", "rights", "expires", "last_used"]);
            let tokens = conn.get("/gantry/v1/tokens").await?;
            let rows: Vec<Vec<Value>> = tokens
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    fields
                        .iter()
                        .map(|f| match f.as_str() {
                            "created" | "expires" | "last_used" if !list.json => {
                                when(&t[f.as_str()])
                            }
                            other => t[other].clone(),
                        })
                        .collect()
                })
                .collect();
            output::print_rows(&list, &fields, &rows);
            Ok(())
        }
        TokenCommand::Create { ttl, read } => {
            let mut body = json!({});
            if let Some(t) = ttl {
                body["ttl"] = json!(t.max(1.0) as u64);
            }
            if read {
                body["rights"] = json!("read");
            }
            let made = conn
                .call(Method::POST, "/gantry/v1/tokens", Some(&body))
                .await?;
            println!("{}", output::text(&made["token"]));
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            conn.call(Method::DELETE, &format!("/gantry/v1/tokens/{id}"), None)
                .await?;
            Ok(())
        }
    }
}
