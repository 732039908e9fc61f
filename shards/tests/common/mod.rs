//! Set-up shared by the shard tests (each file says `mod common;`).

// Each test file uses only part of this module.
#![allow(dead_code)]

use ferry_proto::conn::{ClientConn, ClientEvent, ConnLimits, Now};
use ferry_shards::puzzle::PuzzleConfig;
use ferry_shards::ratelimit::{IpLimits, Rate};
use ferry_shards::{ConnId, Shard, ShardConfig};

/// A rate limit that never limits.
pub const OFF: Rate = Rate { per_s: 0, burst: 0 };

/// Every per-address limit off (`entries_max` 1 024).
pub fn ip_limits_off() -> IpLimits {
    IpLimits::off(1_024)
}

/// The test defaults for shard `shard` of `shards`: handshake, idle and ping never fire (the
/// stall timeouts keep `ConnLimits::default()`), address limits and media rate off, puzzles off
/// (`levels` 0), no store, a 1 GiB memory budget. Tests override only what they test:
/// `ShardConfig { memory_bytes_max, ..common::config(0, 1) }`.
pub fn config(shard: u16, shards: usize) -> ShardConfig {
    ShardConfig {
        shard,
        shards,
        node_id: [9; 32],
        seed: [1; 32],
        conn_limits: ConnLimits {
            handshake_timeout_ms: u64::MAX / 4,
            idle_timeout_ms: u64::MAX / 4,
            ping_interval_ms: u64::MAX / 8,
            ..ConnLimits::default()
        },
        ip_limits: ip_limits_off(),
        connections_max: 10_000,
        hop_queue_msgs_max: 100,
        store: None,
        media_upload_rate: OFF,
        memory_bytes_max: 1 << 30,
        puzzle: PuzzleConfig {
            levels: 0,
            ..PuzzleConfig::default()
        },
    }
}

/// Everything the shard has ready to write, as (conn, bytes), each counted as written.
pub fn drain(shard: &mut Shard, now: Now) -> Vec<(ConnId, Vec<u8>)> {
    let mut ready = Vec::new();
    shard.take_ready(&mut ready);
    let mut out = Vec::new();
    for conn in ready {
        let o = shard.take_output(conn);
        let n = o.bytes.as_ref().map_or(0, |b| b.len());
        shard.on_written(now, conn, n);
        if let Some(b) = o.bytes {
            out.push((conn, b.to_vec()));
        }
    }
    out
}

/// Frames the node sent to `conn` in `out` (from [`drain`]).
pub fn frames_to(out: &[(ConnId, Vec<u8>)], conn: ConnId) -> Vec<ClientEvent> {
    let mut cc = ClientConn::default();
    for (c, b) in out {
        if *c == conn {
            cc.on_bytes(b);
        }
    }
    let mut evs = Vec::new();
    while let Some(ev) = cc.poll_event().unwrap() {
        evs.push(ev);
    }
    evs
}
