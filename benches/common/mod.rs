//! The floors gantry is measured against, started in the same run as gantry itself: a durable
//! write per record with fdatasync, sled with gantry's group commit, and a minimal warp JSON
//! server (what HTTP alone costs on this machine).
// Each bench uses a different subset.
#![allow(dead_code)]

use gantry::storage::GroupCommit;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One 256-byte write plus fdatasync per record, one writer: records per second.
pub fn fdatasync_loop(run: Duration) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("log")).unwrap();
    let record = [7u8; 256];
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed() < run {
        file.write_at(&record, n * 256).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// `writers` tasks each inserting 256-byte records into sled and awaiting the group commit:
/// durable records per second.
pub async fn group_commit(writers: usize, run: Duration) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let commit = GroupCommit::open(&dir.path().join("db")).unwrap();
    let tree = commit.db().open_tree("bench").unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (commit, tree, done) = (commit.clone(), tree.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while start.elapsed() < run {
                    let key = format!("{w:04}-{i:012}");
                    tree.insert(key.as_bytes(), &[7u8; 256][..]).unwrap();
                    commit.durable().await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// A hello-world warp server answering a small JSON document on every path, on its own
/// runtime with as many workers as gantry's; answers its base URL.
pub fn hello_server() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        use warp::Filter;
        let hello = warp::any()
            .map(|| warp::reply::json(&serde_json::json!({"id": 1, "status": "success"})));
        rt.block_on(warp::serve(hello).run(([127, 0, 0, 1], port)));
    });
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    base
}
