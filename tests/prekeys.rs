//! The prekey directory end to end: real bundles made by the SDK (X25519, XEdDSA, ML-KEM-1024),
//! sealed into a day's slot, uploaded to a real node over several frames, fetched to exhaustion
//! and opened by a fetcher with the address, refused unproven, rate-limited, kept across a
//! kill -9, and a first contact that succeeds after other addresses drained the one-time keys.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{Node, mailbox};
use ferry_proto::addr::{DAY_SECONDS, day_of};
use ferry_proto::frame::{Op, PrekeyStatus};
use ferry_proto::prekey::{KeyKind, SlotOpener, SlotSealer, Upload};
use ferry_sdk::prekeys::{HeadPlan, IdentityKey, PrekeyPlan, generate};
use ferry_sdk::{Client, Contact, Dest, Mailbox, SdkError};

/// Today's slot day (the node runs on this machine's clock).
fn today() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    day_of(now)
}

/// Where a fetcher with `mb`'s address finds and opens its slot of today.
fn opener(mb: &Mailbox) -> SlotOpener {
    Contact::new(&mb.public().to_bytes(), common::ns(), None)
        .unwrap()
        .prekey_slot(today())
        .unwrap()
}

/// Proves `PrekeyUpdate` for the mailbox's slot of today and returns its dest.
fn prove_slot(c: &mut Client, mb: &Mailbox) -> Dest {
    let signer = mb.slot_signer(today()).unwrap();
    c.prove(&[&signer], Op::PrekeyUpdate).unwrap();
    signer.dest()
}

/// Keys made and sealed for `mb`'s slot of today as the SDK does.
fn sealed(id: &IdentityKey, mb: &Mailbox, plan: PrekeyPlan) -> Vec<Upload> {
    let signer = mb.slot_signer(today()).unwrap();
    let sealer = SlotSealer::new(mb.slot_key(today()), &signer);
    generate(id, &sealer, plan).unwrap().0
}

fn full_plan() -> PrekeyPlan {
    PrekeyPlan {
        head: HeadPlan::New,
        one_time_ec: 100,
        one_time_pq: 100,
        ids: ferry_sdk::prekeys::PrekeyIds::Sequential(1),
        replace_one_time: false,
        expires: (today() + 2) * DAY_SECONDS,
        ttl_s: 0,
    }
}

fn prekey_err(r: Result<impl std::fmt::Debug, SdkError>) -> (PrekeyStatus, KeyKind, u16) {
    match r {
        Err(SdkError::Prekey {
            status,
            kind,
            index,
        }) => (status, kind, index),
        other => panic!("expected a prekey refusal, got {other:?}"),
    }
}

const UNLIMITED: [(&str, &str); 3] = [
    ("FERRY_PREKEYS_FETCH_PER_ADDR_PER_S", "0"),
    ("FERRY_PREKEYS_ONE_TIME_PER_SLOT_PER_HOUR", "0"),
    ("FERRY_PREKEYS_ONE_TIME_PER_SOURCE_PER_HOUR", "0"),
];

#[test]
fn upload_fetch_to_exhaustion_then_last_resort_and_restart_keeps_keys() {
    let node = Node::start(&["--shards", "2"], &UNLIMITED);
    let id = IdentityKey::generate().unwrap();
    let mb = mailbox(500);
    let slot = opener(&mb);
    let mut owner = node.client();
    let dest = prove_slot(&mut owner, &mb);
    assert_eq!(dest, slot.dest());
    let uploads = sealed(&id, &mb, full_plan());
    assert!(uploads.len() >= 3, "100 PQ keys need several frames");
    assert_eq!(owner.upload_prekeys(&uploads).unwrap(), (100, 100));
    assert_eq!(owner.prekey_count(dest).unwrap(), (100, 100));

    // A stranger with the address fetches (no proof needed); every bundle opens, verifies and
    // consumes one of each.
    let mut stranger = node.client();
    let mut ec_seen = HashSet::new();
    let mut pq_seen = HashSet::new();
    for _ in 0..40 {
        let b = stranger.fetch_prekeys(&slot).unwrap();
        assert_eq!(b.identity, id.public());
        assert!(!b.pq_last_resort);
        assert!(
            ec_seen.insert(b.ec.unwrap().id),
            "EC one-time key handed out twice"
        );
        assert!(pq_seen.insert(b.pq.id), "PQ one-time key handed out twice");
    }
    assert_eq!(owner.prekey_count(dest).unwrap(), (60, 60));
    // Another mailbox's slot of the same day is another dest (opening under the wrong key is
    // refused: `proto/src/prekey.rs`).
    let wrong = Contact::new(&mailbox(499).public().to_bytes(), common::ns(), None)
        .unwrap()
        .prekey_slot(today())
        .unwrap();
    assert_ne!(wrong.dest(), dest);

    // kill -9: what was handed out stays consumed, the rest stays available.
    drop((owner, stranger));
    let node = node.restart(true);
    let mut owner = node.client();
    let dest = prove_slot(&mut owner, &mb);
    assert_eq!(owner.prekey_count(dest).unwrap(), (60, 60));
    let mut stranger = node.client();
    for _ in 0..60 {
        let b = stranger.fetch_prekeys(&slot).unwrap();
        assert!(ec_seen.insert(b.ec.unwrap().id));
        assert!(pq_seen.insert(b.pq.id));
    }
    assert_eq!((ec_seen.len(), pq_seen.len()), (100, 100));
    // Exhausted: no EC key, and the last-resort PQ key (every time).
    let mut last = None;
    for _ in 0..2 {
        let b = stranger.fetch_prekeys(&slot).unwrap();
        assert!(b.pq_last_resort && b.ec.is_none());
        assert!(last.is_none_or(|l| l == b.pq.id));
        last = Some(b.pq.id);
    }
    assert_eq!(owner.prekey_count(dest).unwrap(), (0, 0));
    assert_eq!(node.metric("ferry_prekey_fetches_last_resort_total"), 2);

    // Refilling one-time keys needs no head.
    let plan = PrekeyPlan {
        head: HeadPlan::None,
        one_time_ec: 5,
        one_time_pq: 5,
        ids: ferry_sdk::prekeys::PrekeyIds::Sequential(1_000),
        ..full_plan()
    };
    assert_eq!(
        owner.upload_prekeys(&sealed(&id, &mb, plan)).unwrap(),
        (5, 5)
    );
    // Unknown slots are NotFound.
    assert_eq!(
        prekey_err(stranger.fetch_prekeys(&opener(&mailbox(501)))).0,
        PrekeyStatus::NotFound
    );
}

/// What the node can check of a sealed upload (it cannot open one): a proof for the slot (not
/// for an hourly dest of the mailbox), a head first, ids, counts.
#[test]
fn unproven_or_headless_uploads_are_refused_and_change_nothing() {
    let node = Node::start(&[], &UNLIMITED);
    let id = IdentityKey::generate().unwrap();
    let mb = mailbox(510);
    let mut c = node.client();
    let dest = mb.slot_signer(today()).unwrap().dest();
    let plan = PrekeyPlan {
        one_time_ec: 3,
        one_time_pq: 3,
        ..full_plan()
    };
    let uploads = sealed(&id, &mb, plan.clone());
    // No proof yet.
    assert_eq!(
        prekey_err(c.upload_prekeys(&uploads)).0,
        PrekeyStatus::NotProven
    );
    assert_eq!(prekey_err(c.prekey_count(dest)).0, PrekeyStatus::NotProven);
    // A proof for the mailbox's hourly dest is not one for its slot.
    let hourly = mb.signer(0).unwrap();
    c.prove(&[&hourly], Op::PrekeyUpdate).unwrap();
    assert_eq!(
        prekey_err(c.upload_prekeys(&uploads)).0,
        PrekeyStatus::NotProven
    );
    prove_slot(&mut c, &mb);
    // One-time keys before any head.
    let no_head = sealed(
        &id,
        &mb,
        PrekeyPlan {
            head: HeadPlan::None,
            ..plan
        },
    );
    assert_eq!(
        prekey_err(c.upload_prekeys(&no_head)).0,
        PrekeyStatus::NoSignedPrekey
    );
    // An id repeated within the upload.
    let mut dup = uploads[0].clone();
    dup.ec[1].id = dup.ec[0].id;
    assert_eq!(
        prekey_err(c.upload_prekeys(&[dup])),
        (PrekeyStatus::DuplicateId, KeyKind::OneTimeEc, 1)
    );
    assert_eq!(prekey_err(c.prekey_count(dest)).0, PrekeyStatus::NotFound);
    assert_eq!(node.metric("ferry_prekey_uploads_refused_total"), 2);
    // The honest upload still works on the same connection.
    assert_eq!(c.upload_prekeys(&uploads).unwrap(), (3, 3));
    // Mallory, who proves her own slot but not Bob's, cannot write his (a head sealed with
    // his address but signed by another blinded key would not open anyway: the proto tests).
    let mallory = mailbox(511);
    let mut m = node.client();
    prove_slot(&mut m, &mallory);
    let mut forged = sealed(&IdentityKey::generate().unwrap(), &mallory, full_plan());
    forged[0].dest = dest;
    assert_eq!(
        prekey_err(m.upload_prekeys(&forged[..1])).0,
        PrekeyStatus::NotProven
    );
    let b = node.client().fetch_prekeys(&opener(&mb)).unwrap();
    assert_eq!(b.identity, id.public());
}

#[test]
fn fetches_are_rate_limited_per_address_and_one_time_keys_per_source() {
    let node = Node::start(
        &[],
        &[
            ("FERRY_PREKEYS_FETCH_PER_ADDR_PER_S", "1"),
            ("FERRY_PREKEYS_FETCH_PER_ADDR_BURST", "5"),
            ("FERRY_PREKEYS_ONE_TIME_PER_SOURCE_PER_HOUR", "1"),
            ("FERRY_PREKEYS_ONE_TIME_PER_SOURCE_BURST", "3"),
        ],
    );
    let id = IdentityKey::generate().unwrap();
    let mut c = node.client();
    let mut dests = Vec::new();
    let mut slots = Vec::new();
    for i in 0..2 {
        let mb = mailbox(520 + i);
        let dest = prove_slot(&mut c, &mb);
        let plan = PrekeyPlan {
            one_time_ec: 10,
            one_time_pq: 10,
            ..full_plan()
        };
        c.upload_prekeys(&sealed(&id, &mb, plan)).unwrap();
        dests.push(dest);
        slots.push(opener(&mb));
    }
    // This address's share of a slot: three one-time keys, then the last-resort bundle.
    for _ in 0..3 {
        assert!(!c.fetch_prekeys(&slots[0]).unwrap().pq_last_resort);
    }
    let b = c.fetch_prekeys(&slots[0]).unwrap();
    assert!(b.pq_last_resort && b.ec.is_none());
    assert_eq!(
        node.metric("ferry_prekey_one_time_withheld_source_total"),
        1
    );
    // Per address (everything here is 127.0.0.1): the fifth fetch spent the burst.
    c.fetch_prekeys(&slots[1]).unwrap();
    assert_eq!(
        prekey_err(c.fetch_prekeys(&slots[1])).0,
        PrekeyStatus::RateLimited
    );
    assert_eq!(node.metric("ferry_prekey_fetches_rate_limited_total"), 1);
    // Refused and last-resort fetches consume nothing.
    assert_eq!(c.prekey_count(dests[0]).unwrap(), (7, 7));
    assert_eq!(c.prekey_count(dests[1]).unwrap(), (9, 9));
}

/// A client from `127.0.0.<last>`.
fn client_from(node: &Node, last: u8) -> ferry_sdk::Client {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source = std::net::SocketAddr::from(([127, 0, 0, last], 0));
    sock.bind(&source.into()).unwrap();
    sock.connect(&node.addr().into()).unwrap();
    ferry_sdk::Client::over_tcp(sock.into()).unwrap()
}

/// Issue 14: fetches from many addresses drained a slot, and then refused first contacts. Now
/// the attacker drains the one-time keys it is allowed, and the first contact still establishes
/// a PQXDH session (with the last-resort keys) whose message decrypts.
#[test]
fn a_first_contact_succeeds_after_other_addresses_drained_the_one_time_keys() {
    use ferry_sdk::chat;
    use ferry_sdk::messenger::{Body, MemoryStorage, Messenger};
    // Default limits: a slot hands out 20 one-time keys at once, 2 to each address.
    let node = Node::start(&[], &[]);
    let ns = common::ns();
    let mut bob = Messenger::open(MemoryStorage::default(), ns).unwrap();
    let mut alice = Messenger::open(MemoryStorage::default(), ns).unwrap();
    let url = format!("ferry://{}", node.addr());
    let mut sb = chat::Sender::new(&url, Default::default());
    assert_eq!(sb.publish_prekeys(&mut bob, 10).unwrap().len(), 7);
    let mut cb = node.client();
    let signer = bob.prekey_slot(today()).unwrap();
    cb.prove(&[&signer], Op::PrekeyUpdate).unwrap();
    let dest = signer.dest();
    let slot = {
        alice.add_contact("bob", &bob.address()).unwrap();
        alice
            .contact_prekey_slot(&bob.address().identity, today())
            .unwrap()
    };
    // The attacker: 30 addresses, 4 fetches each, as fast as they can.
    let mut last_resort = 0;
    for a in 2..32u8 {
        let mut c = client_from(&node, a);
        for _ in 0..4 {
            last_resort += u32::from(c.fetch_prekeys(&slot).unwrap().pq_last_resort);
        }
    }
    assert_eq!(
        last_resort,
        120 - 10,
        "ten one-time keys, then last-resort bundles"
    );
    assert_eq!(cb.prekey_count(dest).unwrap(), (0, 0), "drained");
    // Alice's first contact, on send connections of her own that never prove (127.0.0.1, an
    // address the attacker did not use).
    let to = bob.address().identity;
    let clock = std::time::Instant::now();
    let mut sa = chat::Sender::new(&url, Default::default());
    sa.send(&mut alice, &to, &Body::Data(b"hello bob".to_vec()), clock)
        .unwrap();
    assert!(alice.has_session(&to), "PQXDH session established");
    let synced = chat::sync(&mut cb, &mut sb, &mut bob, clock).unwrap();
    assert_eq!(synced.messages.len(), 1);
    assert_eq!(synced.messages[0].body, Body::Data(b"hello bob".to_vec()));
    assert!(node.metric("ferry_prekey_fetches_last_resort_total") >= 111);
}

/// Issue 14.2: an attacker from many addresses drains a slot's one-time keys past its budget
/// (and does not solve puzzles); fetches of the slot now get the last-resort bundle with a
/// puzzle, and an honest SDK fetch solves it by itself and still gets a one-time key.
#[test]
fn under_pressure_an_honest_fetch_solves_the_puzzle_and_gets_a_one_time_key() {
    // Default limits: a slot hands out 20 one-time keys at once, 2 to each address.
    let node = Node::start(&[], &[]);
    let id = IdentityKey::generate().unwrap();
    let mb = mailbox(540);
    let mut owner = node.client();
    let dest = prove_slot(&mut owner, &mb);
    owner
        .upload_prekeys(&sealed(&id, &mb, full_plan()))
        .unwrap();
    let slot = opener(&mb);
    let mut last_resort = 0;
    for a in 2..22u8 {
        let mut c = client_from(&node, a);
        c.set_puzzle_effort_max(0);
        for _ in 0..2 {
            last_resort += u32::from(c.fetch_prekeys(&slot).unwrap().pq_last_resort);
        }
    }
    assert_eq!(last_resort, 40 - 20, "the budget, then last-resort bundles");
    // A client that does not solve still gets a usable (last-resort) bundle.
    let mut lazy = client_from(&node, 30);
    lazy.set_puzzle_effort_max(0);
    let b = lazy.fetch_prekeys(&slot).unwrap();
    assert!(b.pq_last_resort && b.ec.is_none());
    assert_eq!(node.metric("ferry_prekey_puzzle_paid_total"), 0);
    // The honest SDK fetch (127.0.0.1, default effort bound) solves and gets a one-time key.
    let mut honest = node.client();
    let b = honest.fetch_prekeys(&slot).unwrap();
    assert!(
        !b.pq_last_resort && b.ec.is_some(),
        "a one-time key under pressure"
    );
    assert_eq!(node.metric("ferry_prekey_puzzle_paid_total"), 1);
    assert_eq!(owner.prekey_count(dest).unwrap(), (79, 79));
}

/// A head past its signed expiry is refused by the fetcher (a node handing out an old signed
/// prekey); a contact whose owner has no slot for today (offline, its day not turned) is found
/// at yesterday's, asked on a connection of its own.
#[test]
fn an_expired_head_is_refused_and_a_fetch_falls_back_to_yesterdays_slot() {
    use ferry_sdk::chat::Sender;
    use ferry_sdk::messenger::{MemoryStorage, Messenger};
    let node = Node::start(&[], &UNLIMITED);
    let id = IdentityKey::generate().unwrap();
    let mb = mailbox(560);
    let mut owner = node.client();
    prove_slot(&mut owner, &mb);
    let now = owner.node_unix_s();
    let expired = PrekeyPlan {
        expires: now - 1,
        one_time_ec: 1,
        one_time_pq: 1,
        ..full_plan()
    };
    owner.upload_prekeys(&sealed(&id, &mb, expired)).unwrap();
    match node.client().fetch_prekeys(&opener(&mb)) {
        Err(SdkError::BadBundle(f)) => assert_eq!(f.kind, KeyKind::SignedPrekey),
        other => panic!("an expired head was used: {other:?}"),
    }

    // Bob (a messenger) published yesterday's slot only.
    let ns = common::ns();
    let mut bob = Messenger::open(MemoryStorage::default(), ns).unwrap();
    let yesterday = today() - 1;
    let signer = bob.prekey_slot(yesterday).unwrap();
    let mut c = node.client();
    c.prove(&[&signer], Op::PrekeyUpdate).unwrap();
    let slots = bob
        .prekey_publication(yesterday * DAY_SECONDS + 10, 2)
        .unwrap();
    let y = slots.iter().find(|s| s.day == yesterday).unwrap();
    c.upload_prekeys(&y.uploads).unwrap();
    let mut alice = Messenger::open(MemoryStorage::default(), ns).unwrap();
    alice.add_contact("bob", &bob.address()).unwrap();
    let mut sa = Sender::new(&format!("ferry://{}", node.addr()), Default::default());
    let b = sa.fetch_prekeys(&alice, &bob.address().identity).unwrap();
    assert_eq!(b.identity, bob.address().identity);
    assert_eq!(b.expires, (yesterday + 2) * DAY_SECONDS);
    assert_eq!(
        sa.connections_opened(),
        2,
        "today's slot, then yesterday's, apart"
    );
}
