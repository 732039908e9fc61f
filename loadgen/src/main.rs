//! `ferry-loadgen`: an open-loop load generator for ferry and its peers (NATS, Redis, the floor).
//!
//! Event loops (`--threads`, one by default; epoll via mio, a timerfd for sub-millisecond waits):
//! each sender has a fixed schedule (`--rate` split evenly, each pair at its own phase); every
//! message due is written into the sender's buffer with its *intended* send time in the payload,
//! and each buffer is written once per loop turn. A turn touches only the senders that are due
//! and the connections epoll reported or it wrote to. Receivers record latency from the
//! intended time (coordinated-omission corrected) and from the actual send time (raw) into
//! HdrHistograms. `--rate 0` is closed loop: each pair keeps `--window` messages in flight.

mod wire;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser as ClapParser, ValueEnum};
use hdrhistogram::Histogram;
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};

use ferry_sdk::{Client, ConnectOptions, Mailbox, NamespaceId, NodeUrl, Trust};
use wire::{HEADER_BYTES, Kind, Parser, ReadStats, Route};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Workload {
    /// P senders, each to its own live receiver.
    Pairs,
    /// P senders to one receiver.
    Fanin,
    /// Connect, prove, subscribe, disconnect, as fast as P threads can.
    Churn,
    /// P idle connections; reports server RSS per connection (needs --server-pid).
    Idle,
    /// Pairs at a rate above saturation; also samples server RSS every second.
    Overload,
    /// Store and forward (ferry only): P senders store `--messages` blobs each for offline
    /// recipients, then the recipients reconnect, prove and drain them.
    Offline,
}

#[derive(ClapParser, Debug)]
#[command(
    name = "ferry-loadgen",
    about = "open-loop load generator for ferry, NATS, Redis and the floor"
)]
struct Args {
    /// ferry://host[:port], ferry+tls://host[:port], nats://host:port, redis://host:port or
    /// floor://host:port (a name is resolved once, to the first address that accepts).
    #[arg(long)]
    target: String,
    #[arg(long, value_enum, default_value = "pairs")]
    workload: Workload,
    /// Pairs (pairs, overload), senders (fanin), threads (churn) or connections (idle).
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Messages per second in total; 0 = closed loop, as fast as possible.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Payload bytes per message (at least 24).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Measured seconds (at most a day).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring (at most a day).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Messages in flight per pair in closed-loop mode.
    #[arg(long, default_value_t = 512)]
    window: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Server process to read CPU time and RSS from (/proc/PID).
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Offline workload: blobs per pair.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// For ferry+tls://: PEM file with the certificate or CA to trust (default: the public
    /// CAs of Mozilla's list).
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// For ferry+tls://: the name the certificate must carry (default: the target's host).
    #[arg(long)]
    tls_name: Option<String>,
    /// Event loops (threads) the pairs are split over (pairs, overload): one per core the
    /// generator may use.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The server's cores, for marking a point generator-bound (an event loop saturated while
    /// the server's cores are not).
    #[arg(long, default_value_t = 1)]
    server_cores: usize,
}

/// Bytes a sender may buffer when the server stops reading; beyond it messages are counted lost.
const SEND_BUFFER_BYTES_MAX: usize = 64 << 20;
/// The longest `--duration` and `--warmup`: a day, so that the run's nanosecond clock (u64,
/// 584 years) never nears its end.
const RUN_SECONDS_MAX: f64 = 86_400.0;

/// `--duration` or `--warmup` in nanoseconds, refused outside 0 ..= `RUN_SECONDS_MAX`.
fn run_ns(flag: &str, s: f64) -> anyhow::Result<u64> {
    if !(0.0..=RUN_SECONDS_MAX).contains(&s) {
        bail!("{flag} {s}: seconds from 0 to {RUN_SECONDS_MAX}");
    }
    Ok(nanos(Duration::from_secs_f64(s)))
}

/// Nanoseconds of a duration this process measured or was given (at most days: far from
/// 2^64 ns, 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).expect("a duration under 584 years")
}

/// The target's kind and address: its host resolved once. For ferry the URL is the SDK's
/// ([`NodeUrl`]), the connection settings are set here, and the address is the first one a
/// client connects to (so `localhost` works whichever of 127.0.0.1 and ::1 the node is on);
/// for the others, the first address.
fn parse_target(args: &Args) -> anyhow::Result<(Kind, SocketAddr)> {
    let t = args.target.as_str();
    let scheme = t.split_once("://").map_or("", |(s, _)| s);
    if scheme.starts_with("ferry") {
        let node: NodeUrl = t.parse()?;
        let mut connect = ConnectOptions::default();
        if let Some(path) = &args.tls_ca {
            // Read once: every connection of the run parses it, none reads the file.
            let pem =
                std::fs::read(path).with_context(|| format!("--tls-ca {}", path.display()))?;
            connect.trust = Trust::CaPem(pem);
        }
        // Connections go to the address found here; the certificate is checked for the name.
        connect.server_name = Some(args.tls_name.clone().unwrap_or_else(|| node.host.clone()));
        let _ = FERRY.set(Ferry {
            tls: node.tls,
            tls_ca: args.tls_ca.is_some(),
            connect,
        });
        let mut last = None;
        for addr in node.socket_addrs()? {
            match ferry_connect(addr) {
                Ok(_) => return Ok((Kind::Ferry, addr)),
                Err(e) => last = Some(e),
            }
        }
        return Err(last.unwrap_or_else(|| anyhow::anyhow!("{t}: no address")));
    }
    {
        let u = url::Url::parse(t).with_context(|| format!("target {t:?}"))?;
        let kind = match u.scheme() {
            "nats" => Kind::Nats,
            "redis" => Kind::Redis,
            "floor" => Kind::Floor,
            other => bail!("target {t:?}: unknown scheme {other:?}"),
        };
        let host = u.host_str().context("the target names no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = u.port().context("the target names no port")?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .with_context(|| format!("cannot resolve {host:?}"))?
            .next()
            .with_context(|| format!("{host:?} has no address"))?;
        Ok((kind, addr))
    }
}

fn mailbox(seed: u64, i: usize) -> Mailbox {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    Mailbox::from_seed(&s, NamespaceId([0x6c; 32]), None)
}

fn read_until(s: &mut TcpStream, needle: &[u8]) -> anyhow::Result<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = s.read(&mut b)?;
        if n == 0 {
            bail!("connection closed during set-up");
        }
        got.extend_from_slice(&b[..n]);
    }
    Ok(got)
}

/// Bytes a set-up client state machine had read but not yet parsed (none in practice: set-up
/// ends on a complete answer), handed to the scanner so nothing is lost.
fn pending_bytes(cc: ferry_proto::conn::ClientConn) -> Vec<u8> {
    cc.into_unread()
}

/// One connection of the run, set up and ready for an event loop.
struct Conn {
    stream: MioStream,
    /// `ferry+tls`: the session; `out` holds plaintext until rustls takes it.
    tls: Option<Box<rustls::ClientConnection>>,
    parser: Parser,
    out: Vec<u8>,
    sender: Option<Sender>,
    /// Receiver: the pair (index into its loop's counters) it counts for.
    counts_for: Option<usize>,
    /// In its loop's flush list for this turn.
    queued: bool,
}

struct Sender {
    route: Route,
    /// [`Route::head`] for the run's size, built once.
    head: Vec<u8>,
    /// Its pair: an index into its loop's counters.
    pair: usize,
    next_due_ns: u64,
    /// 0: closed loop.
    interval_ns: u64,
    seq: u64,
    /// Closed loop: its buffer is full; the flush that empties it puts it back in `ready`.
    waits_room: bool,
}

/// How every ferry connection of the run is made, set once from the command line.
#[derive(Debug)]
struct Ferry {
    tls: bool,
    /// `--tls-ca` was given (else a TLS failure hints at it).
    tls_ca: bool,
    connect: ConnectOptions,
}
static FERRY: std::sync::OnceLock<Ferry> = std::sync::OnceLock::new();

/// A connection after set-up: socket, TLS session for `ferry+tls`, and the parser of its input.
struct Opened {
    socket: TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
    parser: Parser,
}

impl Opened {
    fn plain(socket: TcpStream, parser: Parser) -> Self {
        Opened {
            socket,
            tls: None,
            parser,
        }
    }
}

fn ferry_connect(addr: SocketAddr) -> anyhow::Result<Client> {
    let f = FERRY.get().context("ferry settings missing")?;
    let url = NodeUrl {
        tls: f.tls,
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    match Client::connect_url(&url.to_string(), &f.connect) {
        Err(e @ ferry_sdk::SdkError::Tls(_)) if !f.tls_ca => Err(anyhow::Error::new(e).context(
            "ferry+tls:// trusts the public CAs unless --tls-ca names the node's CA (or its \
             self-signed certificate)",
        )),
        c => Ok(c?),
    }
}

fn ferry_opened(c: Client) -> anyhow::Result<Opened> {
    let parts = c.into_parts()?;
    Ok(Opened {
        socket: parts.socket,
        tls: parts.tls,
        parser: Parser::new(Kind::Ferry, 0, pending_bytes(parts.conn)),
    })
}

/// Opens a receiver subscribed to stream `i`; returns the connection and the route to it.
fn open_receiver(
    kind: Kind,
    addr: SocketAddr,
    seed: u64,
    i: usize,
    size: usize,
) -> anyhow::Result<(Opened, Route)> {
    match kind {
        Kind::Ferry => {
            let mut c = ferry_connect(addr)?;
            let epoch = c.epoch();
            let dest = c.listen(&mailbox(seed, i), [epoch, epoch + 1])?[0];
            Ok((ferry_opened(c)?, Route::Ferry(dest)))
        }
        Kind::Nats => {
            let mut s = TcpStream::connect(addr)?;
            read_until(&mut s, b"\r\n")?;
            let subject = format!("ferry.bench.{seed}.{i}");
            write!(
                s,
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":false}}\r\nSUB {subject} {i}\r\nPING\r\n"
            )?;
            read_until(&mut s, b"PONG\r\n")?;
            Ok((
                Opened::plain(s, Parser::new(Kind::Nats, 0, Vec::new())),
                Route::Subject(subject),
            ))
        }
        Kind::Redis => {
            let mut s = TcpStream::connect(addr)?;
            let ch = format!("ferry.bench.{seed}.{i}");
            write!(s, "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{ch}\r\n", ch.len())?;
            read_until(&mut s, b":1\r\n")?;
            Ok((
                Opened::plain(s, Parser::new(Kind::Redis, 0, Vec::new())),
                Route::Subject(ch),
            ))
        }
        Kind::Floor => {
            let mut s = TcpStream::connect(addr)?;
            let mut hello = b"FLRR".to_vec();
            hello.extend_from_slice(&u32::try_from(i)?.to_le_bytes());
            s.write_all(&hello)?;
            Ok((
                Opened::plain(s, Parser::new(Kind::Floor, size, Vec::new())),
                Route::Floor,
            ))
        }
    }
}

fn open_sender(kind: Kind, addr: SocketAddr, i: usize, size: usize) -> anyhow::Result<Opened> {
    match kind {
        Kind::Ferry => ferry_opened(ferry_connect(addr)?),
        Kind::Nats => {
            let mut s = TcpStream::connect(addr)?;
            read_until(&mut s, b"\r\n")?;
            s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")?;
            read_until(&mut s, b"PONG\r\n")?;
            Ok(Opened::plain(s, Parser::new(Kind::Nats, 0, Vec::new())))
        }
        Kind::Redis => Ok(Opened::plain(
            TcpStream::connect(addr)?,
            Parser::new(Kind::Redis, 0, Vec::new()),
        )),
        Kind::Floor => {
            let mut s = TcpStream::connect(addr)?;
            let mut hello = b"FLRS".to_vec();
            hello.extend_from_slice(&u32::try_from(i)?.to_le_bytes());
            s.write_all(&hello)?;
            Ok(Opened::plain(s, Parser::new(Kind::Floor, size, Vec::new())))
        }
    }
}

/// This process's CPU seconds (user + system, all threads) so far, to the microsecond.
fn own_cpu_s() -> anyhow::Result<f64> {
    let mut r = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: getrusage writes one rusage into memory this function owns.
    let (rc, r) = unsafe {
        let rc = libc::getrusage(libc::RUSAGE_SELF, r.as_mut_ptr());
        (rc, r.assume_init())
    };
    if rc != 0 {
        bail!("getrusage: {}", std::io::Error::last_os_error());
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(s(r.ru_utime) + s(r.ru_stime))
}

/// Server CPU seconds (user + system) and RSS in KiB from procfs.
fn server_usage(pid: u32) -> Option<(f64, f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = 100.0; // USER_HZ is 100 on every Linux ABI ferry targets
    let utime = f.get(11)?.parse::<f64>().ok()? / tick;
    let stime = f.get(12)?.parse::<f64>().ok()? / tick;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((utime, stime, rss))
}

/// What one event loop counted.
struct Totals {
    sent: u64,
    delivered: u64,
    late_or_dup: u64,
    rejected: u64,
    backlog_dropped: u64,
    corrected: Histogram<u64>,
    raw: Histogram<u64>,
    /// This loop's thread: CPU seconds and wall seconds over the measured window.
    cpu_s: f64,
    wall_s: f64,
    /// Loop turns, and connections the loop touched in them (written, flushed or read): what a
    /// turn costs, which must not grow with the connections the loop holds.
    turns: u64,
    visits: u64,
}

impl Totals {
    fn new() -> anyhow::Result<Self> {
        Ok(Totals {
            sent: 0,
            delivered: 0,
            late_or_dup: 0,
            rejected: 0,
            backlog_dropped: 0,
            corrected: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
            raw: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
            cpu_s: 0.0,
            wall_s: 0.0,
            turns: 0,
            visits: 0,
        })
    }
}

/// The run's schedule, shared by its event loops, and what they report to the progress line.
struct RunClock {
    origin: Instant,
    warm_ns: u64,
    end_ns: u64,
    /// Deliveries of the measured window are awaited until here.
    drain_ns: u64,
    sent: std::sync::atomic::AtomicU64,
    received: std::sync::atomic::AtomicU64,
}

impl RunClock {
    fn now_ns(&self) -> u64 {
        nanos(self.origin.elapsed())
    }
}

/// The calling thread's CPU seconds so far.
fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: clock_gettime writes one timespec into memory this function owns.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is always there on Linux");
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// A one-shot timerfd an event loop sleeps on when its next message is due sooner than epoll's
/// millisecond timeout can say: the loop neither spins (which would hide its real cost and take
/// CPU a server on a shared core needs) nor sends late.
struct Timer {
    fd: std::os::fd::OwnedFd,
    /// When it is set to fire (ns on the run's clock), or none.
    armed_ns: Option<u64>,
}

impl Timer {
    fn new() -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd;
        #[allow(unsafe_code)]
        // SAFETY: timerfd_create takes no pointers; its result is checked before it is owned.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            bail!("timerfd_create: {}", std::io::Error::last_os_error());
        }
        #[allow(unsafe_code)]
        // SAFETY: fd is a new descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd, armed_ns: None })
    }

    /// Fires `at_ns` on the run's clock, `now_ns` being now (re-armed only when that changes).
    fn arm(&mut self, at_ns: u64, now_ns: u64) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        if self.armed_ns == Some(at_ns) {
            return Ok(());
        }
        let d = at_ns.saturating_sub(now_ns).max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (d / 1_000_000_000) as libc::time_t,
                tv_nsec: (d % 1_000_000_000) as libc::c_long,
            },
        };
        #[allow(unsafe_code)]
        // SAFETY: spec lives across the call; the old value is not asked for (null).
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            bail!("timerfd_settime: {}", std::io::Error::last_os_error());
        }
        self.armed_ns = Some(at_ns);
        Ok(())
    }

    /// After it fired: reads its count so epoll reports it again next time.
    fn fired(&mut self) {
        use std::os::fd::AsRawFd;
        let mut n = [0u8; 8];
        #[allow(unsafe_code)]
        // SAFETY: reads at most 8 bytes into a local array (non-blocking: EAGAIN is fine).
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), n.as_mut_ptr().cast(), 8) };
        self.armed_ns = None;
    }
}

/// A sender's buffer beyond which, in closed loop, it waits for the socket to take bytes.
const CLOSED_LOOP_BUFFER_BYTES: usize = 64 * 1024;
/// A wake-up due sooner than this is waited for by polling without a timeout (a timer's own
/// cost and lateness are about this size).
const SPIN_NS: u64 = 20_000;

/// Opens the run's connections, splits the pairs over `--threads` event loops, samples the
/// server and the generator over the measured window only, and merges what the loops counted.
fn run_stream(args: &Args, kind: Kind, addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
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
        totals.turns += t.turns;
        totals.visits += t.visits;
        thread_cores.push(if t.wall_s > 0.0 {
            t.cpu_s / t.wall_s
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
    let busiest = thread_cores.iter().copied().fold(0.0, f64::max);
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

/// One event loop: its connections, `pairs` pair counters. Per turn it touches only what is due
/// (a heap of open-loop senders by next due time, the closed-loop senders whose window has
/// room), what epoll reported, and the connections it wrote to: nothing scales with the number
/// of connections it holds.
fn event_loop(
    clock: &RunClock,
    mut conns: Vec<Conn>,
    pairs: usize,
    size: usize,
    window: u64,
) -> anyhow::Result<Totals> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::sync::atomic::Ordering::Relaxed;

    let mut poll = Poll::new()?;
    let mut timer = Timer::new()?;
    let timer_token = Token(conns.len());
    {
        use std::os::fd::AsRawFd;
        let raw = timer.fd.as_raw_fd();
        poll.registry().register(
            &mut mio::unix::SourceFd(&raw),
            timer_token,
            Interest::READABLE,
        )?;
    }
    // Open loop: senders by next due time. Closed loop: senders to write this turn, and per
    // pair the senders waiting for its window to open.
    let mut due: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut ready: Vec<usize> = Vec::new();
    let mut waiting: Vec<Vec<usize>> = vec![Vec::new(); pairs];
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry().register(
            &mut c.stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        match &c.sender {
            Some(s) if s.interval_ns == 0 => ready.push(i),
            Some(s) => due.push(Reverse((s.next_due_ns, i))),
            None => {}
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut totals = Totals::new()?;
    let mut pair_sent = vec![0u64; pairs];
    let mut pair_recv = vec![0u64; pairs];
    let mut stats = ReadStats::default();
    let mut payload = vec![0x42u8; size];
    let mut rbuf = vec![0u8; 256 * 1024];
    let mut reply = Vec::new();
    let mut plain = Vec::new();
    let mut to_flush: Vec<usize> = Vec::new();
    let mut writing: Vec<usize> = Vec::new();
    let mut opened: Vec<usize> = Vec::new();
    // Messages of the measured window sent (or dropped) so far; the loop ends once all are
    // accounted for, or at the drain deadline.
    let mut window_sent = 0u64;
    let (mut turn_sent, mut turn_recv) = (0u64, 0u64);
    // This thread's CPU and the instant at the start of the measured window, then the totals.
    let mut mark: Option<(f64, Instant)> = None;
    let mut measured_done = false;

    loop {
        totals.turns += 1;
        let now = clock.now_ns();
        if mark.is_none() && now >= clock.warm_ns {
            mark = Some((thread_cpu_s(), Instant::now()));
        }
        if !measured_done && now >= clock.end_ns {
            measured_done = true;
            if let Some((cpu0, t0)) = mark {
                totals.cpu_s = thread_cpu_s() - cpu0;
                totals.wall_s = t0.elapsed().as_secs_f64();
            }
        }
        if now >= clock.drain_ns
            || (now >= clock.end_ns
                && totals.delivered + stats.rejected + totals.backlog_dropped >= window_sent)
        {
            break;
        }
        // Write every message that is due.
        let mut emit = |c: &mut Conn, due_ns: u64, totals: &mut Totals, pair_sent: &mut [u64]| {
            let s = c.sender.as_mut().expect("only senders emit");
            s.seq += 1;
            wire::put_header(&mut payload, due_ns, now, s.seq);
            let measured = due_ns >= clock.warm_ns && due_ns < clock.end_ns;
            if measured {
                window_sent += 1;
                totals.sent += 1;
            }
            if c.out.len() > SEND_BUFFER_BYTES_MAX {
                if measured {
                    totals.backlog_dropped += 1;
                }
            } else {
                wire::encode(&s.route, &s.head, s.seq, &payload, &mut c.out);
                pair_sent[s.pair] += 1;
                turn_sent += 1;
            }
        };
        if now < clock.end_ns {
            while let Some(&Reverse((at, ci))) = due.peek() {
                if at > now {
                    break;
                }
                due.pop();
                totals.visits += 1;
                let c = &mut conns[ci];
                loop {
                    let s = c.sender.as_ref().expect("only senders are scheduled");
                    let at = s.next_due_ns;
                    if at > now || at >= clock.end_ns {
                        break;
                    }
                    emit(c, at, &mut totals, &mut pair_sent);
                    let s = c.sender.as_mut().expect("only senders are scheduled");
                    s.next_due_ns += s.interval_ns;
                }
                if !c.queued {
                    c.queued = true;
                    to_flush.push(ci);
                }
                let next = c.sender.as_ref().expect("a sender").next_due_ns;
                if next < clock.end_ns {
                    due.push(Reverse((next, ci)));
                }
            }
            std::mem::swap(&mut ready, &mut writing);
            for ci in writing.drain(..) {
                totals.visits += 1;
                let c = &mut conns[ci];
                loop {
                    let pair = c.sender.as_ref().expect("only senders are ready").pair;
                    // Saturating: a duplicate delivery must not underflow the window.
                    if pair_sent[pair].saturating_sub(pair_recv[pair]) >= window {
                        waiting[pair].push(ci);
                        break;
                    }
                    if c.out.len() >= CLOSED_LOOP_BUFFER_BYTES {
                        c.sender.as_mut().expect("a sender").waits_room = true;
                        break;
                    }
                    emit(c, now, &mut totals, &mut pair_sent);
                }
                if !c.queued && !c.out.is_empty() {
                    c.queued = true;
                    to_flush.push(ci);
                }
            }
        }
        totals.visits += to_flush.len() as u64;
        for ci in to_flush.drain(..) {
            let c = &mut conns[ci];
            c.queued = false;
            flush(c)?;
            room_again(c, ci, &mut ready);
        }
        if turn_sent > 0 {
            clock
                .sent
                .fetch_add(std::mem::take(&mut turn_sent), Relaxed);
        }

        // Sleep until the next due message, the window's edges, or an event.
        let now = clock.now_ns();
        let mut wake = clock.drain_ns;
        if mark.is_none() {
            wake = wake.min(clock.warm_ns);
        }
        if !measured_done {
            wake = wake.min(clock.end_ns);
        }
        // After the window nothing more is sent: only deliveries (events) are awaited.
        if now < clock.end_ns {
            if let Some(&Reverse((at, _))) = due.peek() {
                wake = wake.min(at);
            }
            if !ready.is_empty() {
                wake = now;
            }
        }
        let timeout = if wake <= now + SPIN_NS {
            Some(Duration::ZERO)
        } else {
            timer.arm(wake, now)?;
            None
        };
        poll.poll(&mut events, timeout)?;
        for ev in events.iter() {
            let ci = ev.token().0;
            if ev.token() == timer_token {
                timer.fired();
                continue;
            }
            totals.visits += 1;
            let c = &mut conns[ci];
            if ev.is_writable() {
                flush(c)?;
                room_again(c, ci, &mut ready);
            }
            if !ev.is_readable() {
                continue;
            }
            loop {
                match c.stream.read(&mut rbuf) {
                    Ok(0) => bail!("server closed a connection: {:?}", stats.errors),
                    Ok(n) => {
                        let recv_ns = clock.now_ns();
                        let counts_for = c.counts_for;
                        let input: &[u8] = match c.tls.as_mut() {
                            None => &rbuf[..n],
                            Some(t) => {
                                decrypt(t, &rbuf[..n], &mut plain)?;
                                &plain
                            }
                        };
                        c.parser.feed(input, &mut reply, &mut stats, |m| {
                            let Some((intended, sent, _seq)) = wire::get_header(m) else {
                                return;
                            };
                            turn_recv += 1;
                            if let Some(pair) = counts_for {
                                pair_recv[pair] += 1;
                                if !waiting[pair].is_empty() {
                                    opened.push(pair);
                                }
                            }
                            if intended >= clock.warm_ns && intended < clock.end_ns {
                                totals.delivered += 1;
                                let _ = totals
                                    .corrected
                                    .record(recv_ns.saturating_sub(intended).max(1));
                                let _ = totals.raw.record(recv_ns.saturating_sub(sent).max(1));
                            } else if intended >= clock.end_ns {
                                totals.late_or_dup += 1;
                            }
                        });
                        if !reply.is_empty() {
                            c.out.append(&mut reply);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
            // Pongs queued, or TLS records rustls wants out after reading (a key update).
            if !c.out.is_empty() || c.tls.as_ref().is_some_and(|t| t.wants_write()) {
                flush(c)?;
                room_again(c, ci, &mut ready);
            }
        }
        for pair in opened.drain(..) {
            if pair_sent[pair].saturating_sub(pair_recv[pair]) < window {
                ready.append(&mut waiting[pair]);
            }
        }
        if turn_recv > 0 {
            clock
                .received
                .fetch_add(std::mem::take(&mut turn_recv), Relaxed);
        }
        if let Some(e) = stats.errors.first() {
            bail!("{e}");
        }
    }
    totals.rejected = stats.rejected;
    Ok(totals)
}

/// A closed-loop sender that stopped for a full buffer goes back to `ready` once it has room.
fn room_again(c: &mut Conn, ci: usize, ready: &mut Vec<usize>) {
    if let Some(s) = c.sender.as_mut() {
        if s.waits_room && c.out.len() < CLOSED_LOOP_BUFFER_BYTES {
            s.waits_room = false;
            ready.push(ci);
        }
    }
}

fn flush(c: &mut Conn) -> anyhow::Result<()> {
    if let Some(t) = c.tls.as_mut() {
        // Plaintext moves into rustls only once its previous records are on the wire, so the
        // backlog stays visible (and bounded) in `out`.
        loop {
            while t.wants_write() {
                match t.write_tls(&mut c.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            if c.out.is_empty() {
                return Ok(());
            }
            // 16 KiB: one TLS record, well inside rustls's default 64 KiB buffer.
            let n = c.out.len().min(16 * 1024);
            t.writer().write_all(&c.out[..n])?;
            c.out.drain(..n);
        }
    }
    while !c.out.is_empty() {
        match c.stream.write(&c.out) {
            Ok(0) => bail!("write returned 0"),
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// TLS records in, plaintext out (into `plain`, replacing its contents).
fn decrypt(
    t: &mut rustls::ClientConnection,
    mut data: &[u8],
    plain: &mut Vec<u8>,
) -> anyhow::Result<()> {
    plain.clear();
    while !data.is_empty() {
        t.read_tls(&mut data)?;
        t.process_new_packets()?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match t.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => plain.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Connect + prove + subscribe + disconnect cycles on `pairs` threads.
fn run_churn(args: &Args, kind: Kind, addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
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

/// Offline: each of `pairs` threads stores `messages` blobs for its own offline mailbox, in
/// windows of 256 outstanding sends, timing each send until its answer (`Accepted`: the sender
/// has not proven the dest, so the node does not say live or stored); then each
/// mailbox's owner connects, proves `Drain`, and drains and acks everything.
fn run_offline(args: &Args, kind: Kind, addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
    use ferry_proto::conn::ClientEvent;
    if kind != Kind::Ferry {
        bail!("--workload offline drives ferry's store only");
    }
    let n = args.messages;
    let size = args.size.max(HEADER_BYTES);
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
    let mut store_h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut stored = 0;
    for t in threads {
        let (h, s) = t
            .join()
            .map_err(|_| anyhow::anyhow!("offline sender panicked"))??;
        store_h.add(&h)?;
        stored += s;
    }
    let store_s = store_start.elapsed().as_secs_f64();
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
    let mut drained = 0;
    for t in threads {
        drained += t
            .join()
            .map_err(|_| anyhow::anyhow!("offline drainer panicked"))??;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "target": args.target,
        "workload": "offline",
        "pairs": args.pairs,
        "size": size,
        "stored": stored,
        "stored_per_s": stored as f64 / store_s,
        "time_to_stored_us": {
            "p50": store_h.value_at_quantile(0.5) as f64 / 1000.0,
            "p99": store_h.value_at_quantile(0.99) as f64 / 1000.0,
            "max": store_h.max() as f64 / 1000.0,
        },
        "drained": drained,
        "drained_per_s": drained as f64 / drain_s,
        "lost": stored.saturating_sub(drained),
    }))
}

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
fn run_idle(args: &Args, kind: Kind, addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
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
