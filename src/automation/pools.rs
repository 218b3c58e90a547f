//! The pool reconciler: keeps each pool at its ready size plus what waiting on-demand requests
//! still need, through ordinary create jobs, and hands ready members to those requests through
//! checkout jobs. What is in flight is read from the queue's unfinished jobs, so a restart
//! neither forgets a refill nor starts a second one.

use super::reason;
use crate::cluster::leases::{Pool, ready_members};
use crate::jobqueue::JobQueue;
use crate::jobqueue::job::{Job, JobId, Status};
use crate::metrics::{METRICS, PoolLabel};
use crate::opcodes::{OpCode, OpId};
use serde_json::{Map, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Refill jobs one pool may have in flight at once.
const MAX_REFILLS: usize = 4;
/// Pause after a failed refill, doubled per failure in a row up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct PoolEngine {
    queue: JobQueue,
    /// Refills submitted by this process → (pool, submitted at), for the refill-time metric.
    refills: HashMap<JobId, (String, Instant)>,
    /// Pool → (no refill before, failures in a row).
    backoff: HashMap<String, (Instant, u32)>,
    quiet: super::Quiet,
}

/// What an unfinished job does for a pool.
enum InFlight {
    Refill(String),
    Grant(String, String),
}

fn source(pool: &str) -> String {
    crate::cluster::leases::pool_tag(pool)
}

fn in_flight(job: &Job) -> Option<InFlight> {
    let op = &job.ops.first()?.input;
    let pool = crate::cluster::leases::pool_in_reason(op.get("reason"))?;
    match op.id() {
        OpId::InstanceCreate => Some(InFlight::Refill(pool)),
        OpId::GantryPoolCheckout => Some(InFlight::Grant(pool, op.str("request_id")?.into())),
        _ => None,
    }
}

impl PoolEngine {
    pub fn new(queue: JobQueue) -> PoolEngine {
        PoolEngine {
            queue,
            refills: HashMap::new(),
            backoff: HashMap::new(),
            quiet: super::Quiet::default(),
        }
    }

    /// Notes refills that ended: their time, and a pause for the pool after a failure.
    fn settle(&mut self) {
        let ended: Vec<(JobId, Status)> = self
            .refills
            .keys()
            .filter_map(|id| Some((*id, self.queue.job_status(*id)?)))
            .filter(|(_, s)| s.is_finalized())
            .collect();
        for (id, status) in ended {
            let Some((pool, since)) = self.refills.remove(&id) else {
                continue;
            };
            if status == Status::Success {
                METRICS
                    .pool_refill_seconds
                    .get_or_create(&PoolLabel { pool: pool.clone() })
                    .observe(since.elapsed().as_secs_f64());
                self.backoff.remove(&pool);
            } else {
                let failures = self.backoff.get(&pool).map_or(0, |b| b.1) + 1;
                let pause = (FIRST_BACKOFF * 2u32.saturating_pow(failures - 1)).min(MAX_BACKOFF);
                tracing::warn!(%pool, job = %id, ?pause, "pool refill failed; pausing refills");
                self.backoff
                    .insert(pool, (Instant::now() + pause, failures));
            }
        }
    }

    pub async fn tick(&mut self) {
        self.settle();
        let cfg = self.queue.cluster().snapshot();
        if cfg.pools.is_empty() {
            return;
        }
        let mut refilling: HashMap<String, usize> = HashMap::new();
        let mut granting: HashMap<(String, String), usize> = HashMap::new();
        for flight in self.queue.map_unfinished(in_flight).into_iter().flatten() {
            match flight {
                InFlight::Refill(p) => *refilling.entry(p).or_default() += 1,
                InFlight::Grant(p, r) => *granting.entry((p, r)).or_default() += 1,
            }
        }
        for pool in cfg.pools.values() {
            let ready: Vec<String> = ready_members(&cfg, &pool.name)
                .into_iter()
                .map(|i| i.name.clone())
                .collect();
            let promised: usize = granting
                .iter()
                .filter(|((p, _), _)| *p == pool.name)
                .map(|(_, n)| n)
                .sum();
            let mut free = ready.len().saturating_sub(promised);
            let mut waiting = 0;
            let mut requests: Vec<_> = pool.requests.values().collect();
            requests.sort_by(|a, b| a.ctime.total_cmp(&b.ctime).then(a.id.cmp(&b.id)));
            for req in requests {
                let pending = granting
                    .get(&(pool.name.clone(), req.id.clone()))
                    .copied()
                    .unwrap_or(0);
                let mut missing = (req.missing() as usize).saturating_sub(pending);
                while missing > 0 && free > 0 {
                    self.grant(pool, req).await;
                    missing -= 1;
                    free -= 1;
                }
                waiting += missing;
            }
            let target = pool.size as usize + waiting;
            let have = free + refilling.get(&pool.name).copied().unwrap_or(0);
            let paused = self
                .backoff
                .get(&pool.name)
                .is_some_and(|(until, _)| Instant::now() < *until);
            if have < target && !paused {
                let room =
                    MAX_REFILLS.saturating_sub(refilling.get(&pool.name).copied().unwrap_or(0));
                for _ in 0..(target - have).min(room) {
                    self.refill(pool).await;
                }
            }
        }
    }

    async fn submit(&mut self, ops: Vec<OpCode>) -> Option<JobId> {
        match self.queue.submit(ops).await {
            Ok(id) => Some(id),
            Err(e) => {
                self.quiet
                    .warn("pool job", format_args!("not submitted (retried): {e}"));
                None
            }
        }
    }

    async fn refill(&mut self, pool: &Pool) {
        let name = format!(
            "{}-{}",
            pool.name,
            crate::util::random_bytes::<4>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let mut op = match crate::cmdlib::pool_create_op(&pool.name, &pool.template, &name) {
            Ok(op) => op,
            Err(e) => {
                tracing::error!(pool = %pool.name, "pool template no longer valid: {}", e.message);
                return;
            }
        };
        op.set("reason", reason(&source(&pool.name), "refill"));
        if let Some(id) = self.submit(vec![op]).await {
            self.refills.insert(id, (pool.name.clone(), Instant::now()));
        }
    }

    async fn grant(&mut self, pool: &Pool, req: &crate::cluster::leases::PoolRequest) {
        let mut params = Map::new();
        params.insert("pool_name".into(), json!(pool.name));
        params.insert("requester".into(), json!(req.requester));
        params.insert("request_id".into(), json!(req.id));
        if let Some(l) = req.lifetime {
            params.insert("lifetime".into(), json!(l));
        }
        params.insert("reason".into(), reason(&source(&pool.name), "ondemand"));
        match OpCode::build(OpId::GantryPoolCheckout, params) {
            Ok(op) => {
                self.submit(vec![op]).await;
            }
            Err(e) => tracing::error!("cannot build a checkout: {}", e.0),
        }
    }
}
