//! PQXDH prekeys on the device: an X25519 identity key that signs with XEdDSA, a signed prekey, a
//! signed last-resort ML-KEM-1024 prekey and one-time keys of both kinds, packed into
//! `PrekeyUpload` frames that each fit the protocol's frame limit. The public halves go to the
//! node's directory; the secret halves stay here (the application persists them) for the PQXDH
//! responder.

use bytes::Bytes;
use ferry_proto::limits::FRAME_BYTES_MAX;
use ferry_proto::prekey::{
    EC_ITEM_BYTES, EC_KEY_BYTES, EC_KEY_TYPE, EcPrekey, HEAD_BYTES, KEM_KEY_BYTES, KEM_KEY_TYPE,
    KemPrekey, ONE_TIME_KEYS_MAX, PQ_ITEM_BYTES, SALT_BYTES, SignedEcPrekey, SignedPart,
    SlotSealer, Upload,
};
use ferry_proto::xeddsa;
use ml_kem::{EncodedSizeUser, KemCore, MlKem1024};
use zeroize::Zeroizing;

use crate::SdkError;

mod client;

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
#[derive(Clone, Debug)]
pub struct PrekeyPlan {
    /// The slot's head: a new signed prekey and last-resort PQ prekey, existing ones sealed
    /// again (the signed prekey rotates every few days, slots daily), or none (a slot's first
    /// upload needs one).
    pub head: HeadPlan,
    pub one_time_ec: usize,
    pub one_time_pq: usize,
    /// How the keys' ids are chosen.
    pub ids: PrekeyIds,
    /// Replace the slot's stored one-time keys instead of adding to them.
    pub replace_one_time: bool,
    /// The head's expiry (Unix seconds), signed by the identity key: fetchers refuse it after.
    pub expires: u64,
    /// How long the node keeps the slot (0: its own maximum).
    pub ttl_s: u32,
}

/// The head a [`PrekeyPlan`] uploads.
#[derive(Clone)]
pub enum HeadPlan {
    /// One-time keys only.
    None,
    /// A new signed prekey and last-resort key.
    New,
    /// These (id, X25519 secret) and (id, ML-KEM-1024 decapsulation key) again, signed anew.
    Reuse {
        spk: (u32, Zeroizing<[u8; 32]>),
        last_resort: (u32, Zeroizing<Vec<u8>>),
    },
}

/// Names the plan, never its secrets.
impl std::fmt::Debug for HeadPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadPlan::None => f.write_str("None"),
            HeadPlan::New => f.write_str("New"),
            HeadPlan::Reuse { spk, last_resort } => f
                .debug_struct("Reuse")
                .field("spk_id", &spk.0)
                .field("last_resort_id", &last_resort.0)
                .finish_non_exhaustive(),
        }
    }
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
    let key = kem_key(&ek.as_bytes());
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

/// `0x08 ‖ ek`.
fn kem_key(ek: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(KEM_KEY_BYTES);
    key.push(KEM_KEY_TYPE);
    key.extend_from_slice(ek);
    key
}

/// The encoded encapsulation key of a stored ML-KEM-1024 decapsulation key.
fn kem_public(dk: &[u8]) -> Result<Vec<u8>, SdkError> {
    type Dk = <MlKem1024 as KemCore>::DecapsulationKey;
    let encoded = ml_kem::Encoded::<Dk>::try_from(dk)
        .map_err(|_| SdkError::Io(std::io::Error::other("stored ML-KEM key of the wrong size")))?;
    let dk = Dk::from_bytes(&encoded);
    Ok(kem_key(&dk.encapsulation_key().as_bytes()))
}

fn salt() -> Result<[u8; SALT_BYTES], SdkError> {
    random()
}

/// PQ one-time keys that fit one frame beside the head (or without it) and `ec` EC one-time
/// keys: 33 beside the head and 100 EC keys, 39 alone.
fn pq_per_frame(with_head: bool, ec: usize) -> usize {
    let fixed = 1 + 16 + 1 + 4 + 2 + 2 + if with_head { HEAD_BYTES } else { 0 };
    (FRAME_BYTES_MAX - fixed - ec * EC_ITEM_BYTES) / PQ_ITEM_BYTES
}

/// Generates prekeys for the slot `sealer` seals (one day's slot of this user's intro
/// mailbox), seals them, and packs them into uploads (send them in order: the first carries
/// the head when the plan has one).
pub fn generate(
    identity: &IdentityKey,
    sealer: &SlotSealer<'_>,
    plan: PrekeyPlan,
) -> Result<(Vec<Upload>, PrekeySecrets), SdkError> {
    assert!(plan.one_time_ec <= ONE_TIME_KEYS_MAX && plan.one_time_pq <= ONE_TIME_KEYS_MAX);
    let dest = sealer.dest();
    let mut secrets = PrekeySecrets::default();
    let mut ids = IdSource {
        ids: plan.ids,
        used: std::collections::HashSet::new(),
    };
    let mut next_id = || ids.next();
    let keys = match &plan.head {
        HeadPlan::None => None,
        HeadPlan::New => {
            let spk_secret: [u8; 32] = random()?;
            let spk_id = next_id()?;
            secrets.signed_prekey = Some((spk_id, spk_secret));
            let (last_resort, dk) = kem_keypair(identity, next_id()?)?;
            secrets.last_resort = Some((last_resort.id, dk));
            Some((spk_id, spk_secret, last_resort))
        }
        HeadPlan::Reuse { spk, last_resort } => {
            let key = kem_public(&last_resort.1)?;
            let sig = identity.sign(&key)?;
            Some((
                spk.0,
                *spk.1,
                KemPrekey {
                    id: last_resort.0,
                    key: Bytes::from(key),
                    sig,
                },
            ))
        }
    };
    let head = match keys {
        Some((spk_id, spk_secret, last_resort)) => {
            let spk_key = encode_ec(&xeddsa::public_key(&spk_secret));
            let spk = SignedEcPrekey {
                id: spk_id,
                key: spk_key,
                sig: identity.sign(&spk_key)?,
            };
            let expiry_sig = identity.sign(&ferry_proto::prekey::expiry_message(
                &spk,
                &last_resort,
                plan.expires,
            ))?;
            let signed = SignedPart {
                identity: identity.public(),
                spk,
                last_resort,
                expires: plan.expires,
                expiry_sig,
            };
            Some(sealer.seal_head(&signed, &salt()?))
        }
        None => None,
    };
    let mut ec = Vec::with_capacity(plan.one_time_ec);
    for _ in 0..plan.one_time_ec {
        let s: [u8; 32] = random()?;
        let k = EcPrekey {
            id: next_id()?,
            key: encode_ec(&xeddsa::public_key(&s)),
        };
        secrets.one_time_ec.push((k.id, s));
        ec.push(sealer.seal_ec(&k, &salt()?));
    }
    let mut pq = Vec::with_capacity(plan.one_time_pq);
    for _ in 0..plan.one_time_pq {
        let (k, dk) = kem_keypair(identity, next_id()?)?;
        secrets.one_time_pq.push((k.id, dk));
        pq.push(sealer.seal_pq(&k, &salt()?));
    }
    let mut uploads = Vec::new();
    let first_n = pq.len().min(pq_per_frame(head.is_some(), ec.len()));
    let rest = pq.split_off(first_n);
    uploads.push(Upload {
        dest,
        replace_one_time: plan.replace_one_time,
        ttl_s: plan.ttl_s,
        head,
        ec,
        pq,
    });
    for chunk in rest.chunks(pq_per_frame(false, 0)) {
        uploads.push(Upload {
            dest,
            replace_one_time: false,
            ttl_s: plan.ttl_s,
            head: None,
            ec: Vec::new(),
            pq: chunk.to_vec(),
        });
    }
    Ok((uploads, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::addr::{MailboxSecret, NamespaceId, slot_epoch};
    use ferry_proto::frame::Frame;
    use ferry_proto::prekey::{SealedBundle, SlotOpener, slot_key};

    #[test]
    fn generated_uploads_open_for_a_fetcher_and_fit_frames() {
        let id = IdentityKey::generate().unwrap();
        let mb = MailboxSecret::from_seed(&[1; 32]);
        let ns = NamespaceId([2; 32]);
        let day = 20_500;
        let signer = mb.blinded_signer(&ns, None, slot_epoch(day)).unwrap();
        let sealer = SlotSealer::new(slot_key(&mb.public().to_bytes(), &ns, day), &signer);
        let plan = PrekeyPlan {
            head: HeadPlan::New,
            one_time_ec: 100,
            one_time_pq: 100,
            ids: PrekeyIds::Random,
            replace_one_time: false,
            expires: 1_800_000_000,
            ttl_s: 3 * 86_400,
        };
        let (uploads, secrets) = generate(&id, &sealer, plan.clone()).unwrap();
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
        let sizes: Vec<usize> = uploads.iter().map(|u| u.pq.len()).collect();
        assert_eq!(sizes, vec![33, 39, 28]);
        let mut pq = 0;
        for u in &uploads {
            ferry_proto::prekey::check_upload(u).unwrap();
            pq += u.pq.len();
            let f = Frame::PrekeyUpload {
                upload: Box::new(u.clone()),
            };
            assert!(f.encoded_len() <= FRAME_BYTES_MAX + 4);
            // Nothing the node stores names the identity.
            let bytes = f.to_bytes();
            assert!(!bytes.windows(32).any(|w| w == &id.public()[1..]));
        }
        assert_eq!(pq, 100);
        // A fetcher with the address opens what the node hands out.
        let opener = SlotOpener::new(mb.public(), &ns, day).unwrap();
        let sealed = SealedBundle {
            head: uploads[0].head.clone().unwrap(),
            pq: Some(uploads[1].pq[3].clone()),
            ec: Some(uploads[0].ec[5].clone()),
        };
        let b = opener.open(&sealed).unwrap();
        assert_eq!(b.identity, id.public());
        assert_eq!(b.expires, plan.expires);
        assert_eq!(b.ec.unwrap().id, secrets.one_time_ec[5].0);
        assert_eq!(b.pq.id, secrets.one_time_pq[33 + 3].0);
        // Sealing the same keys again (another day's slot) keeps the ids and keys.
        let (spk_id, spk) = secrets.signed_prekey.unwrap();
        let (lr_id, lr) = secrets.last_resort.clone().unwrap();
        let day2 = day + 1;
        let signer2 = mb.blinded_signer(&ns, None, slot_epoch(day2)).unwrap();
        let sealer2 = SlotSealer::new(slot_key(&mb.public().to_bytes(), &ns, day2), &signer2);
        let again = PrekeyPlan {
            head: HeadPlan::Reuse {
                spk: (spk_id, Zeroizing::new(spk)),
                last_resort: (lr_id, Zeroizing::new(lr)),
            },
            one_time_ec: 0,
            one_time_pq: 0,
            ..plan
        };
        let (uploads2, s2) = generate(&id, &sealer2, again).unwrap();
        assert!(s2.signed_prekey.is_none() && s2.last_resort.is_none());
        let b2 = SlotOpener::new(mb.public(), &ns, day2)
            .unwrap()
            .open(&SealedBundle {
                head: uploads2[0].head.clone().unwrap(),
                pq: None,
                ec: None,
            })
            .unwrap();
        assert_eq!(b2.spk.key, b.spk.key);
        let lr_first = opener
            .open(&SealedBundle {
                head: uploads[0].head.clone().unwrap(),
                pq: None,
                ec: None,
            })
            .unwrap()
            .pq;
        assert!(b2.pq_last_resort);
        assert_eq!((b2.pq.id, &b2.pq.key), (lr_id, &lr_first.key));
        // The day's slots are different dests, their heads different bytes.
        assert_ne!(uploads2[0].dest, uploads[0].dest);
    }
}
