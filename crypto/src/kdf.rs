//! HKDF and HMAC over SHA-256 (RFC 5869, RFC 2104), and the AEAD every layer uses:
//! ChaCha20-Poly1305 (RFC 8439) with key and nonce derived by HKDF from a one-use secret.

use alloc::vec::Vec;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2_10::Sha256;
use zeroize::Zeroizing;

/// Bytes of a ChaCha20-Poly1305 tag.
pub const TAG_BYTES: usize = 16;

/// HKDF-SHA-256: `N` bytes from `ikm` (the parts, concatenated) with `salt` and `info`.
pub fn hkdf<const N: usize>(salt: &[u8], ikm: &[&[u8]], info: &[u8]) -> Zeroizing<[u8; N]> {
    let mut joined = Zeroizing::new(Vec::with_capacity(ikm.iter().map(|p| p.len()).sum()));
    for p in ikm {
        joined.extend_from_slice(p);
    }
    let mut out = Zeroizing::new([0u8; N]);
    // HKDF-SHA-256 yields up to 255 × 32 bytes; every N used here is far below.
    assert!(N <= 255 * 32, "HKDF output too long");
    let ok = Hkdf::<Sha256>::new(Some(salt), &joined)
        .expand(info, out.as_mut())
        .is_ok();
    debug_assert!(ok);
    out
}

/// HMAC-SHA-256 of `data` under `key`.
pub fn hmac(key: &[u8; 32], data: &[u8]) -> Zeroizing<[u8; 32]> {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts every key length"),
    };
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The AEAD key and nonce a one-use `secret` stands for under `info`.
fn aead_parts(secret: &[u8; 32], info: &[u8]) -> (ChaCha20Poly1305, [u8; 12]) {
    let okm = hkdf::<44>(&[0u8; 32], &[secret], info);
    let cipher = ChaCha20Poly1305::new(okm[..32].into());
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&okm[32..]);
    (cipher, nonce)
}

/// Encrypts `plaintext` under the one-use `secret` (never reuse one: the nonce derives from it),
/// authenticating `aad`. The result is the ciphertext followed by the 16-byte tag.
pub fn seal(secret: &[u8; 32], info: &[u8], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let (cipher, nonce) = aead_parts(secret, info);
    match cipher.encrypt(
        (&nonce).into(),
        Payload {
            msg: plaintext,
            aad,
        },
    ) {
        Ok(ct) => ct,
        // Only inputs beyond ChaCha20's 256 GiB limit fail; the callers bound them far below.
        Err(_) => unreachable!("plaintext within ChaCha20-Poly1305's limits"),
    }
}

/// Decrypts what [`seal`] made; `None` if anything was changed.
pub fn open(secret: &[u8; 32], info: &[u8], aad: &[u8], ciphertext: &[u8]) -> Option<Vec<u8>> {
    if ciphertext.len() < TAG_BYTES {
        return None;
    }
    let (cipher, nonce) = aead_parts(secret, info);
    cipher
        .decrypt(
            (&nonce).into(),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5869 test case 1.
    #[test]
    fn hkdf_matches_rfc_5869() {
        let ikm = unhex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
        let salt = unhex("000102030405060708090a0b0c");
        let info = unhex("f0f1f2f3f4f5f6f7f8f9");
        let okm = hkdf::<42>(&salt, &[&ikm[..10], &ikm[10..]], &info);
        assert_eq!(
            okm.to_vec(),
            unhex(
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
            )
        );
    }

    /// RFC 4231 test case 2 ("Jefe"), with the key zero-padded to 32 bytes (HMAC pads keys to
    /// the block size anyway, so the result is the same).
    #[test]
    fn hmac_matches_rfc_4231() {
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac(&key, b"what do ya want for nothing?");
        assert_eq!(
            mac.to_vec(),
            unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let k = [7u8; 32];
        let ct = seal(&k, b"i", b"aad", b"hello");
        assert_eq!(ct.len(), 5 + TAG_BYTES);
        assert_eq!(open(&k, b"i", b"aad", &ct).unwrap(), b"hello");
        assert!(open(&k, b"j", b"aad", &ct).is_none());
        assert!(open(&k, b"i", b"aae", &ct).is_none());
        assert!(open(&[8u8; 32], b"i", b"aad", &ct).is_none());
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert!(open(&k, b"i", b"aad", &bad).is_none());
        }
        assert!(open(&k, b"i", b"aad", &ct[..10]).is_none());
    }
}
