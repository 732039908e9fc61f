//! `ferry-attack`: the attack suite (issue 14) against a running node. Each attack runs beside an
//! honest witness from another source address and prints one JSON line: what the attacker
//! achieved, what the honest client experienced (delivery rate, p99, refusals by code), the goal
//! and whether it was met.
//!
//! ```text
//! ferry-attack <attack[,attack…]|all> --node 127.0.0.1:7700 [--admin 127.0.0.1:7701] [--node-pid PID]
//!     [--duration-s 5] [--store-bytes-max B] [--store-share-pct 10] [--flood-sends 10000]
//!     [--media-declared-bytes B] [--media-begins-max N] [--conns 16000] [--subscribers 2000]
//!     [--memory-budget-bytes B] [--prekey-addrs 200] [--baseline-node ADDR] [--i-own-this-node]
//! ```
//!
//! Attacks: store-fill, mailbox-flood, media-reserve, proof-replay, memory, descriptors,
//! presence-oracle, prekey-drain, puzzles (several: comma-separated, run in that order). The
//! puzzles attack wants a node with puzzles at their top level and `--baseline-node` of the same
//! settings with `limits.puzzle_levels = 0` (bench/compare starts both). A node that is not on loopback is refused unless
//! `--i-own-this-node` is given: these are attacks. Exit status 0 when every goal was met, 1 when
//! one was not, 2 on a usage or set-up error.

#[path = "attack/suite.rs"]
mod suite;

use std::net::SocketAddr;
use std::time::Duration;

fn usage(msg: &str) -> ! {
    eprintln!("ferry-attack: {msg}");
    eprintln!(
        "usage: ferry-attack <{}|all|a,b,…> --node ADDR [--admin ADDR] [--node-pid PID] [options]",
        suite::ATTACKS.join("|")
    );
    std::process::exit(2)
}

fn parse<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    v.and_then(|v| v.parse().ok())
        .unwrap_or_else(|| usage(&format!("{flag} needs a valid value")))
}

/// Raises this process's open-files soft limit to its hard limit: the connection attacks hold
/// thousands of sockets.
fn raise_nofile() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let r = getrlimit(Resource::Nofile);
    if r.current < r.maximum {
        // Raising soft to hard needs no privilege; if it fails the run just has fewer sockets.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: r.maximum,
                maximum: r.maximum,
            },
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(which) = args.next() else {
        usage("name an attack")
    };
    if let Some(bad) = which
        .split(',')
        .find(|w| *w != "all" && !suite::ATTACKS.contains(w))
    {
        usage(&format!("unknown attack {bad}"));
    }
    let mut node: Option<SocketAddr> = None;
    let mut owned = false;
    let mut o = suite::Opts::new(SocketAddr::from(([127, 0, 0, 1], 7700)));
    while let Some(a) = args.next() {
        match a.as_str() {
            "--node" => node = Some(parse(&a, args.next())),
            "--admin" => o.admin = Some(parse(&a, args.next())),
            "--node-pid" => o.pid = Some(parse(&a, args.next())),
            "--duration-s" => o.duration = Duration::from_secs_f64(parse(&a, args.next())),
            "--store-bytes-max" => o.store_bytes_max = parse(&a, args.next()),
            "--store-share-pct" => o.store_source_share_pct = parse(&a, args.next()),
            "--flood-sends" => o.flood_sends = parse(&a, args.next()),
            "--media-declared-bytes" => o.media_declared_bytes = parse(&a, args.next()),
            "--media-begins-max" => o.media_begins_max = parse(&a, args.next()),
            "--conns" => o.conns = parse(&a, args.next()),
            "--subscribers" => o.subscribers = parse(&a, args.next()),
            "--memory-budget-bytes" => o.memory_budget_bytes = parse(&a, args.next()),
            "--prekey-addrs" => o.prekey_addrs = parse(&a, args.next()),
            "--baseline-node" => o.baseline_node = Some(parse(&a, args.next())),
            "--i-own-this-node" => owned = true,
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let node = node.unwrap_or_else(|| usage("--node is required"));
    let remote = [Some(node), o.admin, o.baseline_node]
        .into_iter()
        .flatten()
        .any(|a| !a.ip().is_loopback());
    if remote && !owned {
        usage(
            "refusing a node that is not on loopback: these are attacks; run them only against a node \
             you operate, and say so with --i-own-this-node",
        );
    }
    o.node = node;
    raise_nofile();
    let names: Vec<&str> = if which == "all" {
        suite::ATTACKS.to_vec()
    } else {
        suite::ATTACKS
            .iter()
            .copied()
            .filter(|a| which.split(',').any(|w| w == *a))
            .collect()
    };
    let mut all_met = true;
    for name in names {
        let line = match suite::run(name, &o) {
            Ok(r) => {
                all_met &= r.met;
                r.json()
            }
            Err(e) => {
                all_met = false;
                serde_json::json!({"attack": name, "error": e.to_string(), "met": false})
            }
        };
        println!("{line}");
    }
    std::process::exit(if all_met { 0 } else { 1 });
}
