//! The sealed envelope: all a node (or anyone on the path) sees of a message besides its `dest`.
//!
//! ```text
//! envelope = VERSION ‖ E.public (32) ‖ ChaCha20-Poly1305(k, pad(inner))          = a bucket size
//!   k      = HKDF(salt = E.public ‖ IKb, IKM = DH(E, IKb), info = SEAL_INFO)  (key ‖ nonce)
//!   aad    = VERSION ‖ E.public ‖ IKb
//!   pad(x) = x ‖ 0x80 ‖ 0x00… up to the smallest bucket that fits
//! inner    = kind ‖ sender identity (33) ‖ message id (16) ‖ body
//! ```
//!
//! The outer layer hides who sent the message and how long it is (only the bucket shows); it
//! does not authenticate the sender: anyone can seal to Bob claiming any identity. The sender is
//! authenticated by the body, a Double Ratchet message whose associated data binds both
//! identities (through PQXDH), the kind and the message id: the recipient's session layer drops
//! whatever does not decrypt in the session of the identity it claims.

use alloc::vec::Vec;

use crate::Rng;
use crate::kdf::{TAG_BYTES, open, seal};
use crate::keys::{EC_KEY_BYTES, KeyPair, dh};

pub const VERSION: u8 = 1;
/// The envelope sizes: every envelope is exactly one of these long.
pub const BUCKETS: [usize; 5] = [256, 1024, 4096, 16384, 61440];
/// The largest inner message a bucket can carry.
pub const INNER_BYTES_MAX: usize = BUCKETS[BUCKETS.len() - 1] - OVERHEAD_BYTES;
/// Version, ephemeral key, tag and the padding's 0x80.
pub const OVERHEAD_BYTES: usize = 1 + 32 + TAG_BYTES + 1;
/// Kind, sender and message id before the body.
pub const INNER_HEADER_BYTES: usize = 1 + EC_KEY_BYTES + 16;
/// HKDF info of the envelope key.
pub const SEAL_INFO: &[u8] = b"ferry_sealed_envelope_v1";

/// What the body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// First contact: a PQXDH `Init`, then a ratchet message.
    Prekey = 1,
    /// A ratchet message in an established session.
    Message = 2,
}

/// The inside of an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inner {
    pub kind: Kind,
    /// The sender's encoded identity key (claimed; see the module docs).
    pub sender: [u8; EC_KEY_BYTES],
    pub msg_id: [u8; 16],
    pub body: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The inner message does not fit the largest bucket.
    #[error("the message does not fit the largest envelope")]
    TooLarge,
    /// Not an envelope size, another version, or the recipient's key is of low order.
    #[error("a malformed envelope")]
    Malformed,
    /// The AEAD refused it (not for this recipient, or changed), or the padding is wrong.
    #[error("the envelope does not open (not for this recipient, or changed)")]
    Unauthentic,
}

/// The bucket an inner message of `inner_len` bytes is sealed into.
pub fn bucket_for(inner_len: usize) -> Option<usize> {
    BUCKETS
        .iter()
        .copied()
        .find(|b| inner_len + OVERHEAD_BYTES <= *b)
}

fn key_parts(e_pub: &[u8; 32], ik_b: &[u8; 32]) -> ([u8; 65], [u8; 64]) {
    let mut aad = [0u8; 65];
    aad[0] = VERSION;
    aad[1..33].copy_from_slice(e_pub);
    aad[33..].copy_from_slice(ik_b);
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(e_pub);
    salt[32..].copy_from_slice(ik_b);
    (aad, salt)
}

/// Seals `inner` to the recipient's X25519 identity key `ik_b`.
pub fn seal_to(
    rng: &mut impl Rng,
    ik_b: &[u8; 32],
    inner: &Inner,
) -> Result<Vec<u8>, EnvelopeError> {
    let len = INNER_HEADER_BYTES + inner.body.len();
    let bucket = bucket_for(len).ok_or(EnvelopeError::TooLarge)?;
    let e = KeyPair::generate(rng);
    let shared = dh(e.secret(), ik_b).ok_or(EnvelopeError::Malformed)?;
    let (aad, salt) = key_parts(e.public(), ik_b);
    let secret = crate::kdf::hkdf::<32>(&salt, &[&shared[..]], SEAL_INFO);
    let mut pt = zeroize::Zeroizing::new(Vec::with_capacity(bucket - 1 - 32 - TAG_BYTES));
    pt.push(inner.kind as u8);
    pt.extend_from_slice(&inner.sender);
    pt.extend_from_slice(&inner.msg_id);
    pt.extend_from_slice(&inner.body);
    pt.push(0x80);
    pt.resize(bucket - 1 - 32 - TAG_BYTES, 0);
    let ct = seal(&secret, SEAL_INFO, &aad, &pt);
    let mut out = Vec::with_capacity(bucket);
    out.push(VERSION);
    out.extend_from_slice(e.public());
    out.extend_from_slice(&ct);
    debug_assert_eq!(out.len(), bucket);
    Ok(out)
}

/// Opens an envelope with the recipient's identity key pair.
pub fn open_with(identity: &KeyPair, envelope: &[u8]) -> Result<Inner, EnvelopeError> {
    if !BUCKETS.contains(&envelope.len()) || envelope[0] != VERSION {
        return Err(EnvelopeError::Malformed);
    }
    let mut e_pub = [0u8; 32];
    e_pub.copy_from_slice(&envelope[1..33]);
    let shared = dh(identity.secret(), &e_pub).ok_or(EnvelopeError::Malformed)?;
    let (aad, salt) = key_parts(&e_pub, identity.public());
    let secret = crate::kdf::hkdf::<32>(&salt, &[&shared[..]], SEAL_INFO);
    let pt = zeroize::Zeroizing::new(
        open(&secret, SEAL_INFO, &aad, &envelope[33..]).ok_or(EnvelopeError::Unauthentic)?,
    );
    // Unpad: the last non-zero byte must be 0x80.
    let end = pt
        .iter()
        .rposition(|&b| b != 0)
        .filter(|&i| pt[i] == 0x80)
        .ok_or(EnvelopeError::Unauthentic)?;
    if end < INNER_HEADER_BYTES {
        return Err(EnvelopeError::Unauthentic);
    }
    let kind = match pt[0] {
        1 => Kind::Prekey,
        2 => Kind::Message,
        _ => return Err(EnvelopeError::Unauthentic),
    };
    let mut sender = [0u8; EC_KEY_BYTES];
    sender.copy_from_slice(&pt[1..1 + EC_KEY_BYTES]);
    let mut msg_id = [0u8; 16];
    msg_id.copy_from_slice(&pt[1 + EC_KEY_BYTES..INNER_HEADER_BYTES]);
    Ok(Inner {
        kind,
        sender,
        msg_id,
        body: pt[INNER_HEADER_BYTES..end].to_vec(),
    })
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn inner(len: usize) -> Inner {
        Inner {
            kind: Kind::Message,
            sender: [5; 33],
            msg_id: [9; 16],
            body: (0..len).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn sizes_are_buckets_and_round_trip() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let bob = KeyPair::generate(&mut rng);
        for len in [
            0,
            1,
            100,
            206,
            207,
            1000,
            3000,
            20_000,
            INNER_BYTES_MAX - INNER_HEADER_BYTES,
        ] {
            let i = inner(len);
            let env = seal_to(&mut rng, bob.public(), &i).unwrap();
            assert!(BUCKETS.contains(&env.len()), "{len} → {}", env.len());
            assert_eq!(Some(env.len()), bucket_for(len + INNER_HEADER_BYTES));
            assert_eq!(open_with(&bob, &env).unwrap(), i);
        }
        assert_eq!(
            seal_to(
                &mut rng,
                bob.public(),
                &inner(INNER_BYTES_MAX - INNER_HEADER_BYTES + 1)
            ),
            Err(EnvelopeError::TooLarge)
        );
        // Equal-bucket messages are indistinguishable by length.
        let a = seal_to(&mut rng, bob.public(), &inner(1)).unwrap();
        let b = seal_to(&mut rng, bob.public(), &inner(150)).unwrap();
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn only_the_recipient_opens_and_nothing_changed_opens() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let bob = KeyPair::generate(&mut rng);
        let eve = KeyPair::generate(&mut rng);
        let env = seal_to(&mut rng, bob.public(), &inner(50)).unwrap();
        assert_eq!(open_with(&eve, &env), Err(EnvelopeError::Unauthentic));
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x10;
            assert!(open_with(&bob, &bad).is_err(), "byte {i}");
        }
        assert_eq!(open_with(&bob, &env[..255]), Err(EnvelopeError::Malformed));
    }
}
