//! The RAPI users file and HTTP basic authentication (Ganeti's format: `user password [options]`,
//! passwords `{cleartext}` or `{HA1}` md5 of `user:Ganeti Remote API:password`).

use md5::{Digest, Md5};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub const REALM: &str = "Ganeti Remote API";

#[derive(Debug, Clone, PartialEq)]
enum Secret {
    Cleartext(String),
    Ha1(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// The HA1 digest the password must produce, computed once when the file is read (None:
    /// an `{HA1}` value that is not 32 hex digits, which no password matches).
    digest: Option<[u8; 16]>,
    pub options: Vec<String>,
    /// The password is in the file in clear text (not `{HA1}`).
    pub cleartext: bool,
}

impl User {
    pub fn can_write(&self) -> bool {
        self.options.iter().any(|o| o == "write")
    }

    pub fn can_read(&self) -> bool {
        self.can_write() || self.options.iter().any(|o| o == "read")
    }
}

/// MD5 of `user:Ganeti Remote API:password`, as bytes.
fn ha1_digest(user: &str, password: &str) -> [u8; 16] {
    let input = format!("{user}:{REALM}:{password}");
    #[cfg(test)]
    tests::HASHED.with(|n| n.set(n.get() + input.len()));
    Md5::digest(input.as_bytes()).into()
}

/// The `{HA1}` form of a password, in hex (`gantry users hash`).
pub fn ha1(user: &str, password: &str) -> String {
    use std::fmt::Write;
    ha1_digest(user, password)
        .iter()
        .fold(String::with_capacity(32), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// What a users-file secret says the digest must be.
fn expected_digest(user: &str, secret: &Secret) -> Option<[u8; 16]> {
    match secret {
        Secret::Cleartext(p) => Some(ha1_digest(user, p)),
        Secret::Ha1(h) if h.len() == 32 => {
            let mut out = [0u8; 16];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some(out)
        }
        Secret::Ha1(_) => None,
    }
}

/// Parses a users file; broken lines are logged with their number and skipped. A second line
/// for the same user and an empty password are refused too (first line wins), so a typo never
/// silently changes who may log in.
pub fn parse_users(text: &str) -> HashMap<String, User> {
    let mut users = HashMap::new();
    // Editors on some systems start files with a byte-order mark; it is not part of a name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (no, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 2 || parts.len() > 3 {
            tracing::warn!(line = no + 1, "users file: malformed line skipped");
            continue;
        }
        let secret = parse_secret(parts[1]);
        if matches!(&secret, Secret::Cleartext(p) | Secret::Ha1(p) if p.is_empty()) {
            tracing::warn!(
                line = no + 1,
                user = parts[0],
                "users file: empty password, line skipped"
            );
            continue;
        }
        if users.contains_key(parts[0]) {
            tracing::warn!(
                line = no + 1,
                user = parts[0],
                "users file: user listed twice, line skipped"
            );
            continue;
        }
        let options = parts
            .get(2)
            .map(|o| {
                o.split(',')
                    .map(|s| s.trim().to_lowercase())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let digest = expected_digest(parts[0], &secret);
        let cleartext = matches!(secret, Secret::Cleartext(_));
        users.insert(
            parts[0].to_string(),
            User {
                digest,
                options,
                cleartext,
            },
        );
    }
    users
}

fn parse_secret(text: &str) -> Secret {
    if let Some(rest) = text.strip_prefix('{')
        && let Some((scheme, value)) = rest.split_once('}')
    {
        match scheme.to_ascii_lowercase().as_str() {
            "ha1" => return Secret::Ha1(value.to_ascii_lowercase()),
            "cleartext" => return Secret::Cleartext(value.to_string()),
            _ => {}
        }
    }
    Secret::Cleartext(text.to_string())
}

/// The users file, re-read when it changes (polled: editors that replace the file are covered).
#[derive(Clone)]
pub struct UserDb {
    users: Arc<RwLock<HashMap<String, User>>>,
}

impl UserDb {
    pub fn load(path: Option<PathBuf>) -> UserDb {
        let db = UserDb {
            users: Arc::new(RwLock::new(HashMap::new())),
        };
        if let Some(path) = path {
            db.reload(&path);
            let watcher = db.clone();
            tokio::spawn(async move { watcher.watch(path).await });
        }
        db
    }

    fn reload(&self, path: &Path) {
        let users = match std::fs::read_to_string(path) {
            Ok(text) => parse_users(&text),
            Err(e) => {
                tracing::warn!(path = %path.display(), "users file unreadable ({e}): no users");
                HashMap::new()
            }
        };
        tracing::info!(users = users.len(), "loaded users file");
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = users;
    }

    async fn watch(self, path: PathBuf) {
        // The content itself, not only size and mtime: `cp -p`, `rsync -t` or `mv` of a prepared
        // file can replace it with one of the same size and time.
        let stamp = |p: &Path| std::fs::read(p).ok().map(|bytes| Md5::digest(&bytes));
        let mut last = stamp(&path);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = stamp(&path);
            if now != last {
                last = now;
                self.reload(&path);
            }
        }
    }

    /// Users who may write and whose password is in the file in clear text.
    pub fn cleartext_writers(&self) -> Vec<String> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = users
            .iter()
            .filter(|(_, u)| u.cleartext && u.can_write())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    /// The user of that name as the users file has it now (tokens check their user at each use).
    pub fn get(&self, name: &str) -> Option<User> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        users.get(name).cloned()
    }

    /// The user, if the name exists and the password matches. An unknown name costs the same
    /// work as a known one (one hash of the given password, one constant-time compare), so
    /// timing does not tell which names exist.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<User> {
        let users = self.users.read().unwrap_or_else(|e| e.into_inner());
        let user = users.get(name);
        let matches = verify(user.and_then(|u| u.digest), name, password);
        user.filter(|_| matches).cloned()
    }
}

/// The one way a password is checked: the given password is hashed exactly once whatever the
/// stored form (or none), and compared in constant time.
fn verify(expected: Option<[u8; 16]>, name: &str, password: &str) -> bool {
    use subtle::ConstantTimeEq;
    let given = ha1_digest(name, password);
    let same: bool = expected.unwrap_or([0; 16]).ct_eq(&given).into();
    same && expected.is_some()
}

/// Decodes `Authorization: Basic …` into (user, password).
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    use base64::Engine;
    let (scheme, value) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Bytes hashed by `ha1` on this thread.
        pub static HASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[tokio::test]
    async fn unknown_users_cost_the_same_hashing_as_known_ones() {
        let db = UserDb::load(None);
        *db.users.write().unwrap() = parse_users("plain secret write\nhashed {HA1}00 write\n");
        let long = "p".repeat(60_000);
        let cost = |name: &str| {
            let before = HASHED.with(|n| n.get());
            assert!(db.authenticate(name, &long).is_none());
            HASHED.with(|n| n.get()) - before
        };
        let (plain, hashed, unknown) = (cost("plain"), cost("hashed"), cost("nobody"));
        assert!(
            unknown >= 60_000,
            "an unknown user's password is hashed too ({unknown})"
        );
        for known in [plain, hashed] {
            assert!(
                known.abs_diff(unknown) < 100,
                "{known} vs {unknown} bytes hashed"
            );
        }
    }

    #[test]
    fn parses_every_form() {
        let text = format!(
            "# comment\nalice {{CLEARTEXT}}secret write\nbob {{ha1}}{} read\ncarol plain\nbroken\n",
            ha1("bob", "pw").to_uppercase()
        );
        let users = parse_users(&text);
        assert_eq!(users.len(), 3);
        assert!(users["alice"].can_write());
        assert!(users["bob"].can_read() && !users["bob"].can_write());
        assert!(!users["carol"].can_read());
        let db = UserDb {
            users: Arc::new(RwLock::new(users)),
        };
        assert!(db.authenticate("alice", "secret").is_some());
        assert!(db.authenticate("alice", "Secret").is_none());
        assert!(db.authenticate("bob", "pw").is_some());
        assert!(db.authenticate("carol", "plain").is_some());
        assert!(db.authenticate("dave", "x").is_none());
    }

    #[test]
    fn ha1_matches_ganeti() {
        // md5("jack:Ganeti Remote API:abc123")
        assert_eq!(ha1("jack", "abc123").len(), 32);
        assert_eq!(
            basic_credentials("Basic YTpiOmM="),
            Some(("a".into(), "b:c".into()))
        );
    }
}
