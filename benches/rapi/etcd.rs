//! `--only etcd` (a build with `--features etcd`, and Debian's `etcd-server`): the same
//! submissions and no-op jobs on the etcd store next to sled, and etcd's own floor (32 writers
//! putting records as fast as it takes them), all in one run on one etcd member whose data
//! lives on this machine's disk.

use super::{Gantry, call, client, noop_latency, percentile_ms, post_script, ratio, table, wrk};
use std::path::Path;
use std::time::{Duration, Instant};

/// The tests' etcd starter (a member on free loopback ports, killed when dropped).
#[path = "../../tests/common/etcd.rs"]
#[allow(dead_code)]
mod cluster;

/// etcd's floor: 32 writers each putting its next record as soon as the last is acknowledged.
async fn etcd_puts(url: &str, run: Duration) -> f64 {
    let client = etcd_client::Client::connect([url], None).await.unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|w| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < run {
                    client
                        .put(format!("/floor/{w}/{n}"), vec![0u8; 512], None)
                        .await
                        .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// A gantry master on etcd, once it leads (it is alone: at once).
fn on_etcd(dir: &Path, etcd: &str, prefix: &str) -> Gantry {
    let (g, _) = Gantry::start(
        dir,
        &[
            "--no-ssl",
            "--store",
            "etcd",
            "--etcd-endpoints",
            etcd,
            "--etcd-prefix",
            prefix,
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    for _ in 0..100 {
        let answer = rt.block_on(call(
            &client(),
            reqwest::Method::GET,
            &format!("{}/gantry/v1/leader", g.base),
            "",
        ));
        if answer["role"] == "leader" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    g
}

pub fn etcd(rt: &tokio::runtime::Runtime, work: &Path) {
    let member = cluster::EtcdCluster::start(1);
    let etcd = &member.endpoints()[0];
    let floor = rt.block_on(etcd_puts(etcd, Duration::from_secs(5)));
    let script = post_script(work);
    let submit_only = |g: &Gantry| {
        rt.block_on(call(
            &client(),
            reqwest::Method::POST,
            &format!("{}/2/filters", g.base),
            r#"{"action": "PAUSE"}"#,
        ));
        wrk(&format!("{}/2/jobs", g.base), Some(&script))
    };
    let (sled, _) = Gantry::start(&work.join("sled-held"), &["--no-ssl"]);
    let sled_submit = submit_only(&sled);
    sled.stop();
    let held = on_etcd(&work.join("etcd-held"), etcd, "/held");
    let etcd_submit = submit_only(&held);
    held.stop();
    let mut t = table(
        "Durable submissions on etcd next to sled, POST /2/jobs (wrk -t2 -c32 -d5s, PAUSE rule)",
        &["store", "per second", "÷ etcd puts (32 writers)"],
    );
    t.add_row(vec![
        "etcd floor: 512-byte puts, 32 writers".into(),
        format!("{floor:.0}"),
        "1".into(),
    ]);
    t.add_row(vec![
        "sled (the default)".into(),
        format!("{sled_submit:.0}"),
        ratio(sled_submit, floor),
    ]);
    t.add_row(vec![
        "etcd, one member".into(),
        format!("{etcd_submit:.0}"),
        ratio(etcd_submit, floor),
    ]);
    println!("{t}");

    let mut t = table(
        "No-op job on etcd next to sled, POST /2/jobs then /wait until success",
        &["store", "clients", "jobs", "p50 ms", "p99 ms", "jobs/s"],
    );
    let (sled, _) = Gantry::start(&work.join("sled-noop"), &["--no-ssl"]);
    let on = on_etcd(&work.join("etcd-noop"), etcd, "/noop");
    for (name, g) in [("sled", &sled), ("etcd", &on)] {
        rt.block_on(noop_latency(&g.base, 1, 100)); // warm-up
        for (clients, jobs) in [(1, 1000), (32, 32 * 50)] {
            let (h, rate) = rt.block_on(noop_latency(&g.base, clients, jobs));
            t.add_row(vec![
                name.into(),
                clients.to_string(),
                h.len().to_string(),
                percentile_ms(&h, 0.5),
                percentile_ms(&h, 0.99),
                format!("{rate:.0}"),
            ]);
        }
    }
    println!("{t}");
}
