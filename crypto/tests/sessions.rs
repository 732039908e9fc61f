//! Sessions under arbitrary schedules: interleaved and simultaneous sends, drops, duplicates,
//! forgeries and save/restore. Every message decrypts exactly once, to what was sent; a forged
//! or replayed one never changes a session; a forged sender is dropped.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeSet;

use common::{Prekeys, rng};
use ferry_crypto::envelope::{self, Inner, Kind};
use ferry_crypto::keys::{KeyPair, encode_ec};
use ferry_crypto::pqxdh::{INIT_BYTES, Init};
use ferry_crypto::ratchet::RatchetError;
use ferry_crypto::session::{Received, Session, SessionError, identity_public};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;

struct Wire {
    env: Vec<u8>,
    id: [u8; 16],
    pt: Vec<u8>,
    dropped: bool,
}

/// Bob's side: route to the session unless the envelope starts a new one.
fn bob_receives(
    rng: &mut ChaCha20Rng,
    bob: &KeyPair,
    prekeys: &mut Prekeys,
    session: &mut Option<Session>,
    env: &[u8],
) -> Result<Received, SessionError> {
    let inner = envelope::open_with(bob, env)?;
    match session {
        Some(s) if !s.is_new_contact(&inner) => s.receive(rng, &inner),
        _ => {
            let (s, r) = Session::accept(rng, bob, prekeys, &inner)?;
            *session = Some(s);
            Ok(r)
        }
    }
}

fn alice_receives(
    rng: &mut ChaCha20Rng,
    alice: &KeyPair,
    session: &mut Session,
    env: &[u8],
) -> Result<Received, SessionError> {
    let inner = envelope::open_with(alice, env)?;
    session.receive(rng, &inner)
}

fn state(s: &Option<Session>) -> Vec<u8> {
    s.as_ref()
        .map(|s| s.to_bytes().to_vec())
        .unwrap_or_default()
}

#[derive(Clone, Debug)]
enum Op {
    SendA(usize),
    SendB(usize),
    Deliver {
        to_bob: bool,
        pick: usize,
    },
    Drop {
        to_bob: bool,
        pick: usize,
    },
    Forge {
        to_bob: bool,
        pick: usize,
        at: usize,
    },
    Restore {
        bob: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..300).prop_map(Op::SendA),
        3 => (0usize..300).prop_map(Op::SendB),
        6 => (any::<bool>(), any::<usize>()).prop_map(|(to_bob, pick)| Op::Deliver { to_bob, pick }),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(to_bob, pick)| Op::Drop { to_bob, pick }),
        2 => (any::<bool>(), any::<usize>(), any::<usize>())
            .prop_map(|(to_bob, pick, at)| Op::Forge { to_bob, pick, at }),
        1 => any::<bool>().prop_map(|bob| Op::Restore { bob }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_message_decrypts_exactly_once_under_any_schedule(
        ops in proptest::collection::vec(op(), 1..70),
        seed in any::<u64>(),
    ) {
        let mut rng = rng(seed);
        let alice = KeyPair::generate(&mut rng);
        let bob = KeyPair::generate(&mut rng);
        let mut prekeys = Prekeys::generate(&mut rng, &bob, 2);
        let mut a = Session::initiate(&mut rng, &alice, &prekeys.bundle(&bob)).unwrap();
        let mut b: Option<Session> = None;
        let (a_pub, b_pub) = (identity_public(&alice), identity_public(&bob));
        let mut to_bob: Vec<Wire> = Vec::new();
        let mut to_alice: Vec<Wire> = Vec::new();
        let mut got: BTreeSet<[u8; 16]> = BTreeSet::new();
        let mut next = 0u64;
        let mut new_id = || { next += 1; let mut id = [0u8; 16]; id[8..].copy_from_slice(&next.to_be_bytes()); id };

        for op in ops {
            match op {
                Op::SendA(len) => {
                    let id = new_id();
                    let pt: Vec<u8> = (0..len).map(|i| (i as u8) ^ id[15]).collect();
                    let env = a.seal(&mut rng, &a_pub, id, &pt).unwrap();
                    to_bob.push(Wire { env, id, pt, dropped: false });
                }
                Op::SendB(len) => {
                    // Bob can only answer once a message of Alice's reached him.
                    if let Some(s) = b.as_mut() {
                        let id = new_id();
                        let pt: Vec<u8> = (0..len).map(|i| (i as u8) ^ id[15] ^ 0x55).collect();
                        let env = s.seal(&mut rng, &b_pub, id, &pt).unwrap();
                        to_alice.push(Wire { env, id, pt, dropped: false });
                    }
                }
                Op::Deliver { to_bob: tb, pick } => {
                    let wire = if tb { &to_bob } else { &to_alice };
                    if wire.is_empty() { continue; }
                    let w = &wire[pick % wire.len()];
                    let before = if tb { state(&b) } else { a.to_bytes().to_vec() };
                    let r = if tb {
                        bob_receives(&mut rng, &bob, &mut prekeys, &mut b, &w.env)
                    } else {
                        alice_receives(&mut rng, &alice, &mut a, &w.env)
                    };
                    if got.contains(&w.id) {
                        // A duplicate: refused, and nothing changed.
                        prop_assert_eq!(r.unwrap_err(), SessionError::Ratchet(RatchetError::Decrypt));
                        let after = if tb { state(&b) } else { a.to_bytes().to_vec() };
                        prop_assert_eq!(before, after);
                    } else {
                        let r = r.unwrap();
                        prop_assert_eq!(&r.plaintext, &w.pt);
                        prop_assert_eq!(r.msg_id, w.id);
                        prop_assert_eq!(r.sender, if tb { a_pub } else { b_pub });
                        got.insert(w.id);
                    }
                }
                Op::Drop { to_bob: tb, pick } => {
                    let wire = if tb { &mut to_bob } else { &mut to_alice };
                    if wire.is_empty() { continue; }
                    let n = wire.len();
                    wire[pick % n].dropped = true;
                }
                Op::Forge { to_bob: tb, pick, at } => {
                    let wire = if tb { &to_bob } else { &to_alice };
                    if wire.is_empty() { continue; }
                    let w = &wire[pick % wire.len()];
                    let mut bad = w.env.clone();
                    let i = at % bad.len();
                    bad[i] ^= 1 << (at % 8);
                    let before = if tb { state(&b) } else { a.to_bytes().to_vec() };
                    let r = if tb {
                        bob_receives(&mut rng, &bob, &mut prekeys, &mut b, &bad)
                    } else {
                        alice_receives(&mut rng, &alice, &mut a, &bad)
                    };
                    prop_assert!(r.is_err());
                    let after = if tb { state(&b) } else { a.to_bytes().to_vec() };
                    prop_assert_eq!(before, after);
                }
                Op::Restore { bob: true } => {
                    if let Some(s) = &b { b = Some(Session::from_bytes(&s.to_bytes()).unwrap()); }
                }
                Op::Restore { bob: false } => {
                    a = Session::from_bytes(&a.to_bytes()).unwrap();
                }
            }
        }
        // Everything sent and not dropped arrives in the end, in any order.
        for w in to_bob.iter().rev().filter(|w| !w.dropped && !got.contains(&w.id)) {
            let r = bob_receives(&mut rng, &bob, &mut prekeys, &mut b, &w.env).unwrap();
            prop_assert_eq!(&r.plaintext, &w.pt);
        }
        for w in to_alice.iter().filter(|w| !w.dropped && !got.contains(&w.id)) {
            let r = alice_receives(&mut rng, &alice, &mut a, &w.env).unwrap();
            prop_assert_eq!(&r.plaintext, &w.pt);
        }
        // One session, so one set of one-time keys used, at most.
        prop_assert!(prekeys.consumed.len() <= 1);
    }
}

#[test]
fn a_forged_sender_is_dropped_and_consumes_nothing() {
    let mut rng = rng(7);
    let alice = KeyPair::generate(&mut rng);
    let bob = KeyPair::generate(&mut rng);
    let mallory = KeyPair::generate(&mut rng);
    let mut prekeys = Prekeys::generate(&mut rng, &bob, 2);
    // Mallory starts a session of her own, then claims to be Alice (outer sender and Init).
    let mut m = Session::initiate(&mut rng, &mallory, &prekeys.bundle(&bob)).unwrap();
    let env = m
        .seal(
            &mut rng,
            &identity_public(&mallory),
            [1; 16],
            b"hi, it's alice",
        )
        .unwrap();
    let mut inner = envelope::open_with(&bob, &env).unwrap();
    assert_eq!(inner.kind, Kind::Prekey);
    let mut init = Init::decode(&inner.body).unwrap();
    init.identity = identity_public(&alice);
    let mut body = Vec::new();
    init.encode(&mut body);
    body.extend_from_slice(&inner.body[INIT_BYTES..]);
    inner.body = body;
    inner.sender = identity_public(&alice);
    let forged = envelope::seal_to(&mut rng, bob.public(), &inner).unwrap();
    let mut b = None;
    assert!(bob_receives(&mut rng, &bob, &mut prekeys, &mut b, &forged).is_err());
    assert!(b.is_none() && prekeys.consumed.is_empty());
    // An envelope whose outer sender disagrees with its Init is refused before any key is used.
    let mut inner = envelope::open_with(&bob, &env).unwrap();
    inner.sender = identity_public(&alice);
    let e2 = envelope::seal_to(&mut rng, bob.public(), &inner).unwrap();
    assert_eq!(
        bob_receives(&mut rng, &bob, &mut prekeys, &mut b, &e2).unwrap_err(),
        SessionError::WrongSender
    );

    // In an established session, a message claiming Alice but made by Mallory is dropped.
    let mut a = Session::initiate(&mut rng, &alice, &prekeys.bundle(&bob)).unwrap();
    let env = a
        .seal(&mut rng, &identity_public(&alice), [2; 16], b"real")
        .unwrap();
    assert_eq!(
        bob_receives(&mut rng, &bob, &mut prekeys, &mut b, &env)
            .unwrap()
            .plaintext,
        b"real"
    );
    let before = state(&b);
    let fake = Inner {
        kind: Kind::Message,
        sender: identity_public(&alice),
        msg_id: [3; 16],
        body: vec![1; 80],
    };
    let e3 = envelope::seal_to(&mut rng, bob.public(), &fake).unwrap();
    assert!(bob_receives(&mut rng, &bob, &mut prekeys, &mut b, &e3).is_err());
    assert_eq!(state(&b), before);
}

#[test]
fn swapping_the_message_id_or_kind_inside_a_resealed_envelope_fails() {
    let mut rng = rng(8);
    let alice = KeyPair::generate(&mut rng);
    let bob = KeyPair::generate(&mut rng);
    let mut prekeys = Prekeys::generate(&mut rng, &bob, 1);
    let mut a = Session::initiate(&mut rng, &alice, &prekeys.bundle(&bob)).unwrap();
    let env = a
        .seal(&mut rng, &identity_public(&alice), [4; 16], b"x")
        .unwrap();
    let mut inner = envelope::open_with(&bob, &env).unwrap();
    inner.msg_id = [5; 16];
    let e = envelope::seal_to(&mut rng, bob.public(), &inner).unwrap();
    let mut b = None;
    assert!(bob_receives(&mut rng, &bob, &mut prekeys, &mut b, &e).is_err());
    assert!(b.is_none());
    // The original still works.
    assert_eq!(
        bob_receives(&mut rng, &bob, &mut prekeys, &mut b, &env)
            .unwrap()
            .msg_id,
        [4; 16]
    );
    assert_eq!(prekeys.consumed.len(), 1);
}

#[test]
fn without_one_time_keys_the_last_resort_key_still_starts_a_session() {
    let mut rng = rng(9);
    let alice = KeyPair::generate(&mut rng);
    let bob = KeyPair::generate(&mut rng);
    let mut prekeys = Prekeys::generate(&mut rng, &bob, 0);
    let bundle = prekeys.bundle(&bob);
    assert!(bundle.opk.is_none() && bundle.pq_id == 0);
    let mut a = Session::initiate(&mut rng, &alice, &bundle).unwrap();
    let env = a
        .seal(&mut rng, &identity_public(&alice), [6; 16], b"hello")
        .unwrap();
    let mut b = None;
    let r = bob_receives(&mut rng, &bob, &mut prekeys, &mut b, &env).unwrap();
    assert_eq!(r.plaintext, b"hello");
    // The last-resort key stays.
    assert!(prekeys.kems.contains_key(&0));
    // Bob answers; Alice stops sending the Init.
    let reply = b
        .as_mut()
        .unwrap()
        .seal(&mut rng, &identity_public(&bob), [7; 16], b"hi")
        .unwrap();
    assert!(!a.established());
    assert_eq!(
        alice_receives(&mut rng, &alice, &mut a, &reply)
            .unwrap()
            .plaintext,
        b"hi"
    );
    assert!(a.established());
    let next = a
        .seal(&mut rng, &identity_public(&alice), [8; 16], b"again")
        .unwrap();
    assert_eq!(
        envelope::open_with(&bob, &next).unwrap().kind,
        Kind::Message
    );
    assert_eq!(encode_ec(alice.public()), identity_public(&alice));
}
