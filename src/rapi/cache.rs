//! Serialized answers that cannot change until something they depend on does: `/2/info` per
//! configuration snapshot, and `GET /2/jobs/N` of finished jobs (none of the fields it shows
//! changes after the final status; archiving is not among them). A hit skips building and
//! serializing the document.

use crate::cluster::model::Config;
use std::sync::{Arc, Mutex, MutexGuard};

/// Finished jobs' answers kept (a few KB each).
const JOBS: usize = 4096;

/// A serialized answer, shared by every request it serves.
type Body = bytes::Bytes;

pub struct Answers {
    /// The snapshot the answer was built from: a new configuration is a new `Arc`.
    info: Mutex<Option<(Arc<Config>, Body)>>,
    jobs: Mutex<lru::LruCache<u64, Body>>,
}

impl Default for Answers {
    fn default() -> Self {
        Answers {
            info: Mutex::new(None),
            jobs: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(JOBS).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Answers {
    /// `/2/info` for `cfg`, serialized once per configuration.
    pub fn info(&self, cfg: Arc<Config>) -> Body {
        if let Some((seen, bytes)) = &*lock(&self.info)
            && Arc::ptr_eq(seen, &cfg)
        {
            return bytes.clone();
        }
        let bytes =
            Body::from(serde_json::to_vec(&crate::views::cluster_info(&cfg)).unwrap_or_default());
        *lock(&self.info) = Some((cfg, bytes.clone()));
        bytes
    }

    pub fn job(&self, id: u64) -> Option<Body> {
        lock(&self.jobs).get(&id).cloned()
    }

    /// Keeps a finished job's answer.
    pub fn finished_job(&self, id: u64, bytes: Body) {
        lock(&self.jobs).put(id, bytes);
    }
}
