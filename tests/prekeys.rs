//! The prekey directory end to end: real bundles made by the SDK (X25519, XEdDSA, ML-KEM-1024),
//! uploaded to a real node over several frames, fetched to exhaustion, refused when forged,
//! rate-limited, and kept across a kill -9.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{Node, mailbox};
use ferry_proto::frame::{Op, PrekeyStatus};
use ferry_proto::prekey::{KeyKind, Upload};
use ferry_sdk::prekeys::{IdentityKey, PrekeyPlan, generate};
use ferry_sdk::{Client, Mailbox, SdkError};

/// Proves `PrekeyUpdate` for the mailbox's intro dest (epoch 0: the slot's address in these
/// tests) and returns the dest.
fn prove_slot(c: &mut Client, mb: &Mailbox) -> ferry_sdk::Dest {
    let signer = mb.signer(0).unwrap();
    c.prove(&[&signer], Op::PrekeyUpdate).unwrap();
    mb.dest(0).unwrap()
}

fn full_plan() -> PrekeyPlan {
    PrekeyPlan {
        signed: true,
        one_time_ec: 100,
        one_time_pq: 100,
        first_id: 1,
        replace_one_time: false,
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

const UNLIMITED: [(&str, &str); 2] = [
    ("FERRY_PREKEYS_FETCH_PER_ADDR_PER_S", "0"),
    ("FERRY_PREKEYS_FETCH_PER_TARGET_PER_S", "0"),
];

#[test]
fn upload_fetch_to_exhaustion_then_last_resort_and_restart_keeps_keys() {
    let node = Node::start(&["--shards", "2"], &UNLIMITED);
    let id = IdentityKey::generate().unwrap();
    let mb = mailbox(500);
    let mut owner = node.client();
    let dest = prove_slot(&mut owner, &mb);
    let (uploads, _secrets) = generate(&id, dest, full_plan()).unwrap();
    assert!(uploads.len() >= 3, "100 PQ keys need several frames");
    assert_eq!(owner.upload_prekeys(&uploads).unwrap(), (100, 100));
    assert_eq!(owner.prekey_count(dest).unwrap(), (100, 100));

    // A stranger fetches (no proof needed); every bundle verifies and consumes one of each.
    let mut stranger = node.client();
    let mut ec_seen = HashSet::new();
    let mut pq_seen = HashSet::new();
    for _ in 0..40 {
        let b = stranger.fetch_prekeys(dest).unwrap();
        assert_eq!(b.identity, id.public());
        assert!(!b.pq_last_resort);
        assert!(
            ec_seen.insert(b.ec.unwrap().id),
            "EC one-time key handed out twice"
        );
        assert!(pq_seen.insert(b.pq.id), "PQ one-time key handed out twice");
    }
    assert_eq!(owner.prekey_count(dest).unwrap(), (60, 60));

    // kill -9: what was handed out stays consumed, the rest stays available.
    drop((owner, stranger));
    let node = node.restart(true);
    let mut owner = node.client();
    let dest = prove_slot(&mut owner, &mb);
    assert_eq!(owner.prekey_count(dest).unwrap(), (60, 60));
    let mut stranger = node.client();
    for _ in 0..60 {
        let b = stranger.fetch_prekeys(dest).unwrap();
        assert!(ec_seen.insert(b.ec.unwrap().id));
        assert!(pq_seen.insert(b.pq.id));
    }
    assert_eq!((ec_seen.len(), pq_seen.len()), (100, 100));
    // Exhausted: no EC key, and the last-resort PQ key (every time).
    let last = uploads[0].signed.as_ref().unwrap().last_resort.id;
    for _ in 0..2 {
        let b = stranger.fetch_prekeys(dest).unwrap();
        assert!(b.pq_last_resort && b.ec.is_none());
        assert_eq!(b.pq.id, last);
    }
    assert_eq!(owner.prekey_count(dest).unwrap(), (0, 0));
    assert_eq!(node.metric("ferry_prekey_fetches_last_resort_total"), 2);

    // Refilling one-time keys needs no signed part.
    let plan = PrekeyPlan {
        signed: false,
        one_time_ec: 5,
        one_time_pq: 5,
        first_id: 1_000,
        replace_one_time: false,
    };
    let (more, _) = generate(&id, dest, plan).unwrap();
    assert_eq!(owner.upload_prekeys(&more).unwrap(), (5, 5));
    // Unknown slots are NotFound.
    let nobody = mailbox(501).dest(0).unwrap();
    assert_eq!(
        prekey_err(stranger.fetch_prekeys(nobody)).0,
        PrekeyStatus::NotFound
    );
}

#[test]
fn forged_or_unproven_uploads_are_refused_and_change_nothing() {
    let node = Node::start(&[], &UNLIMITED);
    let id = IdentityKey::generate().unwrap();
    let mb = mailbox(510);
    let mut c = node.client();
    let dest = mb.dest(0).unwrap();
    let plan = PrekeyPlan {
        one_time_ec: 3,
        one_time_pq: 3,
        ..full_plan()
    };
    let (uploads, _) = generate(&id, dest, plan).unwrap();
    // No proof yet.
    assert_eq!(
        prekey_err(c.upload_prekeys(&uploads)).0,
        PrekeyStatus::NotProven
    );
    assert_eq!(prekey_err(c.prekey_count(dest)).0, PrekeyStatus::NotProven);
    prove_slot(&mut c, &mb);
    // A PQ one-time key with a flipped signature bit.
    let mut forged: Upload = uploads[0].clone();
    forged.pq[1].sig[7] ^= 0x10;
    assert_eq!(
        prekey_err(c.upload_prekeys(&[forged])),
        (PrekeyStatus::BadSignature, KeyKind::OneTimePq, 1)
    );
    // A signed prekey signed by someone else.
    let mut forged = uploads[0].clone();
    let mallory = IdentityKey::generate().unwrap();
    forged.signed.as_mut().unwrap().spk.sig = mallory
        .sign(&forged.signed.as_ref().unwrap().spk.key)
        .unwrap();
    assert_eq!(
        prekey_err(c.upload_prekeys(&[forged])),
        (PrekeyStatus::BadSignature, KeyKind::SignedPrekey, 0)
    );
    // A last-resort key that fails the ML-KEM modulus check (validly signed).
    let mut forged = uploads[0].clone();
    {
        let s = forged.signed.as_mut().unwrap();
        let mut key = s.last_resort.key.to_vec();
        key[1] = 0xFF;
        key[2] = 0xFF;
        s.last_resort.key = bytes::Bytes::from(key);
        s.last_resort.sig = id.sign(&s.last_resort.key).unwrap();
    }
    assert_eq!(
        prekey_err(c.upload_prekeys(&[forged])),
        (PrekeyStatus::BadKey, KeyKind::LastResort, 0)
    );
    // One-time keys before any signed part.
    let (no_signed, _) = generate(
        &id,
        dest,
        PrekeyPlan {
            signed: false,
            ..plan
        },
    )
    .unwrap();
    assert_eq!(
        prekey_err(c.upload_prekeys(&no_signed)).0,
        PrekeyStatus::NoSignedPrekey
    );
    assert_eq!(prekey_err(c.prekey_count(dest)).0, PrekeyStatus::NotFound);
    assert_eq!(node.metric("ferry_prekey_uploads_refused_total"), 4);
    // The honest upload still works on the same connection.
    assert_eq!(c.upload_prekeys(&uploads).unwrap(), (3, 3));
}

#[test]
fn fetches_are_rate_limited_per_address_and_per_target() {
    let node = Node::start(
        &[],
        &[
            ("FERRY_PREKEYS_FETCH_PER_ADDR_PER_S", "1"),
            ("FERRY_PREKEYS_FETCH_PER_ADDR_BURST", "5"),
            ("FERRY_PREKEYS_FETCH_PER_TARGET_PER_S", "1"),
            ("FERRY_PREKEYS_FETCH_PER_TARGET_BURST", "3"),
        ],
    );
    let id = IdentityKey::generate().unwrap();
    let mut c = node.client();
    let mut dests = Vec::new();
    for i in 0..2 {
        let mb = mailbox(520 + i);
        let dest = prove_slot(&mut c, &mb);
        let plan = PrekeyPlan {
            one_time_ec: 10,
            one_time_pq: 10,
            ..full_plan()
        };
        let (ups, _) = generate(&id, dest, plan).unwrap();
        c.upload_prekeys(&ups).unwrap();
        dests.push(dest);
    }
    // Per target: the fourth fetch of one dest within its burst is refused.
    for _ in 0..3 {
        c.fetch_prekeys(dests[0]).unwrap();
    }
    assert_eq!(
        prekey_err(c.fetch_prekeys(dests[0])).0,
        PrekeyStatus::RateLimited
    );
    // Per address (everything here is 127.0.0.1): the fifth fetch spent the burst.
    c.fetch_prekeys(dests[1]).unwrap();
    assert_eq!(
        prekey_err(c.fetch_prekeys(dests[1])).0,
        PrekeyStatus::RateLimited
    );
    assert_eq!(node.metric("ferry_prekey_fetches_rate_limited_total"), 2);
    // Refused fetches consume nothing.
    assert_eq!(c.prekey_count(dests[0]).unwrap(), (7, 7));
    assert_eq!(c.prekey_count(dests[1]).unwrap(), (9, 9));
}
