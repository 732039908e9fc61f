//! Micro-benchmarks: plain mains that print the cost per operation (glommio's style).
//!
//! `cargo run --release -p ferry-bench --bin ferry-microbench [-- --quick]`
//!
//! Each figure is the median of several timed rounds; the spread (min–max) is printed beside it.

use std::hint::black_box;
mod measure;
use measure::measure;

use bytes::{Bytes, BytesMut};
use ferry_proto::addr::{MailboxSecret, NamespaceId, verify_proof, verify_proofs};
use ferry_proto::frame::{Dest, Frame, Op, decode_frame, put_send_header};
use ferry_shards::{ConnRef, ForwardTable};

fn report(name: &str, unit: &str, (med, min, max): (f64, f64, f64)) {
    let scale = if unit == "µs" { 1000.0 } else { 1.0 };
    println!(
        "{name:<48} {:>10.1} {unit}/op   (min {:.1}, max {:.1})",
        med / scale,
        min / scale,
        max / scale
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 9 };
    let k = if quick { 1 } else { 5 };

    for size in [64usize, 256, 1400, 16 * 1024] {
        let payload = Bytes::from(vec![0x5au8; size]);
        let dest = Dest([7; 16]);
        let mut out = BytesMut::with_capacity(64 * 1024);
        report(
            &format!("encode Send header+payload ({size} B)"),
            "ns",
            measure(rounds, 200_000 * k, |n| {
                for i in 0..n {
                    out.clear();
                    put_send_header(&mut out, &dest, i, 0, 0, payload.len());
                    out.extend_from_slice(&payload);
                    black_box(&out);
                }
            }),
        );
        let one = Frame::Send {
            dest,
            msg_id: 1,
            flags: 0,
            ttl_s: 0,
            pass: ferry_proto::puzzle::SendPass::NONE,
            payload: payload.clone(),
        }
        .to_bytes();
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
        // 64 frames per buffer, as a read of a busy connection brings them.
        let (m, lo, hi) = measure(rounds, 3_000 * k, |n| {
            for _ in 0..n {
                let mut buf = BytesMut::from(&batch[..]);
                while let Ok(Some(f)) = decode_frame(&mut buf) {
                    black_box(f);
                }
            }
        });
        report(
            &format!("decode Send ({size} B), per frame"),
            "ns",
            (m / 64.0, lo / 64.0, hi / 64.0),
        );
    }

    // Proofs: one by one and batched (73 = a 72-hour drain window).
    let ns = NamespaceId([1; 32]);
    let node = [2u8; 32];
    let challenge = [3u8; 32];
    let items: Vec<_> = (0u8..73)
        .map(|i| {
            MailboxSecret::from_seed(&[i; 32])
                .blinded_signer(&ns, None, 1000)
                .expect("blind")
                .prove(&node, &challenge, Op::Subscribe)
        })
        .collect();
    report(
        "proof check, single (verify_strict)",
        "µs",
        measure(rounds, 300 * k, |n| {
            for i in 0..n {
                black_box(verify_proof(
                    &node,
                    &challenge,
                    &items[usize::try_from(i % 73).expect("below 73")],
                ));
            }
        }),
    );
    let (m, lo, hi) = measure(rounds, 10 * k, |n| {
        for _ in 0..n {
            black_box(verify_proofs(&node, &challenge, &items));
        }
    });
    report(
        "proof check, batch of 73, per proof",
        "µs",
        (m / 73.0, lo / 73.0, hi / 73.0),
    );
    // Prekeys: what a fetcher spends opening and checking a sealed bundle (the node only
    // stores sealed items: it checks counts and ids).
    let ik = ferry_sdk::prekeys::IdentityKey::from_secret([11; 32]);
    let slot_mb = MailboxSecret::from_seed(&[12; 32]);
    let slot_signer = slot_mb
        .blinded_signer(&ns, None, ferry_proto::addr::slot_epoch(20_000))
        .expect("slot signer");
    let sealer = ferry_proto::prekey::SlotSealer::new(
        ferry_proto::prekey::slot_key(&slot_mb.public().to_bytes(), &ns, 20_000),
        &slot_signer,
    );
    let (uploads, _) = {
        let plan = ferry_sdk::prekeys::PrekeyPlan {
            head: ferry_sdk::prekeys::HeadPlan::New,
            one_time_ec: 1,
            one_time_pq: 1,
            ids: ferry_sdk::prekeys::PrekeyIds::Sequential(1),
            replace_one_time: false,
            expires: u64::MAX,
            ttl_s: 0,
        };
        ferry_sdk::prekeys::generate(&ik, &sealer, plan).expect("prekeys")
    };
    let sealed = ferry_proto::prekey::SealedBundle {
        head: uploads[0].head.clone().expect("head"),
        pq: uploads[0].pq.first().cloned(),
        ec: uploads[0].ec.first().cloned(),
    };
    let opener =
        ferry_proto::prekey::SlotOpener::new(slot_mb.public(), &ns, 20_000).expect("opener");
    let opened = opener.open(&sealed).expect("opens");
    let lr = &opened.pq;
    let u = ferry_proto::xeddsa::public_key(ik.secret());
    report(
        "XEdDSA verify (a signed prekey)",
        "µs",
        measure(rounds, 300 * k, |n| {
            for _ in 0..n {
                black_box(ferry_proto::xeddsa::verify(&u, &lr.key, &lr.sig));
            }
        }),
    );
    report(
        "ML-KEM-1024 key check (FIPS 203 modulus)",
        "µs",
        measure(rounds, 3_000 * k, |n| {
            for _ in 0..n {
                black_box(ferry_proto::prekey::kem_key_valid(&lr.key));
            }
        }),
    );
    report(
        "prekey bundle open and check, fetcher (4 XEdDSA, 1 Ed25519, 3 AEAD)",
        "µs",
        measure(rounds, 10 * k, |n| {
            for _ in 0..n {
                black_box(opener.open(&sealed).is_ok());
            }
        }),
    );
    let public = *MailboxSecret::from_seed(&[9; 32]).public();
    report(
        "sender: dest of a contact for one epoch",
        "µs",
        measure(rounds, 300 * k, |n| {
            for e in 0..n {
                black_box(public.dest(&ns, None, e).expect("dest"));
            }
        }),
    );

    // Forward table: hits in a table of N entries, keys in random order.
    for entries in [1_000usize, 100_000, 1_000_000] {
        let mut table = ForwardTable::with_capacity(entries);
        let mut keys = Vec::with_capacity(entries);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..entries {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&x.to_le_bytes());
            d[8..].copy_from_slice(&(i as u64).to_le_bytes());
            table.subscribe(
                Dest(d),
                ConnRef {
                    shard: 0,
                    conn: ferry_shards::ConnId(i as u64),
                },
            );
            keys.push(Dest(d));
        }
        report(
            &format!("forward-table lookup ({entries} entries)"),
            "ns",
            measure(rounds, 1_000_000 * k, |n| {
                for i in 0..n {
                    let d = &keys[usize::try_from(i.wrapping_mul(0x9e37_79b9) % entries as u64)
                        .expect("below `entries`, a usize")];
                    black_box(table.lookup(d));
                }
            }),
        );
    }
}
