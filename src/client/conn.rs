//! The connection to a RAPI server (gantry or Ganeti): where, who, which certificate to trust,
//! and the calls. Only HTTP: the client never opens a data dir.

use super::ClientError;
use serde_json::Value;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// The RAPI server's base URL [default: the one saved by `gantry login`, else
    /// https://127.0.0.1:5080].
    #[arg(long, env = "GANTRY_URL", global = true)]
    pub url: Option<String>,
    /// User name (a users-file entry with `write` for changes) [default: the login's, else
    /// the ~/.netrc entry for the server's host].
    #[arg(long, env = "GANTRY_USER", global = true)]
    pub user: Option<String>,
    /// Password [default: ~/.netrc's for that user, else asked for on a terminal].
    #[arg(long, env = "GANTRY_PASSWORD", hide_env_values = true, global = true)]
    pub password: Option<String>,
    /// Trust this CA or self-signed certificate (PEM), e.g. a gantry data dir's `rapi.pem`.
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Do not check the server's certificate at all.
    #[arg(long, global = true)]
    pub insecure: bool,
}

pub struct Conn {
    base: String,
    auth: Option<(String, String)>,
    http: reqwest::Client,
}

impl Conn {
    pub fn new(args: &ConnArgs) -> Result<Conn, ClientError> {
        let saved = super::login::load();
        let url = args
            .url
            .clone()
            .or_else(|| saved.as_ref().map(|s| s.url.clone()))
            .unwrap_or_else(|| "https://127.0.0.1:5080".into());
        let url = url.trim_end_matches('/').to_string();
        // The login's certificate, for the server it was saved for.
        let saved = saved.filter(|s| s.url == url);
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(120));
        let pinned = saved.as_ref().and_then(|s| s.certificate_der());
        if let Some(der) = pinned.filter(|_| !args.insecure && args.ca_cert.is_none()) {
            let tls = crate::http::tls::pinned_client_config(&der).map_err(ClientError::Connect)?;
            builder = builder.use_preconfigured_tls(tls);
        }
        if args.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let netrc = netrc_entry(&url);
        let user = args
            .user
            .clone()
            .or_else(|| saved.as_ref().and_then(|s| s.user.clone()))
            .or_else(|| netrc.as_ref().map(|(login, _)| login.clone()));
        // The netrc password only for the netrc login.
        let password = args.password.clone().or_else(|| {
            netrc
                .filter(|(login, _)| Some(login) == user.as_ref())
                .map(|(_, password)| password)
        });
        let auth = match (&user, &password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (Some(u), None) => {
                let p = rpassword::prompt_password(format!("Password for {u}: "))
                    .map_err(|e| ClientError::Usage(format!("no password for {u}: {e}")))?;
                Some((u.clone(), p))
            }
            (None, _) => None,
        };
        Ok(Conn {
            base: url,
            auth,
            http,
        })
    }

    /// Whether the server is this host (its console commands can run here).
    pub fn is_local(&self) -> bool {
        reqwest::Url::parse(&self.base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .is_some_and(|h| h == "localhost" || h == "127.0.0.1" || h == "[::1]")
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// One request; RAPI errors become `ClientError::Api` with the server's message.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some((u, p)) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let answer = req
            .send()
            .await
            .map_err(|e| ClientError::Connect(format!("{}: {}", self.base, cause_with_hint(&e))))?;
        let status = answer.status();
        let text = answer
            .text()
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(value);
        }
        // RAPI servers say no more than the status for these two; say what to do.
        let message = match status.as_u16() {
            401 => "wrong user name or password, or none given (--user, GANTRY_USER)".into(),
            403 => "this user may not do that (changes need a `write` user)".into(),
            _ => value
                .get("message")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").into()),
        };
        Err(ClientError::Api(status.as_u16(), message))
    }
}

/// The `machine` entry of `~/.netrc` (or `$NETRC`) for the URL's host, else its `default`.
fn netrc_entry(url: &str) -> Option<(String, String)> {
    let host = reqwest::Url::parse(url).ok()?.host_str()?.to_string();
    let rc = netrc::Netrc::new().ok()?;
    let entry = rc.hosts.get(&host).or_else(|| rc.hosts.get("default"))?;
    Some((entry.login.clone(), entry.password.clone()))
}

/// The innermost cause, with what to do about a certificate the client does not trust.
pub fn cause_with_hint(e: &(dyn std::error::Error + 'static)) -> String {
    let text = crate::util::root_cause(e);
    if text.contains("pinned certificate") {
        format!(
            "{text}: its certificate changed since `gantry login`; if that is expected, run \
             `gantry login URL` again"
        )
    } else if text.contains("UnknownIssuer") || text.contains("certificate") {
        format!("{text} (trust the server with `gantry login URL`, --ca-cert FILE, or --insecure)")
    } else {
        text
    }
}
