//! gantry end to end, side by side with its floors in the same run:
//!
//!     cargo bench --bench rapi                      # every figure, about 5 minutes
//!     cargo bench --bench rapi -- --scale 1000000   # plus stored-history scale (1e3 vs N jobs)
//!     cargo bench --bench rapi -- --only scale      # one part: floors|reads|writes|latency|
//!                                                   # parallel|tls|scale
//!     cargo bench --bench rapi --features etcd -- --only etcd   # the etcd store next to sled
//!
//! Needs `wrk` and `curl` (`apt-get install wrk curl`). The client and the servers share the
//! machine's cores, as they would for any single-machine figure. Results go to stdout as one
//! table per part; doc/benchmarks.md records a run.

mod common;
#[cfg(feature = "etcd")]
#[path = "rapi/etcd.rs"]
mod etcd;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use gantry::jobqueue::Store;
use gantry::jobqueue::job::{Job, JobId, Status, Timestamp};
use gantry::opcodes::OpCode;
use gantry::storage::GroupCommit;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WRK_SECS: &str = "5s";
const AUTH: &str = "Basic YWRtaW46YWRtaW4="; // admin:admin
const NOOP: &str = r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.001, "dry_run": true}]}"#;

/// A `gantry serve` on a temp data dir; killed when dropped.
struct Gantry {
    child: Child,
    base: String,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Gantry {
    fn start(dir: &Path, extra: &[&str]) -> (Gantry, Duration) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("users"), "admin admin write\n").unwrap();
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["serve", "--port", "0", "--bind", "127.0.0.1", "--data-dir"])
            .arg(dir)
            .arg("--users")
            .arg(dir.join("users"))
            .args([
                "--queue-limit",
                "10000000",
                "--max-connections-per-ip",
                "4096",
            ])
            .args(["--max-connections", "8192"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gantry");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let took = started.elapsed();
        let base = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(base.starts_with("http"), "unexpected banner: {line}");
        let gantry = Gantry {
            child,
            base,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        (gantry, took)
    }

    /// kill -9, then a new process on the same data dir: answers it and the time to its banner.
    fn restart_after_kill_9(mut self) -> (Gantry, Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        Gantry::start(&self.dir, &extra)
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gantry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

async fn call(c: &reqwest::Client, method: reqwest::Method, url: &str, body: &str) -> Value {
    let answer = c
        .request(method, url)
        .header("Authorization", AUTH)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    assert!(status.is_success(), "{url}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Submits a job and follows it through `/wait` until it is finalized.
async fn submit_and_wait(c: &reqwest::Client, base: &str, body: &str) -> u64 {
    let id = call(c, reqwest::Method::POST, &format!("{base}/2/jobs"), body)
        .await
        .as_u64()
        .expect("job id");
    wait_for(c, base, id).await;
    id
}

async fn wait_for(c: &reqwest::Client, base: &str, id: u64) {
    let mut previous = Value::Null;
    loop {
        let body = json!({"fields": ["status"], "previous_job_info": previous,
                          "previous_log_serial": null});
        let url = format!("{base}/2/jobs/{id}/wait");
        let answer = call(c, reqwest::Method::GET, &url, &body.to_string()).await;
        if answer.is_null() {
            continue;
        }
        let status = answer["job_info"][0].as_str().unwrap_or("").to_string();
        if ["success", "error", "canceled"].contains(&status.as_str()) {
            return;
        }
        previous = answer["job_info"].clone();
    }
}

/// `wrk -t2 -c32` for five seconds: requests per second (non-2xx answers are an error).
fn wrk(url: &str, lua: Option<&Path>) -> f64 {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        "-c32",
        "-d",
        WRK_SECS,
        "-H",
        &format!("Authorization: {AUTH}"),
    ]);
    if let Some(script) = lua {
        cmd.arg("-s").arg(script);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rate in wrk's output:\n{text}"))
}

fn post_script(dir: &Path) -> PathBuf {
    let path = dir.join("post.lua");
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.body = '{NOOP}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    std::fs::write(&path, lua).unwrap();
    path
}

fn table(title: &str, header: &[&str]) -> Table {
    println!("\n{title}");
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

fn ratio(value: f64, floor: f64) -> String {
    format!("{:.2}", value / floor)
}

fn percentile_ms(h: &Histogram<u64>, q: f64) -> String {
    format!("{:.2}", h.value_at_quantile(q) as f64 / 1000.0)
}

struct Floors {
    hello: f64,
    fdatasync: f64,
    group_commit_32: f64,
}

fn floors(rt: &tokio::runtime::Runtime) -> Floors {
    let run = Duration::from_secs(5);
    let hello = wrk(&format!("{}/2/jobs/1", common::hello_server()), None);
    let fdatasync = common::fdatasync_loop(run);
    let group_commit_32 = rt.block_on(common::group_commit(32, run));
    let mut t = table("Floors (same run)", &["floor", "per second"]);
    t.add_row(vec![
        "warp hello-world JSON, wrk -t2 -c32".into(),
        format!("{hello:.0}"),
    ]);
    t.add_row(vec![
        "fdatasync loop, 1 writer".into(),
        format!("{fdatasync:.0}"),
    ]);
    t.add_row(vec![
        "sled group commit, 32 writers".into(),
        format!("{group_commit_32:.0}"),
    ]);
    println!("{t}");
    Floors {
        hello,
        fdatasync,
        group_commit_32,
    }
}

fn reads(rt: &tokio::runtime::Runtime, work: &Path, f: &Floors) {
    let (g, _) = Gantry::start(&work.join("reads"), &["--no-ssl"]);
    rt.block_on(submit_and_wait(&client(), &g.base, NOOP));
    let job = wrk(&format!("{}/2/jobs/1", g.base), None);
    let info = wrk(&format!("{}/2/info", g.base), None);
    let mut t = table(
        "Reads over HTTP with basic auth (wrk -t2 -c32 -d5s)",
        &["request", "per second", "÷ hello-world", "target"],
    );
    t.add_row(vec![
        "GET /2/jobs/1".into(),
        format!("{job:.0}"),
        ratio(job, f.hello),
        "≥ 0.8".into(),
    ]);
    t.add_row(vec![
        "GET /2/info".into(),
        format!("{info:.0}"),
        ratio(info, f.hello),
        "≥ 0.6".into(),
    ]);
    println!("{t}");
    g.stop();
}

fn writes(rt: &tokio::runtime::Runtime, work: &Path, f: &Floors) {
    let script = post_script(work);
    // Submission alone: a PAUSE rule holds every job.
    let (held, _) = Gantry::start(&work.join("held"), &["--no-ssl"]);
    let url = format!("{}/2/filters", held.base);
    rt.block_on(call(
        &client(),
        reqwest::Method::POST,
        &url,
        r#"{"action": "PAUSE"}"#,
    ));
    let submit = wrk(&format!("{}/2/jobs", held.base), Some(&script));
    held.stop();
    let (run, _) = Gantry::start(&work.join("run"), &["--no-ssl"]);
    let executed = wrk(&format!("{}/2/jobs", run.base), Some(&script));
    run.stop();
    let mut t = table(
        "Durable submissions, POST /2/jobs over HTTP (wrk -t2 -c32 -d5s)",
        &[
            "case",
            "per second",
            "÷ group commit (32)",
            "÷ fdatasync",
            "target",
        ],
    );
    t.add_row(vec![
        "submit only (PAUSE rule holds the jobs)".into(),
        format!("{submit:.0}"),
        ratio(submit, f.group_commit_32),
        ratio(submit, f.fdatasync),
        "≥ 0.5".into(),
    ]);
    t.add_row(vec![
        "submit, and the no-op jobs run".into(),
        format!("{executed:.0}"),
        ratio(executed, f.group_commit_32),
        ratio(executed, f.fdatasync),
        "≥ 0.35".into(),
    ]);
    println!("{t}");
}

/// No-op jobs from `clients` clients for `jobs` jobs in all: the submit-to-success histogram
/// (microseconds) and jobs per second.
async fn noop_latency(base: &str, clients: usize, jobs: usize) -> (Histogram<u64>, f64) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let base = base.to_string();
            tokio::spawn(async move {
                let c = client();
                let mut h = Histogram::<u64>::new(3).unwrap();
                for _ in 0..jobs / clients {
                    let t = Instant::now();
                    submit_and_wait(&c, &base, NOOP).await;
                    h.record(t.elapsed().as_micros() as u64).unwrap();
                }
                h
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    (all, rate)
}

fn latency(rt: &tokio::runtime::Runtime, work: &Path) {
    let (g, _) = Gantry::start(&work.join("latency"), &["--no-ssl"]);
    let mut t = table(
        "No-op job (dry-run OP_TEST_DELAY), POST /2/jobs then /wait until success",
        &["clients", "jobs", "p50 ms", "p99 ms", "jobs/s", "target"],
    );
    rt.block_on(noop_latency(&g.base, 1, 200)); // warm-up
    for (clients, jobs, target) in [(1, 3000, "p50 ≤ 1, p99 ≤ 3"), (32, 32 * 300, "p99 ≤ 20")]
    {
        let (h, rate) = rt.block_on(noop_latency(&g.base, clients, jobs));
        t.add_row(vec![
            clients.to_string(),
            h.len().to_string(),
            percentile_ms(&h, 0.5),
            percentile_ms(&h, 0.99),
            format!("{rate:.0}"),
            target.into(),
        ]);
    }
    println!("{t}");
    g.stop();
}

/// Timestamps of finished jobs on the server's clock, in seconds:
/// (received, started, first opcode executing, ended).
async fn timings(c: &reqwest::Client, base: &str, ids: &[u64]) -> Vec<(f64, f64, f64, f64)> {
    let url = format!("{base}/2/query/job?fields=id,status,received_ts,start_ts,opexec,end_ts");
    let answer = call(c, reqwest::Method::GET, &url, "").await;
    let ts = |v: &Value| v[0].as_f64().unwrap_or(0.0) + v[1].as_f64().unwrap_or(0.0) / 1e6;
    let wanted: std::collections::HashSet<u64> = ids.iter().copied().collect();
    let rows: Vec<_> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| wanted.contains(&row[0][1].as_u64().unwrap_or(0)))
        .map(|row| {
            assert_eq!(row[1][1], "success", "job {}", row[0][1]);
            (
                ts(&row[2][1]),
                ts(&row[3][1]),
                ts(&row[4][1][0]),
                ts(&row[5][1]),
            )
        })
        .collect();
    assert_eq!(rows.len(), ids.len());
    rows
}

/// Submits one job per (method, path, body) with up to 64 requests in flight, in order, then
/// waits for all: their ids.
async fn submit_all(base: &str, requests: Vec<(reqwest::Method, String, String)>) -> Vec<u64> {
    use futures_util::StreamExt;
    let c = client();
    let ids: Vec<u64> = futures_util::stream::iter(requests)
        .map(|(method, path, body)| {
            let (c, url) = (c.clone(), format!("{base}{path}"));
            async move { call(&c, method, &url, &body).await.as_u64().unwrap() }
        })
        .buffered(64)
        .collect()
        .await;
    for id in &ids {
        wait_for(&c, base, *id).await;
    }
    ids
}

fn parallel(rt: &tokio::runtime::Runtime, work: &Path) {
    const INSTANCES: usize = 1000;
    let dir = work.join("parallel");
    // Instances are created without backend delay, then the server restarts with 100 ms per
    // backend operation.
    let (g, _) = Gantry::start(&dir, &["--no-ssl", "--node-memory", "4194304"]);
    let c = client();
    let creates: Vec<_> = (0..INSTANCES)
        .map(|i| {
            let body = json!({"__version__": 1, "mode": "create", "name": format!("p{i}.example.com"),
                "disk_template": "diskless", "disks": [], "nics": [], "os_type": "debootstrap+default",
                "beparams": {"memory": 128}, "name_check": false, "ip_check": false});
            (reqwest::Method::POST, "/2/instances".to_string(), body.to_string())
        })
        .collect();
    let created = Instant::now();
    rt.block_on(async {
        let ids = submit_all(&g.base, creates).await;
        for id in ids {
            let job = call(
                &c,
                reqwest::Method::GET,
                &format!("{}/2/jobs/{id}", g.base),
                "",
            )
            .await;
            assert_eq!(job["status"], "success", "create: {job}");
        }
        let url = format!("{}/2/modify", g.base);
        let id = call(
            &c,
            reqwest::Method::PUT,
            &url,
            r#"{"max_running_jobs": 1000}"#,
        )
        .await
        .as_u64()
        .unwrap();
        wait_for(&c, &g.base, id).await;
    });
    let create_secs = created.elapsed().as_secs_f64();
    g.stop();
    let (g, _) = Gantry::start(&dir, &["--no-ssl", "--fake-delay-ms", "100"]);
    let put = reqwest::Method::PUT;
    let shutdown = |i: usize| {
        let path = format!("/2/instances/p{i}.example.com/shutdown");
        (put.clone(), path, r#"{"timeout": 0}"#.to_string())
    };
    let p0 = |action: &str| {
        let method = if action == "reboot" {
            reqwest::Method::POST
        } else {
            put.clone()
        };
        let path = format!("/2/instances/p0.example.com/{action}");
        (method, path, String::new())
    };
    let (distinct, same) = rt.block_on(async {
        let ids = submit_all(&g.base, (0..INSTANCES).map(shutdown).collect()).await;
        let distinct = timings(&c, &g.base, &ids).await;
        submit_all(&g.base, vec![p0("startup")]).await;
        let ids = submit_all(&g.base, (0..100).map(|_| p0("reboot")).collect()).await;
        let same = timings(&c, &g.base, &ids).await;
        (distinct, same)
    });
    g.stop();
    let first = |pick: fn(&(f64, f64, f64, f64)) -> f64, rows: &[(f64, f64, f64, f64)]| {
        rows.iter().map(pick).fold(f64::MAX, f64::min)
    };
    let last_end = |rows: &[(f64, f64, f64, f64)]| rows.iter().map(|r| r.3).fold(0.0, f64::max);
    let received_span = last_end(&distinct) - first(|r| r.0, &distinct);
    let started_span = last_end(&distinct) - first(|r| r.1, &distinct);
    let last_received =
        distinct.iter().map(|r| r.0).fold(0.0, f64::max) - first(|r| r.0, &distinct);
    let serial: f64 = same.iter().map(|r| r.3 - r.2).sum();
    let same_span = last_end(&same) - first(|r| r.2, &same);
    let mut t = table(
        "Parallel execution, fake backend with 100 ms per operation, running-job cap 1000",
        &["case", "seconds", "note", "target"],
    );
    t.add_row(vec![
        format!("create {INSTANCES} diskless instances (no delay)"),
        format!("{create_secs:.1}"),
        "setup".into(),
        "".into(),
    ]);
    t.add_row(vec![
        format!("{INSTANCES} shutdowns, distinct instances"),
        format!("{received_span:.3}"),
        format!("first received to last ended (the last was received at {last_received:.3})"),
        "≤ 0.3".into(),
    ]);
    t.add_row(vec![
        "same jobs, execution only".into(),
        format!("{started_span:.3}"),
        "first started to last ended".into(),
        "".into(),
    ]);
    t.add_row(vec![
        "100 hard reboots, one instance".into(),
        format!("{same_span:.3}"),
        format!(
            "{:.3}× the sum of their run times ({serial:.3} s)",
            same_span / serial
        ),
        "≤ 1.02× of serial".into(),
    ]);
    println!("{t}");
}

/// Fresh TLS connections, one request each, with curl: time to the last byte.
fn tls(work: &Path) {
    let (g, _) = Gantry::start(&work.join("tls"), &[]);
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..500 {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{time_total}"])
            .arg(format!("{}/2/version", g.base))
            .output()
            .expect("curl");
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0);
        h.record((secs * 1e6) as u64).unwrap();
    }
    let mut t = table(
        "Fresh TLS connection per request (curl -k, GET /2/version, 500 times)",
        &["p50 ms", "p99 ms", "max ms", "over 20 ms", "target"],
    );
    let slow = h
        .iter_recorded()
        .filter(|v| v.value_iterated_to() > 20_000)
        .map(|v| v.count_at_value())
        .sum::<u64>();
    t.add_row(vec![
        percentile_ms(&h, 0.5),
        percentile_ms(&h, 0.99),
        format!("{:.2}", h.max() as f64 / 1000.0),
        slow.to_string(),
        "no outlier group at ~40 ms".into(),
    ]);
    println!("{t}");
    g.stop();
}

/// Writes `n` finished no-op jobs straight into a stopped server's store: all but the last
/// thousand archived, as the count limit would have left them.
fn fill(dir: &Path, n: u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let commit = GroupCommit::open(&dir.join("db")).unwrap();
    let store = Store::open(&commit).unwrap();
    let op = OpCode::from_json(&json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.001})).unwrap();
    let first = store.next_id().unwrap();
    for id in first..first + n {
        let now = Timestamp::now();
        let mut job = Job::new(JobId(id), vec![op.clone()], now);
        job.ops[0].status = Status::Success;
        job.ops[0].start = Some(now);
        job.ops[0].exec = Some(now);
        job.ops[0].end = Some(now);
        job.start_ts = Some(now);
        job.end_ts = Some(now);
        job.archived = id + 1000 < first + n;
        store.put_job(&job).unwrap();
    }
    store.set_next_id(first + n).unwrap();
    rt.block_on(store.durable()).unwrap();
}

fn dir_mib(dir: &Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0u64;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                todo.push(entry.path());
            } else if entry.file_name() != "space-reserve" {
                bytes += meta.blocks() * 512;
            }
        }
    }
    bytes as f64 / (1 << 20) as f64
}

/// GET /2/jobs/<random stored id> from 8 clients for 5 s: the latency histogram (µs).
async fn poll_latency(base: &str, stored: u64) -> Histogram<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let tasks: Vec<_> = (0..8)
        .map(|seed| {
            let base = base.to_string();
            tokio::spawn(async move {
                let c = client();
                let mut rng = fastrand::Rng::with_seed(seed);
                let mut h = Histogram::<u64>::new(3).unwrap();
                while Instant::now() < deadline {
                    let url = format!("{base}/2/jobs/{}", rng.u64(1..=stored));
                    let t = Instant::now();
                    call(&c, reqwest::Method::GET, &url, "").await;
                    h.record(t.elapsed().as_micros() as u64).unwrap();
                }
                h
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    all
}

fn scale(rt: &tokio::runtime::Runtime, work: &Path, big: u64) {
    let mut t = table(
        "Stored history: finished jobs on disk (fake backend, HTTP)",
        &[
            "stored jobs",
            "data dir MiB",
            "fill s",
            "RSS MiB",
            "poll p50 ms",
            "poll p99 ms",
            "restart after kill -9 s",
            "RSS after restart MiB",
        ],
    );
    let mut p99s = vec![];
    for n in [1000, big] {
        let dir = work.join(format!("scale-{n}"));
        let (g, _) = Gantry::start(&dir, &["--no-ssl"]);
        g.stop();
        let filled = Instant::now();
        // In a child process: sled's flusher thread keeps the database locked until exit.
        let status = Command::new(std::env::current_exe().unwrap())
            .arg("--fill")
            .arg(&dir)
            .arg(n.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "filling the store failed");
        let fill_secs = filled.elapsed().as_secs_f64();
        let (g, _) = Gantry::start(&dir, &["--no-ssl"]);
        let h = rt.block_on(poll_latency(&g.base, n));
        let rss = g.rss_mib();
        let (g, restart) = g.restart_after_kill_9();
        rt.block_on(poll_latency(&g.base, n.min(1000)));
        let rss_after = g.rss_mib();
        p99s.push(h.value_at_quantile(0.99) as f64);
        t.add_row(vec![
            n.to_string(),
            format!("{:.0}", dir_mib(&dir)),
            format!("{fill_secs:.1}"),
            format!("{rss:.0}"),
            percentile_ms(&h, 0.5),
            percentile_ms(&h, 0.99),
            format!("{:.2}", restart.as_secs_f64()),
            format!("{rss_after:.0}"),
        ]);
        g.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("{t}");
    println!(
        "poll p99 at {big} ÷ at 1000: {:.2} (target ≤ 1.5); RSS target ≤ 256 MiB, restart ≤ 1 s",
        p99s[1] / p99s[0]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, dir, n] = &args[..]
        && flag == "--fill"
    {
        fill(Path::new(dir), n.parse().unwrap());
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    // `--scale` alone stores a million jobs.
    let big: u64 = match args.iter().any(|a| a == "--scale") {
        true => value("--scale")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000),
        false => 0,
    };
    let only = value("--only");
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let f = if wanted("floors") || wanted("reads") || wanted("writes") {
        floors(&rt)
    } else {
        Floors {
            hello: 1.0,
            fdatasync: 1.0,
            group_commit_32: 1.0,
        }
    };
    if wanted("reads") {
        reads(&rt, work.path(), &f);
    }
    if wanted("writes") {
        writes(&rt, work.path(), &f);
    }
    if wanted("latency") {
        latency(&rt, work.path());
    }
    if wanted("parallel") {
        parallel(&rt, work.path());
    }
    if wanted("tls") {
        tls(work.path());
    }
    // Only when asked: it needs a build with `--features etcd` and etcd installed.
    #[cfg(feature = "etcd")]
    if only.as_deref() == Some("etcd") {
        etcd::etcd(&rt, work.path());
    }
    if big > 0 && wanted("scale") {
        scale(&rt, work.path(), big);
    }
}
