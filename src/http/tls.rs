//! TLS: the admin's certificate, or a self-signed one generated once into the data dir; and the
//! cluster credentials node agents share with the master (like Ganeti's `server.pem`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

fn generate_self_signed(cert: &Path, key: &Path) -> Result<(), String> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    std::fs::write(cert, generated.cert.pem()).map_err(|e| e.to_string())?;
    crate::util::write_private(key, generated.signing_key.serialize_pem())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    tracing::info!(path = %cert.display(), "generated a self-signed certificate");
    Ok(())
}

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
                generate_self_signed(&c, &k)?;
            }
            (c, k)
        }
        _ => return Err("--ssl-cert and --ssl-key go together".into()),
    };
    server_config(&cert_path, &key_path)
}

/// The DER of the certificate `load_or_create` serves (other masters pin it).
pub fn served_certificate(cert: Option<&Path>, data_dir: &Path) -> Result<Vec<u8>, String> {
    let path = cert.map_or_else(|| data_dir.join("rapi.pem"), Path::to_path_buf);
    read_certs(&path)?
        .into_iter()
        .next()
        .map(|c| c.to_vec())
        .ok_or_else(|| format!("{}: no certificate", path.display()))
}

fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("{}: {e}", path.display()))
}

pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = read_certs(cert_path)?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key_path).map_err(|e| format!("{}: {e}", key_path.display()))?,
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

/// What the master and its node agents share: a certificate the agents serve (the master
/// accepts no other) and a secret every master request carries.
pub struct ClusterCredentials {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_der: Vec<u8>,
    pub secret: String,
}

pub const CLUSTER_FILES: [&str; 3] = ["cluster.pem", "cluster.key", "cluster.secret"];

/// Loads the cluster credentials from `dir`; `create` makes them first if they are missing
/// (the master does; an agent must be given the master's copies).
pub fn cluster_credentials(dir: &Path, create: bool) -> Result<ClusterCredentials, String> {
    let [cert, key, secret] = CLUSTER_FILES.map(|f| dir.join(f));
    if create && !(cert.exists() && key.exists() && secret.exists()) {
        generate_self_signed(&cert, &key)?;
        let random: String = crate::util::random_bytes::<32>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        crate::util::write_private(&secret, random)
            .map_err(|e| format!("{}: {e}", secret.display()))?;
    }
    let der = read_certs(&cert)?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{}: no certificate", cert.display()))?
        .to_vec();
    let secret_text = std::fs::read_to_string(&secret)
        .map_err(|e| format!("{}: {e}", secret.display()))?
        .trim()
        .to_string();
    if secret_text.len() < 16 {
        return Err(format!(
            "{}: the cluster secret is too short",
            secret.display()
        ));
    }
    Ok(ClusterCredentials {
        cert,
        key,
        cert_der: der,
        secret: secret_text,
    })
}

/// The certificate a pinned client accepts: exactly one (the cluster's, or one an admin trusted
/// on first use), or, to learn it, whichever the server presents (recorded for the caller).
#[derive(Debug)]
enum Pin {
    Exactly(Vec<u8>),
    Learn(SeenCertificate),
}

/// Where a learning client leaves the certificate (DER) it was shown.
pub type SeenCertificate = Arc<std::sync::Mutex<Option<Vec<u8>>>>;

#[derive(Debug)]
struct PinnedCertificate {
    pin: Pin,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match &self.pin {
            Pin::Exactly(der) if end_entity.as_ref() == der.as_slice() => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Pin::Exactly(_) => Err(rustls::Error::General(
                "the server does not present the pinned certificate".into(),
            )),
            Pin::Learn(seen) => {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(end_entity.to_vec());
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration that trusts exactly one certificate (the cluster's), no CA involved.
pub fn pinned_client_config(cert_der: &[u8]) -> Result<rustls::ClientConfig, String> {
    client_config(Pin::Exactly(cert_der.to_vec()))
}

/// A client configuration that accepts any certificate and records the one it saw (trust on
/// first use: the caller shows its fingerprint and pins it from then on).
pub fn learning_client_config() -> Result<(rustls::ClientConfig, SeenCertificate), String> {
    let seen = Arc::new(std::sync::Mutex::new(None));
    Ok((client_config(Pin::Learn(seen.clone()))?, seen))
}

/// `SHA256:ab:cd:...`, as a certificate's fingerprint is shown to people.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    let hex: Vec<String> = sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("SHA256:{}", hex.join(":"))
}

fn client_config(pin: Pin) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedCertificate {
        pin,
        provider: provider.clone(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}
