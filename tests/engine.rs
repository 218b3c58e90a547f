//! The core engine in-process: real sled in a temp dir, the fake backend with latency, the job
//! queue's public API. Covers status transitions, parallelism and serialization by locks,
//! priorities, dependencies, cancel, priority change, wait-for-change, archiving, drain, limits,
//! dry-run and the error encoding.

mod common;
use gantry::backends::fake::FakeBackend;
use gantry::backends::{BackendError, FailureKind};
use gantry::cluster::ClusterStore;
use gantry::cluster::bootstrap::InitOptions;
use gantry::jobqueue::job::{Job, JobId, Status};
use gantry::jobqueue::{JobQueue, QueueOptions, Store, SubmitError};
use gantry::kv::Database;
use gantry::opcodes::OpCode;
use gantry::storage::GroupCommit;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

struct Engine {
    queue: JobQueue,
    backend: Arc<FakeBackend>,
    // Kept so the data dir lives as long as the engine.
    _dir: tempfile::TempDir,
}

async fn engine_in(dir: tempfile::TempDir, delay_ms: u64, opts: QueueOptions) -> Engine {
    let db = database(dir.path());
    let cluster = ClusterStore::open(db.clone(), &InitOptions::default()).unwrap();
    let backend = Arc::new(FakeBackend::new(Duration::from_millis(delay_ms)));
    gantry::cli::adopt(&*backend, &cluster).await;
    let store = Store::open(db).unwrap();
    let queue = JobQueue::start(store, cluster, backend.clone(), opts)
        .await
        .unwrap();
    Engine {
        queue,
        backend,
        _dir: dir,
    }
}

/// sled in the temp dir; with GANTRY_TEST_STORE=etcd, etcd under a prefix named after it.
fn database(dir: &std::path::Path) -> Database {
    #[cfg(feature = "etcd")]
    if let Some(endpoints) = common::etcd::shared_endpoints() {
        let opts = gantry::ha::EtcdOptions {
            endpoints: endpoints.split(',').map(str::to_string).collect(),
            prefix: format!("/engine{}", dir.display()),
            ca: None,
            user: None,
            ttl: 2,
        };
        let kv = gantry::ha::EtcdKv::connect(&opts, None).unwrap();
        return Database::replicated(Arc::new(kv));
    }
    Database::from(&GroupCommit::open(&dir.join("db")).unwrap())
}

async fn engine(delay_ms: u64) -> Engine {
    engine_in(
        tempfile::tempdir().unwrap(),
        delay_ms,
        QueueOptions::default(),
    )
    .await
}

fn op(v: Value) -> OpCode {
    OpCode::from_json(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
}

fn delay(seconds: f64) -> OpCode {
    op(json!({"OP_ID": "OP_TEST_DELAY", "duration": seconds}))
}

/// A delay that takes the cluster-wide lock of its node, so two of them serialize.
fn locking_delay(seconds: f64) -> OpCode {
    op(json!({"OP_ID": "OP_TEST_DELAY", "duration": seconds, "no_locks": false}))
}

impl Engine {
    async fn submit(&self, ops: Vec<OpCode>) -> JobId {
        self.queue.submit(ops).await.expect("submitted")
    }

    async fn finished(&self, id: JobId) -> Job {
        for _ in 0..1000 {
            let job = self.queue.job(id).expect("job exists");
            if job.is_finalized() {
                return (*job).clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} did not finish");
    }

    async fn reaches(&self, id: JobId, status: Status) {
        for _ in 0..500 {
            if self.queue.job_status(id) == Some(status) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("job {id} never became {status:?}");
    }

    async fn create_instance(&self, name: &str) {
        let id = self
            .submit(vec![op(
                json!({"OP_ID": "OP_INSTANCE_CREATE", "instance_name": name,
                "mode": "create", "disk_template": "plain", "disks": [{"size": 1024}],
                "nics": [], "os_type": "image", "name_check": false, "ip_check": false}),
            )])
            .await;
        assert_eq!(self.finished(id).await.status(), Status::Success);
    }
}

fn secs(ts: Option<gantry::jobqueue::job::Timestamp>) -> f64 {
    ts.expect("timestamp set").as_secs_f64()
}

fn overlap(a: &Job, b: &Job) -> bool {
    secs(a.start_ts) < secs(b.end_ts) && secs(b.start_ts) < secs(a.end_ts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_queued_waiting_running_success_and_error() {
    let e = engine(0).await;
    let blocker = e.submit(vec![locking_delay(0.5)]).await;
    e.reaches(blocker, Status::Running).await;
    let waiter = e.submit(vec![locking_delay(0.05)]).await;
    e.reaches(waiter, Status::Waiting).await;
    let job = e.finished(waiter).await;
    assert_eq!(job.status(), Status::Success);
    assert!(secs(job.ops[0].exec) >= secs(e.queue.job(blocker).unwrap().end_ts));
    assert!(job.received_ts <= job.start_ts.unwrap());

    // A failing opcode: error, and every later opcode errors with "Preceding opcode failed".
    let failing = e
        .submit(vec![
            op(json!({"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "nosuch"})),
            delay(0.01),
        ])
        .await;
    let job = e.finished(failing).await;
    assert_eq!(job.status(), Status::Error);
    assert_eq!(
        job.ops[0].result,
        json!([
            "OpPrereqError",
            ["Instance 'nosuch' not known", "unknown_entity"]
        ])
    );
    assert_eq!(
        job.ops[1].result,
        json!(["OpExecError", ["Preceding opcode failed"]])
    );
    assert_eq!(job.ops[1].status, Status::Error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_each_status() {
    let e = engine(0).await;
    // queued (held by an unfinished dependency is "waiting"; a paused job is truly queued)
    e.queue
        .replace_filter(
            None,
            0,
            vec![json!(["opcode", ["=", "duration", 7.0]])],
            json!("PAUSE"),
            vec![],
        )
        .await
        .unwrap();
    let queued = e.submit(vec![delay(7.0)]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(e.queue.job_status(queued), Some(Status::Queued));
    assert_eq!(
        e.queue.cancel(queued).await,
        (true, format!("Dequeued job {queued}"))
    );
    assert_eq!(e.finished(queued).await.status(), Status::Canceled);

    // waiting → canceling → canceled
    let blocker = e.submit(vec![locking_delay(0.5)]).await;
    e.reaches(blocker, Status::Running).await;
    let waiting = e.submit(vec![locking_delay(0.1)]).await;
    e.reaches(waiting, Status::Waiting).await;
    assert_eq!(
        e.queue.cancel(waiting).await,
        (true, "Job successfully cancelled".to_string())
    );
    let job = e.finished(waiting).await;
    assert_eq!(job.status(), Status::Canceled);
    assert_eq!(job.ops[0].result, json!("Job canceled by request"));

    // running: refused; a multi-opcode job is canceled at the next opcode boundary.
    let two = e.submit(vec![delay(0.3), delay(5.0)]).await;
    e.reaches(two, Status::Running).await;
    let (ok, _) = e.queue.cancel(two).await;
    let job = e.finished(two).await;
    assert!(!ok || job.ops[1].status == Status::Canceled, "{job:?}");
    assert_eq!(job.ops[0].status, Status::Success);
    assert_eq!(job.ops[1].status, Status::Canceled);
    let single = e.submit(vec![delay(0.3)]).await;
    e.reaches(single, Status::Running).await;
    let (ok, msg) = e.queue.cancel(single).await;
    assert!(!ok, "a running single-opcode job cannot be canceled: {msg}");
    assert_eq!(e.finished(single).await.status(), Status::Success);

    // finalized and unknown jobs
    assert!(!e.queue.cancel(single).await.0);
    assert_eq!(
        e.queue.cancel(JobId(9999)).await,
        (false, "Job 9999 not found in queue".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_instances_run_in_parallel_same_instance_serializes() {
    let e = engine(300).await;
    e.create_instance("a.example.com").await;
    e.create_instance("b.example.com").await;
    let reboot = |name: &str| {
        op(json!({"OP_ID": "OP_INSTANCE_REBOOT", "instance_name": name, "reboot_type": "hard"}))
    };
    let a = e.submit(vec![reboot("a.example.com")]).await;
    let b = e.submit(vec![reboot("b.example.com")]).await;
    let (a, b) = (e.finished(a).await, e.finished(b).await);
    assert_eq!((a.status(), b.status()), (Status::Success, Status::Success));
    assert!(overlap(&a, &b), "different instances overlap: {a:?} {b:?}");

    let a1 = e.submit(vec![reboot("a.example.com")]).await;
    let a2 = e.submit(vec![reboot("a.example.com")]).await;
    let (a1, a2) = (e.finished(a1).await, e.finished(a2).await);
    assert!(
        secs(a2.ops[0].exec) >= secs(a1.ops[0].end),
        "the same instance serializes: {a1:?} {a2:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_order_waiting_jobs_and_can_change() {
    let e = engine(0).await;
    e.queue
        .cluster()
        .update(|c| c.cluster.max_running_jobs = 1)
        .await
        .unwrap();
    let blocker = e.submit(vec![delay(0.4)]).await;
    e.reaches(blocker, Status::Running).await;
    let low = e
        .submit(vec![op(
            json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.05, "priority": 10}),
        )])
        .await;
    let normal = e.submit(vec![delay(0.05)]).await;
    let high = e
        .submit(vec![op(
            json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.05, "priority": -10}),
        )])
        .await;
    // Raise the low-priority job above everything else while it waits.
    let changed = e.queue.change_priority(low, -10).await.unwrap();
    assert!(changed.0, "{changed:?}");
    assert_eq!(e.queue.job(low).unwrap().priority(), -10);
    assert!(
        e.queue.change_priority(low, 3).await.is_err(),
        "only -10, 0, 10"
    );

    let start = |j: &Job| secs(j.start_ts);
    let (low, normal, high) = (
        e.finished(low).await,
        e.finished(normal).await,
        e.finished(high).await,
    );
    assert!(start(&low) < start(&high), "same priority: lower id first");
    assert!(start(&high) < start(&normal), "priority before id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_absolute_relative_and_unsatisfied() {
    let e = engine(0).await;
    let first = e.submit(vec![delay(0.2)]).await;
    let relative = e
        .submit(vec![op(json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.01,
                               "depends": [[-1, ["success"]]]}))])
        .await;
    let job = e.finished(relative).await;
    assert_eq!(
        job.ops[0].input.get("depends"),
        Some(&json!([[first.0, ["success"]]]))
    );
    assert!(secs(job.start_ts) >= secs(e.queue.job(first).unwrap().end_ts));

    let failed = e
        .submit(vec![op(
            json!({"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "nosuch"}),
        )])
        .await;
    let unmet = e
        .submit(vec![op(json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.01,
                               "depends": [[failed.0, ["success"]]]}))])
        .await;
    let job = e.finished(unmet).await;
    assert_eq!(
        job.ops[0].result,
        json!([
            "OpExecError",
            [format!(
                "Dependency job {failed} finished with status 'error', not one of 'success' as required"
            )]
        ])
    );
    let missing = e
        .submit(vec![op(json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.01,
                               "depends": [[5000, []]]}))])
        .await;
    assert_eq!(
        e.finished(missing).await.ops[0].result,
        json!(["OpExecError", ["Dependency error: Job 5000 not found"]])
    );
    let below = e
        .queue
        .submit(vec![op(json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.01,
                               "depends": [[-5000, []]]}))])
        .await;
    assert!(matches!(below, Err(SubmitError::Invalid(_))), "{below:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_change_wakes_on_change_and_times_out() {
    let e = engine(0).await;
    let id = e.submit(vec![delay(0.3)]).await;
    e.reaches(id, Status::Running).await;
    let fields = vec!["status".to_string()];
    let running = json!(["running"]);
    let started = std::time::Instant::now();
    let answer = e
        .queue
        .wait_for_change(id, &fields, Some(&running), None, Duration::from_secs(30))
        .await
        .unwrap();
    let (info, _) = answer.expect("the job changed");
    assert_eq!(info, vec![json!("success")]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "woken by the change, not by the timeout"
    );
    // A finished job answers at once (nothing can change any more); a running one that does not
    // change within the timeout answers "nothing changed".
    let success = json!(["success"]);
    let at_once = e
        .queue
        .wait_for_change(
            id,
            &fields,
            Some(&success),
            Some(0),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(at_once.map(|a| a.0), Some(vec![json!("success")]));
    let long = e.submit(vec![delay(5.0)]).await;
    e.reaches(long, Status::Running).await;
    let nothing = e
        .queue
        .wait_for_change(
            long,
            &fields,
            Some(&running),
            None,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    assert_eq!(nothing, None, "no change within the timeout");
    assert!(
        e.queue
            .wait_for_change(JobId(777), &fields, None, None, Duration::from_millis(10))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiving_drain_and_limits() {
    let opts = QueueOptions {
        hard_limit: 3,
        ..QueueOptions::default()
    };
    let e = engine_in(tempfile::tempdir().unwrap(), 0, opts).await;
    let done = e.submit(vec![delay(0.01)]).await;
    e.finished(done).await;
    let running = e.submit(vec![delay(0.5)]).await;
    e.reaches(running, Status::Running).await;
    assert!(
        !e.queue.archive(running).await,
        "only finalized jobs archive"
    );
    assert!(e.queue.archive(done).await);
    let archived = e.queue.job(done).expect("archived jobs stay readable");
    assert!(archived.archived);
    assert!(!e.queue.job_ids().contains(&done));

    // Hard limit: three unfinished jobs at most (the running one and two more).
    let more = [
        e.submit(vec![delay(0.5)]).await,
        e.submit(vec![delay(0.5)]).await,
    ];
    assert!(matches!(
        e.queue.submit(vec![delay(0.01)]).await,
        Err(SubmitError::Full)
    ));
    e.finished(running).await;
    for id in more {
        e.finished(id).await;
    }
    // Finished jobs no longer count against the limit.
    e.finished(e.submit(vec![delay(0.01)]).await).await;
    let (archived, left) = e.queue.auto_archive(0.0, Duration::from_secs(5)).await;
    assert_eq!((archived, left), (4, 0));
    assert!(e.queue.job_ids().is_empty());

    // Drain: refused submissions until undrained.
    e.queue.set_drained(true).unwrap();
    assert!(matches!(
        e.queue.submit(vec![delay(0.01)]).await,
        Err(SubmitError::Drained)
    ));
    assert!(e.queue.drained());
    e.queue.set_drained(false).unwrap();
    let next = e.submit(vec![delay(0.01)]).await;
    assert!(next.0 > running.0, "ids keep growing after archiving");
    assert!(e.queue.job(done).unwrap().archived);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing() {
    let e = engine(0).await;
    let before = e.queue.cluster().snapshot();
    let id = e
        .submit(vec![op(
            json!({"OP_ID": "OP_INSTANCE_CREATE", "instance_name": "dry.example.com",
            "mode": "create", "disk_template": "drbd", "disks": [{"size": 1024}], "nics": [],
            "os_type": "image", "name_check": false, "ip_check": false, "dry_run": true}),
        )])
        .await;
    let job = e.finished(id).await;
    assert_eq!(job.status(), Status::Success);
    assert_eq!(
        job.ops[0].result.as_array().unwrap().len(),
        2,
        "the chosen nodes"
    );
    let after = e.queue.cluster().snapshot();
    assert_eq!(before.serial_no, after.serial_no);
    assert!(after.instances.is_empty());
}

/// One real path per ecode the engine produces, encoded `[class, [message, ecode]]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_encoding_of_each_ecode() {
    let e = engine(0).await;
    e.create_instance("x.example.com").await;
    let create = |name: &str, extra: Value| {
        let mut v = json!({"OP_ID": "OP_INSTANCE_CREATE", "instance_name": name, "mode": "create",
            "disk_template": "plain", "disks": [{"size": 1024}], "nics": [], "os_type": "image",
            "name_check": false, "ip_check": false});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        op(v)
    };
    let cases: Vec<(OpCode, &str)> = vec![
        (
            op(json!({"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "nosuch"})),
            "unknown_entity",
        ),
        (create("x.example.com", json!({})), "already_exists"),
        (
            create(
                "big.example.com",
                json!({"beparams": {"memory": 10_000_000}}),
            ),
            "insufficient_resources",
        ),
        (
            create(
                "bad.example.com",
                json!({"pnode": "node1.example.com", "snode": "node1.example.com", "disk_template": "drbd"}),
            ),
            "wrong_input",
        ),
        (
            op(json!({"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": "x.example.com"})),
            "wrong_state",
        ),
        (
            op(json!({"OP_ID": "OP_GROUP_REMOVE", "group_name": "default"})),
            "wrong_state",
        ),
    ];
    for (input, ecode) in cases {
        let summary = input.summary();
        let id = e.submit(vec![input]).await;
        let job = e.finished(id).await;
        let result = &job.ops[0].result;
        assert_eq!(result[1][1], ecode, "{summary}: {result}");
        assert!(
            result[0] == "OpPrereqError" && result[1][0].is_string(),
            "{result}"
        );
    }

    // Backend failures: an unreachable node is an environment error during the checks; a failed
    // operation during execution is an OpExecError without ecode.
    let shutdown = e
        .submit(vec![op(
            json!({"OP_ID": "OP_INSTANCE_SHUTDOWN", "instance_name": "x.example.com"}),
        )])
        .await;
    assert_eq!(e.finished(shutdown).await.status(), Status::Success);
    let pnode = e.queue.cluster().snapshot().instances["x.example.com"]
        .pnode
        .clone();
    e.backend.set_unreachable(&pnode, true);
    let id = e
        .submit(vec![op(
            json!({"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "x.example.com"}),
        )])
        .await;
    let job = e.finished(id).await;
    e.backend.set_unreachable(&pnode, false);
    assert_eq!(job.ops[0].result[0], "OpPrereqError", "{job:?}");
    assert_eq!(job.ops[0].result[1][1], "environment_error", "{job:?}");
    let id = e
        .submit(vec![op(
            json!({"OP_ID": "OP_INSTANCE_STARTUP", "instance_name": "x.example.com"}),
        )])
        .await;
    assert_eq!(e.finished(id).await.status(), Status::Success);
    e.backend.fail_next(
        "reboot",
        BackendError {
            kind: FailureKind::OperationFailed,
            message: "qemu exploded".into(),
        },
    );
    let id = e
        .submit(vec![op(
            json!({"OP_ID": "OP_INSTANCE_REBOOT", "instance_name": "x.example.com",
            "reboot_type": "hard"}),
        )])
        .await;
    let result = e.finished(id).await.ops[0].result.clone();
    assert_eq!(result[0], "OpExecError", "{result}");
    assert!(
        result[1][0].as_str().unwrap().contains("qemu exploded"),
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_beyond_the_keep_count_are_archived_oldest_first() {
    let opts = QueueOptions {
        keep_finished: 10,
        ..QueueOptions::default()
    };
    let e = engine_in(tempfile::tempdir().unwrap(), 0, opts).await;
    let mut ids = vec![];
    for _ in 0..25 {
        let id = e.submit(vec![delay(0.001)]).await;
        e.finished(id).await;
        ids.push(id);
    }
    let mut listed = e.queue.job_ids();
    for _ in 0..200 {
        if listed.len() <= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        listed = e.queue.job_ids();
    }
    assert!(listed.len() <= 10, "still listed: {listed:?}");
    assert!(listed.contains(ids.last().unwrap()), "the newest stays");
    let first = e.queue.job(ids[0]).expect("archived jobs stay readable");
    assert!(first.archived && first.is_finalized());
}
