//! Store benchmark: append throughput and replay (recovery) time of one shard's log on disk.
//!
//! `ferry-storebench [--blobs 1000000] [--size 256] [--dir /var/tmp/ferry-storebench] [--policy none|interval|always]`
//!
//! Appends N blobs spread over 10,000 dests, closes the log, then reopens it (full replay with
//! checksums and index rebuild) and prints both times. The directory is removed at the end.

use std::path::PathBuf;
use std::time::Instant;

use ferry_proto::Dest;
use ferry_shards::store::backend::MmapBackend;
use ferry_shards::store::{FsyncPolicy, Log, StoreLimits};

fn main() {
    let mut blobs: u64 = 1_000_000;
    let mut size = 256usize;
    let mut dir = PathBuf::from("/var/tmp/ferry-storebench");
    let mut policy = FsyncPolicy::Interval { ms: 10 };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--blobs" => blobs = args.next().and_then(|v| v.parse().ok()).unwrap_or(blobs),
            "--size" => size = args.next().and_then(|v| v.parse().ok()).unwrap_or(size),
            "--dir" => dir = args.next().map(PathBuf::from).unwrap_or(dir),
            "--policy" => {
                policy = match args.next().as_deref() {
                    Some("none") => FsyncPolicy::None,
                    Some("always") => FsyncPolicy::Always,
                    _ => FsyncPolicy::Interval { ms: 10 },
                }
            }
            other => {
                eprintln!("ferry-storebench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let limits = StoreLimits {
        disk_bytes_max: 64 << 30,
        dest_blobs_max: 1 << 20,
        dest_bytes_max: 1 << 40,
        ..StoreLimits::default()
    };
    let now = 1_800_000_000u64;
    let payload = vec![0x5au8; size];
    let backend = MmapBackend::new(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let (mut log, _) =
        Log::open(backend, 0, limits.clone(), policy, now).unwrap_or_else(|e| panic!("open: {e}"));
    let t = Instant::now();
    for i in 0..blobs {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&(i % 10_000).to_le_bytes());
        log.append(now, Dest(d), i, 3_600, &payload)
            .unwrap_or_else(|e| panic!("append {i}: {e}"));
        if i % 4096 == 0 {
            let ms = u64::try_from(t.elapsed().as_millis())
                .expect("milliseconds since the run started fit a u64 (584 million years)");
            log.poll_sync(ms).unwrap_or_else(|e| panic!("sync: {e}"));
        }
    }
    log.sync_now().unwrap_or_else(|e| panic!("sync: {e}"));
    let append_s = t.elapsed().as_secs_f64();
    let segments = log.segment_count();
    drop(log);
    let t = Instant::now();
    let backend = MmapBackend::new(&dir).unwrap_or_else(|e| panic!("{e}"));
    let (log, rec) =
        Log::open(backend, 0, limits, policy, now).unwrap_or_else(|e| panic!("reopen: {e}"));
    let replay_s = t.elapsed().as_secs_f64();
    assert_eq!(log.blobs() as u64, blobs, "replay lost blobs");
    println!(
        "blobs {blobs} × {size} B, policy {policy:?}: append {append_s:.2} s ({:.0} blobs/s, {:.0} MB/s); \
         replay {replay_s:.2} s ({:.0} blobs/s) over {segments} segments; recovery {rec:?}",
        blobs as f64 / append_s,
        (blobs as f64 * size as f64) / append_s / 1e6,
        blobs as f64 / replay_s
    );
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}
