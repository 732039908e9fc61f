//! `ferry-loadgen`: an open-loop load generator for ferry and its peers (NATS, Redis, the floor).
//!
//! Event loops (`--threads`, one by default; epoll via mio, a timerfd for sub-millisecond waits):
//! each sender has a fixed schedule (`--rate` split evenly, each pair at its own phase); every
//! message due is written into the sender's buffer with its *intended* send time in the payload,
//! and each buffer is written once per loop turn. A turn touches only the senders that are due
//! and the connections epoll reported or it wrote to. Receivers record latency from the
//! intended time (coordinated-omission corrected) and from the actual send time (raw) into
//! HdrHistograms. `--rate 0` is closed loop: each pair keeps `--window` messages in flight.
//!
//! Files: `args.rs` the command line; `connect.rs` the target and the set-up of connections;
//! `event_loop.rs` the loops that send and receive; `stream.rs` the pairs, fanin and overload
//! workloads around them; `churn.rs`, `offline.rs`, `idle.rs` the other workloads; `measure.rs`
//! CPU and memory samples; `wire.rs` each target's framing.

use clap::Parser as ClapParser;

use crate::args::{Args, Workload, run_ns};
use crate::churn::run_churn;
use crate::connect::parse_target;
use crate::idle::run_idle;
use crate::offline::run_offline;
use crate::stream::run_stream;
use crate::wire::Kind;

mod args;
mod churn;
mod connect;
mod event_loop;
mod idle;
mod jetstream;
mod measure;
mod offline;
mod stream;
mod wire;

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

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    raise_nofile();
    let result = (|| -> anyhow::Result<serde_json::Value> {
        run_ns("--duration", args.duration)?;
        run_ns("--warmup", args.warmup)?;
        let (kind, addr) = parse_target(&args)?;
        match args.workload {
            Workload::Pairs | Workload::Fanin | Workload::Overload => run_stream(&args, kind, addr),
            Workload::Churn => run_churn(&args, kind, addr),
            Workload::Offline if kind == Kind::Nats => jetstream::run_offline(&args, addr),
            Workload::Offline => run_offline(&args, kind, addr),
            Workload::Idle => run_idle(&args, kind, addr),
        }
    })();
    match result {
        Ok(v) => {
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            println!("{text}");
            if let Some(p) = &args.json_out {
                if let Err(e) = std::fs::write(p, text) {
                    eprintln!("ferry-loadgen: writing {}: {e}", p.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
