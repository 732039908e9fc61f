//! The send puzzles: an attacker's sends per CPU second with puzzles on and off, and what an
//! honest send costs (puzzles).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{
    ATTACKER, HONEST_TX, Honest, Opts, Report, Res, add, client_from, flood_sends, metric,
    random_dest, round3, send_offline, thread_cpu,
};

/// Sends taken (`Stored`, `Delivered`, `Accepted`) per second of this thread's CPU, and how many:
/// fresh connections, 32 packets each (the puzzle checks one connection gets at once,
/// `limits.puzzle_checks_per_conn_burst`) in windows of 8 (so that answers are read while later
/// puzzles are solved), to random offline dests, for `duration` and until `taken_min` were taken
/// (at most 4 × `duration`: a rate from none taken would say nothing).
fn sends_per_cpu_s(
    node: SocketAddr,
    duration: Duration,
    taken_min: u64,
) -> Res<(f64, u64, BTreeMap<String, u64>)> {
    let cpu0 = thread_cpu();
    let t = Instant::now();
    let mut statuses = BTreeMap::new();
    let mut taken = 0u64;
    let never = AtomicBool::new(false);
    let mut round = 0u64;
    while (t.elapsed() < duration || taken < taken_min) && t.elapsed() < 4 * duration {
        round += 1;
        let mut c = match client_from(ATTACKER, node) {
            Ok(c) => c,
            Err(e) => {
                *statuses.entry(e.to_string()).or_default() += 1;
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let (st, _, _) = flood_sends(
            &mut c,
            &never,
            8,
            &[0x44; 64],
            |i| random_dest(900 + round, i),
            32,
            false,
        );
        taken += ["Stored", "Delivered", "Accepted"]
            .iter()
            .map(|k| st.get(*k).copied().unwrap_or(0))
            .sum::<u64>();
        add(&mut statuses, st);
    }
    let cpu = (thread_cpu() - cpu0).as_secs_f64().max(1e-3);
    Ok((taken as f64 / cpu, taken, statuses))
}

/// Honest sends the puzzles attack times (each on a fresh connection, to a fresh dest).
const HONEST_PUZZLE_SENDS: u64 = 40;

/// How much slower than this machine's core the goal takes a phone-class core to be, for an
/// honest send's cost. An assumption, not a measurement (no phone in the lab): a 2020s mid-range
/// phone's big core is about as fast as a server vCPU in scalar work, its caches are smaller.
pub const PHONE_CORE_SLOWDOWN: f64 = 2.0;

/// The share of honest sends that must stay under 100 ms of a phone-class core: the solver's
/// run count is geometric (16 % of Equi-X runs find no solution), so no bound holds for every
/// send.
pub const HONEST_PUZZLE_PERCENTILE: usize = 95;

/// The attacker's sends per CPU second on the node (puzzles at their highest level) and on a
/// baseline node (the same build and settings, puzzles off); an honest send's CPU cost. Both
/// clients use the SDK, which solves each `PuzzleRequired` by itself (up to effort 32): the
/// attacker pays what the honest client pays, per message.
pub fn puzzles(o: &Opts) -> Res<Report> {
    const GOAL: &str = "with puzzles at their highest level the attacker's sends per CPU second fall >= 100x against the same node without puzzles; 95 % of honest sends (solve included) cost < 100 ms of a phone-class core (PHONE_CORE_SLOWDOWN x this machine's CPU)";
    let required0 = metric(o.admin, "ferry_puzzles_required_total");
    let (rate, taken, statuses) = sends_per_cpu_s(o.node, o.duration / 2, 10)?;
    let base = match o.baseline_node {
        Some(b) => Some(sends_per_cpu_s(b, o.duration / 2, 10)?),
        None => None,
    };
    let mut honest = Honest::default();
    let mut cpus = Vec::new();
    for i in 0..HONEST_PUZZLE_SENDS {
        let cpu0 = thread_cpu();
        let t = Instant::now();
        let mut c = client_from(HONEST_TX, o.node)?;
        let before = honest.ok;
        send_offline(&mut c, &mut honest, random_dest(999, i), 1, b"hello")?;
        let cpu = thread_cpu() - cpu0;
        cpus.push(cpu);
        if honest.ok > before {
            honest.latencies_us.pop();
            honest
                .latencies_us
                .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
    }
    let phone_ms = |c: &Duration| c.as_secs_f64() * 1e3 * PHONE_CORE_SLOWDOWN;
    cpus.sort();
    let cpu_max = cpus.last().copied().unwrap_or_default();
    let cpu_mean = cpus.iter().sum::<Duration>() / u32::try_from(cpus.len().max(1))?;
    let over = cpus.iter().filter(|c| phone_ms(c) >= 100.0).count();
    let rank = (HONEST_PUZZLE_PERCENTILE * cpus.len())
        .div_ceil(100)
        .clamp(1, cpus.len().max(1));
    let cpu_pct = cpus.get(rank - 1).copied().unwrap_or_default();
    let cheap = !cpus.is_empty() && phone_ms(&cpu_pct) < 100.0;
    let required = metric(o.admin, "ferry_puzzles_required_total")
        .zip(required0)
        .map(|(b, a)| b.saturating_sub(a));
    // No send taken: no rate to compare (the factor would be a division by nothing).
    let factor = base
        .as_ref()
        .filter(|_| taken > 0)
        .map(|(b, _, _)| b / rate);
    let met = factor.is_some_and(|f| f >= 100.0) && honest.delivery_rate() >= 1.0 && cheap;
    Ok(Report {
        attack: "puzzles",
        attacker: json!({"sends_per_cpu_s": round3(rate), "sends_taken": taken, "results": statuses,
                         "baseline_sends_per_cpu_s": base.as_ref().map(|b| b.0.round()),
                         "baseline_sends_taken": base.as_ref().map(|b| b.1),
                         "fall_factor": factor.map(round3),
                         "honest_cpu_ms_mean": round3(cpu_mean.as_secs_f64() * 1e3),
                         "honest_cpu_ms_max": round3(cpu_max.as_secs_f64() * 1e3),
                         "honest_cpu_ms_p95": round3(cpu_pct.as_secs_f64() * 1e3),
                         "phone_core_slowdown": PHONE_CORE_SLOWDOWN,
                         "honest_sends_over_100_ms_phone": over,
                         "node_puzzles_required": required}),
        verdict: match factor {
            Some(f) => format!(
                "attacker's sends per CPU second fell {f:.1}x; an honest send took {:.1} ms of CPU on average, p95 {:.1} ms, at most {:.1} ms; {over} of {} over 100 ms on a core {PHONE_CORE_SLOWDOWN}x slower",
                cpu_mean.as_secs_f64() * 1e3,
                cpu_pct.as_secs_f64() * 1e3,
                cpu_max.as_secs_f64() * 1e3,
                cpus.len()
            ),
            None if taken == 0 => "the attacker got no send taken: no rate to compare".into(),
            None => "no baseline node (--baseline-node) to compare with".into(),
        },
        honest,
        goal: GOAL,
        met,
    })
}
