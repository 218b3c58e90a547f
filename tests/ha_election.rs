//! Leadership over a real 3-member etcd cluster (issue 16, first part; `--features etcd`): one
//! leader at a time, fenced writes, a partitioned leader that stops before another one starts,
//! and what losing one or two etcd members does.
#![cfg(feature = "etcd")]

mod common;
use common::etcd::{EtcdCluster, Proxy};
use common::have_etcd;
use gantry::ha::{EtcdOptions, campaign, connect, leader};
use std::time::{Duration, Instant};

fn options(endpoints: Vec<String>) -> EtcdOptions {
    EtcdOptions {
        endpoints,
        prefix: "/gantry/test".into(),
        ca: None,
        user: None,
        ttl: 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_fenced_writes_and_a_partitioned_leader_stops_first() {
    if !have_etcd() {
        return;
    }
    let mut etcd = EtcdCluster::start(3);
    // Master a reaches etcd only through a proxy the test can cut; b reaches every member.
    let proxy = Proxy::start(&etcd.endpoints()[0]).await;
    let a_opts = options(vec![proxy.url.clone()]);
    let b_opts = options(etcd.endpoints());
    let a_client = connect(&a_opts).await.unwrap();
    let mut b_client = connect(&b_opts).await.unwrap();

    let mut a = campaign(&a_client, &a_opts, "master-a").await.unwrap();
    assert_eq!(
        leader(&mut b_client, "/gantry/test")
            .await
            .unwrap()
            .as_deref(),
        Some("master-a")
    );
    assert!(a.fenced_put("/gantry/test/probe", b"a").await.unwrap());
    // b campaigns and waits while a leads.
    let b_task = {
        let (client, opts) = (b_client.clone(), b_opts.clone());
        tokio::spawn(async move {
            let won = campaign(&client, &opts, "master-b").await.unwrap();
            (won, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !b_task.is_finished(),
        "b must not lead while a keeps its lease"
    );
    assert!(!a.is_lost());

    // Partition a from etcd: it notices and stops before b is made leader.
    proxy.cut(true);
    let cut_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), a.lost())
        .await
        .expect("a notices");
    let a_stopped = Instant::now();
    let (mut b, b_started) = tokio::time::timeout(Duration::from_secs(15), b_task)
        .await
        .expect("b takes over")
        .unwrap();
    assert!(a_stopped < b_started, "a stopped after b started");
    eprintln!(
        "a stopped {:?} after the cut; b leads {:?} after the cut",
        a_stopped - cut_at,
        b_started - cut_at
    );
    assert_eq!(
        leader(&mut b_client, "/gantry/test")
            .await
            .unwrap()
            .as_deref(),
        Some("master-b")
    );
    // Healed, a's writes are fenced off: it is no longer the leader.
    proxy.cut(false);
    let mut fenced = None;
    for _ in 0..50 {
        match a.fenced_put("/gantry/test/probe", b"stale").await {
            Ok(done) => {
                fenced = Some(done);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(fenced, Some(false), "a stale leader's write went through");
    assert!(b.fenced_put("/gantry/test/probe", b"b").await.unwrap());

    // One etcd member down: b still leads and writes.
    etcd.kill_member(2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!b.is_lost(), "one member down must not cost the leadership");
    assert!(b.fenced_put("/gantry/test/probe", b"b2").await.unwrap());
    // Two down: no quorum; writes fail and b gives up leading.
    etcd.kill_member(1);
    assert!(b.fenced_put("/gantry/test/probe", b"b3").await.is_err());
    tokio::time::timeout(Duration::from_secs(10), b.lost())
        .await
        .expect("b notices");
    // Back: a master leads again, and what was written before is there.
    etcd.start_member(1);
    etcd.start_member(2);
    tokio::task::block_in_place(|| etcd.wait_healthy());
    let mut c_client = connect(&b_opts).await.unwrap();
    let c = tokio::time::timeout(
        Duration::from_secs(30),
        campaign(&c_client, &b_opts, "master-c"),
    )
    .await
    .expect("a leader after the members return")
    .unwrap();
    // What was acknowledged (b2) is not lost. The write refused without quorum (b3) may still
    // have been committed when the quorum came back: etcd answers such a write with a timeout,
    // not a refusal, so its outcome is unknown to the writer (as after any lost answer).
    let probe = c_client.get("/gantry/test/probe", None).await.unwrap();
    let value = probe.kvs()[0].value();
    assert!(value == b"b2" || value == b"b3", "{value:?}");
    c.resign().await.unwrap();
    assert_eq!(leader(&mut c_client, "/gantry/test").await.unwrap(), None);
    // a won and lost, b won and lost, c won: five changes, counted for operators.
    assert_eq!(gantry::metrics::METRICS.leadership_changes.get(), 5);
}
