//! `gantry node`: the node agent. It runs the QEMU backend for its own host and serves every
//! backend call to the master over HTTPS: the agent presents the cluster certificate and accepts
//! only requests carrying the cluster secret (both copied from the master's data dir).

use crate::backends::qemu::{QemuBackend, QemuSettings};
use crate::backends::remote::AgentReply;
use crate::backends::{Backend, BackendError, FailureKind, NodeSpec, RebootKind, VmSpec};
use crate::rapi::{ServerOptions, serve_filter, tls};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use warp::Filter;

pub struct AgentOptions {
    pub listen: String,
    pub cluster_dir: PathBuf,
    pub qemu: QemuSettings,
}

#[derive(Deserialize)]
struct Named {
    node: String,
    name: String,
}

fn arg<T: DeserializeOwned>(args: &Value) -> Result<T, BackendError> {
    serde_json::from_value(args.clone())
        .map_err(|e| BackendError::failed(format!("bad agent request: {e}")))
}

fn to_value<T: serde::Serialize>(result: Result<T, BackendError>) -> Result<Value, BackendError> {
    result.map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
}

/// Runs one backend call named by the URL.
async fn dispatch(backend: &QemuBackend, op: &str, args: Value) -> Result<Value, BackendError> {
    let node = || args["node"].as_str().unwrap_or_default().to_string();
    match op {
        "node_info" => to_value(backend.node_info(&node()).await),
        "create_disks" => {
            let vm: VmSpec = arg(&args["vm"])?;
            to_value(backend.create_disks(&node(), &vm).await)
        }
        "install_os" => {
            let vm: VmSpec = arg(&args["vm"])?;
            to_value(backend.install_os(&node(), &vm).await)
        }
        "start" => {
            let vm: VmSpec = arg(&args["vm"])?;
            to_value(backend.start(&node(), &vm).await)
        }
        "remove_disks" => {
            let a: Named = arg(&args)?;
            to_value(backend.remove_disks(&a.node, &a.name).await)
        }
        "grow_disk" => {
            let a: Named = arg(&args)?;
            let index = args["index"].as_u64().unwrap_or(0) as usize;
            let size = args["new_size"].as_u64().unwrap_or(0);
            to_value(backend.grow_disk(&a.node, &a.name, index, size).await)
        }
        "stop" => {
            let a: Named = arg(&args)?;
            let timeout = args["timeout_s"].as_u64().unwrap_or(0);
            to_value(backend.stop(&a.node, &a.name, timeout).await)
        }
        "reboot" => {
            let a: Named = arg(&args)?;
            let kind: RebootKind = arg(&args["kind"])?;
            to_value(backend.reboot(&a.node, &a.name, kind).await)
        }
        "instance_state" => {
            let a: Named = arg(&args)?;
            to_value(backend.instance_state(&a.node, &a.name).await)
        }
        "migrate" => {
            let live = args["live"].as_bool().unwrap_or(true);
            let (src, dst, name) = (
                args["src"].as_str().unwrap_or_default(),
                args["dst"].as_str().unwrap_or_default(),
                args["name"].as_str().unwrap_or_default(),
            );
            to_value(backend.migrate(src, dst, name, live).await)
        }
        "rename" => {
            let (old, new) = (
                args["old"].as_str().unwrap_or_default(),
                args["new"].as_str().unwrap_or_default(),
            );
            to_value(backend.rename(&node(), old, new).await)
        }
        "console" => {
            let a: Named = arg(&args)?;
            Ok(backend
                .console(&a.node, &a.name)
                .await
                .unwrap_or(Value::Null))
        }
        "powercycle" => to_value(backend.powercycle(&node()).await),
        "delay" => {
            let seconds = args["seconds"].as_f64().unwrap_or(0.0);
            to_value(backend.delay(&node(), seconds).await)
        }
        "verify_os_params" => {
            let os_type = args["os_type"].as_str().unwrap_or_default();
            let params: std::collections::BTreeMap<String, String> = arg(&args["params"])?;
            to_value(backend.verify_os_params(&node(), os_type, &params).await)
        }
        "export_instance" => {
            let vm: VmSpec = arg(&args["vm"])?;
            to_value(backend.export_instance(&node(), &vm).await)
        }
        "import_instance" => {
            let vm: VmSpec = arg(&args["vm"])?;
            let source = args["source"].as_str().unwrap_or_default();
            to_value(backend.import_instance(&node(), &vm, source).await)
        }
        "remove_export" => {
            let a: Named = arg(&args)?;
            to_value(backend.remove_export(&a.node, &a.name).await)
        }
        "add_node" => {
            let spec: NodeSpec = arg(&args["node"])?;
            to_value(backend.add_node(spec).await)
        }
        "running_config" => {
            let a: Named = arg(&args)?;
            to_value(backend.running_config(&a.node, &a.name).await)
        }
        "prepare_incoming" => {
            let a: Named = arg(&args)?;
            to_value(
                backend
                    .prepare_incoming(&a.node, &a.name, args["config"].clone())
                    .await,
            )
        }
        "send_migration" => {
            let a: Named = arg(&args)?;
            let uri = args["uri"].as_str().unwrap_or_default();
            let live = args["live"].as_bool().unwrap_or(true);
            to_value(backend.send_migration(&a.node, &a.name, uri, live).await)
        }
        "finish_incoming" => {
            let a: Named = arg(&args)?;
            let success = args["success"].as_bool().unwrap_or(false);
            to_value(backend.finish_incoming(&a.node, &a.name, success).await)
        }
        other => Err(BackendError::failed(format!(
            "unknown agent call '{other}'"
        ))),
    }
}

fn reply(status: u16, body: AgentReply) -> warp::reply::Response {
    use warp::Reply;
    let mut response = warp::reply::json(&body).into_response();
    *response.status_mut() = warp::http::StatusCode::from_u16(status).unwrap_or_default();
    response
}

/// Serves until SIGTERM/SIGINT.
pub async fn run(
    opts: AgentOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let creds = tls::cluster_credentials(&opts.cluster_dir, false).map_err(|e| {
        format!("{e} (copy cluster.pem, cluster.key and cluster.secret from the master's data dir)")
    })?;
    let tls_config = tls::server_config(&creds.cert, &creds.key)?;
    let backend = Arc::new(QemuBackend::new(opts.qemu));
    backend.adopt(vec![], vec![]).await;
    let secret = Arc::new(format!("Bearer {}", creds.secret));
    let routes = warp::post()
        .and(warp::path!("agent" / "v1" / String))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(1 << 20))
        .and(warp::body::json())
        .then(move |op: String, auth: Option<String>, args: Value| {
            let (backend, secret) = (backend.clone(), secret.clone());
            async move {
                let given = auth.unwrap_or_default();
                if !crate::rapi::auth::constant_time_eq(given.as_bytes(), secret.as_bytes()) {
                    return reply(
                        401,
                        AgentReply::Error(BackendError {
                            kind: FailureKind::NodeUnreachable,
                            message: "the node agent refused the cluster secret".into(),
                        }),
                    );
                }
                match dispatch(&backend, &op, args).await {
                    Ok(value) => reply(200, AgentReply::Ok(value)),
                    Err(e) => reply(200, AgentReply::Error(e)),
                }
            }
        });
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| format!("{}: {e}", opts.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("gantry node listening on https://{local}");
    let server = ServerOptions {
        header_timeout: Duration::from_secs(30),
        max_connections: 256,
        tls: Some(tls_config),
    };
    serve_filter(listener, routes, server, shutdown).await;
    Ok(())
}
