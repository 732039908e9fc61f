//! Store benchmark: append throughput and replay (recovery) time of one shard's log on disk.
//!
//! `ferry-storebench [--blobs 1000000] [--size 256] [--dir /var/tmp/ferry-storebench] [--policy none|interval|always] [--floor]`
//!
//! Appends N blobs spread over 10,000 dests, closes the log, then reopens it (full replay with
//! checksums and index rebuild) and prints both times. The directory is removed at the end.
//!
//! `--floor` also measures, in the same run on the same disk, the raw append floor: the same
//! number of records of the same size on disk copied one after another into a preallocated,
//! mapped file with the same sync cadence (`fdatasync` after each append for `always`, at the
//! same group-commit points for `interval`), with no index, checksum, quota or segment roll; and
//! prints the log's appends per second as a fraction of it.

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
    let mut floor = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--blobs" => blobs = args.next().and_then(|v| v.parse().ok()).unwrap_or(blobs),
            "--size" => size = args.next().and_then(|v| v.parse().ok()).unwrap_or(size),
            "--dir" => dir = args.next().map(PathBuf::from).unwrap_or(dir),
            "--floor" => floor = true,
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
    if floor {
        let floor_s = append_floor(&dir, blobs, size, policy);
        println!(
            "raw append floor, same records and sync cadence: {floor_s:.2} s ({:.0} appends/s); the log reached {:.2} of it",
            blobs as f64 / floor_s,
            floor_s / append_s
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The raw append floor (see the module doc): seconds for `blobs` records of `size` payload
/// bytes. (The one `unsafe` of this binary: mapping a file, as the store's backend does.)
#[allow(unsafe_code)]
fn append_floor(dir: &std::path::Path, blobs: u64, size: usize, policy: FsyncPolicy) -> f64 {
    let record = ferry_shards::store::format::record_bytes(size);
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join("floor.dat");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let total = record as u64 * blobs;
    // Reserved up front, as segments are (`posix_fallocate`), so appends never extend the file.
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, total)
        .unwrap_or_else(|e| panic!("fallocate: {e}"));
    // SAFETY: the file is this process's own, opened above and not truncated while mapped.
    let mut map =
        unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap_or_else(|e| panic!("mmap: {e}"));
    let mut rec = vec![0u8; record];
    rec[64..64 + size].fill(0x5a);
    let t = Instant::now();
    let mut last_sync_ms = 0u64;
    for i in 0..blobs {
        let at = usize::try_from(i).expect("a record index fits a usize") * record;
        rec[..8].copy_from_slice(&i.to_le_bytes());
        map[at..at + record].copy_from_slice(&rec);
        match policy {
            FsyncPolicy::Always => file.sync_data().unwrap_or_else(|e| panic!("sync: {e}")),
            FsyncPolicy::Interval { ms } if i % 4096 == 0 => {
                let now = u64::try_from(t.elapsed().as_millis()).expect("milliseconds fit a u64");
                if now >= last_sync_ms + ms {
                    last_sync_ms = now;
                    file.sync_data().unwrap_or_else(|e| panic!("sync: {e}"));
                }
            }
            _ => {}
        }
    }
    file.sync_data().unwrap_or_else(|e| panic!("sync: {e}"));
    let s = t.elapsed().as_secs_f64();
    drop(map);
    s
}
