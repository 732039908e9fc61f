//! Deterministic simulation of a whole node without sockets or threads: N shard state machines,
//! clients driving `ClientConn`, cross-core batches delivered in a seeded random order (FIFO per
//! pair of cores, as the mesh channels are). Properties checked over random schedules:
//!
//! * every Send with FLAG_ACK gets exactly one SendResult: nothing is dropped silently;
//! * a Delivered (or, to a stranger, Accepted) packet reaches its subscriber exactly once, in
//!   order per (sender, dest);
//! * closing a connection removes its forward-table entries on every shard.

// The wall clock only measures the simulator's speed and draws the random seed it prints.
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::disallowed_methods
)]

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ferry_proto::addr::{MailboxSecret, NamespaceId};
use ferry_proto::conn::{ClientConn, ClientEvent, ConnLimits, Now};
use ferry_proto::frame::{Dest, FLAG_ACK, Frame, Op, SendStatus, SubscribeStatus};
use ferry_shards::ConnId;
use ferry_shards::metrics::ShardMetrics;
use ferry_shards::ratelimit::IpLimits;
use ferry_shards::{Accept, HopMsg, Shard, ShardConfig};
use proptest::prelude::*;

const NODE_ID: [u8; 32] = [0x33; 32];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct SimClient {
    shard: usize,
    conn: ConnId,
    cc: ClientConn,
    events: Vec<ClientEvent>,
    open: bool,
    challenge: [u8; 32],
}

struct Sim {
    shards: Vec<Shard>,
    /// In-flight batches per (from, to), FIFO like the mesh channels.
    links: HashMap<(usize, usize), VecDeque<Vec<HopMsg>>>,
    clients: Vec<SimClient>,
    now: Now,
    rng: Rng,
}

impl Sim {
    fn new(n: usize, seed: u64, hop_queue_msgs_max: usize) -> Sim {
        let shards = (0..n)
            .map(|i| {
                Shard::new(
                    ShardConfig {
                        node_id: NODE_ID,
                        seed: [i as u8; 32],
                        conn_limits: ConnLimits::default(),
                        ip_limits: IpLimits {
                            entries_max: 16,
                            ..common::ip_limits_off()
                        },
                        connections_max: 1000,
                        hop_queue_msgs_max,
                        ..common::config(i as u16, n)
                    },
                    Arc::new(ShardMetrics::default()),
                )
            })
            .collect();
        Sim {
            shards,
            links: HashMap::new(),
            clients: Vec::new(),
            now: Now {
                mono_ms: 1_000,
                unix_s: 1_800_000_000,
            },
            rng: Rng(seed | 1),
        }
    }

    fn connect(&mut self, shard: usize) -> usize {
        let Accept::Ok(conn) = self.shards[shard].accept(self.now, IpAddr::V4(Ipv4Addr::LOCALHOST))
        else {
            panic!("refused")
        };
        self.clients.push(SimClient {
            shard,
            conn,
            cc: ClientConn::new(),
            events: Vec::new(),
            open: true,
            challenge: [0; 32],
        });
        let id = self.clients.len() - 1;
        self.run();
        let ch = self.clients[id].events.iter().find_map(|e| match e {
            ClientEvent::Ready { challenge, .. } => Some(*challenge),
            _ => None,
        });
        self.clients[id].challenge = ch.expect("hello answered");
        self.clients[id].events.clear();
        id
    }

    /// Moves bytes and batches in random order until nothing moves (bounded).
    fn run(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            // Clients → shards.
            for i in 0..self.clients.len() {
                let c = &mut self.clients[i];
                if !c.open {
                    continue;
                }
                if let Some(out) = c.cc.take_output() {
                    let (s, conn) = (c.shard, c.conn);
                    // Deliver in random-sized pieces: framing must not care.
                    let mut at = 0;
                    while at < out.len() {
                        let n = 1 + self.rng.below(out.len() - at);
                        self.shards[s].on_bytes(self.now, conn, &out[at..at + n]);
                        at += n;
                    }
                    moved = true;
                }
            }
            // Shards → links (one batch per pending peer, like a flusher per turn).
            for s in 0..self.shards.len() {
                let pending: Vec<usize> = self.shards[s].outbox_pending().collect();
                for p in pending {
                    if let Some(b) = self.shards[s].take_outbox(p) {
                        self.links.entry((s, p)).or_default().push_back(b);
                        moved = true;
                    }
                }
            }
            // Links → shards: a random non-empty link delivers its oldest batch.
            let nonempty: Vec<(usize, usize)> = self
                .links
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(k, _)| *k)
                .collect();
            if !nonempty.is_empty() {
                let mut keys = nonempty;
                keys.sort();
                let k = keys[self.rng.below(keys.len())];
                let batch = self.links.get_mut(&k).unwrap().pop_front().unwrap();
                self.shards[k.1].on_hops(self.now, batch);
                moved = true;
            }
            // Shards → clients.
            for s in 0..self.shards.len() {
                let mut ready = Vec::new();
                self.shards[s].take_ready(&mut ready);
                for conn in ready {
                    let out = self.shards[s].take_output(conn);
                    let n = out.bytes.as_ref().map_or(0, |b| b.len());
                    if let Some(c) = self
                        .clients
                        .iter_mut()
                        .find(|c| c.shard == s && c.conn == conn && c.open)
                    {
                        if let Some(b) = &out.bytes {
                            c.cc.on_bytes(b);
                            while let Some(ev) = c.cc.poll_event().unwrap() {
                                c.events.push(ev);
                            }
                        }
                    }
                    self.shards[s].on_written(self.now, conn, n);
                    moved |= n > 0;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("simulation did not settle");
    }

    fn close(&mut self, client: usize) {
        let c = &mut self.clients[client];
        c.open = false;
        self.shards[c.shard].on_closed(c.conn);
        self.run();
    }

    fn listen(&mut self, client: usize, secret: &MailboxSecret, epoch: u64) -> (Dest, bool) {
        let signer = secret
            .blinded_signer(&NamespaceId([1; 32]), None, epoch)
            .unwrap();
        let ch = self.clients[client].challenge;
        let item = signer.prove(&NODE_ID, &ch, Op::Subscribe);
        let c = &mut self.clients[client];
        c.cc.push(&Frame::Prove { items: vec![item] });
        c.cc.push(&Frame::Subscribe {
            dests: vec![signer.dest()],
        });
        self.run();
        let ok = self.clients[client].events.iter().any(|e| {
            matches!(e, ClientEvent::SubscribeResult { items } if items.iter().any(|(d, s)| *d == signer.dest() && *s == SubscribeStatus::Ok))
        });
        (signer.dest(), ok)
    }
}

fn secret(i: u32) -> MailboxSecret {
    let mut seed = [9u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    MailboxSecret::from_seed(&seed)
}

#[derive(Clone, Debug)]
enum Step {
    /// Client `who` subscribes to mailbox `mbox`.
    Listen { who: usize, mbox: u32 },
    /// Client `who` sends `count` acked packets to mailbox `mbox`.
    Send { who: usize, mbox: u32, count: u8 },
    /// Client `who` closes.
    Close { who: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..6, 0u32..4).prop_map(|(who, mbox)| Step::Listen { who, mbox }),
        (0usize..6, 0u32..4, 1u8..20).prop_map(|(who, mbox, count)| Step::Send {
            who,
            mbox,
            count
        }),
        (0usize..6).prop_map(|who| Step::Close { who }),
    ]
}

fn check_schedule(shards: usize, seed: u64, steps: &[Step], hop_queue_msgs_max: usize) {
    let mut sim = Sim::new(shards, seed, hop_queue_msgs_max);
    let epoch = 500_000;
    let clients: Vec<usize> = (0..6).map(|i| sim.connect(i % shards)).collect();
    let mut dest_of: HashMap<u32, Dest> = HashMap::new();
    let mut next_id: u64 = 0;
    // msg_id → (sender client, dest)
    let mut sent: HashMap<u64, (usize, Dest)> = HashMap::new();
    for s in steps {
        match *s {
            Step::Listen { who, mbox } if sim.clients[clients[who]].open => {
                let (dest, ok) = sim.listen(clients[who], &secret(mbox), epoch);
                assert!(ok, "subscribe refused");
                dest_of.insert(mbox, dest);
            }
            Step::Send { who, mbox, count } if sim.clients[clients[who]].open => {
                let dest = secret(mbox)
                    .public()
                    .dest(&NamespaceId([1; 32]), None, epoch)
                    .unwrap();
                for _ in 0..count {
                    next_id += 1;
                    sim.clients[clients[who]].cc.send(
                        dest,
                        next_id,
                        FLAG_ACK,
                        0,
                        &next_id.to_le_bytes(),
                    );
                    sent.insert(next_id, (who, dest));
                }
                sim.run();
            }
            Step::Close { who } if sim.clients[clients[who]].open => sim.close(clients[who]),
            _ => {}
        }
    }
    sim.run();
    // Every acked send answered exactly once (senders still open).
    let mut answered: HashMap<u64, SendStatus> = HashMap::new();
    for (who, &cid) in clients.iter().enumerate() {
        for ev in &sim.clients[cid].events {
            if let ClientEvent::SendResult { msg_id, status, .. } = ev {
                assert_eq!(sent[msg_id].0, who, "result went to the wrong client");
                assert!(
                    answered.insert(*msg_id, *status).is_none(),
                    "two results for {msg_id}"
                );
            }
        }
    }
    for (id, (who, _)) in &sent {
        if sim.clients[clients[*who]].open {
            assert!(answered.contains_key(id), "send {id} never answered");
        }
    }
    // Deliveries: once each, in order per (sender, dest), and only Delivered ones.
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (rc, &cid) in clients.iter().enumerate() {
        let mut last: HashMap<(usize, Dest), u64> = HashMap::new();
        for ev in &sim.clients[cid].events {
            if let ClientEvent::Deliver { dest, msg_id, .. } = ev {
                assert!(
                    seen.insert(*msg_id, rc).is_none(),
                    "delivered twice: {msg_id}"
                );
                let (sender, d) = sent[msg_id];
                assert_eq!(d, *dest);
                let prev = last.insert((sender, d), *msg_id).unwrap_or(0);
                assert!(*msg_id > prev, "reordered: {msg_id} after {prev}");
                if let Some(st) = answered.get(msg_id) {
                    // A sender that proved the dest learns Delivered, any other Accepted.
                    assert!(
                        matches!(st, SendStatus::Delivered | SendStatus::Accepted),
                        "{st:?}"
                    );
                }
            }
        }
    }
    for (id, st) in &answered {
        // No store here: Accepted can only mean delivered.
        if matches!(st, SendStatus::Delivered | SendStatus::Accepted) {
            assert!(seen.contains_key(id), "{st:?} {id} but never received");
        }
    }
    // Close everyone: every forward table ends empty.
    for &cid in &clients {
        if sim.clients[cid].open {
            sim.close(cid);
        }
    }
    for s in &sim.shards {
        assert!(
            s.table().is_empty(),
            "stale forward-table entries on shard {}",
            s.id()
        );
        assert_eq!(s.connections(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_schedules_keep_the_relay_invariants(
        shards in 1usize..5,
        seed in any::<u64>(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        check_schedule(shards, seed, &steps, 65_536);
    }

    /// Tiny hop queues: packets get Congested, but every send is still answered exactly once.
    #[test]
    fn congested_hops_are_answered_not_dropped(
        seed in any::<u64>(),
        steps in prop::collection::vec(step(), 1..40),
    ) {
        check_schedule(3, seed, &steps, 2);
    }
}

#[test]
fn take_over_moves_delivery_to_the_newest_subscriber() {
    let mut sim = Sim::new(3, 7, 1024);
    let a = sim.connect(0);
    let b = sim.connect(1);
    let tx = sim.connect(2);
    let (dest, _) = sim.listen(a, &secret(1), 9);
    sim.listen(b, &secret(1), 9);
    assert!(
        sim.clients[a]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Unsubscribed { .. }))
    );
    sim.clients[tx].cc.send(dest, 1, 0, 0, b"x");
    sim.run();
    assert!(
        sim.clients[b]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Deliver { msg_id: 1, .. }))
    );
    assert!(
        !sim.clients[a]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Deliver { .. }))
    );
    // The old subscriber closing must not remove the new one's entry.
    sim.close(a);
    sim.clients[tx].cc.send(dest, 2, 0, 0, b"y");
    sim.run();
    assert!(
        sim.clients[b]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Deliver { msg_id: 2, .. }))
    );
}

// ---- The whole node under one seeded simulation (ferry_shards::sim) ----

use ferry_shards::sim::{self as nodesim, SimConfig};

/// Seeds every `cargo test` runs; a seed that once failed joins `SIM_REGRESSIONS` with a line
/// saying what it found.
const SIM_SEEDS: std::ops::Range<u64> = 1..41;
const SIM_REGRESSIONS: &[u64] = &[
    // A device taken over mid-drain stopped draining; subscribed again with nothing stored, it
    // was refused every live packet (`Congested`) for good (fixed: a take-over or unsubscribe
    // ends what it was owed behind its drain).
    115,
    // The same through a re-subscribe without a take-over in between (fixed: the owner's
    // `Subscribed` clears it, its hand-over coming right behind).
    319,
    // The simulated service core's own mistake: a wake the owner asked for while a device's
    // registration was live, handled after the removal that followed it in the queue, was taken
    // for a shard's bug (fixed in the model: such a wake is dropped, as src/service's registry
    // drops it; one asked after the shards were told is still an error).
    379,
    // The first run of the node's own push code in the simulator: a device removed and
    // registered again while its wake waited to retry got a second wake beside the waiting one
    // (two requests to one device at once; fixed: `Registry` keeps pending wakes apart from the
    // registrations, and a wake whose device is gone when it is due is cancelled).
    3853,
];

fn run_seed(seed: u64) -> nodesim::Report {
    let cfg = SimConfig::from_seed(seed);
    match nodesim::run(&cfg) {
        Ok(r) => r,
        Err(v) => panic!("{v}\nconfig: {cfg:?}"),
    }
}

#[test]
fn the_node_keeps_its_promises_under_seeded_faults() {
    let start = std::time::Instant::now();
    let mut total = nodesim::Report::default();
    for seed in SIM_SEEDS.chain(SIM_REGRESSIONS.iter().copied()) {
        let r = run_seed(seed);
        total.client_ms += r.client_ms;
        total.sends += r.sends;
        total.stored_answers += r.stored_answers;
        total.stored_deliveries += r.stored_deliveries;
        total.live_deliveries += r.live_deliveries;
        total.crashes += r.crashes;
        total.cuts += r.cuts;
        total.fatal_stops += r.fatal_stops;
        total.push_registrations += r.push_registrations;
        total.wakes += r.wakes;
        for (t, n) in total.provider_answers.iter_mut().zip(r.provider_answers) {
            *t += n;
        }
        total.media_answers += r.media_answers;
        total.media_completed += r.media_completed;
        total.media_ranges_verified += r.media_ranges_verified;
        total.prekey_uploads += r.prekey_uploads;
        total.prekey_fetches += r.prekey_fetches;
        total.prekey_one_time_handed += r.prekey_one_time_handed;
    }
    let wall = start.elapsed().as_secs_f64();
    println!(
        "{} seeds: {:.2} simulated client-hours in {wall:.2} s ({:.1} client-hours per second); {} sends, {} answered Stored, {} live and {} stored deliveries, {} crashes ({} fail-stops), {} cuts, {} push registrations, {} wakes asked by the shards (providers answered {} sent, {} retry later, {} credential refused, {} token gone), {} prekey uploads, {} fetches ({} with a one-time key), {} media answers ({} uploads finished, {} ranges read back and verified)",
        SIM_SEEDS.count() + SIM_REGRESSIONS.len(),
        total.client_ms as f64 / 3.6e6,
        total.client_ms as f64 / 3.6e6 / wall,
        total.sends,
        total.stored_answers,
        total.live_deliveries,
        total.stored_deliveries,
        total.crashes,
        total.fatal_stops,
        total.cuts,
        total.push_registrations,
        total.wakes,
        total.provider_answers[0],
        total.provider_answers[1],
        total.provider_answers[2],
        total.provider_answers[3],
        total.prekey_uploads,
        total.prekey_fetches,
        total.prekey_one_time_handed,
        total.media_answers,
        total.media_completed,
        total.media_ranges_verified,
    );
    // The runs exercised what they check.
    assert!(total.stored_answers > 0 && total.stored_deliveries > 0 && total.live_deliveries > 0);
    assert!(total.crashes > 0 && total.cuts > 0 && total.fatal_stops > 0);
    assert!(total.push_registrations > 0 && total.wakes > 0);
    assert!(
        total.provider_answers.iter().all(|n| *n > 0),
        "every provider answer came"
    );
    assert!(total.prekey_uploads > 0 && total.prekey_one_time_handed > 0);
    assert!(total.media_completed > 0 && total.media_ranges_verified > 0);
}

/// Found by the simulator (2026-12-07), both with send queues too small for a drain batch: a
/// later, smaller blob slipped into the queue ahead of one that did not fit (order per sender
/// broken inside one drain), and a live packet overtook a stored blob the hand-over had not yet
/// delivered (the owner ended the hand-over while the subscriber still had blobs to drain).
/// Small queues, one mailbox for several devices, no crashes: each fault alone fails here.
#[test]
fn short_drains_and_hand_overs_keep_the_order() {
    for seed in 1..=60 {
        let cfg = SimConfig {
            send_queue_bytes_max: 4 << 10,
            mailboxes: 1,
            clients: 4,
            crash_per_mille: 0,
            disk_fault_per_mille: 0,
            ..SimConfig::from_seed(seed)
        };
        if let Err(v) = nodesim::run(&cfg) {
            panic!("{v}\nconfig: {cfg:?}");
        }
    }
}

/// One seed no one chose: printed, so a failure reproduces with `FERRY_SIM_SEED`.
#[test]
fn a_random_seed_keeps_the_promises_too() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    println!("random simulation seed: {seed}");
    run_seed(seed);
}

/// `FERRY_SIM_SEED=<seed> cargo test -p ferry-shards --test sim -- replay --nocapture` runs
/// one seed (seed 0 without the variable), `FERRY_SIM_SEED=<from>..<to>` a range (exploring);
/// `FERRY_SIM_TRACE=1` prints every step.
#[test]
fn replay() {
    let spec = std::env::var("FERRY_SIM_SEED").unwrap_or_else(|_| "0".into());
    let (from, to) = match spec.split_once("..") {
        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
        None => {
            let s: u64 = spec
                .parse()
                .expect("FERRY_SIM_SEED: a seed or a range a..b");
            (s, s + 1)
        }
    };
    for seed in from..to {
        let r = run_seed(seed);
        if to - from == 1 {
            println!("seed {seed}: {r:?}");
        }
    }
}
