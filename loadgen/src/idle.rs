//! The idle workload: hold silent connections (answering the node's pings) and report the
//! server's memory per connection and its CPU while they are idle.

use anyhow::Context;
use mio::Token;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll};

use crate::args::Args;
use crate::connect::{ferry_connect, open_sender};
use crate::measure::server_usage;
use crate::wire::{Kind, Parser, ReadStats};

/// Answers every `Ping` the node sends on `conns` (plain ferry connections past their hello)
/// with its `Pong`, as a real client does, until `stop`; returns the pongs sent. Nothing else is
/// read or written: the clients stay silent otherwise.
fn answer_pings(
    conns: Vec<TcpStream>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<u64>> {
    std::thread::spawn(move || {
        let mut poll = Poll::new()?;
        let mut events = Events::with_capacity(1024);
        let mut socks = Vec::with_capacity(conns.len());
        for (i, s) in conns.into_iter().enumerate() {
            s.set_nonblocking(true)?;
            let mut m = MioStream::from_std(s);
            poll.registry()
                .register(&mut m, Token(i), Interest::READABLE)?;
            // The generator's own ferry scanner: it answers each `Ping` into `reply`.
            socks.push((m, Parser::new(Kind::Ferry, 0, Vec::new())));
        }
        let mut pongs = 0u64;
        let mut buf = [0u8; 4096];
        let (mut reply, mut stats) = (Vec::new(), ReadStats::default());
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            poll.poll(&mut events, Some(Duration::from_millis(200)))?;
            for ev in &events {
                let (sock, parser) = &mut socks[ev.token().0];
                loop {
                    match sock.read(&mut buf) {
                        Ok(n) if n > 0 => parser.feed(&buf[..n], &mut reply, &mut stats, |_| {}),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        _ => break,
                    }
                }
                if !reply.is_empty() {
                    // Each pong is 13 bytes: length (4), type, nonce (8).
                    if sock.write_all(&reply).is_ok() {
                        pongs += (reply.len() / 13) as u64;
                    }
                    reply.clear();
                }
            }
        }
        Ok(pongs)
    })
}

/// Holds `pairs` idle connections and reports the server's RSS growth per connection and the
/// CPU it spends while they are silent (over the `--duration` window after a 2 s settle, so
/// handshakes are not counted). Ferry clients answer the node's pings, as real ones do, when the
/// node is configured to send them (`limits.ping_interval_ms`; off by default).
pub(crate) fn run_idle(
    args: &Args,
    kind: Kind,
    addr: SocketAddr,
) -> anyhow::Result<serde_json::Value> {
    let pid = args
        .server_pid
        .context("--workload idle needs --server-pid")?;
    let (_, _, rss0) = server_usage(pid).context("cannot read server usage")?;
    let mut conns = Vec::with_capacity(args.pairs);
    for i in 0..args.pairs {
        let s = match kind {
            Kind::Ferry => ferry_connect(addr)?.into_parts()?.socket,
            _ => open_sender(kind, addr, i, args.size)?.socket,
        };
        conns.push(s);
        if !args.quiet && i % 5000 == 4999 {
            eprintln!("{} connections", i + 1);
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Ferry clients answer pings on a thread of their own; other systems' sockets are only held.
    let (answering, held) = if matches!(kind, Kind::Ferry) {
        (Some(answer_pings(conns, stop.clone())), Vec::new())
    } else {
        (None, conns)
    };
    std::thread::sleep(Duration::from_secs(2));
    let (u0, s0, _) = server_usage(pid).context("cannot read server usage")?;
    let window = args.duration.clamp(1.0, 600.0);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(window));
    let (u1, s1, rss1) = server_usage(pid).context("cannot read server usage")?;
    let measured = t0.elapsed().as_secs_f64();
    let per = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / args.pairs as f64;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let pongs = match answering {
        Some(h) => h
            .join()
            .map_err(|_| anyhow::anyhow!("the ping answerer panicked"))??,
        None => 0,
    };
    drop(held);
    Ok(serde_json::json!({
        "target": args.target,
        "workload": "idle",
        "connections": args.pairs,
        "server_rss_before_kib": rss0,
        "server_rss_after_kib": rss1,
        "server_rss_per_connection_bytes": per,
        "idle_window_s": measured,
        "server_cpu_cores_idle": ((u1 - u0) + (s1 - s0)) / measured,
        "pongs_sent": pongs,
    }))
}
