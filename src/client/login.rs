//! `gantry login URL`: remembers a server, its user, and its certificate, trusted on first use
//! as ssh trusts a host key: the fingerprint is shown, confirmed, and pinned from then on. The
//! file is private to its owner (0600) and never holds a password.

use super::ClientError;
use crate::http::tls;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub url: String,
    pub user: Option<String>,
    /// The server certificate (DER, base64) when the URL is https.
    pub certificate: Option<String>,
    pub fingerprint: Option<String>,
}

impl Saved {
    pub fn certificate_der(&self) -> Option<Vec<u8>> {
        let text = self.certificate.as_ref()?;
        base64::engine::general_purpose::STANDARD.decode(text).ok()
    }
}

/// `$GANTRY_CONFIG`, else `$XDG_CONFIG_HOME/gantry/config.json`, else `~/.config/gantry/...`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GANTRY_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("gantry").join("config.json"))
}

pub fn load() -> Option<Saved> {
    let text = std::fs::read(config_path()?).ok()?;
    serde_json::from_slice(&text).ok()
}

fn save(saved: &Saved) -> Result<PathBuf, ClientError> {
    let path = config_path()
        .ok_or_else(|| ClientError::Usage("no HOME: set GANTRY_CONFIG to a file path".into()))?;
    let fail = |e: std::io::Error| ClientError::Usage(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        crate::util::create_private_dir(dir).map_err(fail)?;
    }
    let text = serde_json::to_vec_pretty(saved).map_err(|e| ClientError::Usage(e.to_string()))?;
    crate::util::write_private(&path, text).map_err(fail)?;
    Ok(path)
}

/// Connects once, accepting whatever certificate the server shows, and asks the user to
/// trust it (`yes` answers for scripts).
pub async fn login(url: &str, user: Option<String>, yes: bool) -> Result<(), ClientError> {
    let url = url.trim_end_matches('/').to_string();
    let (certificate, fingerprint) = if url.starts_with("https://") {
        let (config, seen) = tls::learning_client_config().map_err(ClientError::Connect)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        http.get(format!("{url}/version"))
            .send()
            .await
            .map_err(|e| {
                ClientError::Connect(format!("{url}: {}", super::conn::cause_with_hint(&e)))
            })?;
        let der = seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| ClientError::Connect(format!("{url}: no certificate seen")))?;
        let print = tls::fingerprint(&der);
        let previous = load().filter(|s| s.url == url).and_then(|s| s.fingerprint);
        match previous {
            Some(p) if p == print => {
                println!("The certificate of {url} is the one trusted before: {print}")
            }
            Some(p) => println!(
                "WARNING: the certificate of {url} CHANGED.\n  trusted before: {p}\n  presented now: {print}"
            ),
            None => println!("The certificate of {url} has the fingerprint\n  {print}"),
        }
        if !yes && !confirm("Trust it from now on? [y/N] ")? {
            return Err(ClientError::Usage("not trusted; nothing saved".into()));
        }
        (
            Some(base64::engine::general_purpose::STANDARD.encode(&der)),
            Some(print),
        )
    } else {
        (None, None)
    };
    let path = save(&Saved {
        url: url.clone(),
        user,
        certificate,
        fingerprint,
    })?;
    println!("Saved {url} in {}", path.display());
    Ok(())
}

fn confirm(question: &str) -> Result<bool, ClientError> {
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(
            "not a terminal: compare the fingerprint and run again with --yes".into(),
        ));
    }
    print!("{question}");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| ClientError::Usage(e.to_string()))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
