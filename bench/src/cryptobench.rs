//! The end-to-end encryption core's costs, beside the floor measured in the same run.
//!
//! `cargo run --release -p ferry-bench --bin ferry-cryptobench [-- --quick]`
//!
//! * Per message (100 B, 1 KiB, 16 KiB): a bare ChaCha20-Poly1305 seal + open under a fixed
//!   key — the least any end-to-end encryption pays — beside a Double Ratchet encrypt + decrypt
//!   (chain step, key derivation, AEAD), one with a DH ratchet step on every message (each side
//!   answers), and a whole session message (ratchet + sealed envelope: an X25519 agreement and
//!   a second AEAD each way). Ratios are to the floor of the same size.
//! * First contact: PQXDH initiate (two XEdDSA checks, the ML-KEM-1024 key check and
//!   encapsulation, four X25519) and respond, beside one X25519 agreement.
//!
//! Medians of several rounds, with min and max.

use std::hint::black_box;
mod measure;
use measure::measure;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use ferry_crypto::envelope;
use ferry_crypto::keys::{KeyPair, dh, encode_ec};
use ferry_crypto::pqxdh::{self, Bundle};
use ferry_crypto::ratchet::Ratchet;
use ferry_crypto::session::{PrekeyStore, Session, identity_public};
use ferry_crypto::xeddsa;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use zeroize::Zeroizing;

fn report(name: &str, (med, min, max): (f64, f64, f64), floor: Option<f64>) {
    let ratio = floor.map_or(String::new(), |f| format!("  {:>6.2}× floor", med / f));
    println!(
        "{name:<58} {:>9.2} µs   (min {:.2}, max {:.2}){ratio}",
        med / 1000.0,
        min / 1000.0,
        max / 1000.0
    );
}

struct Bob {
    identity: KeyPair,
    spk: KeyPair,
    pq: Vec<u8>,
    pq_secret: Zeroizing<Vec<u8>>,
    spk_sig: [u8; 64],
    pq_sig: [u8; 64],
}

impl Bob {
    fn new(rng: &mut ChaCha20Rng) -> Bob {
        let identity = KeyPair::generate(rng);
        let spk = KeyPair::generate(rng);
        let (pq, pq_secret) = pqxdh::kem_keypair(rng);
        let mut z = [0u8; 64];
        rng.fill_bytes(&mut z);
        let spk_sig = xeddsa::sign(identity.secret(), &encode_ec(spk.public()), &z);
        let pq_sig = xeddsa::sign(identity.secret(), &pq, &z);
        Bob {
            identity,
            spk,
            pq,
            pq_secret,
            spk_sig,
            pq_sig,
        }
    }
    fn bundle(&self) -> Bundle<'_> {
        Bundle {
            identity: encode_ec(self.identity.public()),
            spk_id: 1,
            spk: encode_ec(self.spk.public()),
            spk_sig: self.spk_sig,
            pq_id: 1,
            pq: &self.pq,
            pq_sig: self.pq_sig,
            opk: None,
        }
    }
}

impl PrekeyStore for Bob {
    fn signed_prekey(&self, _: u32) -> Option<KeyPair> {
        Some(self.spk.clone())
    }
    fn one_time_prekey(&self, _: u32) -> Option<KeyPair> {
        None
    }
    fn kem_prekey(&self, _: u32) -> Option<Zeroizing<Vec<u8>>> {
        Some(self.pq_secret.clone())
    }
    fn consume(&mut self, _: Option<u32>, _: u32) {}
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 9 };
    let k: u64 = if quick { 1 } else { 4 };
    let mut rng = ChaCha20Rng::seed_from_u64(7);

    println!("per message (seal + open, one direction unless said)");
    for size in [100usize, 1024, 16 * 1024] {
        let pt = vec![0x42u8; size];
        let iters = (20_000 * k) / (1 + size as u64 / 1024);
        // The floor: one AEAD seal and open under a fixed key (a counter nonce).
        let aead = ChaCha20Poly1305::new((&[7u8; 32]).into());
        let floor = measure(rounds, iters, |n| {
            for i in 0..n {
                let mut nonce = [0u8; 12];
                nonce[..8].copy_from_slice(&i.to_le_bytes());
                let nonce = Nonce::from(nonce);
                let ct = aead
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: &pt,
                            aad: b"ad",
                        },
                    )
                    .unwrap_or_default();
                black_box(
                    aead.decrypt(
                        &nonce,
                        Payload {
                            msg: &ct,
                            aad: b"ad",
                        },
                    )
                    .ok(),
                );
            }
        });
        report(
            &format!("floor: ChaCha20-Poly1305 seal+open ({size} B)"),
            floor,
            None,
        );

        let sk = [9u8; 32];
        let bob_spk = KeyPair::generate(&mut rng);
        let mut a =
            Ratchet::initiator(&mut rng, &sk, bob_spk.public()).unwrap_or_else(|e| panic!("{e:?}"));
        let mut b = Ratchet::responder(&sk, bob_spk);
        let chain = measure(rounds, iters, |n| {
            for _ in 0..n {
                let (h, ct) = a.encrypt(&pt, b"ad").unwrap_or_else(|e| panic!("{e:?}"));
                black_box(
                    b.decrypt(&mut rng, &h, &ct, b"ad")
                        .unwrap_or_else(|e| panic!("{e:?}")),
                );
            }
        });
        report(
            &format!("ratchet, same chain ({size} B)"),
            chain,
            Some(floor.0),
        );

        let turn = measure(rounds, iters / 20 + 1, |n| {
            for _ in 0..n {
                let (h, ct) = a.encrypt(&pt, b"ad").unwrap_or_else(|e| panic!("{e:?}"));
                b.decrypt(&mut rng, &h, &ct, b"ad")
                    .unwrap_or_else(|e| panic!("{e:?}"));
                let (h, ct) = b.encrypt(&pt, b"ad").unwrap_or_else(|e| panic!("{e:?}"));
                black_box(
                    a.decrypt(&mut rng, &h, &ct, b"ad")
                        .unwrap_or_else(|e| panic!("{e:?}")),
                );
            }
        });
        // Two messages per iteration: report per message.
        let per = (turn.0 / 2.0, turn.1 / 2.0, turn.2 / 2.0);
        report(
            &format!("ratchet, DH step every message ({size} B)"),
            per,
            Some(floor.0),
        );

        if size + 100 <= envelope::INNER_BYTES_MAX {
            let alice = KeyPair::generate(&mut rng);
            let mut bob = Bob::new(&mut rng);
            let mut sa = Session::initiate(&mut rng, &alice, &bob.bundle())
                .unwrap_or_else(|e| panic!("{e:?}"));
            let me = identity_public(&alice);
            let env = sa
                .seal(&mut rng, &me, [0; 16], &pt)
                .unwrap_or_else(|e| panic!("{e:?}"));
            let inner =
                envelope::open_with(&bob.identity, &env).unwrap_or_else(|e| panic!("{e:?}"));
            let bob_id = KeyPair::from_secret(*bob.identity.secret());
            let (mut sb, _) = Session::accept(&mut rng, &bob_id, &mut bob, &inner)
                .unwrap_or_else(|e| panic!("{e:?}"));
            let reply = sb
                .seal(&mut rng, &identity_public(&bob_id), [1; 16], b"ok")
                .unwrap_or_else(|e| panic!("{e:?}"));
            let inner = envelope::open_with(&alice, &reply).unwrap_or_else(|e| panic!("{e:?}"));
            sa.receive(&mut rng, &inner)
                .unwrap_or_else(|e| panic!("{e:?}"));
            let mut id = 2u64;
            let msg = measure(rounds, iters / 10 + 1, |n| {
                for _ in 0..n {
                    id += 1;
                    let mut mid = [0u8; 16];
                    mid[..8].copy_from_slice(&id.to_le_bytes());
                    let env = sa
                        .seal(&mut rng, &me, mid, &pt)
                        .unwrap_or_else(|e| panic!("{e:?}"));
                    let inner =
                        envelope::open_with(&bob_id, &env).unwrap_or_else(|e| panic!("{e:?}"));
                    black_box(
                        sb.receive(&mut rng, &inner)
                            .unwrap_or_else(|e| panic!("{e:?}")),
                    );
                }
            });
            report(
                &format!("session message, sealed envelope ({size} B)"),
                msg,
                Some(floor.0),
            );
        }
    }

    println!("first contact");
    let a = KeyPair::generate(&mut rng);
    let b = KeyPair::generate(&mut rng);
    let x = measure(rounds, 2_000 * k, |n| {
        for _ in 0..n {
            black_box(dh(a.secret(), b.public()));
        }
    });
    report("floor: one X25519 agreement", x, None);
    let bob = Bob::new(&mut rng);
    let bundle = bob.bundle();
    let init = measure(rounds, 200 * k, |n| {
        for _ in 0..n {
            black_box(pqxdh::initiate(&mut rng, &a, &bundle).unwrap_or_else(|e| panic!("{e:?}")));
        }
    });
    report(
        "PQXDH initiate (checks + ML-KEM encaps + 4 DH)",
        init,
        Some(x.0),
    );
    let (_, msg) = pqxdh::initiate(&mut rng, &a, &bundle).unwrap_or_else(|e| panic!("{e:?}"));
    let resp = measure(rounds, 200 * k, |n| {
        for _ in 0..n {
            black_box(
                pqxdh::respond(&bob.identity, &bob.spk, None, &bob.pq_secret, &msg)
                    .unwrap_or_else(|e| panic!("{e:?}")),
            );
        }
    });
    report("PQXDH respond (ML-KEM decaps + 3 DH)", resp, Some(x.0));
}
