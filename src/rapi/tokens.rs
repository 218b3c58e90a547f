//! API tokens (issue 17): a user of the users file issues tokens for scripts, accepted as
//! `Authorization: Bearer`, `X-AUTH-TOKEN` (vmpooler's header) and `X-Api-Key` (PVC's). A token
//! is `gt_<id>_<secret>`; only the SHA-256 of the secret is stored, with its user, rights,
//! expiry and last use. At every use the token's rights are cut to what its user may do *now*:
//! a user removed from the users file takes their tokens along, a user who lost `write` has only
//! read tokens. Creating and revoking are not jobs: a job's result is readable by every reader
//! of `/2/jobs`, and the secret must be seen once, by its creator only.

use crate::{kv::Records, storage::StorageError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do, at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rights {
    Read,
    Write,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub user: String,
    pub rights: Rights,
    /// Seconds since the epoch.
    pub created: u64,
    pub expires: u64,
    /// Updated at most once a minute, so a busy token does not write on every request.
    pub last_used: Option<u64>,
    /// SHA-256 of the secret, hex.
    digest: String,
}

impl TokenRecord {
    /// The record as its owner sees it: everything but the digest.
    pub fn public(&self) -> serde_json::Value {
        serde_json::json!({"id": self.id, "user": self.user, "rights": self.rights,
            "created": self.created, "expires": self.expires, "last_used": self.last_used})
    }
}

/// Longest lifetime a token may ask for: a year.
pub const MAX_TTL: u64 = 365 * 24 * 3600;

fn now() -> u64 {
    crate::util::now_f64() as u64
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

#[derive(Clone)]
pub struct Tokens {
    records: Records,
}

impl Tokens {
    pub fn new(records: Records) -> Tokens {
        Tokens { records }
    }

    /// Issues a token; answers it (the only time its secret is shown) and its record. Durable
    /// when this answers.
    pub async fn create(
        &self,
        user: &str,
        rights: Rights,
        ttl: u64,
    ) -> Result<(String, TokenRecord), StorageError> {
        let id = hex(&crate::util::random_bytes::<6>());
        let secret = hex(&crate::util::random_bytes::<32>());
        let created = now();
        let record = TokenRecord {
            id: id.clone(),
            user: user.to_string(),
            rights,
            created,
            expires: created + ttl.min(MAX_TTL),
            last_used: None,
            digest: digest(&secret),
        };
        self.save(&record)?;
        self.records.durable().await?;
        Ok((format!("gt_{id}_{secret}"), record))
    }

    /// Issues a token for `user` of the users file, as `gantry users token create` asks: with
    /// `rights`, or the user's own when None, never more. Answers the token.
    pub async fn issue(
        &self,
        users: &crate::rapi::auth::UserDb,
        user: &str,
        rights: Option<Rights>,
        ttl: u64,
    ) -> Result<String, String> {
        let found = users
            .get(user)
            .ok_or_else(|| format!("no user '{user}' in the users file"))?;
        let rights = match rights {
            Some(Rights::Write) if !found.can_write() => {
                return Err(format!("{user} may not write: a token cannot either"));
            }
            Some(rights) => rights,
            None if found.can_write() => Rights::Write,
            None => Rights::Read,
        };
        let (token, record) = self
            .create(user, rights, ttl)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(user = %user, id = %record.id, "API token created");
        Ok(token)
    }

    fn save(&self, record: &TokenRecord) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(record).map_err(|e| StorageError::Flush(e.to_string()))?;
        self.records.put(&record.id, &bytes)
    }

    fn load(&self, id: &str) -> Option<TokenRecord> {
        let bytes = self.records.get(id).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// A user's tokens, expired ones included (they show why a script stopped working).
    pub fn list(&self, user: &str) -> Vec<TokenRecord> {
        let mut list: Vec<TokenRecord> = self
            .records
            .values()
            .unwrap_or_default()
            .iter()
            .filter_map(|b| serde_json::from_slice::<TokenRecord>(b).ok())
            .filter(|r| r.user == user)
            .collect();
        list.sort_by_key(|r| r.created);
        list
    }

    /// Revokes one of `user`'s tokens; false when they have none of that id.
    pub async fn revoke(&self, user: &str, id: &str) -> Result<bool, StorageError> {
        match self.load(id) {
            Some(record) if record.user == user => {
                self.records.remove(id)?;
                self.records.durable().await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The record of a valid, unexpired token. The secret is compared by digest in constant
    /// time; a malformed or unknown token costs the same digest.
    pub fn authenticate(&self, token: &str) -> Option<TokenRecord> {
        use subtle::ConstantTimeEq;
        let (id, secret) = token
            .strip_prefix("gt_")
            .and_then(|rest| rest.split_once('_'))
            .unwrap_or(("", token));
        let given = digest(secret);
        let mut record = self.load(id)?;
        let same: bool = record.digest.as_bytes().ct_eq(given.as_bytes()).into();
        let now = now();
        if !same || now >= record.expires {
            return None;
        }
        if record.last_used.is_none_or(|t| now >= t + 60) {
            record.last_used = Some(now);
            // Best effort: a failed write must not refuse a valid token.
            let _ = self.save(&record);
        }
        Some(record)
    }
}

/// The token a request carries, in any of the three headers.
pub fn presented(headers: &warp::http::HeaderMap) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(bearer) = text("authorization").and_then(|v| v.strip_prefix("Bearer ")) {
        return Some(bearer.trim().to_string());
    }
    text("x-auth-token")
        .or_else(|| text("x-api-key"))
        .map(|t| t.trim().to_string())
}

/// Default lifetime of a token created without `ttl`: 30 days.
pub const DEFAULT_TTL: u64 = 30 * 24 * 3600;

/// `/gantry/v1/tokens[/<id>]`: the caller's own tokens. Managed with the users file's password
/// only, so a token can neither mint others nor outlive its user through them.
pub async fn resource(
    state: &super::State,
    req: &super::request::Request,
    id: Option<&str>,
) -> Result<serde_json::Value, super::error::ApiError> {
    use super::error::ApiError;
    use serde_json::{Value, json};
    let caller = match &req.caller {
        Some(c) if !c.by_token => c,
        Some(_) => {
            return Err(ApiError::new(
                403,
                "API tokens are managed with the user's password, not with a token",
            ));
        }
        None => return Err(ApiError::plain(401)),
    };
    let storage = |e: StorageError| ApiError::new(500, format!("Cannot store the token: {e}"));
    let not_found = |id: &str| ApiError::not_found(format!("Token '{id}' not found"));
    match (req.method.as_str(), id) {
        ("GET", None) => Ok(Value::Array(
            state
                .tokens
                .list(&caller.user)
                .iter()
                .map(TokenRecord::public)
                .collect(),
        )),
        ("GET", Some(id)) => state
            .tokens
            .list(&caller.user)
            .iter()
            .find(|r| r.id == id)
            .map(TokenRecord::public)
            .ok_or_else(|| not_found(id)),
        ("POST", None) => {
            let body = req.body_object()?;
            let rights = match body.get("rights").and_then(Value::as_str) {
                None if caller.can_write => Rights::Write,
                None => Rights::Read,
                Some("write") if caller.can_write => Rights::Write,
                Some("write") => {
                    return Err(ApiError::new(
                        403,
                        "A token cannot have rights its user does not have (write)",
                    ));
                }
                Some("read") => Rights::Read,
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid rights '{other}': read or write"
                    )));
                }
            };
            let ttl = match body.get("ttl") {
                None => DEFAULT_TTL,
                Some(v) => v
                    .as_u64()
                    .filter(|t| (1..=MAX_TTL).contains(t))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("Invalid ttl: seconds from 1 to {MAX_TTL}"))
                    })?,
            };
            let (token, record) = state
                .tokens
                .create(&caller.user, rights, ttl)
                .await
                .map_err(storage)?;
            let mut answer = record.public();
            answer["token"] = json!(token);
            Ok(answer)
        }
        ("DELETE", Some(id)) => match state.tokens.revoke(&caller.user, id).await {
            Ok(true) => Ok(json!({"id": id, "revoked": true})),
            Ok(false) => Err(not_found(id)),
            Err(e) => Err(storage(e)),
        },
        (method, _) => Err(ApiError::unsupported(method)),
    }
}
