//! What a send puzzle costs, per effort level: the honest client's solve time (CPU ms of one
//! core of this machine), the node's verification time, and an attacker's sends per second per
//! core with and without puzzles. A plain `main`, as the project's benches:
//!
//! ```text
//! cargo run --release -p ferry-proto --example puzzle_cost [messages per level]
//! ```
//!
//! The efforts are the node's defaults (`puzzle_effort_max` and the levels below it, halving);
//! pass `FERRY_PUZZLE_EFFORTS=1,2,4,...` to measure others.

use std::hint::black_box;

use bytes::BytesMut;
use ferry_proto::frame::{Dest, put_send_header};
use ferry_proto::puzzle::{self, SendPass};

/// CPU time of this thread, in ms (the machine is shared: wall time would count other work).
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

fn main() {
    let messages: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(40);
    let efforts: Vec<u32> = std::env::var("FERRY_PUZZLE_EFFORTS")
        .ok()
        .map(|v| v.split(',').filter_map(|e| e.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 4, 8]);
    let seed = [0x5e; 32];
    let dest = Dest([0xd0; 16]);
    let payload = vec![0xab_u8; 1024];

    // Baseline: what one core spends to make an unpuzzled Send (encode the frame and hash the
    // payload, a stand-in for the attacker's TLS record work).
    let n = 200_000u64;
    let mut out = BytesMut::with_capacity(2048);
    let t = thread_cpu_ms();
    for i in 0..n {
        out.clear();
        put_send_header(&mut out, &dest, i, 0, 0, payload.len());
        out.extend_from_slice(&payload);
        black_box(blake3::hash(&out));
    }
    let base_ms = (thread_cpu_ms() - t) / n as f64;
    let base_rate = 1e3 / base_ms;
    println!(
        "baseline: {:.2} µs per unpuzzled 1 KiB send → {:.0} sends/s/core",
        base_ms * 1e3,
        base_rate
    );

    // One Equi-X solver run, compiled (x86-64 and aarch64 where the platform lets a process map
    // code: Linux, Android, macOS) against interpreted (what iOS allows), and how many solutions
    // a run yields: a run with none is the cost's tail.
    let runs = 100u32;
    let mut mem = equix::SolverMemory::new();
    for (name, rt) in [
        ("compiled", equix::RuntimeOption::CompileOnly),
        ("interpreted", equix::RuntimeOption::InterpretOnly),
    ] {
        let mut b = equix::EquiXBuilder::new();
        b.runtime(rt);
        let (mut solutions, mut empty) = (0usize, 0u32);
        let t = thread_cpu_ms();
        for i in 0..runs {
            let n = b
                .build(&i.to_le_bytes())
                .map_or(0, |eq| eq.solve_with_memory(&mut mem).len());
            solutions += n;
            empty += u32::from(n == 0);
        }
        println!(
            "one solver run, {name}: {:.1} ms, {:.2} solutions per run, {:.0} % of runs without one",
            (thread_cpu_ms() - t) / f64::from(runs),
            solutions as f64 / f64::from(runs),
            f64::from(empty) * 100.0 / f64::from(runs)
        );
    }

    println!(
        "effort | honest solve ms (mean, p90, p99, max) | over 50 ms | verify µs | attacker sends/s/core | fall"
    );
    for &effort in &efforts {
        let mut times = Vec::new();
        let mut verify_ms = 0.0;
        let mut nonce = 0u128;
        for m in 0..messages {
            let digest = puzzle::message_digest(u64::from(m), 0, &payload);
            let t = thread_cpu_ms();
            let a = puzzle::solve(&seed, &dest, &digest, effort, nonce.to_le_bytes())
                .expect("effort in range");
            times.push(thread_cpu_ms() - t);
            nonce = nonce.wrapping_add(1 << 64);
            let t = thread_cpu_ms();
            for _ in 0..10 {
                black_box(puzzle::verify(&seed, &dest, &digest, &a).expect("valid"));
            }
            verify_ms += (thread_cpu_ms() - t) / 10.0;
            black_box(SendPass {
                puzzle: Some(a),
                capability: None,
            });
        }
        times.sort_by(f64::total_cmp);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let p90 = times[times.len() * 9 / 10];
        let p99 = times[times.len() * 99 / 100];
        let max = times[times.len() - 1];
        let over = times.iter().filter(|&&t| t > 50.0).count();
        let rate = 1e3 / (mean + base_ms);
        println!(
            "{effort:6} | {mean:8.1} {p90:8.1} {p99:8.1} {max:8.1} | {:5.1} % | {:9.1} | {rate:21.1} | {:.0}x",
            over as f64 * 100.0 / times.len() as f64,
            verify_ms / f64::from(messages) * 1e3,
            base_rate / rate
        );
    }
}
