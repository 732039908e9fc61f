//! The timing loop the micro-benchmarks share.

use std::time::Instant;

/// Runs `f(iters)` once to warm up, then for `rounds` rounds; returns (median, min, max) ns per
/// iteration.
pub fn measure(rounds: usize, iters: u64, mut f: impl FnMut(u64)) -> (f64, f64, f64) {
    f(iters / 10 + 1); // warm-up
    let mut per: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f(iters);
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    per.sort_by(|a, b| a.total_cmp(b));
    (per[per.len() / 2], per[0], per[per.len() - 1])
}
