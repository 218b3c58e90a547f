//! Durable-write throughput: `cargo bench --bench durability`.
//!
//! Three measurements on the machine's real disk (a temp dir under $TMPDIR):
//! 1. a plain fdatasync loop (one write + fdatasync per record): the one-fsync-per-job floor;
//! 2. sled with gantry's group commit (`GroupCommit::durable`) from 1, 8 and 32 writers;
//! 3. `JobQueue::submit` (a real job, durable before the id comes back) from 1, 8 and 32 tasks.
//!
//! Results go to stdout; doc/benchmarks.md records a run.

mod common;

use gantry::backends::fake::FakeBackend;
use gantry::cluster::ClusterStore;
use gantry::cluster::bootstrap::InitOptions;
use gantry::jobqueue::{JobQueue, QueueOptions, Store};
use gantry::opcodes::OpCode;
use gantry::storage::GroupCommit;
use serde_json::json;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const RUN: Duration = Duration::from_secs(3);

async fn job_submits(submitters: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let commit = GroupCommit::open(&dir.path().join("db")).unwrap();
    let cluster = ClusterStore::open(&commit, &InitOptions::default()).unwrap();
    let backend = Arc::new(FakeBackend::new(Duration::ZERO));
    let store = Store::open(&commit).unwrap();
    let opts = QueueOptions {
        hard_limit: usize::MAX,
        ..QueueOptions::default()
    };
    let queue = JobQueue::start(store, cluster, backend, opts)
        .await
        .unwrap();
    // Hold every job back with a PAUSE rule: this measures submission, not execution.
    queue
        .replace_filter(None, 0, vec![], json!("PAUSE"), vec![])
        .await
        .unwrap();
    let op = json!({"OP_ID": "OP_TEST_DELAY", "duration": 1.0});
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..submitters)
        .map(|_| {
            let (queue, done, op) = (queue.clone(), done.clone(), op.clone());
            tokio::spawn(async move {
                while start.elapsed() < RUN {
                    let ops = vec![OpCode::from_json(&op).unwrap()];
                    queue.submit(ops).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; any other argument is ignored too.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "case                                  per second").unwrap();
    writeln!(
        out,
        "fdatasync loop, 1 writer              {:>10.0}",
        common::fdatasync_loop(RUN)
    )
    .unwrap();
    for writers in [1, 8, 32] {
        let rate = rt.block_on(common::group_commit(writers, RUN));
        writeln!(
            out,
            "sled group commit, {writers:>2} writers        {rate:>10.0}"
        )
        .unwrap();
    }
    for submitters in [1, 8, 32] {
        let rate = rt.block_on(job_submits(submitters));
        writeln!(
            out,
            "JobQueue::submit, {submitters:>2} submitters      {rate:>10.0}"
        )
        .unwrap();
    }
}
