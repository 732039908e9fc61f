//! One seeded, deterministic simulation of a node: its shard state machines with their stores on
//! an in-memory disk, a virtual clock, a network of simulated TCP connections, and clients doing
//! random protocol work, all on one thread, every choice drawn from one seed. Faults: delays that
//! interleave connections and cross-core links in any order, connections cut with what they
//! carry, node crashes at any step (kill -9, where the page cache survives, and power loss, where
//! each unsynced write survives whole, torn or not at all), failed writes and failed syncs (the
//! node stops and is restarted, as systemd would). After every step and at the end the
//! [`oracle`] checks what the clients saw against what the protocol promises; a broken promise is
//! a [`Violation`] naming the seed that reproduces it. docs/SIMULATION.md has the invariants,
//! the mutants it catches and how to replay a seed.
//!
//! Built so that more nodes can join: a [`Node`] is one process (its shards, disks and links
//! between cores), and clients reach a node through wires; node-to-node links are the next
//! kind of wire.

mod check;
mod client;
mod media;
mod net;
mod node;
mod oracle;
mod prekeys;
mod service;

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ahash::AHashMap;
use bytes::Bytes;
use ferry_proto::addr::{BlindedSigner, MailboxSecret, NamespaceId, epoch_of};
use ferry_proto::conn::{ClientConn, ClientEvent, ConnLimits, Now};
use ferry_proto::frame::{
    Dest, DrainStatus, FLAG_ACK, Frame, Op, ProofStatus, SendStatus, SubscribeStatus,
};

use crate::metrics::ShardMetrics;
use crate::puzzle::PuzzleConfig;
use crate::ratelimit::{IpLimits, Rate};
use crate::shard::{Accept, HopMsg, Shard, ShardConfig, StoreSpec};
use crate::store::backend::{MemBackend, MemDisk};
use crate::store::format::Pos;
use crate::store::{
    FsyncPolicy, Log, StoreJob, StoreJobDone, StoreJobDoneOf, StoreJobOf, StoreLimits, SyncJobOf,
};
use crate::table::ConnId;

use client::Client;
use net::{Wire, WireState};
use node::Node;
use oracle::{Msg, Oracle, payload_of};

/// The node id every simulated node uses.
const NODE_ID: [u8; 32] = [0x5e; 32];
/// Virtual time the simulation starts at (an epoch boundary is hours away).
const START_UNIX_S: u64 = 1_800_000_600;
/// How often each shard ticks (the driver's `tick_ms`).
const TICK_MS: u64 = 100;
/// Most deliveries handled at one instant before the simulator calls it a livelock.
const SETTLE_MOVES_MAX: usize = 200_000;

/// SplitMix64: small, fast, and the same sequence everywhere for a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
    fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("below a usize")
    }
}

/// What one run simulates; [`SimConfig::from_seed`] draws it all from the seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub shards: usize,
    pub clients: usize,
    /// Mailboxes the clients own (several clients on one mailbox: a user's devices).
    pub mailboxes: usize,
    pub steps: usize,
    pub policy: FsyncPolicy,
    pub hop_queue_msgs_max: usize,
    /// Connections cut with the bytes they carry (per mille per step).
    pub cut_per_mille: u64,
    /// Node crashes (per mille per step).
    pub crash_per_mille: u64,
    /// Failed writes and syncs injected (per mille per step).
    pub disk_fault_per_mille: u64,
    /// The connections' send queue bound (small: `Congested`, short drains).
    pub send_queue_bytes_max: usize,
    /// How long a write may stall before the node drops a slow reader.
    pub write_stall_timeout_ms: u64,
    /// The simulated service core compacts its prekey journal after this many requests.
    pub prekey_compact_every: u32,
}

impl SimConfig {
    pub fn from_seed(seed: u64) -> SimConfig {
        let mut r = Rng::new(seed ^ 0x6a09_e667_f3bc_c908);
        let clients = 2 + r.index(7);
        let policy = match r.below(4) {
            0 => FsyncPolicy::Always,
            1 => FsyncPolicy::Interval { ms: 0 },
            2 => FsyncPolicy::Interval { ms: 10 },
            _ => FsyncPolicy::Interval { ms: 200 },
        };
        SimConfig {
            seed,
            shards: 1 + r.index(4),
            clients,
            mailboxes: 1 + r.index(clients.min(4)),
            steps: 200 + r.index(400),
            policy,
            hop_queue_msgs_max: [2, 16, 1024][r.index(3)],
            cut_per_mille: [0, 5, 20][r.index(3)],
            crash_per_mille: [0, 3, 10][r.index(3)],
            disk_fault_per_mille: [0, 2, 5][r.index(3)],
            send_queue_bytes_max: [4 << 10, 64 << 10, 1 << 20][r.index(3)],
            write_stall_timeout_ms: [2_000, 30_000][r.index(2)],
            prekey_compact_every: [4, 16, 1_000][r.index(3)],
        }
    }
}

/// A broken promise, with what reproduces it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub step: usize,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {}: {} (replay: FERRY_SIM_SEED={} cargo test -p ferry-shards --test sim -- replay --nocapture)",
            self.seed, self.step, self.what, self.seed
        )
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: usize,
    /// Virtual time simulated.
    pub virtual_ms: u64,
    /// Connected client time simulated, summed over connections.
    pub client_ms: u64,
    pub sends: u64,
    pub answers: u64,
    pub stored_answers: u64,
    pub live_deliveries: u64,
    pub stored_deliveries: u64,
    pub crashes: u64,
    pub cuts: u64,
    pub disk_faults: u64,
    pub fatal_stops: u64,
    pub push_registrations: u64,
    /// Wakes the shards asked for.
    pub wakes: u64,
    /// The simulated providers' answers: sent, retry later, credential refused, token gone.
    pub provider_answers: [u64; 4],
    /// Media: answers the clients got, uploads finished, ranges read back and verified.
    pub media_answers: u64,
    pub media_completed: u64,
    pub media_ranges_verified: u64,
    pub prekey_uploads: u64,
    pub prekey_fetches: u64,
    /// Bundles that carried a one-time key.
    pub prekey_one_time_handed: u64,
}

/// The simulation of one seed.
struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: Now,
    node: Node,
    signers: Vec<BlindedSigner>,
    clients: Vec<Client>,
    wires: Vec<Wire>,
    oracle: Oracle,
    next_msg: u64,
    step: usize,
    report: Report,
    /// Faults are injected (off for the final settling).
    faults: bool,
    /// Print what happens (`FERRY_SIM_TRACE=1`), to follow a failing seed.
    trace: bool,
    /// The simulated service core (push registrations and wakes).
    service: service::Service,
    /// The media workers.
    media: media::Media,
    /// Messages whose ack was sent and not yet seen carried out by the owner.
    pending_acks: Vec<u64>,
    prekey_oracle: prekeys::PrekeyOracle,
}

fn shard_config(cfg: &SimConfig, shard: usize) -> ShardConfig {
    let open = Rate { per_s: 0, burst: 0 };
    ShardConfig {
        shard: crate::shard::shard_index(shard),
        shards: cfg.shards,
        node_id: NODE_ID,
        seed: {
            let mut seed = [0x51; 32];
            seed[..8].copy_from_slice(&(shard as u64).to_le_bytes());
            seed
        },
        conn_limits: ConnLimits {
            send_queue_bytes_max: cfg.send_queue_bytes_max,
            write_stall_timeout_ms: cfg.write_stall_timeout_ms,
            ..ConnLimits::default()
        },
        ip_limits: IpLimits::off(64),
        connections_max: 1_000,
        hop_queue_msgs_max: cfg.hop_queue_msgs_max,
        store: Some(StoreSpec {
            dir: std::path::PathBuf::from("/nonexistent/sim"),
            limits: store_limits(),
            policy: cfg.policy,
        }),
        media_upload_rate: open,
        memory_bytes_max: 64 << 20,
        puzzle: PuzzleConfig {
            levels: 0,
            ..PuzzleConfig::default()
        },
    }
}

/// Small segments, so runs roll, reclaim and recover many of them.
fn store_limits() -> StoreLimits {
    StoreLimits {
        segment_bytes: 8 * 1024,
        dest_blobs_max: 4_000,
        dest_bytes_max: 4 << 20,
        disk_bytes_max: 64 << 20,
        ..StoreLimits::default()
    }
}

/// Runs one seed's simulation to its end.
pub fn run(cfg: &SimConfig) -> Result<Report, Violation> {
    let mut sim = Sim::new(cfg.clone()).map_err(|what| Violation {
        seed: cfg.seed,
        step: 0,
        what,
    })?;
    sim.run_all().map_err(|what| Violation {
        seed: cfg.seed,
        step: sim.step,
        what,
    })?;
    Ok(sim.report)
}

impl Sim {
    fn new(cfg: SimConfig) -> Result<Sim, String> {
        let now = Now {
            mono_ms: 1_000,
            unix_s: START_UNIX_S,
        };
        let disks = (0..cfg.shards)
            .map(|_| MemBackend {
                disk: std::rc::Rc::new(std::cell::RefCell::new(MemDisk::default())),
            })
            .collect();
        let service = service::Service::new(cfg.prekey_compact_every, cfg.seed);
        let media = media::Media::new(&cfg)?;
        let node = Node::start(
            &cfg,
            disks,
            vec![0; cfg.shards],
            &service.queue,
            &media,
            now,
        )?;
        let epoch = epoch_of(now.unix_s);
        let signers = (0..cfg.mailboxes)
            .map(|m| {
                let mut seed = [0x4du8; 32];
                seed[..8].copy_from_slice(&(m as u64).to_le_bytes());
                MailboxSecret::from_seed(&seed)
                    .blinded_signer(&NamespaceId([7; 32]), None, epoch)
                    .map_err(|e| format!("mailbox {m}: {e:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let clients = (0..cfg.clients)
            .map(|i| Client {
                mailbox: i % cfg.mailboxes,
                wire: None,
                cc: ClientConn::new(),
                challenge: None,
                want_listen: false,
                proven: false,
                subscribed: false,
                draining: false,
                acks: Vec::new(),
                acks_queued: Vec::new(),
                drained_done: false,
                push_pending: 0,
                upload: None,
                media_asked: None,
                prekey_pending: 0,
                taken_over: false,
            })
            .collect();
        Ok(Sim {
            rng: Rng::new(cfg.seed),
            cfg,
            now,
            node,
            signers,
            clients,
            wires: Vec::new(),
            oracle: Oracle::default(),
            next_msg: 1,
            step: 0,
            report: Report::default(),
            faults: true,
            trace: std::env::var_os("FERRY_SIM_TRACE").is_some(),
            service,
            media,
            pending_acks: Vec::new(),
            prekey_oracle: prekeys::PrekeyOracle::default(),
        })
    }

    fn run_all(&mut self) -> Result<(), String> {
        for step in 0..self.cfg.steps {
            self.step = step;
            self.one_step()?;
        }
        self.step = self.cfg.steps;
        self.finish()?;
        self.report.steps = self.cfg.steps;
        self.report.virtual_ms = self.now.mono_ms;
        for w in &self.wires {
            debug_assert!(w.state == WireState::Closed);
        }
        Ok(())
    }

    /// One step: an action (a client's, or a fault), time moving on, everything that became due
    /// delivered in a seeded order, the shards' ticks, and the per-step invariants.
    fn one_step(&mut self) -> Result<(), String> {
        let roll = self.rng.below(1000);
        let (cut, crash, disk) = (
            self.cfg.cut_per_mille,
            self.cfg.crash_per_mille,
            self.cfg.disk_fault_per_mille,
        );
        if self.faults && roll < crash {
            let power = self.rng.chance(500);
            self.crash(power)?;
        } else if self.faults && roll < crash + disk {
            self.disk_fault();
        } else if self.faults && roll < crash + disk + cut {
            self.cut_random();
        } else {
            let c = self.rng.index(self.clients.len());
            self.client_action(c)?;
        }
        let ms = self.rng.below(12);
        self.advance(ms)?;
        Ok(())
    }

    /// Moves the clock `ms` on and runs everything due by then.
    fn advance(&mut self, ms: u64) -> Result<(), String> {
        self.now.mono_ms += ms;
        self.now.unix_s = START_UNIX_S + self.now.mono_ms / 1_000;
        self.settle()?;
        self.tick_due()?;
        self.settle()?;
        self.check_step()
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{} {}ms] {}", self.step, self.now.mono_ms, what());
        }
    }

    fn delay(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=4 => 0,
            5..=8 => 1 + self.rng.below(3),
            _ => 5 + self.rng.below(20),
        }
    }

    // ---- clients ----

    // ---- the node ----
}
