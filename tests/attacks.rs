//! The attack suite's acceptance tests (issue 14 item 10): each attack found from outside runs
//! against a real node with a small config (written beside each test) through the same code as
//! `ferry-attack` (bench/src/attack/suite.rs), beside an honest client from another loopback
//! address, and the test asserts the attack's goal. The report of every run is printed (run with
//! `--nocapture` to see it).
//!
//! Attacks whose defence is not built yet are `#[ignore]`d with the defence they wait for; each
//! was run and fails today for the reason its comment gives.

#![allow(clippy::unwrap_used)] // test set-up panics loudly

mod common;

#[allow(clippy::cast_possible_truncation, unreachable_pub)]
#[path = "../bench/src/attack/suite.rs"]
mod suite;

use std::time::Duration;

use common::{Node, raise_nofile};
use suite::{Opts, Report};

/// Options for an attack on `node`: its admin endpoint and pid, a short main phase.
fn opts(node: &Node) -> Opts {
    let mut o = Opts::new(node.addr());
    o.admin = Some(node.admin);
    o.pid = Some(node.pid());
    o.duration = Duration::from_secs(3);
    o
}

/// Runs `name`, prints its report, and asserts its goal.
fn attack(name: &str, o: &Opts) -> Report {
    let r = suite::run(name, o).unwrap_or_else(|e| panic!("{name}: {e}"));
    println!("{}", r.json());
    assert!(r.met, "{name}: goal not met ({}): {}", r.verdict, r.json());
    r
}

/// Attack 1: One address with 4 connections fills the store with 64 KB packets to random dests. Store:
/// 32 MiB. Fails today: honest senders get `StoreFull` once the attacker has filled it.
#[test]
#[ignore = "needs per-source store shares (issue 14 item 1)"]
fn store_fill_leaves_honest_sources_their_mail() {
    // The share one source may hold; pass it to the node as the store-share key once it exists.
    const STORE_SOURCE_SHARE_PCT: u64 = 25;
    let node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_LIMITS_STORE_DISK_BYTES_MAX", "33554432"),
            ("FERRY_LIMITS_STORE_SEGMENT_BYTES", "1048576"),
        ],
    );
    let mut o = opts(&node);
    o.store_bytes_max = 32 << 20;
    o.store_source_share_pct = STORE_SOURCE_SHARE_PCT;
    let r = attack("store-fill", &o);
    assert!(r.honest.sent >= 20);
}

/// Attack 2: 10,000 one-byte sends to a known dest use up its quota (`store_dest_blobs_max`, 10,000).
/// Fails today: another source's message is answered `QuotaExceeded`.
#[test]
#[ignore = "needs per-source quotas within a dest's store quota (issue 14 item 2)"]
fn mailbox_flood_leaves_room_for_other_sources_and_live_delivery() {
    let node = Node::start(&["--shards", "1"], &[]);
    let r = attack("mailbox-flood", &opts(&node));
    assert_eq!(r.honest.sent, 51);
}

/// Attack 3: `BlobBegin`s declaring 8 MiB with no data until `DiskFull` (64 MiB of media storage), then
/// one-byte begins until `Busy` (64 uploads per core). Fails today: the honest uploads get
/// `DiskFull`.
#[test]
#[ignore = "needs per-address media reservation shares (issue 14 item 3)"]
fn media_reservations_leave_honest_uploads_room() {
    let node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_MEDIA_DISK_BYTES_MAX", "67108864"),
            ("FERRY_MEDIA_BLOB_BYTES_MAX", "8388608"),
            ("FERRY_MEDIA_UPLOADS_PER_CORE_MAX", "64"),
        ],
    );
    let mut o = opts(&node);
    o.media_declared_bytes = 8 << 20;
    o.media_begins_max = 500;
    attack("media-reserve", &o);
}

/// Attack 4: One valid 128-proof frame re-sent for 3 s (a fresh one every 256): a live pair's p99 at
/// most doubles (against a 5 ms floor). Before the proof budgets the p99 went from 4.5 ms to
/// 364 ms. Default limits but the address's byte rate, 4 MiB/s (burst 8 MiB): on a 2-CPU test
/// machine the default 64 MiB/s of cached replays keeps the node's one core busy by volume
/// alone, which the byte bucket, not the proof budget, is there to bound.
#[test]
fn proof_replay_leaves_honest_latency_within_double() {
    let node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_LIMITS_IP_BYTES_PER_S", "4194304"),
            ("FERRY_LIMITS_IP_BYTES_BURST", "8388608"),
        ],
    );
    let r = attack("proof-replay", &opts(&node));
    assert!(r.attacker["frames_answered"].as_u64().unwrap() > 0);
}

/// Attack 5: 1,500 connections each holding a partial 64 KiB frame, 100 subscribers that never read
/// while a flood fills their queues, for 3 s. Budget: 64 MiB. Fails today: RSS passes the
/// budget.
#[test]
#[ignore = "needs the node's memory budget (issue 14 item 5)"]
fn memory_attack_stays_within_the_budget() {
    // The node's memory budget; pass it as the memory-budget key once it exists.
    const MEMORY_BUDGET_BYTES: u64 = 64 << 20;
    raise_nofile(16_384);
    let node = Node::start(&["--shards", "1"], &[]);
    let mut o = opts(&node);
    o.conns = 1_500;
    o.subscribers = 100;
    o.memory_budget_bytes = MEMORY_BUDGET_BYTES;
    attack("memory", &o);
}

/// Attack 6: Connections from many attacker addresses (200 each, under the per-address cap) until the
/// node refuses; it runs under `ulimit -n 4096` with the default `fds_reserved` (1024). A new
/// honest client gets an answer, `/metrics` answers, an open pair keeps delivering.
#[test]
fn at_the_descriptor_limit_honest_clients_and_metrics_get_answers() {
    let want = 16_384;
    assert!(
        raise_nofile(want) >= want,
        "needs an open-files hard limit of {want}"
    );
    let node = Node::start_wrapped(
        &["sh", "-c", "ulimit -n 4096 && exec \"$@\"", "sh"],
        common::temp_dir("attack-fds"),
        &["--shards", "1"],
        &[],
    );
    let mut o = opts(&node);
    o.conns = 10_000;
    let r = attack("descriptors", &o);
    assert!(r.attacker["connections_open"].as_u64().unwrap() >= 3_000);
}

/// Attack 7: A stranger queries a known dest (empty, mail waiting, drained) and sends `FLAG_ACK`
/// packets (owner online, offline). Fails today: `Query` shows waiting mail and the ACK answers
/// `Delivered` vs `Stored`.
#[test]
#[ignore = "needs the Query and ACK oracles closed (issue 14 item 7)"]
fn a_stranger_learns_nothing_from_query_or_acks() {
    let node = Node::start(&["--shards", "1"], &[]);
    attack("presence-oracle", &opts(&node));
}

/// Attack 8: 200 addresses fetch from a slot of 100 + 100 one-time keys (default prekey limits). Fails
/// today: the per-target limit refuses the legitimate first contact (`RateLimited`) once the
/// attacker has spent the slot's burst.
#[test]
#[ignore = "needs per-address prekey shares (issue 14 item 8)"]
fn a_first_contact_gets_a_one_time_key_after_a_drain() {
    let node = Node::start(&["--shards", "1"], &[]);
    let mut o = opts(&node);
    o.duration = Duration::from_secs(15);
    attack("prekey-drain", &o);
}

/// Attack 9: The attacker's accepted sends per CPU second on a node with puzzles at their highest level,
/// against a node of the same build without. Fails today: there are no puzzles (factor ~1).
#[test]
#[ignore = "needs connection/send puzzles (issue 14 item 9)"]
fn puzzles_cut_an_attackers_sends_per_core_a_hundredfold() {
    // The node's puzzle settings at their highest level, once they exist.
    const PUZZLES_MAX: &[(&str, &str)] = &[];
    let baseline = Node::start(&["--shards", "1"], &[]);
    let node = Node::start(&["--shards", "1"], PUZZLES_MAX);
    let mut o = opts(&node);
    o.baseline_node = Some(baseline.addr());
    attack("puzzles", &o);
}
