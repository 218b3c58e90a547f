//! Idempotency keys (`Idempotency-Key` header): a client's key for one request, remembered with
//! the job it created in the same store transaction as the job, so a retry after a lost answer
//! (even across a crash) gets the same job instead of a second one.

use serde::{Deserialize, Serialize};

/// A key as a request presents it: per user, with a digest of what was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Idempotency {
    pub user: String,
    pub key: String,
    /// Digest of method, path, query, user and body: the same key with another request is
    /// refused rather than answered with the first request's job.
    pub digest: String,
}

impl Idempotency {
    /// The record's key in the store: user and key, which may hold any visible character.
    pub fn store_key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.user.len() + 1 + self.key.len());
        k.extend_from_slice(self.user.as_bytes());
        k.push(0);
        k.extend_from_slice(self.key.as_bytes());
        k
    }
}

/// What is remembered of a keyed submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub job: u64,
    pub digest: String,
    /// Seconds since the epoch; the record expires `ttl` after it.
    pub created: u64,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
