//! The streaming workloads (pairs, fanin, overload): open the connections, run the event loops
//! over the measured window while sampling the server, and report.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use mio::net::TcpStream as MioStream;

use crate::args::{Args, Workload, run_ns};
use crate::connect::{open_receiver, open_sender};
use crate::event_loop::{Conn, RunClock, Sender, Totals, event_loop};
use crate::measure::{own_cpu_s, server_usage};
use crate::wire::{HEADER_BYTES, Kind};

/// Opens the run's connections, splits the pairs over `--threads` event loops, samples the
/// server and the generator over the measured window only, and merges what the loops counted.
pub(crate) fn run_stream(
    args: &Args,
    kind: Kind,
    addr: SocketAddr,
) -> anyhow::Result<serde_json::Value> {
    if args.size < HEADER_BYTES {
        bail!("--size must be at least {HEADER_BYTES}");
    }
    let p = args.pairs.max(1);
    let fanin = args.workload == Workload::Fanin;
    let threads = args.threads.clamp(1, p);
    if fanin && threads > 1 {
        bail!("--workload fanin shares one receiver's window: --threads 1");
    }
    let receivers = if fanin { 1 } else { p };
    let mut routes = Vec::with_capacity(receivers);
    // Per loop: its connections and how many pairs it counts.
    let mut loops: Vec<(Vec<Conn>, usize)> = (0..threads).map(|_| (Vec::new(), 0)).collect();
    for i in 0..receivers {
        let (o, route) = open_receiver(kind, addr, args.seed, i, args.size)?;
        o.socket.set_nonblocking(true)?;
        o.socket.set_nodelay(true)?;
        let l = &mut loops[i % threads];
        l.0.push(Conn {
            stream: MioStream::from_std(o.socket),
            tls: o.tls,
            parser: o.parser,
            out: Vec::new(),
            sender: None,
            counts_for: Some(l.1),
            queued: false,
        });
        l.1 += 1;
        routes.push(route);
        if !args.quiet && i % 5000 == 4999 {
            eprintln!("{} receivers", i + 1);
        }
    }
    if kind == Kind::Floor {
        std::thread::sleep(Duration::from_millis(100));
    }
    // 0 = closed loop. Pair i's schedule starts i/p of an interval in: no two pairs in step.
    let interval_ns = (p as u64 * 1_000_000_000)
        .checked_div(args.rate)
        .map_or(0, |i| i.max(1));
    for i in 0..p {
        let o = open_sender(kind, addr, i, args.size)?;
        o.socket.set_nonblocking(true)?;
        o.socket.set_nodelay(true)?;
        let pair = if fanin { 0 } else { i };
        let route = routes[pair].clone();
        let l = &mut loops[pair % threads];
        l.0.push(Conn {
            stream: MioStream::from_std(o.socket),
            tls: o.tls,
            parser: o.parser,
            out: Vec::new(),
            sender: Some(Sender {
                head: route.head(kind, args.size),
                route,
                pair: pair / threads,
                next_due_ns: interval_ns * i as u64 / p as u64,
                interval_ns,
                seq: 0,
                waits_room: false,
            }),
            counts_for: None,
            queued: false,
        });
        if !args.quiet && i % 5000 == 4999 {
            eprintln!("{} senders", i + 1);
        }
    }

    let warm_ns = run_ns("--warmup", args.warmup)?;
    let end_ns = warm_ns + run_ns("--duration", args.duration)?;
    let clock = std::sync::Arc::new(RunClock {
        origin: Instant::now(),
        warm_ns,
        end_ns,
        drain_ns: end_ns + 2_000_000_000,
        sent: Default::default(),
        received: Default::default(),
    });
    let workers: Vec<_> = loops
        .into_iter()
        .enumerate()
        .map(|(t, (conns, pairs))| {
            let clock = clock.clone();
            let (size, window) = (args.size, args.window);
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || event_loop(&clock, conns, pairs, size, window))
        })
        .collect::<Result<_, _>>()?;

    // The measured window, sampled here: the server's CPU from its start to its end only.
    let sleep_until = |ns: u64| {
        let now = clock.now_ns();
        if ns > now {
            std::thread::sleep(Duration::from_nanos(ns - now));
        }
    };
    let mut rss_max = 0u64;
    let progress = |at_s: u64, rss_max: &mut u64| {
        if let Some((_, _, rss)) = args.server_pid.and_then(server_usage) {
            *rss_max = (*rss_max).max(rss);
        }
        if !args.quiet {
            use std::sync::atomic::Ordering::Relaxed;
            eprintln!(
                "[{at_s:>4}s] sent {:>9}/s  received {:>9}/s",
                clock.sent.swap(0, Relaxed),
                clock.received.swap(0, Relaxed),
            );
        }
    };
    // Until `ns` on the run's clock, with a progress line each second; at once if a loop ended
    // early (it failed: its error comes out of the join below).
    let mut second = 1u64;
    let mut wait_until = |ns: u64, rss_max: &mut u64| {
        let failed = || workers.iter().any(|w| w.is_finished());
        while second * 1_000_000_000 < ns && !failed() {
            sleep_until(second * 1_000_000_000);
            progress(second, rss_max);
            second += 1;
        }
        if !failed() {
            sleep_until(ns);
        }
    };
    wait_until(warm_ns, &mut rss_max);
    let usage_start = args.server_pid.and_then(server_usage);
    let own_start = own_cpu_s()?;
    let t_start = Instant::now();
    wait_until(end_ns, &mut rss_max);
    let usage_end = args.server_pid.and_then(server_usage);
    let own_end = own_cpu_s()?;
    let elapsed = t_start.elapsed().as_secs_f64();

    let mut totals = Totals::new()?;
    let mut thread_cores = Vec::with_capacity(threads);
    let mut thread_busy = Vec::with_capacity(threads);
    for w in workers {
        let t = w
            .join()
            .map_err(|_| anyhow::anyhow!("an event loop panicked"))??;
        totals.sent += t.sent;
        totals.delivered += t.delivered;
        totals.late_or_dup += t.late_or_dup;
        totals.rejected += t.rejected;
        totals.backlog_dropped += t.backlog_dropped;
        totals.corrected.add(&t.corrected)?;
        totals.raw.add(&t.raw)?;
        totals.send_lag.add(&t.send_lag)?;
        totals.turns += t.turns;
        totals.visits += t.visits;
        thread_cores.push(if t.wall_s > 0.0 {
            t.cpu_s / t.wall_s
        } else {
            0.0
        });
        thread_busy.push(if t.wall_s > 0.0 {
            (t.cpu_s - t.spin_s).max(0.0) / t.wall_s
        } else {
            0.0
        });
    }
    let dur = args.duration;
    let lost = totals.sent.saturating_sub(totals.delivered);
    let q = |h: &Histogram<u64>| {
        serde_json::json!({
            "p50": h.value_at_quantile(0.50) as f64 / 1000.0,
            "p90": h.value_at_quantile(0.90) as f64 / 1000.0,
            "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            "p999": h.value_at_quantile(0.999) as f64 / 1000.0,
            "max": h.max() as f64 / 1000.0,
        })
    };
    // Saturation is judged by work, not by CPU: a loop waiting for a message due within
    // `SPIN_NS` spins (`Totals::spin_s`).
    let busiest = thread_busy.iter().copied().fold(0.0, f64::max);
    let mut out = serde_json::json!({
        "target": args.target,
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "pairs": p,
        "connections": receivers + p,
        "size": args.size,
        "rate": args.rate,
        "duration_s": dur,
        "offered_per_s": if args.rate == 0 { totals.sent as f64 / dur } else { args.rate as f64 },
        "sent_per_s": totals.sent as f64 / dur,
        "delivered_per_s": totals.delivered as f64 / dur,
        "sent": totals.sent,
        "delivered": totals.delivered,
        "lost": lost,
        "rejected": totals.rejected,
        "backlog_dropped": totals.backlog_dropped,
        "late_or_dup": totals.late_or_dup,
        "latency_us": q(&totals.corrected),
        "latency_raw_us": q(&totals.raw),
        "loadgen_threads": threads,
        // All of the generator's threads, in cores; and each event loop's own share of a core
        // (near 1.0: that loop, not the server, set the pace).
        "loadgen_cpu_cores": (own_end - own_start) / elapsed,
        "loadgen_thread_cpu_cores": thread_cores,
        "loadgen_thread_busy_cores": thread_busy,
        "loadgen_busy_cores": busiest,
        "send_lag_us": q(&totals.send_lag),
        "loop_turns": totals.turns,
        "connection_visits_per_turn": totals.visits as f64 / totals.turns.max(1) as f64,
    });
    if let (Some((u0, s0, _)), Some((u1, s1, rss))) = (usage_start, usage_end) {
        let cpu = (u1 - u0) + (s1 - s0);
        let server_cores = cpu / elapsed;
        out["server_cpu_user_s"] = serde_json::json!(u1 - u0);
        out["server_cpu_sys_s"] = serde_json::json!(s1 - s0);
        out["server_cpu_cores"] = serde_json::json!(server_cores);
        out["server_cpu_s_per_million"] = serde_json::json!(if totals.delivered > 0 {
            cpu / totals.delivered as f64 * 1e6
        } else {
            0.0
        });
        out["server_rss_kib"] = serde_json::json!(rss);
        out["server_rss_max_kib"] = serde_json::json!(rss_max.max(rss));
        // BENCHMARKS.md: a point where an event loop's core is saturated and the server's
        // cores are not says how fast the generator is, not the server.
        out["generator_bound"] = serde_json::json!(
            busiest > GENERATOR_BOUND_CORES
                && server_cores < GENERATOR_BOUND_CORES * args.server_cores as f64
        );
    }
    Ok(out)
}

/// An event loop's share of a core above which it, not the server, may be setting the pace.
const GENERATOR_BOUND_CORES: f64 = 0.95;
