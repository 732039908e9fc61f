//! Addressing test vectors: `docs/test-vectors.json`.
//!
//! For fixed inputs this computes the mailbox key `MK`, the blinded key `MK'`, the destination
//! hash and an ownership proof (Ed25519 signing is deterministic) and compares them with the file.
//! Every value is computed twice: once through `ferry_proto::addr` and once independently from
//! the primitives (blake3, curve25519-dalek, SHA-512), so the file also pins the construction in
//! `docs/ADDRESSING.md`, not only whatever the library happens to do.
//!
//! Regenerate the file with `FERRY_REGENERATE_VECTORS=1 cargo test -p ferry-proto --test vectors`.

// Test code: a failed unwrap is a failed test. Clippy's allow-unwrap-in-tests only covers
// `#[test]` functions, not the helpers here.
#![allow(clippy::unwrap_used)]

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::scalar::Scalar;
use ferry_proto::addr::{
    CONTEXT_BLINDING, CONTEXT_DESTINATION, CONTEXT_NONCE_PREFIX, MailboxSecret, NamespaceId,
    PROOF_DOMAIN, dest_of, proof_message, verify_proof, verify_proofs,
};
use ferry_proto::frame::{Frame, Op, ProofStatus};
use serde_json::{Value, json};
use sha2::{Digest, Sha512};

const VECTORS_JSON: &str = include_str!("../../docs/test-vectors.json");

use ferry_proto::hex::encode as hex;

fn seq32(first: u8) -> [u8; 32] {
    std::array::from_fn(|i| first + u8::try_from(i).unwrap())
}

fn sha512(parts: &[&[u8]]) -> [u8; 64] {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    let mut out = [0u8; 64];
    out.copy_from_slice(&h.finalize());
    out
}

struct Inputs {
    name: String,
    seed: [u8; 32],
    ns: [u8; 32],
    s_mbox: Option<[u8; 32]>,
    epoch: u64,
    node_id: [u8; 32],
    challenge: [u8; 32],
    op: Op,
}

fn inputs() -> Vec<Inputs> {
    let mut v = Vec::new();
    for (kind, s_mbox) in [("intro", None), ("contact", Some([0x55u8; 32]))] {
        for epoch in [493_000u64, 493_001] {
            v.push(Inputs {
                name: format!("{kind}-{epoch}"),
                seed: seq32(0x01),
                ns: seq32(0xA0),
                s_mbox,
                epoch,
                node_id: [0x11; 32],
                challenge: [0x22; 32],
                op: Op::Subscribe,
            });
        }
    }
    v
}

/// Computes one vector, checking the library against an independent computation on the way.
fn compute(i: &Inputs) -> Value {
    // --- Library path.
    let secret = MailboxSecret::from_seed(&i.seed);
    let ns = NamespaceId(i.ns);
    let s_mbox = i.s_mbox.as_ref();
    let mk = secret.public().to_bytes();
    let mk_blinded = secret.public().blinded(&ns, s_mbox, i.epoch).unwrap();
    let dest = secret.public().dest(&ns, s_mbox, i.epoch).unwrap();
    let signer = secret.blinded_signer(&ns, s_mbox, i.epoch).unwrap();
    assert_eq!(
        signer.blinded_key(),
        mk_blinded,
        "{}: owner and sender disagree on MK'",
        i.name
    );
    assert_eq!(
        signer.dest(),
        dest,
        "{}: owner and sender disagree on dest",
        i.name
    );
    let item = signer.prove(&i.node_id, &i.challenge, i.op);
    assert_eq!(item.dest, dest);
    assert_eq!(item.op, i.op as u8);
    assert_eq!(item.blinded_key, mk_blinded);
    let msg = proof_message(&i.node_id, &i.challenge, &dest, i.op as u8);

    // --- Independent path, straight from ADDRESSING.md.
    // Standard Ed25519 key expansion (RFC 8032 5.1.5).
    let expanded = sha512(&[&i.seed]);
    let mut mk_bytes: [u8; 32] = expanded[..32].try_into().unwrap();
    mk_bytes[0] &= 248;
    mk_bytes[31] &= 127;
    mk_bytes[31] |= 64;
    let mk_scalar = Scalar::from_bytes_mod_order(mk_bytes);
    let prefix: [u8; 32] = expanded[32..].try_into().unwrap();
    assert_eq!(
        (&mk_scalar * ED25519_BASEPOINT_TABLE).compress().0,
        mk,
        "{}: MK",
        i.name
    );
    // h = wide_reduce(blake3 derive_key XOF 64 bytes(CONTEXT_BLINDING, MK ‖ ns ‖ [s] ‖ e_le)).
    let mut blinding_input = Vec::new();
    blinding_input.extend_from_slice(&mk);
    blinding_input.extend_from_slice(&i.ns);
    if let Some(s) = &i.s_mbox {
        blinding_input.extend_from_slice(s);
    }
    blinding_input.extend_from_slice(&i.epoch.to_le_bytes());
    let mut wide = [0u8; 64];
    let mut hasher = blake3::Hasher::new_derive_key(CONTEXT_BLINDING);
    hasher.update(&blinding_input);
    hasher.finalize_xof().fill(&mut wide);
    let h = Scalar::from_bytes_mod_order_wide(&wide);
    assert_ne!(h, Scalar::ZERO);
    let mk_point = CompressedEdwardsY(mk).decompress().unwrap();
    assert_eq!(
        (h * mk_point).compress().0,
        mk_blinded,
        "{}: MK' = h·MK",
        i.name
    );
    let mk_blinded_scalar = h * mk_scalar;
    assert_eq!(
        (&mk_blinded_scalar * ED25519_BASEPOINT_TABLE).compress().0,
        mk_blinded,
        "{}: MK' = (h·mk)·B",
        i.name
    );
    let mut pfx_input = Vec::new();
    pfx_input.extend_from_slice(&prefix);
    pfx_input.extend_from_slice(h.as_bytes());
    let pfx_blinded = blake3::derive_key(CONTEXT_NONCE_PREFIX, &pfx_input);
    let full_dest = blake3::derive_key(CONTEXT_DESTINATION, &mk_blinded);
    assert_eq!(full_dest[..16], dest.0, "{}: dest", i.name);
    assert_eq!(dest_of(&mk_blinded), dest);
    let mut msg_indep = Vec::new();
    msg_indep.extend_from_slice(PROOF_DOMAIN);
    msg_indep.extend_from_slice(&i.node_id);
    msg_indep.extend_from_slice(&i.challenge);
    msg_indep.extend_from_slice(&dest.0);
    msg_indep.push(i.op as u8);
    assert_eq!(msg_indep, msg, "{}: proof message", i.name);
    // Ed25519 signing with the expanded key (mk', pfx') (RFC 8032 5.1.6 from step 2 on).
    let r = Scalar::from_bytes_mod_order_wide(&sha512(&[&pfx_blinded, &msg]));
    let big_r = (&r * ED25519_BASEPOINT_TABLE).compress().0;
    let k = Scalar::from_bytes_mod_order_wide(&sha512(&[&big_r, &mk_blinded, &msg]));
    let s = r + k * mk_blinded_scalar;
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&big_r);
    sig[32..].copy_from_slice(s.as_bytes());
    assert_eq!(hex(&sig), hex(&item.signature), "{}: signature", i.name);

    // The node accepts it, alone and in a batch.
    assert_eq!(
        verify_proof(&i.node_id, &i.challenge, &item),
        ProofStatus::Ok,
        "{}",
        i.name
    );
    assert_eq!(
        verify_proofs(&i.node_id, &i.challenge, &[item]),
        vec![ProofStatus::Ok]
    );

    let prove_frame = Frame::Prove { items: vec![item] }.to_bytes();

    json!({
        "name": i.name,
        "inputs": {
            "mailbox_seed": hex(&i.seed),
            "namespace_id": hex(&i.ns),
            "s_mbox": i.s_mbox.map(|s| hex(&s)),
            "epoch": i.epoch,
            "node_id": hex(&i.node_id),
            "challenge": hex(&i.challenge),
            "op": i.op as u8,
        },
        "intermediate": {
            "mailbox_scalar": hex(mk_scalar.as_bytes()),
            "mailbox_nonce_prefix": hex(&prefix),
            "blinding_input": hex(&blinding_input),
            "blinding_xof64": hex(&wide),
            "blinding_factor_h": hex(h.as_bytes()),
            "blinded_scalar": hex(mk_blinded_scalar.as_bytes()),
            "blinded_nonce_prefix": hex(&pfx_blinded),
            "proof_message": hex(&msg),
        },
        "outputs": {
            "mailbox_public_key": hex(&mk),
            "blinded_public_key": hex(&mk_blinded),
            "dest": hex(&dest.0),
            "proof_signature": hex(&item.signature),
            "prove_frame": hex(&prove_frame),
        },
    })
}

fn generate() -> Value {
    json!({
        "description": "ferry v1 addressing test vectors, see docs/ADDRESSING.md. All byte strings \
            are lowercase hex; scalars are 32-byte little-endian; epoch is encoded as u64 \
            little-endian inside blinding_input. Regenerate with FERRY_REGENERATE_VECTORS=1 \
            cargo test -p ferry-proto --test vectors.",
        "contexts": {
            "blinding": CONTEXT_BLINDING,
            "nonce_prefix": CONTEXT_NONCE_PREFIX,
            "destination": CONTEXT_DESTINATION,
            "proof_domain": String::from_utf8(PROOF_DOMAIN.to_vec()).unwrap(),
        },
        "vectors": inputs().iter().map(compute).collect::<Vec<_>>(),
    })
}

/// Lists every leaf where `want` and `got` differ, by JSON path.
fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => diff(&format!("{path}.{k}"), wv, gv, out),
                    None => out.push(format!("{path}.{k}: missing from the file")),
                }
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!("{path}.{k}: in the file but not computed"));
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (n, (wv, gv)) in w.iter().zip(g).enumerate() {
                diff(&format!("{path}[{n}]"), wv, gv, out);
            }
        }
        _ if want != got => out.push(format!("{path}: computed {want}, file has {got}")),
        _ => {}
    }
}

fn regenerating() -> bool {
    std::env::var("FERRY_REGENERATE_VECTORS").is_ok_and(|v| v == "1")
}

#[test]
fn addressing_vectors_match_the_file() {
    let computed = generate();
    if regenerating() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/test-vectors.json");
        let mut text = serde_json::to_string_pretty(&computed).unwrap();
        text.push('\n');
        std::fs::write(path, text).unwrap();
        eprintln!("wrote {path}");
        return;
    }
    let file: Value = serde_json::from_str(VECTORS_JSON).unwrap();
    let mut diffs = Vec::new();
    diff("$", &computed, &file, &mut diffs);
    assert!(
        diffs.is_empty(),
        "docs/test-vectors.json is out of date (FERRY_REGENERATE_VECTORS=1 rewrites it):\n{}",
        diffs.join("\n")
    );
    assert_eq!(file["vectors"].as_array().unwrap().len(), 4);
}

/// The file's proofs verify on their own, from the file's bytes alone (what another
/// implementation would check).
#[test]
fn file_proofs_verify() {
    if regenerating() {
        return; // The file compiled into this binary is the old one.
    }
    let file: Value = serde_json::from_str(VECTORS_JSON).unwrap();
    let unhex = |v: &Value| -> Vec<u8> {
        let s = v.as_str().unwrap();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let vectors = file["vectors"].as_array().unwrap();
    assert!(!vectors.is_empty());
    for v in vectors {
        let node_id: [u8; 32] = unhex(&v["inputs"]["node_id"]).try_into().unwrap();
        let challenge: [u8; 32] = unhex(&v["inputs"]["challenge"]).try_into().unwrap();
        let item = ferry_proto::frame::ProofItem {
            dest: ferry_proto::Dest(unhex(&v["outputs"]["dest"]).try_into().unwrap()),
            op: u8::try_from(v["inputs"]["op"].as_u64().unwrap()).unwrap(),
            blinded_key: unhex(&v["outputs"]["blinded_public_key"])
                .try_into()
                .unwrap(),
            signature: unhex(&v["outputs"]["proof_signature"]).try_into().unwrap(),
        };
        assert_eq!(
            verify_proof(&node_id, &challenge, &item),
            ProofStatus::Ok,
            "{}",
            v["name"]
        );
        // Bound to node, challenge and op.
        assert_eq!(
            verify_proof(&[0x12; 32], &challenge, &item),
            ProofStatus::BadSignature
        );
        assert_eq!(
            verify_proof(&node_id, &[0x23; 32], &item),
            ProofStatus::BadSignature
        );
        let mut other_op = item;
        other_op.op = Op::Drain as u8;
        assert_eq!(
            verify_proof(&node_id, &challenge, &other_op),
            ProofStatus::BadSignature
        );
        // The encoded Prove frame decodes to exactly this item.
        let mut buf = bytes::BytesMut::from(&unhex(&v["outputs"]["prove_frame"])[..]);
        let frame = ferry_proto::frame::decode_frame(&mut buf).unwrap().unwrap();
        assert_eq!(frame, Frame::Prove { items: vec![item] });
        assert!(buf.is_empty());
    }
}
