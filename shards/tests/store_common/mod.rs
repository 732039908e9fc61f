//! What the store tests share: the clock start, small limits, dests, and opening a log on an
//! in-memory backend (each store test file says `mod store_common;`).

// Each test file uses only part of this module.
#![allow(dead_code)]

use ferry_proto::Dest;
use ferry_shards::store::backend::{MemBackend, MmapBackend};
use ferry_shards::store::{FsyncPolicy, Log, StoreLimits};

pub const T0: u64 = 1_800_000_000;

pub fn limits() -> StoreLimits {
    StoreLimits {
        segment_bytes: 4096,
        segment_roll_s: 3_600,
        ttl_max_s: 72 * 3_600,
        dest_blobs_max: 50,
        dest_bytes_max: 64 * 1024,
        disk_bytes_max: 4096 * 64,
        high_water_percent: 90,
        ..StoreLimits::default()
    }
}

pub fn d(i: u8) -> Dest {
    Dest([i; 16])
}

pub fn open(b: &MemBackend, policy: FsyncPolicy, now: u64) -> Log<MemBackend> {
    Log::open(b.clone(), 0, limits(), policy, now).unwrap().0
}

pub fn payloads(log: &Log<MemBackend>, dest: Dest, now: u64) -> Vec<Vec<u8>> {
    log.drain(&dest, now)
        .into_iter()
        .map(|(_, p)| p.to_vec())
        .collect()
}

pub fn payloads_mmap(log: &Log<MmapBackend>, dest: Dest) -> Vec<Vec<u8>> {
    log.drain(&dest, T0)
        .into_iter()
        .map(|(_, p)| p.to_vec())
        .collect()
}
