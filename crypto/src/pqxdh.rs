//! PQXDH (Signal's specification, revision 3), with curve X25519, hash SHA-256 and ML-KEM-1024
//! (FIPS 203) as the post-quantum KEM:
//!
//! ```text
//! Alice, with Bob's bundle (IKb, SPKb + Sig, PQPKb + Sig, maybe OPKb):
//!   abort unless XEdDSA(IKb) verifies Sig(IKb, Encode(SPKb)) and Sig(IKb, EncodeKEM(PQPKb))
//!   EKa fresh;  (CT, SS) = ML-KEM-1024.Encaps(PQPKb)
//!   DH1 = DH(IKa, SPKb)  DH2 = DH(EKa, IKb)  DH3 = DH(EKa, SPKb)  [DH4 = DH(EKa, OPKb)]
//!   SK = HKDF-SHA-256(salt = 0^32, IKM = 0xFF^32 ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4] ‖ SS, info = INFO)
//!   AD = Encode(IKa) ‖ Encode(IKb)
//!   sends IKa, EKa, CT and the ids of SPKb, PQPKb and OPKb (the `Init`) with her first message
//! Bob recomputes SK from his secrets, and deletes the one-time keys used.
//! ```
//!
//! Every DH output of zero (a low-order point) aborts, as does any malformed key. Nothing here
//! deletes keys: that is the caller's (the session layer's) job once the first message decrypted.

use alloc::vec::Vec;
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{EncodedSizeUser, KemCore, MlKem1024};
use zeroize::Zeroizing;

use crate::Rng;
use crate::keys::{EC_KEY_BYTES, KeyPair, decode_ec, dh, encode_ec};
use crate::xeddsa;

/// The HKDF info string: the application, curve, hash and KEM.
pub const INFO: &[u8] = b"ferry_PQXDH_CURVE25519_SHA-256_ML-KEM-1024";
/// The type byte of an encoded ML-KEM-1024 public key.
pub const KEM_KEY_TYPE: u8 = 0x08;
/// Bytes of an ML-KEM-1024 encapsulation key.
pub const KEM_EK_BYTES: usize = 1568;
/// Bytes of an encoded KEM public key: type ‖ ek.
pub const KEM_KEY_BYTES: usize = 1 + KEM_EK_BYTES;
/// Bytes of an ML-KEM-1024 ciphertext.
pub const KEM_CT_BYTES: usize = 1568;
/// Bytes of an ML-KEM-1024 decapsulation key as [`kem_keypair`] returns it (FIPS 203: 768·k + 96,
/// k = 4).
pub const KEM_DK_BYTES: usize = 3168;
/// Bytes of the associated data: Encode(IKa) ‖ Encode(IKb).
pub const AD_BYTES: usize = 2 * EC_KEY_BYTES;
/// Bytes of an encoded [`Init`].
pub const INIT_BYTES: usize = 2 * EC_KEY_BYTES + 4 + 1 + 4 + 4 + KEM_CT_BYTES;

/// Why a key agreement was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PqxdhError {
    /// The signed prekey's signature does not verify under the identity key.
    #[error("the signed prekey's signature does not verify under the identity key")]
    BadPrekeySignature,
    /// The KEM prekey's signature does not verify under the identity key.
    #[error("the KEM prekey's signature does not verify under the identity key")]
    BadKemSignature,
    /// A key is malformed (type byte, length, non-canonical, ML-KEM modulus check).
    #[error("a key is malformed")]
    BadKey,
    /// A DH output was zero: a low-order public key.
    #[error("a low-order public key (zero DH output)")]
    WeakKey,
    /// The one-time prekey named in the `Init` and the secret given do not match in presence.
    #[error("the one-time prekey named and the secret given do not match")]
    OneTimeKeyMismatch,
    /// An encoded `Init` is malformed.
    #[error("a malformed Init")]
    Malformed,
}

/// Bob's published keys as Alice fetched them.
#[derive(Clone, Debug)]
pub struct Bundle<'a> {
    pub identity: [u8; EC_KEY_BYTES],
    pub spk_id: u32,
    pub spk: [u8; EC_KEY_BYTES],
    pub spk_sig: [u8; 64],
    pub pq_id: u32,
    /// `KEM_KEY_BYTES`: type ‖ ek.
    pub pq: &'a [u8],
    pub pq_sig: [u8; 64],
    pub opk: Option<(u32, [u8; EC_KEY_BYTES])>,
}

/// What Alice sends Bob with her first message so that he can compute the same secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Init {
    pub identity: [u8; EC_KEY_BYTES],
    pub ephemeral: [u8; EC_KEY_BYTES],
    pub spk_id: u32,
    pub opk_id: Option<u32>,
    pub pq_id: u32,
    /// `KEM_CT_BYTES`.
    pub ct: Vec<u8>,
}

impl Init {
    /// `identity ‖ ephemeral ‖ spk_id ‖ has_opk ‖ opk_id ‖ pq_id ‖ ct` (`INIT_BYTES`, big-endian).
    pub fn encode(&self, out: &mut Vec<u8>) {
        debug_assert_eq!(self.ct.len(), KEM_CT_BYTES);
        out.extend_from_slice(&self.identity);
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.spk_id.to_be_bytes());
        out.push(u8::from(self.opk_id.is_some()));
        out.extend_from_slice(&self.opk_id.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.pq_id.to_be_bytes());
        out.extend_from_slice(&self.ct);
    }

    /// Decodes the first `INIT_BYTES` of `b`.
    pub fn decode(b: &[u8]) -> Result<Init, PqxdhError> {
        if b.len() < INIT_BYTES {
            return Err(PqxdhError::Malformed);
        }
        let key = |at: usize| {
            let mut k = [0u8; EC_KEY_BYTES];
            k.copy_from_slice(&b[at..at + EC_KEY_BYTES]);
            k
        };
        let u32_at = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let at = 2 * EC_KEY_BYTES;
        let opk_id = match b[at + 4] {
            0 if u32_at(at + 5) == 0 => None,
            1 => Some(u32_at(at + 5)),
            _ => return Err(PqxdhError::Malformed),
        };
        Ok(Init {
            identity: key(0),
            ephemeral: key(EC_KEY_BYTES),
            spk_id: u32_at(at),
            opk_id,
            pq_id: u32_at(at + 9),
            ct: b[at + 13..INIT_BYTES].to_vec(),
        })
    }
}

/// The agreed secret and the associated data both sides bind their messages to.
pub struct Agreement {
    pub secret: Zeroizing<[u8; 32]>,
    pub ad: [u8; AD_BYTES],
}

impl core::fmt::Debug for Agreement {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Agreement").finish_non_exhaustive()
    }
}

/// FIPS 203 §7.2 encapsulation-key check of an encoded ML-KEM-1024 key: the type byte, the
/// length, and the modulus check (every 12-bit coefficient of t̂ below q = 3329).
pub fn kem_key_valid(key: &[u8]) -> bool {
    const Q: u16 = 3329;
    if key.len() != KEM_KEY_BYTES || key[0] != KEM_KEY_TYPE {
        return false;
    }
    let t_hat = &key[1..1 + KEM_EK_BYTES - 32];
    t_hat.chunks_exact(3).all(|c| {
        let a = u16::from(c[0]) | (u16::from(c[1] & 0x0F) << 8);
        let b = u16::from(c[1] >> 4) | (u16::from(c[2]) << 4);
        a < Q && b < Q
    })
}

/// The KDF: HKDF-SHA-256 over `0xFF^32 ‖ dh… ‖ ss` with a zero salt and [`INFO`]. Without `ss`
/// it is X3DH's KDF (what the differential tests compare with an independent X3DH).
pub fn kdf(dhs: &[&[u8; 32]], ss: Option<&[u8; 32]>, info: &[u8]) -> Zeroizing<[u8; 32]> {
    let f = [0xFFu8; 32];
    let mut parts: Vec<&[u8]> = Vec::with_capacity(dhs.len() + 2);
    parts.push(&f);
    for d in dhs {
        parts.push(&d[..]);
    }
    if let Some(ss) = ss {
        parts.push(ss);
    }
    crate::kdf::hkdf::<32>(&[0u8; 32], &parts, info)
}

fn ad(initiator: &[u8; EC_KEY_BYTES], responder: &[u8; EC_KEY_BYTES]) -> [u8; AD_BYTES] {
    let mut ad = [0u8; AD_BYTES];
    ad[..EC_KEY_BYTES].copy_from_slice(initiator);
    ad[EC_KEY_BYTES..].copy_from_slice(responder);
    ad
}

type Ek = <MlKem1024 as KemCore>::EncapsulationKey;
type Dk = <MlKem1024 as KemCore>::DecapsulationKey;

/// Alice's side: checks the bundle, then agrees a secret with it. `identity` is Alice's X25519
/// identity secret.
pub fn initiate(
    rng: &mut impl Rng,
    identity: &KeyPair,
    bundle: &Bundle<'_>,
) -> Result<(Agreement, Init), PqxdhError> {
    let ik_b = decode_ec(&bundle.identity).ok_or(PqxdhError::BadKey)?;
    let spk_b = decode_ec(&bundle.spk).ok_or(PqxdhError::BadKey)?;
    if !xeddsa::verify(&ik_b, &bundle.spk, &bundle.spk_sig) {
        return Err(PqxdhError::BadPrekeySignature);
    }
    if !xeddsa::verify(&ik_b, bundle.pq, &bundle.pq_sig) {
        return Err(PqxdhError::BadKemSignature);
    }
    if !kem_key_valid(bundle.pq) {
        return Err(PqxdhError::BadKey);
    }
    let opk = match &bundle.opk {
        Some((id, k)) => Some((*id, decode_ec(k).ok_or(PqxdhError::BadKey)?)),
        None => None,
    };
    let encoded =
        ml_kem::Encoded::<Ek>::try_from(&bundle.pq[1..]).map_err(|_| PqxdhError::BadKey)?;
    let ek = Ek::from_bytes(&encoded);
    let (ct, ss) = ek.encapsulate(rng).map_err(|()| PqxdhError::BadKey)?;
    let ss = Zeroizing::new(<[u8; 32]>::from(ss));

    let eph = KeyPair::generate(rng);
    let dh1 = dh(identity.secret(), &spk_b).ok_or(PqxdhError::WeakKey)?;
    let dh2 = dh(eph.secret(), &ik_b).ok_or(PqxdhError::WeakKey)?;
    let dh3 = dh(eph.secret(), &spk_b).ok_or(PqxdhError::WeakKey)?;
    let dh4 = match &opk {
        Some((_, u)) => Some(dh(eph.secret(), u).ok_or(PqxdhError::WeakKey)?),
        None => None,
    };
    let mut dhs: Vec<&[u8; 32]> = alloc::vec![&*dh1, &*dh2, &*dh3];
    if let Some(d) = &dh4 {
        dhs.push(d);
    }
    let secret = kdf(&dhs, Some(&ss), INFO);
    let ik_a = encode_ec(identity.public());
    Ok((
        Agreement {
            secret,
            ad: ad(&ik_a, &bundle.identity),
        },
        Init {
            identity: ik_a,
            ephemeral: encode_ec(eph.public()),
            spk_id: bundle.spk_id,
            opk_id: opk.map(|(id, _)| id),
            pq_id: bundle.pq_id,
            ct: ct.to_vec(),
        },
    ))
}

/// Bob's side: the secret Alice agreed, from his identity, the signed prekey, the one-time
/// prekey (exactly when `init` names one) and the ML-KEM decapsulation key (its FIPS 203
/// encoding) that `init` names.
pub fn respond(
    identity: &KeyPair,
    spk: &KeyPair,
    opk: Option<&KeyPair>,
    pq_decapsulation_key: &[u8],
    init: &Init,
) -> Result<Agreement, PqxdhError> {
    if init.opk_id.is_some() != opk.is_some() {
        return Err(PqxdhError::OneTimeKeyMismatch);
    }
    let ik_a = decode_ec(&init.identity).ok_or(PqxdhError::BadKey)?;
    let ek_a = decode_ec(&init.ephemeral).ok_or(PqxdhError::BadKey)?;
    let encoded =
        ml_kem::Encoded::<Dk>::try_from(pq_decapsulation_key).map_err(|_| PqxdhError::BadKey)?;
    let dk = Dk::from_bytes(&encoded);
    let mut encoded = encoded;
    zeroize::Zeroize::zeroize(encoded.as_mut_slice());
    let ct = ml_kem::Ciphertext::<MlKem1024>::try_from(&init.ct[..])
        .map_err(|_| PqxdhError::Malformed)?;
    // ML-KEM decapsulation never fails: a forged ciphertext yields an unrelated secret (implicit
    // rejection), so the first message will not decrypt.
    let ss = dk.decapsulate(&ct).map_err(|()| PqxdhError::Malformed)?;
    let ss = Zeroizing::new(<[u8; 32]>::from(ss));

    let dh1 = dh(spk.secret(), &ik_a).ok_or(PqxdhError::WeakKey)?;
    let dh2 = dh(identity.secret(), &ek_a).ok_or(PqxdhError::WeakKey)?;
    let dh3 = dh(spk.secret(), &ek_a).ok_or(PqxdhError::WeakKey)?;
    let dh4 = match opk {
        Some(k) => Some(dh(k.secret(), &ek_a).ok_or(PqxdhError::WeakKey)?),
        None => None,
    };
    let mut dhs: Vec<&[u8; 32]> = alloc::vec![&*dh1, &*dh2, &*dh3];
    if let Some(d) = &dh4 {
        dhs.push(d);
    }
    Ok(Agreement {
        secret: kdf(&dhs, Some(&ss), INFO),
        ad: ad(&init.identity, &encode_ec(identity.public())),
    })
}

/// A fresh ML-KEM-1024 key pair: (encoded public key `0x08 ‖ ek`, decapsulation key).
pub fn kem_keypair(rng: &mut impl Rng) -> (Vec<u8>, Zeroizing<Vec<u8>>) {
    let (dk, ek) = MlKem1024::generate(rng);
    let mut public = Vec::with_capacity(KEM_KEY_BYTES);
    public.push(KEM_KEY_TYPE);
    public.extend_from_slice(&ek.as_bytes());
    let mut encoded = dk.as_bytes();
    let secret = Zeroizing::new(encoded.to_vec());
    zeroize::Zeroize::zeroize(encoded.as_mut_slice());
    (public, secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    /// Bob's secrets and the bundle built from them.
    pub(crate) struct Bob {
        pub identity: KeyPair,
        pub spk: KeyPair,
        pub opk: KeyPair,
        pub pq_public: Vec<u8>,
        pub pq_secret: Zeroizing<Vec<u8>>,
        pub spk_sig: [u8; 64],
        pub pq_sig: [u8; 64],
    }

    pub(crate) fn bob(rng: &mut ChaCha20Rng) -> Bob {
        let identity = KeyPair::generate(rng);
        let spk = KeyPair::generate(rng);
        let opk = KeyPair::generate(rng);
        let (pq_public, pq_secret) = kem_keypair(rng);
        let mut z = [0u8; 64];
        rand_core::RngCore::fill_bytes(rng, &mut z);
        let spk_sig = xeddsa::sign(identity.secret(), &encode_ec(spk.public()), &z);
        rand_core::RngCore::fill_bytes(rng, &mut z);
        let pq_sig = xeddsa::sign(identity.secret(), &pq_public, &z);
        Bob {
            identity,
            spk,
            opk,
            pq_public,
            pq_secret,
            spk_sig,
            pq_sig,
        }
    }

    impl Bob {
        pub(crate) fn bundle(&self, with_opk: bool) -> Bundle<'_> {
            Bundle {
                identity: encode_ec(self.identity.public()),
                spk_id: 7,
                spk: encode_ec(self.spk.public()),
                spk_sig: self.spk_sig,
                pq_id: 9,
                pq: &self.pq_public,
                pq_sig: self.pq_sig,
                opk: with_opk.then(|| (11, encode_ec(self.opk.public()))),
            }
        }
    }

    #[test]
    fn kem_key_pairs_have_the_named_sizes() {
        let (public, secret) = kem_keypair(&mut ChaCha20Rng::seed_from_u64(3));
        assert_eq!(public.len(), KEM_KEY_BYTES);
        assert_eq!(secret.len(), KEM_DK_BYTES);
    }

    #[test]
    fn both_sides_agree_with_and_without_a_one_time_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let b = bob(&mut rng);
        let alice = KeyPair::generate(&mut rng);
        for with_opk in [true, false] {
            let (a, init) = initiate(&mut rng, &alice, &b.bundle(with_opk)).unwrap();
            let mut wire = Vec::new();
            init.encode(&mut wire);
            assert_eq!(wire.len(), INIT_BYTES);
            let init2 = Init::decode(&wire).unwrap();
            assert_eq!(init2, init);
            let opk = with_opk.then_some(&b.opk);
            let r = respond(&b.identity, &b.spk, opk, &b.pq_secret, &init2).unwrap();
            assert_eq!(*a.secret, *r.secret);
            assert_eq!(a.ad, r.ad);
            assert_eq!(&a.ad[..33], &encode_ec(alice.public()));
            // Without the one-time key (or with the wrong one) Bob refuses or disagrees.
            let other = KeyPair::generate(&mut rng);
            match (
                with_opk,
                respond(&b.identity, &b.spk, Some(&other), &b.pq_secret, &init2),
            ) {
                (true, Ok(r)) => assert_ne!(*a.secret, *r.secret),
                (false, Err(e)) => assert_eq!(e, PqxdhError::OneTimeKeyMismatch),
                other => panic!("{:?}", other.1.map(|_| ())),
            }
        }
    }

    #[test]
    fn every_bad_signature_or_key_aborts() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let b = bob(&mut rng);
        let alice = KeyPair::generate(&mut rng);
        let mut bundle = b.bundle(true);
        bundle.spk_sig[3] ^= 1;
        assert_eq!(
            initiate(&mut rng, &alice, &bundle).unwrap_err(),
            PqxdhError::BadPrekeySignature
        );
        let mut bundle = b.bundle(true);
        bundle.pq_sig[40] ^= 1;
        assert_eq!(
            initiate(&mut rng, &alice, &bundle).unwrap_err(),
            PqxdhError::BadKemSignature
        );
        // A KEM key signed but failing the modulus check.
        let mut bad_pq = b.pq_public.clone();
        bad_pq[1] = 0xFF;
        bad_pq[2] |= 0x0F;
        let mut z = [0u8; 64];
        rand_core::RngCore::fill_bytes(&mut rng, &mut z);
        let sig = xeddsa::sign(b.identity.secret(), &bad_pq, &z);
        let mut bundle = b.bundle(true);
        bundle.pq = &bad_pq;
        bundle.pq_sig = sig;
        assert_eq!(
            initiate(&mut rng, &alice, &bundle).unwrap_err(),
            PqxdhError::BadKey
        );
        // A signed low-order one-time key.
        let mut bundle = b.bundle(true);
        bundle.opk = Some((1, encode_ec(&[0u8; 32])));
        assert_eq!(
            initiate(&mut rng, &alice, &bundle).unwrap_err(),
            PqxdhError::WeakKey
        );
        // Another identity's signatures.
        let mut bundle = b.bundle(true);
        bundle.identity = encode_ec(alice.public());
        assert_eq!(
            initiate(&mut rng, &alice, &bundle).unwrap_err(),
            PqxdhError::BadPrekeySignature
        );
    }

    #[test]
    fn a_forged_kem_ciphertext_or_identity_gives_another_secret() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let b = bob(&mut rng);
        let alice = KeyPair::generate(&mut rng);
        let (a, init) = initiate(&mut rng, &alice, &b.bundle(true)).unwrap();
        let mut forged = init.clone();
        forged.ct[100] ^= 1;
        let r = respond(&b.identity, &b.spk, Some(&b.opk), &b.pq_secret, &forged).unwrap();
        assert_ne!(*a.secret, *r.secret);
        // Mallory claims to be someone else: DH1 differs.
        let mallory = KeyPair::generate(&mut rng);
        let mut claimed = init.clone();
        claimed.identity = encode_ec(mallory.public());
        let r = respond(&b.identity, &b.spk, Some(&b.opk), &b.pq_secret, &claimed).unwrap();
        assert_ne!(*a.secret, *r.secret);
    }

    #[test]
    fn init_decoding_refuses_bad_flags_and_short_input() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let b = bob(&mut rng);
        let alice = KeyPair::generate(&mut rng);
        let (_, init) = initiate(&mut rng, &alice, &b.bundle(false)).unwrap();
        let mut wire = Vec::new();
        init.encode(&mut wire);
        assert_eq!(
            Init::decode(&wire[..INIT_BYTES - 1]),
            Err(PqxdhError::Malformed)
        );
        let mut bad = wire.clone();
        bad[2 * EC_KEY_BYTES + 4] = 2;
        assert_eq!(Init::decode(&bad), Err(PqxdhError::Malformed));
        let mut bad = wire;
        bad[2 * EC_KEY_BYTES + 8] = 1; // no one-time key, but an id
        assert_eq!(Init::decode(&bad), Err(PqxdhError::Malformed));
    }
}
