//! The stores' key-value interface (`src/kv.rs`), the same checks on each implementation: sled,
//! and etcd (with `--features etcd`) against a real etcd, where a batch carrying a leader's
//! fence is refused, whole, once that leader has gone.

mod common;
use gantry::kv::{Kv, SledKv, Write};

fn keys(kv: &dyn Kv, tree: &str, prefix: &[u8]) -> Vec<Vec<u8>> {
    let mut found = vec![];
    kv.scan(tree, prefix, &mut |k, _| {
        found.push(k.to_vec());
        Ok(true)
    })
    .unwrap();
    found
}

/// What every implementation must do, as the stores use it.
fn behaves(kv: &dyn Kv) {
    assert_eq!(kv.get("t", b"a").unwrap(), None);
    assert_eq!(kv.count("t").unwrap(), 0);
    assert_eq!(kv.last_key("t").unwrap(), None);
    // Binary keys (job ids, big-endian) come back in byte order, trees apart.
    let (k1, k2, k256) = (1u64.to_be_bytes(), 2u64.to_be_bytes(), 256u64.to_be_bytes());
    kv.apply(&[Write::Put("t", &k2, b"two")]).unwrap();
    kv.apply(&[
        Write::Put("t", &k256, b"big"),
        Write::Put("t", &k1, b"one"),
        Write::Put("u", &k1, b"other tree"),
    ])
    .unwrap();
    assert_eq!(
        keys(kv, "t", b""),
        vec![k1.to_vec(), k2.to_vec(), k256.to_vec()]
    );
    assert_eq!(kv.count("t").unwrap(), 3);
    assert_eq!(kv.count("u").unwrap(), 1);
    assert_eq!(kv.last_key("t").unwrap(), Some(k256.to_vec()));
    assert_eq!(kv.get("t", &k1).unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(
        kv.get("u", &k1).unwrap().as_deref(),
        Some(&b"other tree"[..])
    );
    // A prefix selects (a job's log entries: id then serial).
    let mut log_key = k1.to_vec();
    log_key.extend_from_slice(&7u64.to_be_bytes());
    kv.apply(&[Write::Put("log", &log_key, b"entry")]).unwrap();
    kv.apply(&[Write::Put("log", &k2, b"not job 1's")]).unwrap();
    assert_eq!(keys(kv, "log", &k1), vec![log_key.clone()]);
    // A scan stops when told.
    let mut seen = 0;
    kv.scan("t", b"", &mut |_, _| {
        seen += 1;
        Ok(false)
    })
    .unwrap();
    assert_eq!(seen, 1);
    // Deletes say whether the key was there; a move between trees is one batch.
    assert_eq!(
        kv.apply(&[Write::Delete("t", &k1), Write::Delete("t", b"missing")])
            .unwrap(),
        vec![true, false]
    );
    kv.apply(&[Write::Delete("t", &k2), Write::Put("v", &k2, b"two")])
        .unwrap();
    assert_eq!(kv.get("t", &k2).unwrap(), None);
    assert_eq!(kv.get("v", &k2).unwrap().as_deref(), Some(&b"two"[..]));
    assert_eq!(keys(kv, "t", b""), vec![k256.to_vec()]);
    // More records than one answer carries (etcd reads a scan in pages), all in order, and a
    // scan that stops early stops.
    let many: Vec<[u8; 8]> = (0..1234u64).map(u64::to_be_bytes).collect();
    for chunk in many.chunks(100) {
        let writes: Vec<Write> = chunk.iter().map(|k| Write::Put("m", k, b"x")).collect();
        kv.apply(&writes).unwrap();
    }
    assert_eq!(
        keys(kv, "m", b""),
        many.iter().map(|k| k.to_vec()).collect::<Vec<_>>()
    );
    let mut seen = 0;
    kv.scan("m", b"", &mut |_, _| {
        seen += 1;
        Ok(seen < 700)
    })
    .unwrap();
    assert_eq!(seen, 700);
}

#[test]
fn sled_behaves() {
    let dir = tempfile::tempdir().unwrap();
    let commit = gantry::storage::GroupCommit::open(&dir.path().join("db")).unwrap();
    behaves(&SledKv::new(&commit));
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_behaves_and_fences_whole_batches() {
    use common::etcd::EtcdCluster;
    use common::have_etcd;
    use gantry::ha::{EtcdKv, EtcdOptions, campaign, connect};
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1);
    let opts = EtcdOptions {
        endpoints: etcd.endpoints(),
        prefix: "/gantry/kvtest".into(),
        ca: None,
        user: None,
        ttl: 2,
    };
    let client = connect(&opts).await.unwrap();
    let kv = tokio::task::block_in_place(|| EtcdKv::connect(&opts, None)).unwrap();
    tokio::task::block_in_place(|| behaves(&kv));

    let leader = campaign(&client, &opts, "master-a").await.unwrap();
    let fenced_opts = EtcdOptions {
        prefix: "/gantry/fenced".into(),
        ..opts.clone()
    };
    let fenced =
        tokio::task::block_in_place(|| EtcdKv::connect(&fenced_opts, Some(leader.fence())))
            .unwrap();
    tokio::task::block_in_place(|| {
        fenced
            .apply(&[Write::Put("jobs", b"1", b"queued")])
            .unwrap();
    });
    leader.resign().await.unwrap();
    tokio::task::block_in_place(|| {
        let refused = fenced.apply(&[
            Write::Put("jobs", b"2", b"queued"),
            Write::Delete("jobs", b"1"),
        ]);
        assert!(refused.is_err(), "a former leader wrote");
        // Nothing of the refused batch happened.
        assert_eq!(fenced.get("jobs", b"2").unwrap(), None);
        assert_eq!(
            fenced.get("jobs", b"1").unwrap().as_deref(),
            Some(&b"queued"[..])
        );
    });
}
