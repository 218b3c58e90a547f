//! TLS for RAPI: the admin's certificate, or a self-signed one generated once into the data dir.

use std::path::Path;
use std::sync::Arc;

pub fn load_or_create(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => {
            let c = data_dir.join("rapi.pem");
            let k = data_dir.join("rapi.key");
            if !c.exists() || !k.exists() {
                let generated = rcgen::generate_simple_self_signed(vec![
                    "localhost".into(),
                    "127.0.0.1".into(),
                ])
                .map_err(|e| format!("cannot generate a certificate: {e}"))?;
                std::fs::write(&c, generated.cert.pem()).map_err(|e| e.to_string())?;
                std::fs::write(&k, generated.signing_key.serialize_pem())
                    .map_err(|e| e.to_string())?;
                tracing::info!(path = %c.display(), "generated a self-signed certificate");
            }
            (c, k)
        }
        _ => return Err("--ssl-cert and --ssl-key go together".into()),
    };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&cert_path).map_err(|e| format!("{}: {e}", cert_path.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?,
    ))
    .map_err(|e| format!("{}: {e}", key_path.display()))?
    .ok_or_else(|| format!("{}: no private key found", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("bad certificate or key: {e}"))?;
    Ok(Arc::new(config))
}
