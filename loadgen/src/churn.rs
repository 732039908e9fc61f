//! The churn workload: connect, prove, subscribe, disconnect, as fast as the threads can.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::args::Args;
use crate::connect::open_receiver;
use crate::measure::nanos;
use crate::wire::Kind;

/// Connect + prove + subscribe + disconnect cycles on `pairs` threads.
pub(crate) fn run_churn(
    args: &Args,
    kind: Kind,
    addr: SocketAddr,
) -> anyhow::Result<serde_json::Value> {
    let end = Instant::now() + Duration::from_secs_f64(args.warmup + args.duration);
    let warm = Instant::now() + Duration::from_secs_f64(args.warmup);
    let threads: Vec<_> = (0..args.pairs.max(1))
        .map(|t| {
            let seed = args.seed;
            let size = args.size;
            std::thread::spawn(move || -> anyhow::Result<Histogram<u64>> {
                let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3)?;
                let mut i = t * 1_000_000;
                while Instant::now() < end {
                    let t0 = Instant::now();
                    drop(open_receiver(kind, addr, seed, i, size)?);
                    if t0 >= warm {
                        h.record(nanos(t0.elapsed()).max(1))?;
                    }
                    i += 1;
                }
                Ok(h)
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    for t in threads {
        let h = t
            .join()
            .map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
        all.add(&h)?;
    }
    Ok(serde_json::json!({
        "target": args.target,
        "workload": "churn",
        "threads": args.pairs,
        "cycles": all.len(),
        "cycles_per_s": all.len() as f64 / args.duration,
        "cycle_us": {
            "p50": all.value_at_quantile(0.5) as f64 / 1000.0,
            "p99": all.value_at_quantile(0.99) as f64 / 1000.0,
            "max": all.max() as f64 / 1000.0,
        },
    }))
}
