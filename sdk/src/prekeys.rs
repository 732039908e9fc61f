//! PQXDH prekeys on the device: an X25519 identity key that signs with XEdDSA, a signed prekey, a
//! signed last-resort ML-KEM-1024 prekey and one-time keys of both kinds, packed into
//! `PrekeyUpload` frames that each fit the protocol's frame limit. The public halves go to the
//! node's directory; the secret halves stay here (the application persists them) for the PQXDH
//! responder.

use bytes::Bytes;
use ferry_proto::frame::Dest;
use ferry_proto::limits::FRAME_BYTES_MAX;
use ferry_proto::prekey::{
    EC_ITEM_BYTES, EC_KEY_BYTES, EC_KEY_TYPE, EcPrekey, KEM_KEY_BYTES, KEM_KEY_TYPE, KemPrekey,
    ONE_TIME_KEYS_MAX, PQ_ITEM_BYTES, SIGNED_PART_BYTES, SignedEcPrekey, SignedPart, Upload,
};
use ferry_proto::xeddsa;
use ml_kem::{EncodedSizeUser, KemCore, MlKem1024};

use crate::SdkError;

fn random<const N: usize>() -> Result<[u8; N], SdkError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| SdkError::Io(std::io::Error::other(e.to_string())))?;
    Ok(b)
}

/// Encodes an X25519 public key as `0x05 ‖ u`.
pub fn encode_ec(u: &[u8; 32]) -> [u8; EC_KEY_BYTES] {
    let mut k = [0u8; EC_KEY_BYTES];
    k[0] = EC_KEY_TYPE;
    k[1..].copy_from_slice(u);
    k
}

/// An X25519 identity key pair that also signs (XEdDSA).
pub struct IdentityKey {
    secret: [u8; 32],
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKey").finish_non_exhaustive()
    }
}

impl IdentityKey {
    pub fn generate() -> Result<Self, SdkError> {
        Ok(IdentityKey { secret: random()? })
    }
    pub fn from_secret(secret: [u8; 32]) -> Self {
        IdentityKey { secret }
    }
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
    /// The encoded public key (`0x05 ‖ u`).
    pub fn public(&self) -> [u8; EC_KEY_BYTES] {
        encode_ec(&xeddsa::public_key(&self.secret))
    }
    pub fn sign(&self, message: &[u8]) -> Result<[u8; 64], SdkError> {
        Ok(xeddsa::sign(&self.secret, message, &random()?))
    }
}

/// The secret halves of generated prekeys, by id.
#[derive(Default)]
pub struct PrekeySecrets {
    pub signed_prekey: Option<(u32, [u8; 32])>,
    /// (id, ML-KEM-1024 decapsulation key bytes).
    pub last_resort: Option<(u32, Vec<u8>)>,
    pub one_time_ec: Vec<(u32, [u8; 32])>,
    pub one_time_pq: Vec<(u32, Vec<u8>)>,
}

impl std::fmt::Debug for PrekeySecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrekeySecrets")
            .field("one_time_ec", &self.one_time_ec.len())
            .field("one_time_pq", &self.one_time_pq.len())
            .finish_non_exhaustive()
    }
}

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct PrekeyPlan {
    /// Generate a new signed prekey and last-resort PQ prekey (a slot's first upload needs them).
    pub signed: bool,
    pub one_time_ec: usize,
    pub one_time_pq: usize,
    /// How the keys' ids are chosen.
    pub ids: PrekeyIds,
    /// Replace the slot's stored one-time keys instead of adding to them.
    pub replace_one_time: bool,
}

/// How [`generate`] chooses key ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrekeyIds {
    /// Random and distinct within the upload: a fetcher learns nothing from an id (sequential
    /// ids told each fetcher how many had fetched before it). The caller checks them against
    /// the ids it already holds ([`PrekeySecrets::ids`]).
    Random,
    /// Upwards from this id (the signed prekey and last-resort key take the first): for tests
    /// that need known ids.
    Sequential(u32),
}

impl PrekeySecrets {
    /// Every id generated, of every kind.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.signed_prekey
            .iter()
            .map(|(id, _)| *id)
            .chain(self.last_resort.iter().map(|(id, _)| *id))
            .chain(self.one_time_ec.iter().map(|(id, _)| *id))
            .chain(self.one_time_pq.iter().map(|(id, _)| *id))
    }
}

/// Hands out the ids of one [`generate`] call.
struct IdSource {
    ids: PrekeyIds,
    used: std::collections::HashSet<u32>,
}

impl IdSource {
    fn next(&mut self) -> Result<u32, SdkError> {
        match &mut self.ids {
            PrekeyIds::Sequential(id) => {
                let v = *id;
                *id = id.wrapping_add(1);
                Ok(v)
            }
            PrekeyIds::Random => loop {
                // At most 202 ids among 2^32: a repeat is rare, and drawn again.
                let v = u32::from_le_bytes(random()?);
                if self.used.insert(v) {
                    return Ok(v);
                }
            },
        }
    }
}

fn kem_keypair(identity: &IdentityKey, id: u32) -> Result<(KemPrekey, Vec<u8>), SdkError> {
    let mut rng = rand_core::OsRng;
    let (dk, ek) = MlKem1024::generate(&mut rng);
    let mut key = Vec::with_capacity(KEM_KEY_BYTES);
    key.push(KEM_KEY_TYPE);
    key.extend_from_slice(&ek.as_bytes());
    let sig = identity.sign(&key)?;
    Ok((
        KemPrekey {
            id,
            key: Bytes::from(key),
            sig,
        },
        dk.as_bytes().to_vec(),
    ))
}

/// PQ one-time keys that fit one frame beside the signed part (or without it) and `ec` EC
/// one-time keys: 36 beside the signed part and 100 EC keys, 40 alone.
fn pq_per_frame(with_signed: bool, ec: usize) -> usize {
    let fixed = 1 + 16 + 1 + 2 + 2 + if with_signed { SIGNED_PART_BYTES } else { 0 };
    (FRAME_BYTES_MAX - fixed - ec * EC_ITEM_BYTES) / PQ_ITEM_BYTES
}

/// Generates prekeys for the slot of `dest` and packs them into uploads (send them in order: the
/// first carries the signed part when `plan.signed`).
pub fn generate(
    identity: &IdentityKey,
    dest: Dest,
    plan: PrekeyPlan,
) -> Result<(Vec<Upload>, PrekeySecrets), SdkError> {
    assert!(plan.one_time_ec <= ONE_TIME_KEYS_MAX && plan.one_time_pq <= ONE_TIME_KEYS_MAX);
    let mut secrets = PrekeySecrets::default();
    let mut ids = IdSource {
        ids: plan.ids,
        used: std::collections::HashSet::new(),
    };
    let mut next_id = || ids.next();
    let signed = if plan.signed {
        let spk_secret: [u8; 32] = random()?;
        let spk_key = encode_ec(&xeddsa::public_key(&spk_secret));
        let spk_id = next_id()?;
        let spk = SignedEcPrekey {
            id: spk_id,
            key: spk_key,
            sig: identity.sign(&spk_key)?,
        };
        secrets.signed_prekey = Some((spk_id, spk_secret));
        let (last_resort, dk) = kem_keypair(identity, next_id()?)?;
        secrets.last_resort = Some((last_resort.id, dk));
        Some(SignedPart {
            identity: identity.public(),
            spk,
            last_resort,
        })
    } else {
        None
    };
    let mut ec = Vec::with_capacity(plan.one_time_ec);
    for _ in 0..plan.one_time_ec {
        let s: [u8; 32] = random()?;
        let k = EcPrekey {
            id: next_id()?,
            key: encode_ec(&xeddsa::public_key(&s)),
        };
        secrets.one_time_ec.push((k.id, s));
        ec.push(k);
    }
    let mut pq = Vec::with_capacity(plan.one_time_pq);
    for _ in 0..plan.one_time_pq {
        let (k, dk) = kem_keypair(identity, next_id()?)?;
        secrets.one_time_pq.push((k.id, dk));
        pq.push(k);
    }
    let mut uploads = Vec::new();
    let first_n = pq.len().min(pq_per_frame(signed.is_some(), ec.len()));
    let rest = pq.split_off(first_n);
    uploads.push(Upload {
        dest,
        replace_one_time: plan.replace_one_time,
        signed,
        ec,
        pq,
    });
    for chunk in rest.chunks(pq_per_frame(false, 0)) {
        uploads.push(Upload {
            dest,
            replace_one_time: false,
            signed: None,
            ec: Vec::new(),
            pq: chunk.to_vec(),
        });
    }
    Ok((uploads, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::frame::Frame;

    #[test]
    fn generated_uploads_pass_the_node_checks_and_fit_frames() {
        let id = IdentityKey::generate().unwrap();
        let plan = PrekeyPlan {
            signed: true,
            one_time_ec: 100,
            one_time_pq: 100,
            ids: PrekeyIds::Random,
            replace_one_time: false,
        };
        let (uploads, secrets) = generate(&id, Dest([7; 16]), plan).unwrap();
        // Random ids, all distinct: no id tells a fetcher how many fetched before it.
        let ids: Vec<u32> = secrets.ids().collect();
        assert_eq!(ids.len(), 202);
        let distinct: std::collections::HashSet<u32> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), 202);
        let steps = ids
            .windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count();
        assert!(steps < 3, "{steps} consecutive ids: sequential, not random");
        // 36 beside the signed part and 100 EC keys, then 40 and 24.
        let sizes: Vec<usize> = uploads.iter().map(|u| u.pq.len()).collect();
        assert_eq!(sizes, vec![36, 40, 24]);
        assert_eq!(secrets.one_time_pq.len(), 100);
        let mut pq = 0;
        for (i, u) in uploads.iter().enumerate() {
            let stored = if i == 0 {
                None
            } else {
                Some(&uploads[0].signed.as_ref().unwrap().identity)
            };
            ferry_proto::prekey::check_upload(u, stored).unwrap();
            pq += u.pq.len();
            let f = Frame::PrekeyUpload {
                upload: Box::new(u.clone()),
            };
            assert!(f.encoded_len() <= FRAME_BYTES_MAX + 4);
        }
        assert_eq!(pq, 100);
        // A flipped signature is caught.
        let mut bad = uploads[1].clone();
        bad.pq[3].sig[0] ^= 1;
        let f = ferry_proto::prekey::check_upload(&bad, Some(&id.public())).unwrap_err();
        assert!(f.bad_signature && f.index == 3);
    }
}
