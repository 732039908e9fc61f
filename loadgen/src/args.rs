//! The command line: the workloads and every flag, and `--duration` and `--warmup` checked.

use std::time::Duration;

use anyhow::bail;
use clap::{Parser as ClapParser, ValueEnum};

use crate::measure::nanos;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Workload {
    /// P senders, each to its own live receiver.
    Pairs,
    /// P senders to one receiver.
    Fanin,
    /// Connect, prove, subscribe, disconnect, as fast as P threads can.
    Churn,
    /// P idle connections; reports server RSS per connection (needs --server-pid).
    Idle,
    /// Pairs at a rate above saturation; also samples server RSS every second.
    Overload,
    /// Store and forward: P senders store `--messages` blobs each for offline recipients, then
    /// the recipients reconnect, prove and drain them (ferry), or the same through a file-backed
    /// work-queue stream of NATS JetStream (nats://, the server started with `-js`).
    Offline,
}

#[derive(ClapParser, Debug)]
#[command(
    name = "ferry-loadgen",
    about = "open-loop load generator for ferry, NATS, Redis and the floor"
)]
pub(crate) struct Args {
    /// ferry://host[:port], ferry+tls://host[:port], nats://host:port, redis://host:port or
    /// floor://host:port (a name is resolved once, to the first address that accepts).
    #[arg(long)]
    pub(crate) target: String,
    #[arg(long, value_enum, default_value = "pairs")]
    pub(crate) workload: Workload,
    /// Pairs (pairs, overload), senders (fanin), threads (churn) or connections (idle).
    #[arg(long, default_value_t = 8)]
    pub(crate) pairs: usize,
    /// Messages per second in total; 0 = closed loop, as fast as possible.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) rate: u64,
    /// Payload bytes per message (at least 24).
    #[arg(long, default_value_t = 256)]
    pub(crate) size: usize,
    /// Measured seconds (at most a day).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Seconds of load before measuring (at most a day).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) warmup: f64,
    /// Messages in flight per pair in closed-loop mode.
    #[arg(long, default_value_t = 512)]
    pub(crate) window: u64,
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Server process to read CPU time and RSS from (/proc/PID).
    #[arg(long)]
    pub(crate) server_pid: Option<u32>,
    #[arg(long)]
    pub(crate) json_out: Option<std::path::PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Offline workload: blobs per pair.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) messages: u64,
    /// For ferry+tls://: PEM file with the certificate or CA to trust (default: the public
    /// CAs of Mozilla's list).
    #[arg(long)]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
    /// For ferry+tls://: the name the certificate must carry (default: the target's host).
    #[arg(long)]
    pub(crate) tls_name: Option<String>,
    /// Event loops (threads) the pairs are split over (pairs, overload): one per core the
    /// generator may use.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// The server's cores, for marking a point generator-bound (an event loop saturated while
    /// the server's cores are not).
    #[arg(long, default_value_t = 1)]
    pub(crate) server_cores: usize,
}

/// The longest `--duration` and `--warmup`: a day, so that the run's nanosecond clock (u64,
/// 584 years) never nears its end.
const RUN_SECONDS_MAX: f64 = 86_400.0;

/// `--duration` or `--warmup` in nanoseconds, refused outside 0 ..= `RUN_SECONDS_MAX`.
pub(crate) fn run_ns(flag: &str, s: f64) -> anyhow::Result<u64> {
    if !(0.0..=RUN_SECONDS_MAX).contains(&s) {
        bail!("{flag} {s}: seconds from 0 to {RUN_SECONDS_MAX}");
    }
    Ok(nanos(Duration::from_secs_f64(s)))
}
