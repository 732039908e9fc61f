//! PQXDH prekey bundles (Signal's PQXDH specification, revision 3) in rotating, sealed slots:
//! their wire format, how an owner seals them and how a fetcher opens and checks them. Key
//! encodings follow Signal: an X25519 key is `0x05 ‖ u` (33 B), an ML-KEM-1024 encapsulation key
//! is `0x08 ‖ ek` (1569 B); signatures are XEdDSA by the identity key over the encoded key.
//!
//! **Slots rotate and are sealed** (docs/PROTOCOL.md §13, ADDRESSING.md "Prekey slots"). The slot
//! of day `d` (`floor(unix / 86400)`) is the intro mailbox blinded for the epoch
//! [`slot_epoch`]`(d)`, so its dest is unlinkable to the mailbox's hourly dests and to its other
//! days' slots. Everything in it is sealed under [`slot_key`]`(MK, ns, d)`, which only holders of
//! the address (`MK`) and the namespace id can compute: the node stores opaque items and never
//! sees the identity key. The head (identity, signed prekey, last-resort ML-KEM key, a signed
//! expiry) is also signed by the slot's blinded key. Each item is sealed with ChaCha20-Poly1305
//! (`ferry_crypto::kdf::seal`) under a one-use secret `blake3 keyed_hash(slot_key, salt)`, the
//! random 16-byte salt in front, authenticating the slot's dest, the item's kind and its id.
//!
//! Upload (body of `PrekeyUpload`, after the frame type):
//! ```text
//! dest(16) flags:u8 (bit 0 head present, bit 1 replace one-time keys) ttl_s:u32
//! [head(HEAD_BYTES)]
//! n_ec:u16 then n_ec × (id:u32 sealed(EC_SEALED_BYTES))
//! n_pq:u16 then n_pq × (id:u32 sealed(PQ_SEALED_BYTES))
//! ```
//! Bundle (body of `PrekeyBundle` with status `Ok`, after dest and status):
//! ```text
//! head(HEAD_BYTES) has_pq:u8 [id:u32 sealed(PQ_SEALED_BYTES)] has_ec:u8 [id:u32 sealed(EC_SEALED_BYTES)]
//! ```
//! `head = salt(16) ‖ ChaCha20-Poly1305(signed part) ‖ blinded_sig(64)`; the signed part is
//! `identity(33) spk_id:u32 spk(33) spk_sig(64) lr_id:u32 lr(1569) lr_sig(64) expires:u64
//! expiry_sig(64)`.

use bytes::{BufMut, Bytes};
use ferry_crypto::kdf;

use crate::addr::{
    AddrError, BlindedSigner, MailboxPublic, NamespaceId, slot_epoch, verify_blinded,
};
use crate::frame::{DecodeError, Dest, Reader};
use crate::xeddsa;

/// Type byte of an encoded X25519 public key.
pub const EC_KEY_TYPE: u8 = 0x05;
/// Type byte of an encoded ML-KEM-1024 encapsulation key.
pub const KEM_KEY_TYPE: u8 = 0x08;
/// Bytes of an encoded X25519 public key.
pub const EC_KEY_BYTES: usize = 33;
/// Bytes of a raw ML-KEM-1024 encapsulation key (FIPS 203: 384·k + 32, k = 4).
pub const KEM_EK_BYTES: usize = 1568;
/// Bytes of an encoded ML-KEM-1024 encapsulation key.
pub const KEM_KEY_BYTES: usize = 1 + KEM_EK_BYTES;
/// Bytes of an XEdDSA signature.
pub const SIG_BYTES: usize = xeddsa::SIGNATURE_BYTES;
/// Most one-time keys of each kind in one upload and in one slot.
pub const ONE_TIME_KEYS_MAX: usize = 100;

/// Upload flag: the sealed head (identity, signed prekey, last-resort PQ prekey) follows.
pub const UPLOAD_HEAD: u8 = 0x01;
/// Upload flag: drop the slot's stored one-time keys before adding these.
pub const UPLOAD_REPLACE_ONE_TIME: u8 = 0x02;
const UPLOAD_FLAGS_KNOWN: u8 = UPLOAD_HEAD | UPLOAD_REPLACE_ONE_TIME;

/// Bytes of the random salt in front of every sealed item.
pub const SALT_BYTES: usize = 16;
/// Bytes of the blinded key's Ed25519 signature at the end of a head.
pub const BLINDED_SIG_BYTES: usize = 64;
/// Plain size of the signed part (what the head seals).
pub const SIGNED_PART_BYTES: usize =
    EC_KEY_BYTES + 4 + EC_KEY_BYTES + SIG_BYTES + 4 + KEM_KEY_BYTES + SIG_BYTES + 8 + SIG_BYTES;
/// Wire size of a sealed head.
pub const HEAD_BYTES: usize = SALT_BYTES + SIGNED_PART_BYTES + kdf::TAG_BYTES + BLINDED_SIG_BYTES;
/// Wire size of one sealed EC one-time key (without its id).
pub const EC_SEALED_BYTES: usize = SALT_BYTES + EC_KEY_BYTES + kdf::TAG_BYTES;
/// Wire size of one sealed signed PQ one-time key (without its id).
pub const PQ_SEALED_BYTES: usize = SALT_BYTES + KEM_KEY_BYTES + SIG_BYTES + kdf::TAG_BYTES;
/// Wire size of one EC one-time item: id and sealed key.
pub const EC_ITEM_BYTES: usize = 4 + EC_SEALED_BYTES;
/// Wire size of one PQ one-time item: id and sealed key.
pub const PQ_ITEM_BYTES: usize = 4 + PQ_SEALED_BYTES;

/// Context of [`slot_key`].
pub const SLOT_KEY_CONTEXT: &str = "ferry v1 prekey slot key";
/// Prefix of what the blinded key signs (and of the head's associated data).
const HEAD_DOMAIN: &[u8] = b"ferry v1 prekey head";
/// `info` of every sealed item's AEAD.
const ITEM_INFO: &[u8] = b"ferry v1 prekey item";
/// Prefix of what the identity key signs for a head's expiry.
const EXPIRY_DOMAIN: &[u8] = b"ferry v1 signed prekey expiry";

/// A one-time X25519 prekey (unsigned, as in X3DH/PQXDH).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EcPrekey {
    pub id: u32,
    pub key: [u8; EC_KEY_BYTES],
}

/// An X25519 prekey signed by the identity key (the signed prekey SPK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEcPrekey {
    pub id: u32,
    pub key: [u8; EC_KEY_BYTES],
    pub sig: [u8; SIG_BYTES],
}

/// An ML-KEM-1024 prekey signed by the identity key (one-time or last-resort).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KemPrekey {
    pub id: u32,
    /// `KEM_KEY_BYTES` long (checked on decode).
    pub key: Bytes,
    pub sig: [u8; SIG_BYTES],
}

/// What every bundle of a slot shares (sealed in its head): the identity, the two keys that are
/// never consumed, and until when they may be used, signed by the identity key
/// ([`expiry_message`]): a fetcher refuses a head past `expires`, so a node cannot hand out an
/// old signed prekey after the owner rotated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedPart {
    pub identity: [u8; EC_KEY_BYTES],
    pub spk: SignedEcPrekey,
    pub last_resort: KemPrekey,
    /// Unix seconds.
    pub expires: u64,
    pub expiry_sig: [u8; SIG_BYTES],
}

/// A sealed EC one-time key: its id (random: it tells nobody how many were fetched) in clear,
/// the key sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedEc {
    pub id: u32,
    pub sealed: [u8; EC_SEALED_BYTES],
}

/// A sealed signed PQ one-time key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedPq {
    pub id: u32,
    /// `PQ_SEALED_BYTES` long (checked on decode).
    pub sealed: Bytes,
}

/// One `PrekeyUpload`: the sealed head (required for a slot's first upload) and sealed one-time
/// keys. The node checks sizes, counts and ids only: it cannot open them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    pub dest: Dest,
    pub replace_one_time: bool,
    /// Keep the slot this long after this upload (capped by the node's `prekeys.slot_ttl_s`;
    /// 0: the cap).
    pub ttl_s: u32,
    /// `HEAD_BYTES` long (checked on decode).
    pub head: Option<Bytes>,
    pub ec: Vec<SealedEc>,
    pub pq: Vec<SealedPq>,
}

/// What a fetch returns, sealed: the head, one PQ one-time key (none when none is left: the
/// head's last-resort key stands in) and one EC one-time key (none when none is left).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedBundle {
    /// `HEAD_BYTES` long (checked on decode).
    pub head: Bytes,
    pub pq: Option<SealedPq>,
    pub ec: Option<SealedEc>,
}

/// A bundle opened and checked ([`SlotOpener::open`]): what PQXDH's initiator uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub identity: [u8; EC_KEY_BYTES],
    pub spk: SignedEcPrekey,
    pub pq: KemPrekey,
    pub pq_last_resort: bool,
    pub ec: Option<EcPrekey>,
    /// Until when the head may be used (Unix seconds, signed by the identity key).
    pub expires: u64,
}

/// Which key of an upload or bundle a refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KeyKind {
    None = 0,
    Identity = 1,
    /// The head (signed prekey, its expiry, the blinded signature).
    SignedPrekey = 2,
    LastResort = 3,
    OneTimeEc = 4,
    OneTimePq = 5,
}

impl KeyKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => KeyKind::None,
            1 => KeyKind::Identity,
            2 => KeyKind::SignedPrekey,
            3 => KeyKind::LastResort,
            4 => KeyKind::OneTimeEc,
            5 => KeyKind::OneTimePq,
            _ => return None,
        })
    }
}

/// Why an upload was refused or a bundle did not open: the first bad key, by kind and index
/// within its list. A list longer than [`ONE_TIME_KEYS_MAX`] is refused at its first key past
/// the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub bad_signature: bool,
    pub kind: KeyKind,
    pub index: u16,
}

/// `index` is at most `ONE_TIME_KEYS_MAX` (const-asserted to fit a u16 in `limits.rs`).
fn fault(bad_signature: bool, kind: KeyKind, index: usize) -> Fault {
    Fault {
        bad_signature,
        kind,
        index: crate::frame::count_u16(index, ONE_TIME_KEYS_MAX),
    }
}

/// The Montgomery u of an encoded X25519 key, if it is well-formed (type byte, canonical u).
pub fn ec_key_u(key: &[u8; EC_KEY_BYTES]) -> Option<[u8; 32]> {
    ferry_crypto::keys::decode_ec(key)
}

/// FIPS 203 §7.2 encapsulation-key check of an encoded ML-KEM-1024 key (type byte, length,
/// modulus): the crypto core's.
pub use ferry_crypto::pqxdh::kem_key_valid;

/// What an upload must satisfy on its own: neither one-time list is longer than
/// [`ONE_TIME_KEYS_MAX`] (what one upload can carry). The node's directory also refuses ids
/// that repeat (within the upload or with the slot's). The keys themselves are sealed: the
/// fetcher checks them ([`SlotOpener::open`], which does not check `expires`: its caller does,
/// by its own clock).
pub fn check_upload(upload: &Upload) -> Result<(), Fault> {
    if upload.ec.len() > ONE_TIME_KEYS_MAX {
        return Err(fault(false, KeyKind::OneTimeEc, ONE_TIME_KEYS_MAX));
    }
    if upload.pq.len() > ONE_TIME_KEYS_MAX {
        return Err(fault(false, KeyKind::OneTimePq, ONE_TIME_KEYS_MAX));
    }
    Ok(())
}

/// `"ferry v1 signed prekey expiry" ‖ spk_id ‖ spk ‖ lr_id ‖ lr ‖ expires` (u32/u64 LE): what
/// the identity key signs for a head's expiry.
pub fn expiry_message(spk: &SignedEcPrekey, last_resort: &KemPrekey, expires: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(EXPIRY_DOMAIN.len() + 4 + EC_KEY_BYTES + 4 + KEM_KEY_BYTES + 8);
    m.extend_from_slice(EXPIRY_DOMAIN);
    m.extend_from_slice(&spk.id.to_le_bytes());
    m.extend_from_slice(&spk.key);
    m.extend_from_slice(&last_resort.id.to_le_bytes());
    m.extend_from_slice(&last_resort.key);
    m.extend_from_slice(&expires.to_le_bytes());
    m
}

/// Checks every key and signature of a signed part and of the one-time keys beside it (what a
/// fetcher does after opening a bundle).
pub fn check_keys(
    signed: &SignedPart,
    ec: Option<&EcPrekey>,
    pq: Option<&KemPrekey>,
) -> Result<(), Fault> {
    let ik = ec_key_u(&signed.identity).ok_or(fault(false, KeyKind::Identity, 0))?;
    ec_key_u(&signed.spk.key).ok_or(fault(false, KeyKind::SignedPrekey, 0))?;
    if !xeddsa::verify(&ik, &signed.spk.key, &signed.spk.sig) {
        return Err(fault(true, KeyKind::SignedPrekey, 0));
    }
    if !kem_key_valid(&signed.last_resort.key) {
        return Err(fault(false, KeyKind::LastResort, 0));
    }
    if !xeddsa::verify(&ik, &signed.last_resort.key, &signed.last_resort.sig) {
        return Err(fault(true, KeyKind::LastResort, 0));
    }
    let expiry = expiry_message(&signed.spk, &signed.last_resort, signed.expires);
    if !xeddsa::verify(&ik, &expiry, &signed.expiry_sig) {
        return Err(fault(true, KeyKind::SignedPrekey, 0));
    }
    if let Some(k) = ec {
        ec_key_u(&k.key).ok_or(fault(false, KeyKind::OneTimeEc, 0))?;
    }
    if let Some(k) = pq {
        if !kem_key_valid(&k.key) {
            return Err(fault(false, KeyKind::OneTimePq, 0));
        }
        if !xeddsa::verify(&ik, &k.key, &k.sig) {
            return Err(fault(true, KeyKind::OneTimePq, 0));
        }
    }
    Ok(())
}

// ---- sealing ----------------------------------------------------------------------------------

/// `blake3 derive_key("ferry v1 prekey slot key", MK ‖ ns ‖ day_u64le)`: the key every item of
/// the slot of `day` is sealed under. Computable from the address and the namespace id only.
pub fn slot_key(mk: &[u8; 32], ns: &NamespaceId, day: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(SLOT_KEY_CONTEXT);
    h.update(mk);
    h.update(&ns.0);
    h.update(&day.to_le_bytes());
    *h.finalize().as_bytes()
}

const KIND_HEAD: u8 = 0;
const KIND_EC: u8 = 1;
const KIND_PQ: u8 = 2;

/// Associated data of a sealed item: `"ferry v1 prekey head" ‖ dest ‖ kind ‖ id_u32le`.
fn item_aad(dest: &Dest, kind: u8, id: u32) -> Vec<u8> {
    let mut a = Vec::with_capacity(HEAD_DOMAIN.len() + 16 + 1 + 4);
    a.extend_from_slice(HEAD_DOMAIN);
    a.extend_from_slice(&dest.0);
    a.push(kind);
    a.extend_from_slice(&id.to_le_bytes());
    a
}

fn seal_item(key: &[u8; 32], salt: &[u8; SALT_BYTES], aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let secret = blake3::keyed_hash(key, salt);
    let mut out = Vec::with_capacity(SALT_BYTES + plain.len() + kdf::TAG_BYTES);
    out.extend_from_slice(salt);
    out.extend_from_slice(&kdf::seal(secret.as_bytes(), ITEM_INFO, aad, plain));
    out
}

fn open_item(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let salt = sealed.get(..SALT_BYTES)?;
    let secret = blake3::keyed_hash(key, salt);
    kdf::open(secret.as_bytes(), ITEM_INFO, aad, &sealed[SALT_BYTES..])
}

/// What the blinded key signs: `"ferry v1 prekey head" ‖ dest ‖ salt ‖ ciphertext`.
fn head_signed_message(dest: &Dest, sealed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEAD_DOMAIN.len() + 16 + sealed.len());
    m.extend_from_slice(HEAD_DOMAIN);
    m.extend_from_slice(&dest.0);
    m.extend_from_slice(sealed);
    m
}

fn encode_signed(s: &SignedPart) -> Vec<u8> {
    let mut b = Vec::with_capacity(SIGNED_PART_BYTES);
    b.put_slice(&s.identity);
    b.put_u32_le(s.spk.id);
    b.put_slice(&s.spk.key);
    b.put_slice(&s.spk.sig);
    put_kem(&mut b, &s.last_resort);
    b.put_u64_le(s.expires);
    b.put_slice(&s.expiry_sig);
    assert_eq!(b.len(), SIGNED_PART_BYTES);
    b
}

fn decode_signed(b: Vec<u8>) -> Result<SignedPart, DecodeError> {
    let mut r = Reader::new(Bytes::from(b), crate::frame::frame_type::PREKEY_BUNDLE);
    let s = SignedPart {
        identity: r.array()?,
        spk: read_spk(&mut r)?,
        last_resort: read_kem(&mut r)?,
        expires: r.u64()?,
        expiry_sig: r.array()?,
    };
    r.finish()?;
    Ok(s)
}

/// The owner's side of one day's slot: seals what it uploads there.
pub struct SlotSealer<'a> {
    key: [u8; 32],
    signer: &'a BlindedSigner,
}

impl std::fmt::Debug for SlotSealer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotSealer")
            .field("dest", &self.signer.dest())
            .finish_non_exhaustive()
    }
}

impl<'a> SlotSealer<'a> {
    /// `signer` is the intro mailbox blinded for [`slot_epoch`]`(day)`, `key` its
    /// [`slot_key`].
    pub fn new(key: [u8; 32], signer: &'a BlindedSigner) -> Self {
        SlotSealer { key, signer }
    }
    pub fn dest(&self) -> Dest {
        self.signer.dest()
    }
    /// The sealed head: `salt ‖ sealed signed part ‖ blinded signature`.
    pub fn seal_head(&self, signed: &SignedPart, salt: &[u8; SALT_BYTES]) -> Bytes {
        let dest = self.dest();
        let mut out = seal_item(
            &self.key,
            salt,
            &item_aad(&dest, KIND_HEAD, 0),
            &encode_signed(signed),
        );
        let sig = self.signer.sign(&head_signed_message(&dest, &out));
        out.extend_from_slice(&sig);
        assert_eq!(out.len(), HEAD_BYTES);
        Bytes::from(out)
    }
    pub fn seal_ec(&self, k: &EcPrekey, salt: &[u8; SALT_BYTES]) -> SealedEc {
        let v = seal_item(
            &self.key,
            salt,
            &item_aad(&self.dest(), KIND_EC, k.id),
            &k.key,
        );
        let mut sealed = [0u8; EC_SEALED_BYTES];
        sealed.copy_from_slice(&v);
        SealedEc { id: k.id, sealed }
    }
    pub fn seal_pq(&self, k: &KemPrekey, salt: &[u8; SALT_BYTES]) -> SealedPq {
        assert_eq!(k.key.len(), KEM_KEY_BYTES, "KEM key of the wrong size");
        let mut plain = Vec::with_capacity(KEM_KEY_BYTES + SIG_BYTES);
        plain.extend_from_slice(&k.key);
        plain.extend_from_slice(&k.sig);
        let v = seal_item(
            &self.key,
            salt,
            &item_aad(&self.dest(), KIND_PQ, k.id),
            &plain,
        );
        assert_eq!(v.len(), PQ_SEALED_BYTES);
        SealedPq {
            id: k.id,
            sealed: Bytes::from(v),
        }
    }
}

/// A fetcher's side of one day's slot of a contact: where it is and how to open it.
#[derive(Clone, Debug)]
pub struct SlotOpener {
    dest: Dest,
    day: u64,
    key: [u8; 32],
    blinded_key: [u8; 32],
}

impl SlotOpener {
    /// The slot of `day` of the intro mailbox `mk` in namespace `ns`.
    pub fn new(mk: &MailboxPublic, ns: &NamespaceId, day: u64) -> Result<Self, AddrError> {
        let blinded_key = mk.blinded(ns, None, slot_epoch(day))?;
        Ok(SlotOpener {
            dest: crate::addr::dest_of(&blinded_key),
            day,
            key: slot_key(&mk.to_bytes(), ns, day),
            blinded_key,
        })
    }
    pub fn dest(&self) -> Dest {
        self.dest
    }
    pub fn day(&self) -> u64 {
        self.day
    }

    /// Checks the blinded signature, opens the head and the one-time keys and checks every key
    /// and signature inside. The caller checks `expires` against its own clock and the identity
    /// against the address.
    pub fn open(&self, b: &SealedBundle) -> Result<Bundle, Fault> {
        let head_fault = fault(true, KeyKind::SignedPrekey, 0);
        if b.head.len() != HEAD_BYTES {
            return Err(head_fault);
        }
        let (sealed, sig) = b.head.split_at(HEAD_BYTES - BLINDED_SIG_BYTES);
        let sig: [u8; BLINDED_SIG_BYTES] = sig.try_into().map_err(|_| head_fault)?;
        if !verify_blinded(
            &self.blinded_key,
            &head_signed_message(&self.dest, sealed),
            &sig,
        ) {
            return Err(head_fault);
        }
        let plain =
            open_item(&self.key, &item_aad(&self.dest, KIND_HEAD, 0), sealed).ok_or(head_fault)?;
        let signed = decode_signed(plain).map_err(|_| head_fault)?;
        let ec = match &b.ec {
            Some(e) => {
                let plain = open_item(&self.key, &item_aad(&self.dest, KIND_EC, e.id), &e.sealed)
                    .ok_or(fault(true, KeyKind::OneTimeEc, 0))?;
                Some(EcPrekey {
                    id: e.id,
                    key: plain
                        .try_into()
                        .map_err(|_| fault(false, KeyKind::OneTimeEc, 0))?,
                })
            }
            None => None,
        };
        let pq = match &b.pq {
            Some(p) => {
                let plain = open_item(&self.key, &item_aad(&self.dest, KIND_PQ, p.id), &p.sealed)
                    .ok_or(fault(true, KeyKind::OneTimePq, 0))?;
                if plain.len() != KEM_KEY_BYTES + SIG_BYTES {
                    return Err(fault(false, KeyKind::OneTimePq, 0));
                }
                let mut sig = [0u8; SIG_BYTES];
                sig.copy_from_slice(&plain[KEM_KEY_BYTES..]);
                let mut key = plain;
                key.truncate(KEM_KEY_BYTES);
                Some(KemPrekey {
                    id: p.id,
                    key: Bytes::from(key),
                    sig,
                })
            }
            None => None,
        };
        check_keys(&signed, ec.as_ref(), pq.as_ref())?;
        let pq_last_resort = pq.is_none();
        Ok(Bundle {
            identity: signed.identity,
            spk: signed.spk,
            pq: pq.unwrap_or(signed.last_resort),
            pq_last_resort,
            ec,
            expires: signed.expires,
        })
    }
}

// ---- wire -------------------------------------------------------------------------------------

fn put_kem(out: &mut impl BufMut, k: &KemPrekey) {
    assert_eq!(k.key.len(), KEM_KEY_BYTES, "KEM key of the wrong size");
    out.put_u32_le(k.id);
    out.put_slice(&k.key);
    out.put_slice(&k.sig);
}

fn read_kem(r: &mut Reader) -> Result<KemPrekey, DecodeError> {
    Ok(KemPrekey {
        id: r.u32()?,
        key: r.take(KEM_KEY_BYTES)?,
        sig: r.array()?,
    })
}

fn read_spk(r: &mut Reader) -> Result<SignedEcPrekey, DecodeError> {
    Ok(SignedEcPrekey {
        id: r.u32()?,
        key: r.array()?,
        sig: r.array()?,
    })
}

fn put_pq(out: &mut impl BufMut, k: &SealedPq) {
    assert_eq!(
        k.sealed.len(),
        PQ_SEALED_BYTES,
        "sealed PQ key of the wrong size"
    );
    out.put_u32_le(k.id);
    out.put_slice(&k.sealed);
}

fn read_pq(r: &mut Reader) -> Result<SealedPq, DecodeError> {
    Ok(SealedPq {
        id: r.u32()?,
        sealed: r.take(PQ_SEALED_BYTES)?,
    })
}

fn put_ec(out: &mut impl BufMut, k: &SealedEc) {
    out.put_u32_le(k.id);
    out.put_slice(&k.sealed);
}

fn read_ec(r: &mut Reader) -> Result<SealedEc, DecodeError> {
    Ok(SealedEc {
        id: r.u32()?,
        sealed: r.array()?,
    })
}

fn put_head(out: &mut impl BufMut, head: &Bytes) {
    assert_eq!(head.len(), HEAD_BYTES, "sealed head of the wrong size");
    out.put_slice(head);
}

impl Upload {
    /// Bytes of [`Upload::encode`] (a frame's body after the type byte).
    pub fn encoded_len(&self) -> usize {
        16 + 1
            + 4
            + self.head.as_ref().map_or(0, |_| HEAD_BYTES)
            + 2
            + self.ec.len() * EC_ITEM_BYTES
            + 2
            + self.pq.len() * PQ_ITEM_BYTES
    }

    /// Appends the upload's wire encoding (also what the node's directory journal records).
    pub fn encode(&self, out: &mut impl BufMut) {
        // Checked before any byte is written.
        assert!(
            self.ec.len() <= ONE_TIME_KEYS_MAX && self.pq.len() <= ONE_TIME_KEYS_MAX,
            "an upload of {} EC and {} PQ one-time keys: over its limit ONE_TIME_KEYS_MAX ({ONE_TIME_KEYS_MAX})",
            self.ec.len(),
            self.pq.len()
        );
        out.put_slice(&self.dest.0);
        let mut flags = 0;
        if self.head.is_some() {
            flags |= UPLOAD_HEAD;
        }
        if self.replace_one_time {
            flags |= UPLOAD_REPLACE_ONE_TIME;
        }
        out.put_u8(flags);
        out.put_u32_le(self.ttl_s);
        if let Some(h) = &self.head {
            put_head(out, h);
        }
        out.put_u16_le(crate::frame::count_u16(self.ec.len(), ONE_TIME_KEYS_MAX));
        for k in &self.ec {
            put_ec(out, k);
        }
        out.put_u16_le(crate::frame::count_u16(self.pq.len(), ONE_TIME_KEYS_MAX));
        for k in &self.pq {
            put_pq(out, k);
        }
    }

    /// Parses exactly one upload encoding (a journal record).
    pub fn decode_record(bytes: Bytes) -> Result<Upload, DecodeError> {
        let mut r = Reader::new(bytes, crate::frame::frame_type::PREKEY_UPLOAD);
        let u = Upload::decode(&mut r)?;
        r.finish()?;
        Ok(u)
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Upload, DecodeError> {
        let dest = Dest(r.array()?);
        let flags = r.u8()?;
        if flags & !UPLOAD_FLAGS_KNOWN != 0 {
            return Err(r.invalid("flags"));
        }
        let ttl_s = r.u32()?;
        let head = if flags & UPLOAD_HEAD != 0 {
            Some(r.take(HEAD_BYTES)?)
        } else {
            None
        };
        let n = r.count(ONE_TIME_KEYS_MAX, EC_ITEM_BYTES)?;
        let mut ec = Vec::with_capacity(n);
        for _ in 0..n {
            ec.push(read_ec(r)?);
        }
        let n = r.count(ONE_TIME_KEYS_MAX, PQ_ITEM_BYTES)?;
        let mut pq = Vec::with_capacity(n);
        for _ in 0..n {
            pq.push(read_pq(r)?);
        }
        Ok(Upload {
            dest,
            replace_one_time: flags & UPLOAD_REPLACE_ONE_TIME != 0,
            ttl_s,
            head,
            ec,
            pq,
        })
    }
}

impl SealedBundle {
    pub(crate) const fn body_len(&self) -> usize {
        HEAD_BYTES
            + 1
            + if self.pq.is_some() { PQ_ITEM_BYTES } else { 0 }
            + 1
            + if self.ec.is_some() { EC_ITEM_BYTES } else { 0 }
    }

    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        put_head(out, &self.head);
        match &self.pq {
            Some(k) => {
                out.put_u8(1);
                put_pq(out, k);
            }
            None => out.put_u8(0),
        }
        match &self.ec {
            Some(k) => {
                out.put_u8(1);
                put_ec(out, k);
            }
            None => out.put_u8(0),
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<SealedBundle, DecodeError> {
        let head = r.take(HEAD_BYTES)?;
        let pq = if r.bool("has_pq")? {
            Some(read_pq(r)?)
        } else {
            None
        };
        let ec = if r.bool("has_ec")? {
            Some(read_ec(r)?)
        } else {
            None
        };
        Ok(SealedBundle { head, pq, ec })
    }

    /// Whether the bundle carries no PQ one-time key (the head's last-resort key stands in).
    pub fn pq_last_resort(&self) -> bool {
        self.pq.is_none()
    }
}

#[cfg(test)]
mod tests;
