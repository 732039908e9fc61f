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

#![allow(dead_code)] // the tests use some of it, the binary the rest

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_proto::addr::{NamespaceId, epoch_of};
use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{
    BlobStatus, Dest, ErrorCode, FLAG_ACK, Frame, Op, ProofStatus, SendStatus, decode_frame,
    frame_type,
};
use ferry_proto::limits::{FRAME_BYTES_MAX, VERSION_MAX, VERSION_MIN};
use ferry_sdk::{Client, Mailbox, SdkError};
use serde_json::{Value, json};

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

/// The resident set of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
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

// ---------------------------------------------------------------------------------------------
// 1. Store fill

/// One address, 4 connections, 64 KB packets to random offline dests; honest offline senders
/// from another address meanwhile.
pub fn store_fill(o: &Opts) -> Res<Report> {
    const GOAL: &str = "honest senders from other sources store >= 95 % of their offline mail; the attacker holds <= its share";
    let stop = Arc::new(AtomicBool::new(false));
    let full = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut attackers = Vec::new();
    for t in 0..4u64 {
        let mut c = client_from(ATTACKER, o.node)?;
        let (stop, full) = (stop.clone(), full.clone());
        attackers.push(std::thread::spawn(move || {
            let payload = vec![0xa5u8; 64_000];
            let mut all = BTreeMap::new();
            let (mut sent, mut stored) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let (st, s, b) = flood_sends(
                    &mut c,
                    &stop,
                    16,
                    &payload,
                    |i| random_dest(t, sent + i),
                    16,
                    false,
                );
                if st.contains_key("StoreFull") {
                    full.store(true, Ordering::Relaxed);
                }
                let broken = st.keys().any(|k| !k.chars().all(char::is_alphanumeric));
                add(&mut all, st);
                sent += s;
                stored += b;
                if broken {
                    break;
                }
            }
            (all, sent, stored)
        }));
    }
    // The honest senders start once the store is full (or a third of the time has passed).
    while !full.load(Ordering::Relaxed) && started.elapsed() < o.duration / 3 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut honest = Honest::default();
    let mut c = client_from(HONEST_TX, o.node)?;
    let epoch = c.epoch();
    let until = Instant::now() + o.duration;
    let mut i = 0u32;
    while Instant::now() < until {
        let dest = mailbox(10_000 + i % 500).dest(epoch)?;
        send_offline(&mut c, &mut honest, dest, u64::from(i) + 1, &[0x11; 1024])?;
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let (mut statuses, mut sent, mut stored) = (BTreeMap::new(), 0, 0);
    for a in attackers {
        let (st, s, b) = a.join().map_err(|_| "attacker thread panicked")?;
        add(&mut statuses, st);
        sent += s;
        stored += b;
    }
    let share = o.store_bytes_max / 100 * o.store_source_share_pct;
    let met = honest.delivery_rate() >= 0.95 && stored <= share;
    Ok(Report {
        attack: "store-fill",
        attacker: json!({"sends": sent, "bytes_stored": stored, "share_bytes_allowed": share, "results": statuses}),
        verdict: format!(
            "honest stored {:.1} %, attacker holds {} MiB (share {} MiB)",
            honest.delivery_rate() * 100.0,
            stored >> 20,
            share >> 20
        ),
        honest,
        goal: GOAL,
        met,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Mailbox flood

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

/// 10,000 one-byte sends to a known offline dest, then another source's message to it; and a
/// flood at a live subscriber while another source sends to it.
pub fn mailbox_flood(o: &Opts) -> Res<Report> {
    const GOAL: &str = "another source's message to the flooded dest is stored and delivered; live delivery to a subscriber is never refused";
    let mut attacker = client_from(ATTACKER, o.node)?;
    let epoch = attacker.epoch();
    let victim = mailbox(20_000);
    let dest = victim.dest(epoch)?;
    let never = AtomicBool::new(false);
    let (offline, sent_offline, _) = flood_sends(
        &mut attacker,
        &never,
        256,
        b"x",
        |_| dest,
        o.flood_sends,
        false,
    );
    // Another source writes to the victim.
    let mut honest = Honest::default();
    let mut tx = client_from(HONEST_TX, o.node)?;
    send_offline(&mut tx, &mut honest, dest, 1, b"honest mail")?;
    let mut owner = client_from(HONEST_RX, o.node)?;
    let found = drain_marked(&mut owner, &victim, epoch, b"honest mail")?;
    let stored_and_drained = !found.is_empty();
    if honest.ok == 1 && !stored_and_drained {
        honest.ok = 0;
        honest.refuse("stored but not drained");
    }
    drop(owner);
    // Live: the victim listens; the attacker floods it while the honest sender asks for ACKs.
    let live = mailbox(20_001);
    let mut sub = client_from(HONEST_RX, o.node)?;
    let live_dest = sub.listen(&live, [epoch])?[0];
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let flooder = std::thread::spawn(move || {
        flood_sends(
            &mut attacker,
            &flag,
            256,
            b"x",
            |_| live_dest,
            u64::MAX,
            true,
        )
    });
    let mut live_refused = 0;
    for n in 0..50u64 {
        honest.sent += 1;
        let t = Instant::now();
        tx.send(live_dest, 1_000 + n, FLAG_ACK, b"honest live");
        tx.flush()?;
        let deadline = t + ANSWER_WAIT;
        let mut result = None;
        let mut delivered = false;
        while (result.is_none() || !delivered) && Instant::now() < deadline {
            while let Ok(ev) = sub.recv(Duration::from_millis(1)) {
                if let ClientEvent::Deliver { payload, .. } = ev
                    && payload.as_ref() == b"honest live"
                {
                    delivered = true;
                }
            }
            if result.is_none()
                && let Ok(ClientEvent::SendResult { status, msg_id, .. }) =
                    tx.recv(Duration::from_millis(5))
                && msg_id == 1_000 + n
            {
                result = Some(status);
            }
        }
        match result {
            Some(SendStatus::Delivered | SendStatus::Accepted) if delivered => {
                honest.ok += 1;
                honest
                    .latencies_us
                    .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            Some(SendStatus::Delivered | SendStatus::Accepted) => {
                honest.refuse("acked but not received");
            }
            Some(s) => {
                live_refused += 1;
                honest.refuse(s);
            }
            None => honest.refuse("lost"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let (live_statuses, live_sent, _) = flooder.join().map_err(|_| "flooder panicked")?;
    let met = stored_and_drained && live_refused == 0 && honest.delivery_rate() >= 1.0;
    Ok(Report {
        attack: "mailbox-flood",
        attacker: json!({"offline_sends": sent_offline, "offline_results": offline,
                         "live_sends": live_sent, "live_results": live_statuses}),
        verdict: format!(
            "honest offline message {}; live: {} of 50 delivered, {live_refused} refused",
            if stored_and_drained {
                "stored and drained"
            } else {
                "not stored"
            },
            honest.ok.saturating_sub(u64::from(stored_and_drained)),
        ),
        honest,
        goal: GOAL,
        met,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Media reservation

/// Sends `BlobBegin`s for fresh ids declaring `size` on `conns`, `window` at a time, until one
/// answer is `until` or `max` were sent; counts the answers.
fn begins(
    conns: &mut [Raw],
    tag: u64,
    size: u64,
    until: BlobStatus,
    max: u64,
    statuses: &mut BTreeMap<String, u64>,
) -> Res<u64> {
    let mut n = 0u64;
    let mut seen = false;
    while !seen && n < max {
        for c in conns.iter_mut() {
            let k = 8u64.min(max - n);
            for i in 0..k {
                let id =
                    *blake3::hash(&[tag.to_le_bytes(), (n + i).to_le_bytes()].concat()).as_bytes();
                c.write(&Frame::BlobBegin { id, size })?;
            }
            n += k;
            let mut answers = 0;
            let frames = c.read_until(ANSWER_WAIT, |f| {
                if matches!(f, Frame::BlobStatus { .. } | Frame::Error { .. }) {
                    answers += 1;
                }
                answers == k || matches!(f, Frame::Error { .. })
            });
            for f in frames {
                match f {
                    Frame::BlobStatus { status, .. } => {
                        seen |= status == until;
                        *statuses.entry(format!("{status:?}")).or_default() += 1;
                    }
                    Frame::Error { code, .. } => {
                        *statuses.entry(format!("{code:?}")).or_default() += 1;
                        return Ok(n);
                    }
                    _ => {}
                }
            }
            if n >= max || seen {
                break;
            }
        }
    }
    Ok(n)
}

/// Begins declaring 100 MiB with no data until DiskFull, then one-byte begins until Busy; then
/// honest uploads from another address.
pub fn media_reserve(o: &Opts) -> Res<Report> {
    const GOAL: &str = "honest uploads from another address succeed";
    let mut conns = Vec::new();
    for _ in 0..4 {
        match Raw::hello(ATTACKER, o.node)? {
            Hello::Open(r) => conns.push(r),
            other => return Err(format!("attacker refused: {other:?}").into()),
        }
    }
    let mut big = BTreeMap::new();
    let big_n = begins(
        &mut conns,
        1,
        o.media_declared_bytes,
        BlobStatus::DiskFull,
        o.media_begins_max,
        &mut big,
    )?;
    let mut small = BTreeMap::new();
    let small_n = begins(
        &mut conns,
        2,
        1,
        BlobStatus::Busy,
        o.media_begins_max,
        &mut small,
    )?;
    let mut honest = Honest::default();
    let mut c = client_from(HONEST_TX, o.node)?;
    for i in 0..5u8 {
        let data: Vec<u8> = (0..64 * 1024).map(|j| (j % 251) as u8 ^ i).collect();
        let id = *blake3::hash(&data).as_bytes();
        honest.sent += 1;
        let t = Instant::now();
        match c.upload_blob(id, data.len() as u64, &mut std::io::Cursor::new(&data)) {
            Ok(()) => {
                honest.ok += 1;
                honest
                    .latencies_us
                    .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            Err(SdkError::Blob(st)) => honest.refuse(st),
            Err(e) => {
                honest.refuse(e.to_string());
                c = client_from(HONEST_TX, o.node)?;
            }
        }
    }
    drop(conns);
    let met = honest.delivery_rate() >= 1.0;
    Ok(Report {
        attack: "media-reserve",
        attacker: json!({"declared_begins": big_n, "declared_bytes_each": o.media_declared_bytes,
                         "declared_results": big, "tiny_begins": small_n, "tiny_results": small}),
        verdict: format!("{} of {} honest uploads succeeded", honest.ok, honest.sent),
        honest,
        goal: GOAL,
        met,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Proof replay

/// One valid 128-proof frame re-sent without end (a fresh one every 256), while a live pair is
/// timed; the same pair timed before as the baseline.
pub fn proof_replay(o: &Opts) -> Res<Report> {
    const GOAL: &str =
        "honest p99 at most doubles (against at least 5 ms) while proofs are replayed";
    let base = LivePair::start(o.node, 30_000, Duration::from_millis(5))?;
    std::thread::sleep(o.duration / 2);
    let base = base.finish()?;
    let Hello::Open(mut a) = Raw::hello(ATTACKER, o.node)? else {
        return Err("attacker refused".into());
    };
    let signers: Vec<_> = (0..128)
        .map(|i| mailbox(31_000 + i).signer(epoch_of(a.unix_s)))
        .collect::<Result<_, _>>()?;
    let sign = |node_id: &[u8; 32], ch: &[u8; 32]| {
        Frame::Prove {
            items: signers
                .iter()
                .map(|s| s.prove(node_id, ch, Op::Subscribe))
                .collect(),
        }
        .to_bytes()
    };
    let verified0 = metric(o.admin, "ferry_proofs_verified_total");
    let pair = LivePair::start(o.node, 30_001, Duration::from_millis(5))?;
    let mut frame = sign(&a.node_id, &a.challenge);
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let (mut frames_sent, mut answered) = (0u64, 0u64);
    let t = Instant::now();
    while t.elapsed() < o.duration {
        if frames_sent % 256 == 255 {
            a.write(&Frame::ChallengeRequest)?;
            let ch = a.read_until(ANSWER_WAIT, |f| matches!(f, Frame::Challenge { .. }));
            if let Some(Frame::Challenge { challenge, .. }) = ch.last() {
                frame = sign(&a.node_id, challenge);
            }
        }
        for _ in 0..16 {
            a.s.write_all(&frame)?;
        }
        frames_sent += 16;
        let mut results = 0;
        for f in a.read_until(ANSWER_WAIT, |f| {
            if matches!(f, Frame::ProveResult { .. }) {
                results += 1;
            }
            results == 16 || matches!(f, Frame::Error { .. })
        }) {
            match f {
                Frame::ProveResult { items } => {
                    answered += 1;
                    for (_, _, s) in items {
                        *statuses.entry(format!("{s:?}")).or_default() += 1;
                    }
                }
                Frame::Error { code, .. } => {
                    *statuses.entry(format!("{code:?}")).or_default() += 1;
                    break;
                }
                _ => {}
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let honest = pair.finish()?;
    let verified = metric(o.admin, "ferry_proofs_verified_total")
        .zip(verified0)
        .map(|(b, a)| b.saturating_sub(a));
    let limit = 2.0 * base.p99_ms().max(P99_FLOOR_MS);
    let met = honest.p99_ms() <= limit && honest.delivery_rate() >= 0.99;
    Ok(Report {
        attack: "proof-replay",
        attacker: json!({"frames_sent": frames_sent, "frames_answered": answered,
                         "proofs_answered_per_s": round3(answered as f64 * 128.0 / secs),
                         "node_verified": verified, "statuses": statuses,
                         "honest_p99_ms_before": round3(base.p99_ms())}),
        verdict: format!(
            "honest p99 {:.2} ms under attack, {:.2} ms before (limit {limit:.1} ms)",
            honest.p99_ms(),
            base.p99_ms()
        ),
        honest,
        goal: GOAL,
        met,
    })
}

// ---------------------------------------------------------------------------------------------
// 5. Memory

/// Opens up to `n` connections from the attacker's many addresses (`CONNS_PER_ATTACKER_ADDR`
/// each), calling `each` on every open one; stops at the first refusal. Returns the open ones
/// and the refusal.
fn open_many(
    node: SocketAddr,
    n: usize,
    first_addr: usize,
    mut each: impl FnMut(&mut Raw) -> Res<()>,
) -> Res<(Vec<Raw>, Option<String>)> {
    let mut open = Vec::with_capacity(n);
    while open.len() < n {
        let source = attacker_addr(first_addr + open.len() / CONNS_PER_ATTACKER_ADDR);
        match Raw::hello(source, node) {
            Ok(Hello::Open(mut r)) => {
                each(&mut r)?;
                open.push(r);
            }
            Ok(Hello::Refused(code)) => return Ok((open, Some(format!("{code:?}")))),
            Ok(Hello::Silent) => return Ok((open, Some("silent".into()))),
            Err(e) => return Ok((open, Some(e.to_string()))),
        }
    }
    Ok((open, None))
}

/// Connections holding a partial 65 KB frame, and subscribers that never read while a flood
/// fills their queues; RSS sampled throughout and after they leave.
pub fn memory(o: &Opts) -> Res<Report> {
    const GOAL: &str = "RSS stays within the node's baseline (its RSS before the attack) plus the memory budget and falls back within a minute after the attack; an honest pair keeps delivering";
    let pid = o.pid.ok_or("memory needs --node-pid (the node's RSS)")?;
    let rss0 = rss_bytes(pid).ok_or("no RSS for the node")?;
    let mut peak = rss0;
    let pair = LivePair::start(o.node, 40_000, Duration::from_millis(20))?;
    let prefix = u32::try_from(FRAME_BYTES_MAX)?.to_le_bytes();
    let mut partial = vec![frame_type::SEND];
    partial.resize(FRAME_BYTES_MAX - 100, 0x5a);
    let (held, refused) = open_many(o.node, o.conns, 0, |r| {
        r.s.write_all(&prefix)?;
        r.s.write_all(&partial)?;
        Ok(())
    })?;
    peak = peak.max(rss_bytes(pid).unwrap_or(0));
    // Subscribers that never read, flooded.
    let mut subs = Vec::new();
    let first = held.len() / CONNS_PER_ATTACKER_ADDR + 1;
    for i in 0..o.subscribers {
        let source = attacker_addr(first + i / CONNS_PER_ATTACKER_ADDR);
        let Ok(mut c) = client_from(source, o.node) else {
            break;
        };
        let Ok(d) = c.listen(&mailbox(41_000 + u32::try_from(i)?), [c.epoch()]) else {
            break;
        };
        subs.push((c, d[0]));
    }
    let dests: Vec<Dest> = subs.iter().map(|s| s.1).collect();
    let mut flooder = client_from(ATTACKER, o.node)?;
    let stop = AtomicBool::new(false);
    let payload = vec![0x33u8; 16 * 1024];
    let t = Instant::now();
    let (mut flood, mut flood_sent) = (BTreeMap::new(), 0u64);
    while t.elapsed() < o.duration {
        if !dests.is_empty() {
            let base = flood_sent;
            let (st, s, _) = flood_sends(
                &mut flooder,
                &stop,
                64,
                &payload,
                |i| dests[usize::try_from((base + i) % dests.len() as u64).unwrap_or(0)],
                256,
                true,
            );
            add(&mut flood, st);
            flood_sent += s;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        peak = peak.max(rss_bytes(pid).unwrap_or(0));
    }
    let held_n = held.len();
    drop(held);
    drop(subs);
    drop(flooder);
    let honest = pair.finish()?;
    let left = Instant::now();
    let back = loop {
        let r = rss_bytes(pid).unwrap_or(u64::MAX);
        if r <= rss0 + o.memory_budget_bytes / 4 {
            break Some(left.elapsed().as_secs_f64());
        }
        if left.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The budget bounds what connections hold; the process's fixed baseline (binary, io_uring
    // rings, shard tables) is outside it (docs/CONFIGURATION.md, `memory_bytes_max`).
    let met =
        peak <= rss0 + o.memory_budget_bytes && back.is_some() && honest.delivery_rate() >= 0.99;
    Ok(Report {
        attack: "memory",
        attacker: json!({"partial_frame_conns": held_n, "refused_with": refused,
                         "silent_subscribers": dests.len(), "flood_sends": flood_sent, "flood_results": flood,
                         "rss_before_mib": rss0 >> 20, "rss_peak_mib": peak >> 20,
                         "budget_mib": o.memory_budget_bytes >> 20, "rss_back_after_s": back}),
        verdict: format!(
            "RSS peak {} MiB (baseline {} MiB + budget {} MiB), back {}",
            peak >> 20,
            rss0 >> 20,
            o.memory_budget_bytes >> 20,
            back.map_or("not within 60 s".into(), |s| format!("after {s:.1} s"))
        ),
        honest,
        goal: GOAL,
        met,
    })
}

// ---------------------------------------------------------------------------------------------
// 6. Descriptors

/// Connections until the node refuses (its descriptor limit, or `conns`); then an honest
/// client's new connection and `/metrics`, while a live pair keeps going.
pub fn descriptors(o: &Opts) -> Res<Report> {
    const GOAL: &str = "at the descriptor limit an honest client and /metrics still get answers; an open honest pair keeps delivering";
    let pair = LivePair::start(o.node, 50_000, Duration::from_millis(20))?;
    let (open, refused) = open_many(o.node, o.conns, 0, |_| Ok(()))?;
    let at_limit = refused.is_some();
    // The honest newcomer: any answer (served, or refused with a code) within 5 s; silence fails.
    let mut honest = pair.finish()?;
    honest.sent += 1;
    let t = Instant::now();
    let newcomer = match Raw::hello(HONEST_TX, o.node) {
        Ok(Hello::Open(_)) => "served".to_string(),
        Ok(Hello::Refused(code)) => format!("refused {code:?}"),
        Ok(Hello::Silent) => "silent".to_string(),
        Err(e) => format!("error {e}"),
    };
    let answered = (newcomer == "served" || newcomer.starts_with("refused"))
        && t.elapsed() < Duration::from_secs(5);
    if answered {
        honest.ok += 1;
        honest
            .latencies_us
            .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
    } else {
        honest.refuse(&newcomer);
    }
    let metrics = o
        .admin
        .map(|a| http_get(a, "/metrics").is_some_and(|(s, _)| s == 200));
    let open_n = open.len();
    drop(open);
    let met = at_limit && answered && metrics != Some(false) && honest.delivery_rate() >= 0.99;
    Ok(Report {
        attack: "descriptors",
        attacker: json!({"connections_open": open_n, "then": refused}),
        verdict: format!(
            "{} after {open_n} connections; honest newcomer {newcomer}; /metrics {}",
            if at_limit {
                "limit reached"
            } else {
                "limit NOT reached"
            },
            match metrics {
                Some(true) => "answered",
                Some(false) => "did NOT answer",
                None => "not checked",
            }
        ),
        honest,
        goal: GOAL,
        met,
    })
}

// ---------------------------------------------------------------------------------------------
// 7. Presence oracle

/// The `SendResult` a stranger gets for a `FLAG_ACK` packet to `dest`, if any within 2 s.
fn ack_answer(c: &mut Client, dest: Dest, msg_id: u64) -> Res<String> {
    c.send(dest, msg_id, FLAG_ACK, b"are you there?");
    c.flush()?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match c.recv(deadline.saturating_duration_since(Instant::now())) {
            Ok(ClientEvent::SendResult {
                msg_id: m, status, ..
            }) if m == msg_id => {
                return Ok(format!("{status:?}"));
            }
            Ok(_) => {}
            Err(SdkError::Timeout) => return Ok("none".into()),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A stranger asks `Query` about a known dest while it is empty, holds mail and is drained, and
/// sends `FLAG_ACK` packets while its owner is online and offline.
pub fn presence_oracle(o: &Opts) -> Res<Report> {
    const GOAL: &str = "a stranger learns nothing: Query answers \"not holding\" empty, with mail waiting and drained; an ACK send answers Accepted online and offline";
    let owner_mb = mailbox(60_000);
    let mut stranger = client_from(ATTACKER, o.node)?;
    let epoch = stranger.epoch();
    let dest = owner_mb.dest(epoch)?;
    let q = |c: &mut Client| -> Res<bool> { Ok(c.query(&[dest])?.contains(&dest)) };
    let q_empty = q(&mut stranger)?;
    let mut honest = Honest::default();
    let mut tx = client_from(HONEST_TX, o.node)?;
    send_offline(&mut tx, &mut honest, dest, 1, b"for the owner")?;
    let q_waiting = q(&mut stranger)?;
    let mut owner = client_from(HONEST_RX, o.node)?;
    let found = drain_marked(&mut owner, &owner_mb, epoch, b"for the owner")?;
    if honest.ok == 1 && found.is_empty() {
        honest.ok = 0;
        honest.refuse("stored but not drained");
    }
    let q_drained = q(&mut stranger)?;
    // ACKs: owner online, then offline.
    owner.listen(&owner_mb, [epoch])?;
    let ack_online = ack_answer(&mut stranger, dest, 2)?;
    drop(owner);
    std::thread::sleep(Duration::from_millis(300));
    let ack_offline = ack_answer(&mut stranger, dest, 3)?;
    // Any difference leaks; so does an answer other than "not holding" and `Accepted`, which
    // could differ by the owner's state on another run.
    let query_leak = q_empty || q_waiting || q_drained;
    let ack_leak = ack_online != ack_offline || ack_online != "Accepted";
    let met = !query_leak && !ack_leak && honest.delivery_rate() >= 1.0;
    Ok(Report {
        attack: "presence-oracle",
        attacker: json!({"query_empty": q_empty, "query_waiting": q_waiting, "query_drained": q_drained,
                         "ack_online": ack_online, "ack_offline": ack_offline,
                         "learned": {"mail_waiting": query_leak, "online": ack_leak}}),
        verdict: format!(
            "stranger learns: mail waiting {}, online {}",
            if query_leak { "YES" } else { "no" },
            if ack_leak { "YES" } else { "no" }
        ),
        honest,
        goal: GOAL,
        met,
    })
}

// ---------------------------------------------------------------------------------------------
// 8. Prekey drain

/// The owner publishes 100 + 100 one-time keys; the attacker fetches from `prekey_addrs`
/// addresses for `duration`; then a legitimate first contact fetches. One-time keys are rationed
/// per source and per slot (`prekeys.one_time_per_*`), and the last-resort bundle (signed prekey
/// and last-resort PQ key, enough for a PQXDH session) is served whatever was drained: the
/// first contact succeeds when it gets a bundle that verifies for the owner's identity, with a
/// one-time key or without.
pub fn prekey_drain(o: &Opts) -> Res<Report> {
    use ferry_sdk::prekeys::{IdentityKey, PrekeyPlan, generate};
    const GOAL: &str = "a legitimate first contact still gets a verified bundle of the owner's (a one-time key, or the last-resort keys once the attacker took its ration), never a refusal";
    let mut owner = client_from(HONEST_RX, o.node)?;
    let slot_mb = mailbox(70_000);
    // Today's slot; the attacker knows the owner's address, so it opens the slot as a contact.
    let now = owner.node_unix_s();
    let day = ferry_proto::addr::day_of(now);
    let signer = slot_mb.slot_signer(day)?;
    let st = owner.prove(&[&signer], Op::PrekeyUpdate)?;
    if st.first() != Some(&ProofStatus::Ok) {
        return Err(format!("prekey proof refused: {st:?}").into());
    }
    let dest = signer.dest();
    let slot =
        ferry_sdk::Contact::new(&slot_mb.public().to_bytes(), ns(), None)?.prekey_slot(day)?;
    let identity = IdentityKey::generate()?;
    let plan = PrekeyPlan {
        head: ferry_sdk::prekeys::HeadPlan::New,
        one_time_ec: 100,
        one_time_pq: 100,
        ids: ferry_sdk::prekeys::PrekeyIds::Random,
        replace_one_time: true,
        expires: now + 2 * ferry_proto::addr::DAY_SECONDS,
        ttl_s: 0,
    };
    let sealer = ferry_proto::prekey::SlotSealer::new(slot_mb.slot_key(day), &signer);
    let (uploads, _secrets) = generate(&identity, &sealer, plan)?;
    owner.upload_prekeys(&uploads)?;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut taken = 0u64;
    let t = Instant::now();
    'addrs: for a in 0..o.prekey_addrs {
        if t.elapsed() > o.duration {
            break;
        }
        let Ok(mut c) = client_from(attacker_addr(a), o.node) else {
            *statuses.entry("connect failed".into()).or_default() += 1;
            continue;
        };
        // Each address fetches until refused (at most 5 times).
        for _ in 0..5 {
            match c.fetch_prekeys(&slot) {
                Ok(b) => {
                    taken += u64::from(b.ec.is_some());
                    let k = if b.ec.is_some() {
                        "one_time"
                    } else {
                        "last_resort"
                    };
                    *statuses.entry(k.into()).or_default() += 1;
                }
                Err(SdkError::Prekey { status, .. }) => {
                    *statuses.entry(format!("{status:?}")).or_default() += 1;
                    continue 'addrs;
                }
                Err(e) => {
                    *statuses.entry(e.to_string()).or_default() += 1;
                    continue 'addrs;
                }
            }
        }
    }
    let left = owner.prekey_count(dest)?;
    let mut honest = Honest::default();
    let mut c = client_from(HONEST_TX, o.node)?;
    honest.sent += 1;
    let t = Instant::now();
    let mut contact_got = "nothing";
    match c.fetch_prekeys(&slot) {
        // `fetch_prekeys` has opened the bundle and checked its signatures.
        Ok(b) if b.identity == identity.public() => {
            contact_got = if b.ec.is_some() && !b.pq_last_resort {
                "a one-time key"
            } else {
                "the last-resort bundle"
            };
            honest.ok += 1;
            honest
                .latencies_us
                .push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
        }
        Ok(_) => honest.refuse("another identity's bundle"),
        Err(SdkError::Prekey { status, .. }) => honest.refuse(status),
        Err(e) => honest.refuse(e.to_string()),
    }
    let met = honest.delivery_rate() >= 1.0;
    Ok(Report {
        attack: "prekey-drain",
        attacker: json!({"addresses": o.prekey_addrs, "one_time_keys_taken": taken,
                         "keys_left_ec_pq": [left.0, left.1], "results": statuses}),
        verdict: format!(
            "attacker took {taken} one-time keys ({} EC left); first contact got {contact_got}",
            left.0,
        ),
        honest,
        goal: GOAL,
        met,
    })
}

// ---------------------------------------------------------------------------------------------
// 9. Puzzles

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
