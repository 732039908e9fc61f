//! The attack suite (issue 14): each attack found from outside on an earlier version, run against
//! a real node while an honest client works beside it from another source address. Each attack
//! returns a [`Report`]: what the attacker achieved, what the honest client experienced at the
//! same time (delivery rate, p99, refusals by code) and whether the attack's goal — the defence's
//! acceptance criterion — was met.
//!
//! Compiled into the `ferry-attack` binary (bench/src/attack.rs) and included by the acceptance
//! tests (tests/attacks.rs), so both run the same code. Source addresses: against a loopback node
//! every role binds its own 127.x address (the attacker 127.0.0.2 or 127.1.x.y when it needs many,
//! the honest sender 127.0.0.3, the honest recipient 127.0.0.4); against any other node nothing
//! is bound and every role shares this machine's address.
//!
//! This file holds what every attack shares (options, the honest witness, reports, raw
//! connections, the dispatch in [`run`]); each attack family is in a file beside it (`store.rs`,
//! `media.rs`, `proofs.rs`, `connections.rs`, `presence.rs`, `prekeys.rs`, `puzzles.rs`).

#![allow(dead_code)] // the tests use some of it, the binary the rest

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_proto::addr::NamespaceId;
use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{
    Dest, ErrorCode, FLAG_ACK, Frame, Op, ProofStatus, SendStatus, decode_frame,
};
use ferry_proto::limits::{VERSION_MAX, VERSION_MIN};
use ferry_sdk::{Client, Mailbox, SdkError};
use serde_json::{Value, json};

mod connections;
mod media;
mod prekeys;
mod presence;
mod proofs;
mod puzzles;
mod store;

pub use connections::{descriptors, memory};
pub use media::media_reserve;
pub use prekeys::prekey_drain;
pub use presence::presence_oracle;
pub use proofs::proof_replay;
pub use puzzles::puzzles;
pub use store::{mailbox_flood, store_fill};

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The attacker's address when it needs one.
pub const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// The honest sender's address.
pub const HONEST_TX: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// The honest recipient's address.
pub const HONEST_RX: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 4));

/// Connections the attacker opens from one of its many addresses (under the node's default
/// per-address cap of 256).
pub const CONNS_PER_ATTACKER_ADDR: usize = 200;

/// Below this the honest p99 is noise on a shared machine: "at most doubles" is measured against
/// at least this.
pub const P99_FLOOR_MS: f64 = 5.0;

/// How long an honest request may go unanswered before it counts as lost.
const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// The `n`-th of the attacker's many addresses: 127.1.x.y.
pub fn attacker_addr(n: usize) -> IpAddr {
    let x = u8::try_from((n / 250) % 250).unwrap_or(0);
    let y = u8::try_from(n % 250 + 1).unwrap_or(1);
    IpAddr::V4(std::net::Ipv4Addr::new(127, 1, x, y))
}

/// What the attacks need to know about the node, and their knobs.
#[derive(Clone, Debug)]
pub struct Opts {
    pub node: SocketAddr,
    /// The admin endpoint (`/metrics`), when known.
    pub admin: Option<SocketAddr>,
    /// The node's process id (RSS), when it runs on this machine.
    pub pid: Option<u32>,
    /// How long each attack's main phase lasts.
    pub duration: Duration,
    /// store-fill: the node's store budget (`limits.store_disk_bytes_max`) and the share one
    /// source may hold of it (the goal).
    pub store_bytes_max: u64,
    pub store_source_share_pct: u64,
    /// mailbox-flood: sends of one byte to the known dest.
    pub flood_sends: u64,
    /// media-reserve: the size each reserving `BlobBegin` declares, and how many (at most).
    pub media_declared_bytes: u64,
    pub media_begins_max: u64,
    /// memory, descriptors: connections the attacker opens (at most).
    pub conns: usize,
    /// memory: subscribers that never read, and the node's memory budget (the goal).
    pub subscribers: usize,
    pub memory_budget_bytes: u64,
    /// prekey-drain: addresses the attacker fetches from.
    pub prekey_addrs: usize,
    /// puzzles: a node of the same build with puzzles off, to compare the attacker's rate with.
    pub baseline_node: Option<SocketAddr>,
}

impl Opts {
    pub fn new(node: SocketAddr) -> Opts {
        Opts {
            node,
            admin: None,
            pid: None,
            duration: Duration::from_secs(5),
            store_bytes_max: 16 << 30,
            store_source_share_pct: 10,
            flood_sends: 10_000,
            media_declared_bytes: 100 << 20,
            media_begins_max: 2_000,
            conns: 16_000,
            subscribers: 2_000,
            memory_budget_bytes: 1 << 30,
            prekey_addrs: 200,
            baseline_node: None,
        }
    }
}

/// What an honest client experienced.
#[derive(Clone, Debug, Default)]
pub struct Honest {
    /// Requests made (packets sent, uploads, fetches).
    pub sent: u64,
    /// Requests that succeeded (delivered, stored, uploaded).
    pub ok: u64,
    /// Refusals by code (`SendStatus`, `ErrorCode`, `BlobStatus`, … as its name), and `lost`.
    pub refusals: BTreeMap<String, u64>,
    pub latencies_us: Vec<u64>,
}

impl Honest {
    pub fn delivery_rate(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        self.ok as f64 / self.sent as f64
    }

    pub fn p99_ms(&self) -> f64 {
        let mut l = self.latencies_us.clone();
        if l.is_empty() {
            return 0.0;
        }
        l.sort_unstable();
        let i = (l.len() * 99).div_ceil(100).saturating_sub(1);
        l[i.min(l.len() - 1)] as f64 / 1000.0
    }

    pub fn refuse(&mut self, code: impl std::fmt::Debug) {
        let name = format!("{code:?}");
        *self
            .refusals
            .entry(name.trim_matches('"').to_string())
            .or_default() += 1;
    }

    fn merge(&mut self, o: Honest) {
        self.sent += o.sent;
        self.ok += o.ok;
        for (k, v) in o.refusals {
            *self.refusals.entry(k).or_default() += v;
        }
        self.latencies_us.extend(o.latencies_us);
    }

    pub fn json(&self) -> Value {
        json!({
            "sent": self.sent,
            "ok": self.ok,
            "delivery_rate": round3(self.delivery_rate()),
            "p99_ms": round3(self.p99_ms()),
            "refusals": self.refusals,
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One attack's outcome.
#[derive(Clone, Debug)]
pub struct Report {
    pub attack: &'static str,
    /// What the attacker achieved (figures named by the attack).
    pub attacker: Value,
    pub honest: Honest,
    /// The goal, in words, and whether this run met it (and why not).
    pub goal: &'static str,
    pub met: bool,
    pub verdict: String,
}

impl Report {
    pub fn json(&self) -> Value {
        json!({
            "attack": self.attack,
            "attacker": self.attacker,
            "honest": self.honest.json(),
            "goal": self.goal,
            "met": self.met,
            "verdict": self.verdict,
        })
    }
}

/// Every attack's name, in the order `all` runs them (the ones that fill something shared last).
pub const ATTACKS: &[&str] = &[
    "presence-oracle",
    "prekey-drain",
    "proof-replay",
    "mailbox-flood",
    "media-reserve",
    "descriptors",
    "memory",
    "puzzles",
    "store-fill",
];

/// Runs the attack `name`.
pub fn run(name: &str, o: &Opts) -> Res<Report> {
    match name {
        "store-fill" => store_fill(o),
        "mailbox-flood" => mailbox_flood(o),
        "media-reserve" => media_reserve(o),
        "proof-replay" => proof_replay(o),
        "memory" => memory(o),
        "descriptors" => descriptors(o),
        "presence-oracle" => presence_oracle(o),
        "prekey-drain" => prekey_drain(o),
        "puzzles" => puzzles(o),
        other => Err(format!("unknown attack {other}").into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

/// A TCP connection to `node` from `source` (bound only when `node` is on loopback).
pub fn tcp_from(source: IpAddr, node: SocketAddr) -> Res<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(node),
        socket2::Type::STREAM,
        None,
    )?;
    if node.ip().is_loopback() && source.is_ipv4() == node.is_ipv4() {
        sock.bind(&SocketAddr::new(source, 0).into())?;
    }
    sock.connect_timeout(&node.into(), Duration::from_secs(10))?;
    let s: TcpStream = sock.into();
    s.set_nodelay(true)?;
    Ok(s)
}

/// An SDK client from `source`.
pub fn client_from(source: IpAddr, node: SocketAddr) -> Res<Client> {
    Ok(Client::over_tcp(tcp_from(source, node)?)?)
}

/// The namespace every mailbox of the suite lives in.
pub fn ns() -> NamespaceId {
    NamespaceId([0x41; 32])
}

/// A reproducible mailbox from a counter.
pub fn mailbox(i: u32) -> Mailbox {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    seed[31] = 0xa7;
    Mailbox::from_seed(&seed, ns(), None)
}

/// A dest nobody listens to: the `i`-th of stream `tag`.
pub fn random_dest(tag: u64, i: u64) -> Dest {
    let mut h = blake3::Hasher::new();
    h.update(&tag.to_le_bytes());
    h.update(&i.to_le_bytes());
    let mut d = [0u8; 16];
    d.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Dest(d)
}

/// How a raw hello ended.
#[derive(Debug)]
pub enum Hello {
    Open(Raw),
    /// Refused with an error frame.
    Refused(ErrorCode),
    /// Closed (or silent for 10 s) without a frame.
    Silent,
}

/// A raw protocol connection: frames from `ferry_proto`, for an attacker that misbehaves.
#[derive(Debug)]
pub struct Raw {
    pub s: TcpStream,
    buf: BytesMut,
    pub node_id: [u8; 32],
    pub challenge: [u8; 32],
    pub unix_s: u64,
}

impl Raw {
    /// Connects from `source` and says hello.
    pub fn hello(source: IpAddr, node: SocketAddr) -> Res<Hello> {
        let s = tcp_from(source, node)?;
        let mut raw = Raw {
            s,
            buf: BytesMut::new(),
            node_id: [0; 32],
            challenge: [0; 32],
            unix_s: 0,
        };
        raw.write(&Frame::ClientHello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
        })?;
        let frames = raw.read_until(Duration::from_secs(10), |f| {
            matches!(f, Frame::ServerHello { .. } | Frame::Error { .. })
        });
        Ok(match frames.last() {
            Some(Frame::ServerHello {
                node_id,
                challenge,
                unix_time_s,
                ..
            }) => {
                raw.node_id = *node_id;
                raw.challenge = *challenge;
                raw.unix_s = *unix_time_s;
                Hello::Open(raw)
            }
            Some(Frame::Error { code, .. }) => Hello::Refused(*code),
            _ => Hello::Silent,
        })
    }

    pub fn write(&mut self, f: &Frame) -> Res<()> {
        self.s.write_all(&f.to_bytes())?;
        Ok(())
    }

    /// Reads frames until `stop` matches one, the peer closes, or `wait` passes.
    pub fn read_until(
        &mut self,
        wait: Duration,
        mut stop: impl FnMut(&Frame) -> bool,
    ) -> Vec<Frame> {
        let deadline = Instant::now() + wait;
        let mut frames = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Ok(Some(f)) = decode_frame(&mut self.buf) {
                let done = stop(&f);
                frames.push(f);
                if done {
                    return frames;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.s.set_read_timeout(Some(left)).is_err() {
                return frames;
            }
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return frames,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// `GET path` on the admin endpoint: the status and body, or `None` without an answer in 5 s.
pub fn http_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// An unlabelled metric from `/metrics`.
pub fn metric(admin: Option<SocketAddr>, name: &str) -> Option<u64> {
    let (_, body) = http_get(admin?, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A process's resident memory, split by what the kernel can take back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rss {
    /// Anonymous and shared-memory pages (`RssAnon` + `RssShmem`): what the process holds and
    /// only it can give back — heap, stacks, io_uring buffers. The memory budget's measure.
    pub held: u64,
    /// File-backed pages mapped into the process (`RssFile`): the binary, libraries and the
    /// store's mmap'd segments. Page cache, bounded by the store's disk budget and reclaimed by
    /// the kernel under pressure (written back first when dirty), so outside the memory budget.
    pub file: u64,
}

/// The resident set of process `pid` (`/proc/<pid>/status`).
pub fn rss(pid: u32) -> Option<Rss> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some(Rss {
        held: field("RssAnon:")? + field("RssShmem:")?,
        file: field("RssFile:")?,
    })
}

/// CPU time this thread has used (from the scheduler's own accounting).
pub fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

// ---------------------------------------------------------------------------------------------
// The honest witness: a live pair

/// A sender (127.0.0.3) and a subscribed recipient (127.0.0.4) exchanging one packet every
/// `interval`, each timed from send to delivery, until stopped.
pub struct LivePair {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Res<Honest>>,
}

impl LivePair {
    pub fn start(node: SocketAddr, tag: u32, interval: Duration) -> Res<LivePair> {
        let mut rx = client_from(HONEST_RX, node)?;
        let dest = rx.listen(&mailbox(tag), [rx.epoch()])?[0];
        let mut tx = client_from(HONEST_TX, node)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut h = Honest::default();
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                n += 1;
                h.sent += 1;
                let t = Instant::now();
                tx.send(dest, n, 0, b"witness");
                if let Err(e) = tx.flush() {
                    h.refuse(e.to_string());
                    break;
                }
                let deadline = t + ANSWER_WAIT;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match rx.recv(left) {
                        Ok(ClientEvent::Deliver { msg_id, .. }) if msg_id == n => {
                            h.ok += 1;
                            h.latencies_us
                                .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                            break;
                        }
                        Ok(_) => {}
                        Err(SdkError::Timeout) => {
                            h.refuse("lost");
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                while let Ok(ev) = tx.recv(Duration::from_millis(1)) {
                    if let ClientEvent::SendResult { status, .. } = ev {
                        h.refuse(status);
                    }
                }
                std::thread::sleep(interval);
            }
            Ok(h)
        });
        Ok(LivePair { stop, handle })
    }

    pub fn finish(self) -> Res<Honest> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| "the witness thread panicked")?
    }
}

/// Sends `payload` to `dest` with `FLAG_ACK` and waits for its `SendResult` (a stranger to
/// `dest` gets an answer only with `FLAG_ACK`, PROTOCOL.md §8.2); records the outcome, `Stored`,
/// `Delivered` or `Accepted` (what a sender that has not proven `dest` gets for either) being
/// success.
fn send_offline(
    c: &mut Client,
    h: &mut Honest,
    dest: Dest,
    msg_id: u64,
    payload: &[u8],
) -> Res<()> {
    h.sent += 1;
    let t = Instant::now();
    c.send(dest, msg_id, FLAG_ACK, payload);
    c.flush()?;
    let deadline = t + ANSWER_WAIT;
    loop {
        match c.recv(deadline.saturating_duration_since(Instant::now())) {
            Ok(ClientEvent::SendResult {
                msg_id: m, status, ..
            }) if m == msg_id => {
                if accepted(status) {
                    h.ok += 1;
                    h.latencies_us
                        .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                } else {
                    h.refuse(status);
                }
                return Ok(());
            }
            Ok(_) => {}
            Err(SdkError::Timeout) => {
                h.refuse("lost");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a send's answer means the node took the packet: `Delivered`, `Stored`, or `Accepted`
/// (either of them, as a stranger to the dest is told).
fn accepted(status: SendStatus) -> bool {
    matches!(
        status,
        SendStatus::Stored | SendStatus::Delivered | SendStatus::Accepted
    )
}

/// Sends packets from a well-behaved client as fast as the node answers, in windows of `window`,
/// until `stop`; returns the statuses counted and the bytes the node took. Offline sends carry
/// `FLAG_ACK` (a stranger's successful send is answered only then, with `Accepted`); live ones do
/// not (a live delivery is silent, only refusals come back).
fn flood_sends(
    c: &mut Client,
    stop: &AtomicBool,
    window: u64,
    payload: &[u8],
    mut dest_of: impl FnMut(u64) -> Dest,
    sends_max: u64,
    live: bool,
) -> (BTreeMap<String, u64>, u64, u64) {
    let mut statuses = BTreeMap::new();
    let (mut sent, mut stored_bytes) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) && sent < sends_max {
        let n = window.min(sends_max - sent);
        for i in 0..n {
            c.send(
                dest_of(sent + i),
                sent + i + 1,
                if live { 0 } else { FLAG_ACK },
                payload,
            );
        }
        sent += n;
        if let Err(e) = c.flush() {
            *statuses.entry(format!("{e}")).or_insert(0) += 1;
            break;
        }
        let mut answered = 0;
        // Packets delivered live get no answer: then only what has arrived is read.
        let deadline = Instant::now()
            + if live {
                Duration::from_millis(1)
            } else {
                ANSWER_WAIT
            };
        while answered < n {
            match c.recv(deadline.saturating_duration_since(Instant::now())) {
                Ok(ClientEvent::SendResult { status, .. }) => {
                    answered += 1;
                    if accepted(status) {
                        stored_bytes += payload.len() as u64;
                    }
                    *statuses.entry(format!("{status:?}")).or_insert(0) += 1;
                }
                Ok(_) => {}
                Err(SdkError::Timeout) => break,
                Err(e) => {
                    *statuses.entry(format!("{e}")).or_insert(0) += 1;
                    return (statuses, sent, stored_bytes);
                }
            }
        }
    }
    (statuses, sent, stored_bytes)
}

fn add(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

/// Drains `dest` (proven for `Drain` with `mb`'s key for `epoch`), acking as it goes; returns the
/// msg ids of blobs whose payload is `mark`.
fn drain_marked(c: &mut Client, mb: &Mailbox, epoch: u64, mark: &[u8]) -> Res<Vec<u64>> {
    let signer = mb.signer(epoch)?;
    let st = c.prove(&[&signer], Op::Drain)?;
    if st.first() != Some(&ProofStatus::Ok) {
        return Err(format!("drain proof refused: {st:?}").into());
    }
    let dest = signer.dest();
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (blobs, more) = c.drain(dest)?;
        found.extend(
            blobs
                .iter()
                .filter(|b| b.payload.as_ref() == mark)
                .map(|b| b.msg_id),
        );
        c.ack(&blobs)?;
        if !more || Instant::now() > deadline {
            return Ok(found);
        }
    }
}
