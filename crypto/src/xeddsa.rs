//! XEdDSA (Signal's specification, revision 1, 2016-10-20): Ed25519-style signatures made and
//! checked with X25519 (Montgomery) keys, so that one identity key both agrees and signs. The
//! prekey directory checks them on upload; the SDK makes them. Sans-IO: the 64 random bytes `Z`
//! of a signature are an input.
//!
//! ```text
//! calculate_key_pair(k): E = kB; A = (E.y, sign 0); a = k if E.s == 0 else −k (mod q)
//! sign(k, M, Z):         r = hash1(a ‖ M ‖ Z) mod q; R = rB; h = hash(R ‖ A ‖ M) mod q;
//!                        s = r + h·a mod q; signature = R ‖ s
//! verify(u, M, R ‖ s):   reject u ≥ p, R.y ≥ 2^255, s ≥ 2^253; A = convert_mont(u) (sign 0);
//!                        h = hash(R ‖ A ‖ M) mod q; accept iff encode(sB − hA) == R
//! hash1(X) = SHA-512(0xFE ‖ 0xFF × 31 ‖ X)
//! ```

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

/// Bytes of an XEdDSA signature: R (32) ‖ s (32).
pub const SIGNATURE_BYTES: usize = 64;

/// The X25519 public key (Montgomery u) of a 32-byte secret, clamped as X25519 does.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    MontgomeryPoint::mul_base_clamped(*secret).to_bytes()
}

/// `calculate_key_pair`: the Edwards public key with sign bit 0 and the matching scalar.
fn key_pair(secret: &[u8; 32]) -> ([u8; 32], Scalar) {
    let mut clamped = clamp_integer(*secret);
    let mut k = Scalar::from_bytes_mod_order(clamped);
    clamped.zeroize();
    let e = EdwardsPoint::mul_base(&k).compress().to_bytes();
    let a = if e[31] & 0x80 != 0 { -k } else { k };
    k.zeroize();
    let mut big_a = e;
    big_a[31] &= 0x7F;
    (big_a, a)
}

fn hash_mod_q(parts: &[&[u8]]) -> Scalar {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    let wide: [u8; 64] = h.finalize().into();
    Scalar::from_bytes_mod_order_wide(&wide)
}

/// Signs `message` with the X25519 secret `secret`; `z` must be 64 fresh random bytes.
pub fn sign(secret: &[u8; 32], message: &[u8], z: &[u8; 64]) -> [u8; SIGNATURE_BYTES] {
    let (big_a, mut a) = key_pair(secret);
    let mut prefix = [0xFFu8; 32];
    prefix[0] = 0xFE;
    let mut r = hash_mod_q(&[&prefix, a.as_bytes(), message, z]);
    let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
    let h = hash_mod_q(&[&big_r, &big_a, message]);
    let mut ha = h * a;
    let s = r + ha;
    // The signing scalar is the identity key in another form, and r with s reveals it.
    a.zeroize();
    r.zeroize();
    ha.zeroize();
    let mut sig = [0u8; SIGNATURE_BYTES];
    sig[..32].copy_from_slice(&big_r);
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

/// Whether the 32 little-endian bytes are a canonical field element (< 2^255 − 19).
fn is_canonical_field(u: &[u8; 32]) -> bool {
    // p = 2^255 − 19 = ff..ff7f with the low byte ed.
    if u[31] & 0x80 != 0 {
        return false;
    }
    if u[31] != 0x7F || u[1..31].iter().any(|&b| b != 0xFF) {
        return true;
    }
    u[0] < 0xED
}

/// Checks an XEdDSA signature by the X25519 public key `u` over `message`.
pub fn verify(u: &[u8; 32], message: &[u8], signature: &[u8; SIGNATURE_BYTES]) -> bool {
    let mut big_r = [0u8; 32];
    big_r.copy_from_slice(&signature[..32]);
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&signature[32..]);
    if !is_canonical_field(u) || s_bytes[31] & 0xE0 != 0 {
        return false;
    }
    // R.y ≥ 2^|p| cannot happen for 255 bits plus a sign bit; encode(Rcheck) == R below also
    // rejects every non-canonical R.
    let Some(a_point) = MontgomeryPoint(*u).to_edwards(0) else {
        return false;
    };
    let big_a = a_point.compress().to_bytes();
    let h = hash_mod_q(&[&big_r, &big_a, message]);
    let s = Scalar::from_bytes_mod_order(s_bytes);
    let r_check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-h, &a_point, &s);
    // Constant time is not needed: everything here is public.
    r_check.compress() == CompressedEdwardsY(big_r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(n: u8) -> [u8; 32] {
        let mut s = [n; 32];
        s[0] ^= 0x55;
        s
    }

    #[test]
    fn sign_then_verify_for_many_keys() {
        // Half of all keys have E.s = 1 and take the negated-scalar branch.
        let mut negated = 0;
        for n in 0..32u8 {
            let k = secret(n);
            let u = public_key(&k);
            let e = EdwardsPoint::mul_base(&Scalar::from_bytes_mod_order(clamp_integer(k)));
            if e.compress().to_bytes()[31] & 0x80 != 0 {
                negated += 1;
            }
            let z = [n.wrapping_mul(7); 64];
            let sig = sign(&k, b"prekey", &z);
            assert!(verify(&u, b"prekey", &sig), "key {n}");
            assert!(!verify(&u, b"prekey!", &sig));
            let mut bad = sig;
            bad[5] ^= 1;
            assert!(!verify(&u, b"prekey", &bad));
            let mut bad = sig;
            bad[40] ^= 1;
            assert!(!verify(&u, b"prekey", &bad));
            assert!(!verify(&public_key(&secret(n ^ 0x80)), b"prekey", &sig));
        }
        assert!(negated > 4 && negated < 28, "both branches exercised");
    }

    #[test]
    fn rejects_non_canonical_inputs() {
        let k = secret(1);
        let u = public_key(&k);
        let sig = sign(&k, b"m", &[3; 64]);
        let mut high = u;
        high[31] |= 0x80;
        assert!(!verify(&high, b"m", &sig));
        let mut p = [0xFFu8; 32];
        p[31] = 0x7F;
        p[0] = 0xED; // exactly p
        assert!(!is_canonical_field(&p));
        p[0] = 0xEC;
        assert!(is_canonical_field(&p));
        let mut big_s = sig;
        big_s[63] |= 0x20;
        assert!(!verify(&u, b"m", &big_s));
    }

    /// An XEdDSA signature is an Ed25519 signature under the Edwards form of the Montgomery key
    /// with sign bit 0: ed25519-dalek's own `verify_strict` must accept what `sign` makes.
    #[test]
    fn signatures_are_ed25519_under_the_converted_key() {
        for n in 0..16u8 {
            let k = secret(n.wrapping_mul(17));
            let u = public_key(&k);
            let a = MontgomeryPoint(u)
                .to_edwards(0)
                .unwrap()
                .compress()
                .to_bytes();
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&a).unwrap();
            let msg = [n; 33];
            let sig = sign(&k, &msg, &[n; 64]);
            vk.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
                .unwrap();
        }
    }

    #[test]
    fn signatures_differ_with_z_but_both_verify() {
        let k = secret(9);
        let u = public_key(&k);
        let a = sign(&k, b"m", &[1; 64]);
        let b = sign(&k, b"m", &[2; 64]);
        assert_ne!(a, b);
        assert!(verify(&u, b"m", &a) && verify(&u, b"m", &b));
    }
}
