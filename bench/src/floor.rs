//! The floor: the least work a relay can do. One glommio executor (io_uring) pinned to a core;
//! each sender's bytes are copied to its paired receiver in 64 KiB reads, with no parsing, no
//! lookup, no crypto. ferry's efficiency is measured against this, same workload, same core.
//! Its io_uring ring has ferry's depth ([`ferry_shards::driver::RING_DEPTH`]): with glommio's
//! default, every cancel of an armed poll walks an eighth of all connections, and at 8,000
//! connections that walk was a quarter of the floor's CPU.
//!
//! Wire: every connection first sends 8 bytes, `FLRR` (receiver) or `FLRS` (sender) followed by a
//! pair id (u32 LE); after that a sender's bytes go to its receiver unchanged. Either may say
//! hello first: a sender whose receiver has not said hello yet waits for it (it used to be
//! dropped, and a generator that opens both at once then waited for nothing).
//!
//! `--engine uring` serves the same wire on raw io_uring instead ([`uring`]: multishot receive
//! into provided buffers, one `io_uring_enter` per loop turn for all reads and writes), the best
//! this kernel can do; `--spin N` lets it busy-poll N empty turns before it sleeps.
//!
//! `ferry-floor [--listen 127.0.0.1:7900] [--cpu N] [--engine glommio|uring] [--spin N]`

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use ferry_shards::ring;
#[path = "floor/uring.rs"]
mod uring;

/// Each side of a pair that said hello before the other: receivers, and senders whose receiver
/// has not said hello yet (a client opens both at once; which hello is read first is chance).
#[derive(Default)]
struct Waiting {
    receivers: HashMap<u32, TcpStream>,
    senders: HashMap<u32, TcpStream>,
}

type Pairs = Rc<RefCell<Waiting>>;

/// Copies a sender's bytes to its receiver until either goes.
async fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn serve(stream: TcpStream, pairs: Pairs) {
    let mut stream = stream;
    let _ = stream.set_nodelay(true);
    let mut hello = [0u8; 8];
    if stream.read_exact(&mut hello).await.is_err() {
        return;
    }
    let pair = u32::from_le_bytes([hello[4], hello[5], hello[6], hello[7]]);
    match &hello[..4] {
        b"FLRR" => {
            let sender = pairs.borrow_mut().senders.remove(&pair);
            match sender {
                Some(sender) => copy(sender, stream).await,
                None => {
                    pairs.borrow_mut().receivers.insert(pair, stream);
                }
            }
        }
        b"FLRS" => {
            let target = pairs.borrow_mut().receivers.remove(&pair);
            match target {
                Some(target) => copy(stream, target).await,
                None => {
                    pairs.borrow_mut().senders.insert(pair, stream);
                }
            }
        }
        _ => {}
    }
}

fn main() {
    let mut listen = "127.0.0.1:7900".to_string();
    let mut cpu = None;
    let mut engine = "glommio".to_string();
    let mut spin = 0u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--cpu" => cpu = args.next().and_then(|c| c.parse::<usize>().ok()),
            "--engine" => engine = args.next().unwrap_or(engine),
            "--spin" => spin = args.next().and_then(|c| c.parse().ok()).unwrap_or(0),
            other => {
                eprintln!("ferry-floor: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if engine == "uring" {
        serve_uring(&listen, cpu, spin);
        return;
    }
    if engine != "glommio" {
        eprintln!("ferry-floor: unknown engine {engine} (glommio or uring)");
        std::process::exit(2);
    }
    let placement = cpu.map_or(Placement::Unbound, Placement::Fixed);
    let handle = LocalExecutorBuilder::new(placement)
        .name("ferry-floor")
        .ring_depth(ferry_shards::driver::RING_DEPTH)
        .spawn(move || async move {
            let listener = match TcpListener::bind(listen.as_str()) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("ferry-floor: bind {listen}: {e}");
                    std::process::exit(1);
                }
            };
            println!(
                "ferry-floor listening {}",
                listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            );
            let pairs: Pairs = Rc::new(RefCell::new(Waiting::default()));
            while let Ok(s) = listener.accept().await {
                glommio::spawn_local(serve(s, pairs.clone())).detach();
            }
        });
    match handle {
        Ok(h) => {
            let _ = h.join();
        }
        Err(e) => {
            eprintln!("ferry-floor: cannot start executor: {e}");
            std::process::exit(1);
        }
    }
}

fn serve_uring(listen: &str, cpu: Option<usize>, spin: u32) {
    if let Some(cpu) = cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
            eprintln!("ferry-floor: cannot pin to CPU {cpu}: {e}");
            std::process::exit(1);
        }
    }
    let listener = match std::net::TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ferry-floor: bind {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "ferry-floor listening {} (io_uring)",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    if let Err(e) = uring::run(listener, spin) {
        eprintln!("ferry-floor: io_uring: {e}");
        std::process::exit(1);
    }
}
