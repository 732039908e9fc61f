//! Differential tests against independent implementations where their constructions match
//! ferry's: libxeddsa (PyPI `xeddsa`) for XEdDSA and X25519, PyPI `x3dh` for the classical part
//! of PQXDH (same KDF with the 0xFF prefix, DH order and associated data; PQXDH adds the KEM
//! secret after the DH outputs), PyPI `doubleratchet` configured with ferry's KDFs, header and
//! AEAD for the Double Ratchet, both directions, out of order.
//!
//! They need a Python with those packages: `tests/run-all.sh` makes one (a venv under
//! /var/cache/ferry-pyenv, pinned versions) and sets `CRYPTO_REFERENCE_PYTHON`. Without it the tests say so
//! and do nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{hex, rng, unhex};
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use ferry_crypto::keys::{KeyPair, decode_ec, dh, encode_ec};
use ferry_crypto::pqxdh;
use ferry_crypto::ratchet::Ratchet;
use ferry_crypto::xeddsa;
use rand_core::RngCore;
use serde_json::{Value, json};

fn python(req: &Value) -> Option<Value> {
    let Some(py) = std::env::var_os("CRYPTO_REFERENCE_PYTHON") else {
        eprintln!(
            "CRYPTO_REFERENCE_PYTHON is not set: differential tests skipped (tests/run-all.sh sets it up)"
        );
        return None;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/differential.py");
    let mut child = Command::new(py)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn bytes(v: &Value) -> Vec<u8> {
    unhex(v.as_str().unwrap())
}

fn arr<const N: usize>(v: &Value) -> [u8; N] {
    bytes(v).try_into().unwrap()
}

/// The plaintexts a `dr` command decrypted.
fn plaintexts(out: &Value) -> Vec<Vec<u8>> {
    out["plaintexts"]
        .as_array()
        .unwrap()
        .iter()
        .map(bytes)
        .collect()
}

#[test]
fn xeddsa_and_x25519_agree_with_libxeddsa() {
    let mut rng = rng(11);
    let mut items = Vec::new();
    let mut ours = Vec::new();
    for i in 0..24usize {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let mut msg = vec![0u8; i * 7];
        rng.fill_bytes(&mut msg);
        let mut nonce = [0u8; 64];
        rng.fill_bytes(&mut nonce);
        let peer = KeyPair::generate(&mut rng);
        let sig = xeddsa::sign(&secret, &msg, &nonce);
        items.push(json!({
            "priv": hex(&secret), "msg": hex(&msg), "nonce": hex(&nonce),
            "sig": hex(&sig), "peer": hex(peer.public()),
        }));
        ours.push((secret, msg, nonce, sig, peer));
    }
    let Some(out) = python(&json!({"cmd": "xeddsa", "items": items})) else {
        return;
    };
    let mut identical = 0;
    for ((secret, msg, _, sig, peer), theirs) in ours.iter().zip(out["items"].as_array().unwrap()) {
        let u = xeddsa::public_key(secret);
        assert_eq!(arr::<32>(&theirs["pub"]), u, "public keys differ");
        assert_eq!(
            theirs["rust_sig_ok"], true,
            "libxeddsa refuses our signature"
        );
        let their_sig = arr::<64>(&theirs["sig"]);
        assert!(
            xeddsa::verify(&u, msg, &their_sig),
            "we refuse libxeddsa's signature"
        );
        // Same key, message and Z. XEdDSA's nonce is r = hash1(a ‖ M ‖ Z). Where the Edwards
        // key has sign bit 1, a = −k mod q on both sides: the same signature, byte for byte.
        // Otherwise libxeddsa hashes the clamped k as it is and we hash k mod q (the spec's
        // "a = k (mod q)"): another valid nonce, so another signature, and each side accepts
        // the other's (checked above).
        let k = Scalar::from_bytes_mod_order(clamp_integer(*secret));
        let negated = EdwardsPoint::mul_base(&k).compress().to_bytes()[31] & 0x80 != 0;
        if negated {
            assert_eq!(their_sig, *sig, "same inputs, different signature");
            identical += 1;
        } else {
            assert_ne!(their_sig, *sig);
        }
        assert_eq!(
            arr::<32>(&theirs["x25519"]),
            *dh(secret, peer.public()).unwrap()
        );
    }
    assert!(identical > 0, "no key took the negated branch");
}

#[test]
fn the_pqxdh_kdf_and_associated_data_agree_with_python_x3dh() {
    let Some(bundle) = python(&json!({"cmd": "x3dh_bundle"})) else {
        return;
    };
    let ik_b = arr::<32>(&bundle["identity"]);
    let spk = arr::<32>(&bundle["spk"]);
    let opk = arr::<32>(&bundle["opk"]);
    // Their signature over 0x05 ‖ SPK verifies with ours.
    assert!(xeddsa::verify(
        &ik_b,
        &encode_ec(&spk),
        &arr::<64>(&bundle["spk_sig"])
    ));
    let mut rng = rng(12);
    let ik_a = KeyPair::generate(&mut rng);
    let ek_a = KeyPair::generate(&mut rng);
    let dh1 = dh(ik_a.secret(), &spk).unwrap();
    let dh2 = dh(ek_a.secret(), &ik_b).unwrap();
    let dh3 = dh(ek_a.secret(), &spk).unwrap();
    let dh4 = dh(ek_a.secret(), &opk).unwrap();
    let sk = pqxdh::kdf(&[&dh1, &dh2, &dh3, &dh4], None, pqxdh::INFO);
    let theirs = python(&json!({
        "cmd": "x3dh_passive", "state": bundle["state"],
        "identity": hex(ik_a.public()), "ephemeral": hex(ek_a.public()),
        "spk": hex(&spk), "opk": hex(&opk),
    }))
    .unwrap();
    assert_eq!(arr::<32>(&theirs["sk"]), *sk, "shared secrets differ");
    let mut ad = encode_ec(ik_a.public()).to_vec();
    ad.extend_from_slice(&encode_ec(&ik_b));
    assert_eq!(bytes(&theirs["ad"]), ad);
    assert_eq!(decode_ec(&ad[33..]), Some(ik_b));
}

#[test]
fn the_double_ratchet_interoperates_with_python_doubleratchet() {
    let mut rng = rng(13);
    let mut sk = [0u8; 32];
    rng.fill_bytes(&mut sk);
    let bob_ratchet = KeyPair::generate(&mut rng);
    let ad = b"AD: both identities".to_vec();
    let mut alice = Ratchet::initiator(&mut rng, &sk, bob_ratchet.public()).unwrap();
    let msg = |i: usize| format!("message {i} from alice").into_bytes();
    let sent: Vec<_> = (0..4)
        .map(|i| alice.encrypt(&msg(i), &ad).unwrap())
        .collect();
    let wire = |(h, ct): &([u8; 41], Vec<u8>)| json!({"header": hex(h), "ct": hex(ct)});
    // Bob (Python) gets 0 first (it starts his ratchet), then 3, then 1 and 2: skipped keys.
    let order = [0usize, 3, 1, 2];
    let Some(out) = python(&json!({
        "cmd": "dr", "sk": hex(&sk), "ratchet_priv": hex(bob_ratchet.secret()), "ad": hex(&ad),
        "messages": order.iter().map(|&i| wire(&sent[i])).collect::<Vec<_>>(),
        "replies": [hex(b"reply one"), hex(b"reply two"), hex(b"reply three")],
    })) else {
        return;
    };
    let pts = plaintexts(&out);
    assert_eq!(pts, order.iter().map(|&i| msg(i)).collect::<Vec<_>>());
    // Alice (Rust) reads Python's replies out of order.
    let replies = out["replies"].as_array().unwrap();
    for (i, want) in [(2usize, "reply three"), (0, "reply one"), (1, "reply two")] {
        let r = &replies[i];
        let pt = alice
            .decrypt(&mut rng, &bytes(&r["header"]), &bytes(&r["ct"]), &ad)
            .unwrap();
        assert_eq!(pt, want.as_bytes());
    }
    // A second round on Bob's saved Python state: Alice's new chain after the DH step.
    let more: Vec<_> = (4..6)
        .map(|i| alice.encrypt(&msg(i), &ad).unwrap())
        .collect();
    let out = python(&json!({
        "cmd": "dr", "state": out["state"], "ad": hex(&ad),
        "messages": [wire(&more[1]), wire(&more[0])],
        "replies": [hex(b"last")],
    }))
    .unwrap();
    let pts = plaintexts(&out);
    assert_eq!(pts, vec![msg(5), msg(4)]);
    let r = &out["replies"][0];
    assert_eq!(
        alice
            .decrypt(&mut rng, &bytes(&r["header"]), &bytes(&r["ct"]), &ad)
            .unwrap(),
        b"last"
    );
}
