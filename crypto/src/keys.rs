//! X25519 keys: generation, Diffie-Hellman with the all-zero output refused, and the encoding
//! Signal uses for public keys (`0x05 ‖ u`).

use curve25519_dalek::montgomery::MontgomeryPoint;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Rng;

/// The type byte of an encoded X25519 public key.
pub const EC_KEY_TYPE: u8 = 0x05;
/// Bytes of an encoded X25519 public key: type ‖ u.
pub const EC_KEY_BYTES: usize = 33;

/// `0x05 ‖ u`.
pub fn encode_ec(u: &[u8; 32]) -> [u8; EC_KEY_BYTES] {
    let mut out = [0u8; EC_KEY_BYTES];
    out[0] = EC_KEY_TYPE;
    out[1..].copy_from_slice(u);
    out
}

/// The u of an encoded key, if it is well-formed: the type byte, and u canonical (below
/// p = 2^255 − 19).
pub fn decode_ec(key: &[u8]) -> Option<[u8; 32]> {
    if key.len() != EC_KEY_BYTES || key[0] != EC_KEY_TYPE {
        return None;
    }
    let mut u = [0u8; 32];
    u.copy_from_slice(&key[1..]);
    let mut p = [0xFFu8; 32];
    p[0] = 0xED;
    p[31] = 0x7F;
    // Compare from the most significant byte.
    match u.iter().rev().zip(p.iter().rev()).find(|(a, b)| a != b) {
        Some((a, b)) if a < b => Some(u),
        _ => None,
    }
}

/// The X25519 public key of a secret.
pub fn public(secret: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(*secret).to_bytes()
}

/// X25519(secret, public), or `None` when the result is all zeros (a low-order public key: the
/// peer would know the "shared" secret without anyone's private key).
pub fn dh(secret: &[u8; 32], public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let out = Zeroizing::new(MontgomeryPoint(*public).mul_clamped(*secret).to_bytes());
    if bool::from(out.ct_eq(&[0u8; 32])) {
        return None;
    }
    Some(out)
}

/// An X25519 key pair; the secret is zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeyPair {
    secret: [u8; 32],
    #[zeroize(skip)]
    public: [u8; 32],
}

impl KeyPair {
    pub fn generate(rng: &mut impl Rng) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self::from_secret(secret)
    }
    pub fn from_secret(secret: [u8; 32]) -> Self {
        KeyPair {
            public: public(&secret),
            secret,
        }
    }
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }
}

impl core::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dh_agrees_and_refuses_low_order_points() {
        let a = KeyPair::from_secret([1; 32]);
        let b = KeyPair::from_secret([2; 32]);
        assert_eq!(
            *dh(a.secret(), b.public()).unwrap(),
            *dh(b.secret(), a.public()).unwrap()
        );
        // u = 0 and u = 1 are of low order: the output is zero whatever the secret.
        assert!(dh(a.secret(), &[0; 32]).is_none());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(dh(a.secret(), &one).is_none());
    }

    #[test]
    fn encoding_round_trips_and_checks_the_type() {
        let u = [9u8; 32];
        let e = encode_ec(&u);
        assert_eq!(decode_ec(&e), Some(u));
        let mut bad = e;
        bad[0] = 0x06;
        assert_eq!(decode_ec(&bad), None);
        assert_eq!(decode_ec(&e[..32]), None);
    }
}
