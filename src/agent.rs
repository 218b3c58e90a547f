//! `gantry agent`: the node agent. It runs the QEMU backend for its own host and serves every
//! backend call to the master over HTTPS: the agent presents the cluster certificate and accepts
//! only requests signed with the cluster secret, fresh and never seen before (both copied from
//! the master's data dir; see `backends::protocol::auth`).

use crate::backends::protocol::{AgentCall, AgentReply, auth};
use crate::backends::qemu::{QemuBackend, QemuSettings};
use crate::backends::{Backend, BackendError, FailureKind};
use crate::http::{ServerOptions, serve_filter, tls};
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

fn to_value<T: serde::Serialize>(result: Result<T, BackendError>) -> Result<Value, BackendError> {
    result.map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
}

/// Runs one backend call. Exhaustive over the protocol: a call the agent cannot serve does not
/// compile.
async fn dispatch(backend: &QemuBackend, call: AgentCall) -> Result<Value, BackendError> {
    use AgentCall::*;
    match call {
        NodeInfo { node } => to_value(backend.node_info(&node).await),
        AddNode { spec } => to_value(backend.add_node(spec).await),
        CreateDisks { node, vm } => to_value(backend.create_disks(&node, &vm).await),
        RemoveDisks { node, name } => to_value(backend.remove_disks(&node, &name).await),
        GrowDisk {
            node,
            name,
            index,
            new_size,
        } => to_value(backend.grow_disk(&node, &name, index, new_size).await),
        InstallOs { node, vm } => to_value(backend.install_os(&node, &vm).await),
        Start { node, vm } => to_value(backend.start(&node, &vm).await),
        Stop {
            node,
            name,
            timeout_s,
        } => to_value(backend.stop(&node, &name, timeout_s).await),
        Reboot { node, name, kind } => to_value(backend.reboot(&node, &name, kind).await),
        InstanceState { node, name } => to_value(backend.instance_state(&node, &name).await),
        Migrate {
            src,
            dst,
            name,
            live,
        } => to_value(backend.migrate(&src, &dst, &name, live).await),
        Rename { node, old, new } => to_value(backend.rename(&node, &old, &new).await),
        Console { node, name } => Ok(backend.console(&node, &name).await.unwrap_or(Value::Null)),
        Powercycle { node } => to_value(backend.powercycle(&node).await),
        Delay { node, seconds } => to_value(backend.delay(&node, seconds).await),
        VerifyOsParams {
            node,
            os_type,
            params,
        } => to_value(backend.verify_os_params(&node, &os_type, &params).await),
        ExportInstance { node, vm } => to_value(backend.export_instance(&node, &vm).await),
        ImportInstance { node, vm, source } => {
            to_value(backend.import_instance(&node, &vm, &source).await)
        }
        ListExports { node } => to_value(backend.list_exports(&node).await),
        RemoveExport { node, name } => to_value(backend.remove_export(&node, &name).await),
        RunningConfig { node, name } => to_value(backend.running_config(&node, &name).await),
        PrepareIncoming { node, name, config } => {
            to_value(backend.prepare_incoming(&node, &name, config).await)
        }
        SendMigration {
            node,
            name,
            uri,
            live,
        } => to_value(backend.send_migration(&node, &name, &uri, live).await),
        FinishIncoming {
            node,
            name,
            success,
        } => to_value(backend.finish_incoming(&node, &name, success).await),
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
    let secret = Arc::new(creds.secret);
    let verifier = Arc::new(auth::Verifier::default());
    let routes = warp::post()
        .and(warp::path!("agent" / "v2" / "call"))
        .and(warp::header::headers_cloned())
        .and(warp::body::content_length_limit(1 << 20))
        .and(warp::body::bytes())
        .then(move |headers: warp::http::HeaderMap, body: bytes::Bytes| {
            let (backend, secret, verifier) = (backend.clone(), secret.clone(), verifier.clone());
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                let checked = verifier.verify(
                    &secret,
                    header(auth::TIMESTAMP),
                    header(auth::NONCE),
                    header(auth::SIGNATURE),
                    &body,
                );
                if let Err(why) = checked {
                    return reply(
                        401,
                        AgentReply::Error(BackendError {
                            kind: FailureKind::NodeUnreachable,
                            message: format!("the node agent refused the cluster secret ({why})"),
                        }),
                    );
                }
                let call: AgentCall = match serde_json::from_slice(&body) {
                    Ok(call) => call,
                    Err(e) => {
                        let e = BackendError::failed(format!("bad agent request: {e}"));
                        return reply(400, AgentReply::Error(e));
                    }
                };
                match dispatch(&backend, call).await {
                    Ok(value) => reply(200, AgentReply::Ok(value)),
                    Err(e) => reply(200, AgentReply::Error(e)),
                }
            }
        });
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| format!("{}: {e}", opts.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("gantry agent listening on https://{local}");
    let server = ServerOptions {
        header_timeout: Duration::from_secs(30),
        handshake_timeout: Duration::from_secs(5),
        max_connections: 256,
        // The master opens several at once; strangers are capped per address.
        max_per_ip: 128,
        tls: Some(tls_config),
    };
    serve_filter(listener, routes, server, shutdown).await;
    Ok(())
}
