//! The offline workload (ferry only): store blobs for offline mailboxes, then their owners
//! connect, drain and ack them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;

use crate::args::Args;
use crate::connect::{ferry_connect, mailbox};
use crate::measure::{nanos, own_cpu_s, server_usage};
use crate::wire::{HEADER_BYTES, Kind};

/// Offline: each of `pairs` threads stores `messages` blobs for its own offline mailbox, in
/// windows of 256 outstanding sends, timing each send until its answer (`Accepted`: the sender
/// has not proven the dest, so the node does not say live or stored); then each
/// mailbox's owner connects, proves `Drain`, and drains and acks everything.
pub(crate) fn run_offline(
    args: &Args,
    kind: Kind,
    addr: SocketAddr,
) -> anyhow::Result<serde_json::Value> {
    use ferry_proto::conn::ClientEvent;
    if kind != Kind::Ferry {
        bail!("--workload offline drives ferry's store only");
    }
    let n = args.messages;
    let size = args.size.max(HEADER_BYTES);
    let mark0 = cpu_mark(args.server_pid)?;
    let store_start = Instant::now();
    let threads: Vec<_> = (0..args.pairs.max(1))
        .map(|i| {
            let seed = args.seed;
            std::thread::spawn(move || -> anyhow::Result<(Histogram<u64>, u64)> {
                let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3)?;
                let mut c = ferry_connect(addr)?;
                let dest = mailbox(seed, 1_000_000 + i).dest(c.epoch())?;
                let payload = vec![0x5au8; size];
                let mut sent_at = std::collections::HashMap::new();
                let (mut next, mut stored) = (0u64, 0u64);
                while stored < n {
                    while next < n && sent_at.len() < 256 {
                        // FLAG_ACK: the generator has not proven `dest`, so it is answered
                        // `Accepted` once the blob is durable, and only when it asks.
                        c.send(dest, next, ferry_sdk::FLAG_ACK, &payload);
                        sent_at.insert(next, Instant::now());
                        next += 1;
                    }
                    c.flush()?;
                    if let ClientEvent::SendResult { msg_id, status, .. } =
                        c.recv(Duration::from_secs(30))?
                    {
                        if status != ferry_sdk::SendStatus::Accepted {
                            bail!("blob {msg_id}: {status:?}");
                        }
                        if let Some(t) = sent_at.remove(&msg_id) {
                            h.record(nanos(t.elapsed()).max(1))?;
                        }
                        stored += 1;
                    }
                }
                Ok((h, stored))
            })
        })
        .collect();
    let (store_h, stored) = join_stored(threads)?;
    let store_s = store_start.elapsed().as_secs_f64();
    let mark1 = cpu_mark(args.server_pid)?;
    let drain_start = Instant::now();
    let threads: Vec<_> = (0..args.pairs.max(1))
        .map(|i| {
            let seed = args.seed;
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut c = ferry_connect(addr)?;
                let epoch = c.epoch();
                let mb = mailbox(seed, 1_000_000 + i);
                let signer = mb.signer(epoch)?;
                c.prove(&[&signer], ferry_sdk::Op::Drain)?;
                let mut got = 0;
                loop {
                    let (blobs, more) = c.drain(signer.dest())?;
                    got += blobs.len() as u64;
                    c.ack(&blobs)?;
                    if !more {
                        return Ok(got);
                    }
                }
            })
        })
        .collect();
    let drained = join_drained(threads)?;
    let drain_s = drain_start.elapsed().as_secs_f64();
    let run = OfflineRun {
        system: "ferry",
        pairs: args.pairs,
        size,
        stored,
        store_s,
        store_h,
        drained,
        drain_s,
        marks: [mark0, mark1, cpu_mark(args.server_pid)?],
    };
    Ok(run.report(&args.target))
}

/// CPU seconds of the server (when its pid is known) and of this process, at one moment.
pub(crate) type CpuMark = (Option<f64>, f64);

pub(crate) fn cpu_mark(server_pid: Option<u32>) -> anyhow::Result<CpuMark> {
    let server = server_pid.and_then(server_usage).map(|(u, s, _)| u + s);
    Ok((server, own_cpu_s()?))
}

/// What one store-phase thread returns: its time-to-stored histogram and its count.
pub(crate) type Stored = anyhow::Result<(Histogram<u64>, u64)>;

/// Joins the store phase's threads: their merged time-to-stored histogram and their count.
pub(crate) fn join_stored(threads: Vec<std::thread::JoinHandle<Stored>>) -> Stored {
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut stored = 0;
    for t in threads {
        let (h, s) = t
            .join()
            .map_err(|_| anyhow::anyhow!("an offline sender panicked"))??;
        all.add(&h)?;
        stored += s;
    }
    Ok((all, stored))
}

/// Joins the drain phase's threads: what they drained in all.
pub(crate) fn join_drained(
    threads: Vec<std::thread::JoinHandle<anyhow::Result<u64>>>,
) -> anyhow::Result<u64> {
    let mut drained = 0;
    for t in threads {
        drained += t
            .join()
            .map_err(|_| anyhow::anyhow!("an offline recipient panicked"))??;
    }
    Ok(drained)
}

/// What one offline run measured, ferry's or JetStream's.
pub(crate) struct OfflineRun {
    pub(crate) system: &'static str,
    pub(crate) pairs: usize,
    pub(crate) size: usize,
    pub(crate) stored: u64,
    pub(crate) store_s: f64,
    pub(crate) store_h: Histogram<u64>,
    pub(crate) drained: u64,
    pub(crate) drain_s: f64,
    /// CPU at the start, between the phases and at the end.
    pub(crate) marks: [CpuMark; 3],
}

impl OfflineRun {
    /// The result both offline workloads print.
    pub(crate) fn report(&self, target: &str) -> serde_json::Value {
        let per = |a: Option<f64>, b: Option<f64>, count: u64| match (a, b) {
            (Some(a), Some(b)) if count > 0 => serde_json::json!((b - a) * 1e6 / count as f64),
            _ => serde_json::Value::Null,
        };
        let [(srv0, gen0), (srv1, gen1), (srv2, gen2)] = self.marks;
        let h = &self.store_h;
        serde_json::json!({
            "target": target,
            "system": self.system,
            "workload": "offline",
            "pairs": self.pairs,
            "size": self.size,
            "stored": self.stored,
            "stored_per_s": self.stored as f64 / self.store_s,
            "time_to_stored_us": {
                "p50": h.value_at_quantile(0.5) as f64 / 1000.0,
                "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
                "max": h.max() as f64 / 1000.0,
            },
            "drained": self.drained,
            "drained_per_s": self.drained as f64 / self.drain_s,
            "lost": self.stored.saturating_sub(self.drained),
            "store_server_cpu_us_per_msg": per(srv0, srv1, self.stored),
            "store_loadgen_cpu_us_per_msg": per(Some(gen0), Some(gen1), self.stored),
            "drain_server_cpu_us_per_msg": per(srv1, srv2, self.drained),
            "drain_loadgen_cpu_us_per_msg": per(Some(gen1), Some(gen2), self.drained),
        })
    }
}
