//! Rotating destination hashes with proof of ownership (see `docs/ADDRESSING.md`).
//!
//! Sender: `MailboxPublic::blinded(ns, s_mbox, epoch)` → `MK'` → [`dest_of`]. Owner:
//! `MailboxSecret::blinded_signer(..)` signs [`proof_message`]s. Node: [`verify_proofs`] checks a
//! batch in the order ADDRESSING.md fixes: `MK'` decodes, it hashes to `dest`, the signature passes
//! `verify_strict` semantics (batch first, one by one only when the batch fails).

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha512};

use crate::frame::{Dest, Op, ProofItem, ProofStatus};
use crate::limits::EPOCH_SECONDS;

pub const CONTEXT_BLINDING: &str = "ferry v1 mailbox blinding";
pub const CONTEXT_NONCE_PREFIX: &str = "ferry v1 blinded nonce prefix";
pub const CONTEXT_DESTINATION: &str = "ferry v1 destination";
pub const PROOF_DOMAIN: &[u8] = b"ferry v1 mailbox proof";
/// Bytes of the signed proof message: domain ‖ node_id ‖ challenge ‖ dest ‖ op.
pub const PROOF_MESSAGE_BYTES: usize = PROOF_DOMAIN.len() + 32 + 32 + 16 + 1;

/// Application namespace id: random, 32 bytes, built into the application's SDK configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NamespaceId(pub [u8; 32]);

impl std::fmt::Debug for NamespaceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NamespaceId(..)")
    }
}

/// Why a mailbox key or blinding failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddrError {
    /// The 32 bytes are not a compressed Edwards point.
    NotAPoint,
    /// The point has small order or a torsion component.
    WeakPoint,
    /// The blinding factor came out zero (probability 2^-252; reject rather than emit identity).
    ZeroBlinding,
}

impl std::fmt::Display for AddrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddrError::NotAPoint => write!(f, "mailbox key is not a valid Ed25519 point"),
            AddrError::WeakPoint => write!(f, "mailbox key has small order or torsion"),
            AddrError::ZeroBlinding => write!(f, "blinding factor is zero"),
        }
    }
}
impl std::error::Error for AddrError {}

/// The standard Ed25519 public key of a 32-byte seed (the node's identity key).
pub fn ed25519_public(seed: &[u8; 32]) -> [u8; 32] {
    MailboxSecret::from_seed(seed).public().to_bytes()
}

/// The epoch of a Unix time: `floor(unix_seconds / 3600)`.
pub fn epoch_of(unix_s: u64) -> u64 {
    unix_s / EPOCH_SECONDS
}

/// Seconds in one prekey-slot day.
pub const DAY_SECONDS: u64 = 86_400;
/// Set in the blinding epoch of a prekey slot: no hour's epoch has it (2^63 hours is far past any
/// clock), so a slot's blinded key and dest are unlinkable to every hourly dest of the mailbox.
pub const SLOT_EPOCH_FLAG: u64 = 1 << 63;

/// The prekey-slot day of a Unix time: `floor(unix_seconds / 86400)`.
pub fn day_of(unix_s: u64) -> u64 {
    unix_s / DAY_SECONDS
}

/// The blinding epoch of the prekey slot of `day` (ADDRESSING.md, "Prekey slots").
pub fn slot_epoch(day: u64) -> u64 {
    assert!(day & SLOT_EPOCH_FLAG == 0, "day {day} out of range");
    SLOT_EPOCH_FLAG | day
}

/// `h = wide_reduce(blake3 derive_key XOF 64 bytes("ferry v1 mailbox blinding", MK ‖ ns ‖ [s] ‖ e))`.
fn blinding_factor(
    mk: &[u8; 32],
    ns: &NamespaceId,
    s_mbox: Option<&[u8; 32]>,
    epoch: u64,
) -> Result<Scalar, AddrError> {
    let mut hasher = blake3::Hasher::new_derive_key(CONTEXT_BLINDING);
    hasher.update(mk);
    hasher.update(&ns.0);
    if let Some(s) = s_mbox {
        hasher.update(s);
    }
    hasher.update(&epoch.to_le_bytes());
    let mut wide = [0u8; 64];
    hasher.finalize_xof().fill(&mut wide);
    let h = Scalar::from_bytes_mod_order_wide(&wide);
    if h == Scalar::ZERO {
        Err(AddrError::ZeroBlinding)
    } else {
        Ok(h)
    }
}

/// `dest = blake3 derive_key("ferry v1 destination", MK')[0..16]`.
pub fn dest_of(blinded_key: &[u8; 32]) -> Dest {
    let full = blake3::derive_key(CONTEXT_DESTINATION, blinded_key);
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    Dest(d)
}

/// A recipient's public mailbox key `MK`, decoded and checked once per contact.
#[derive(Clone, Copy, Debug)]
pub struct MailboxPublic {
    bytes: [u8; 32],
    point: EdwardsPoint,
}

impl MailboxPublic {
    /// Decodes `MK`, refusing small-order and non-torsion-free points.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, AddrError> {
        let point = CompressedEdwardsY(*bytes)
            .decompress()
            .ok_or(AddrError::NotAPoint)?;
        if point.is_small_order() || !point.is_torsion_free() {
            return Err(AddrError::WeakPoint);
        }
        Ok(MailboxPublic {
            bytes: *bytes,
            point,
        })
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }

    /// `MK' = h·MK`, from public values only (sender side).
    pub fn blinded(
        &self,
        ns: &NamespaceId,
        s_mbox: Option<&[u8; 32]>,
        epoch: u64,
    ) -> Result<[u8; 32], AddrError> {
        let h = blinding_factor(&self.bytes, ns, s_mbox, epoch)?;
        Ok((h * self.point).compress().0)
    }

    /// The destination hash of this mailbox for `epoch`.
    pub fn dest(
        &self,
        ns: &NamespaceId,
        s_mbox: Option<&[u8; 32]>,
        epoch: u64,
    ) -> Result<Dest, AddrError> {
        Ok(dest_of(&self.blinded(ns, s_mbox, epoch)?))
    }
}

/// The owner's mailbox secret (an Ed25519 seed), from which blinded signers are derived.
pub struct MailboxSecret {
    scalar: Scalar,
    prefix: [u8; 32],
    public: MailboxPublic,
}

impl std::fmt::Debug for MailboxSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxSecret")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl MailboxSecret {
    /// Expands a 32-byte Ed25519 seed the standard way (SHA-512, clamped scalar, nonce prefix).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let digest = Sha512::digest(seed);
        let mut wide = [0u8; 64];
        wide.copy_from_slice(&digest);
        let esk = ExpandedSecretKey::from_bytes(&wide);
        let vk = VerifyingKey::from(&esk);
        let public = match MailboxPublic::from_bytes(&vk.to_bytes()) {
            Ok(p) => p,
            // A clamped scalar times the base point is always in the prime-order subgroup.
            Err(e) => unreachable!("standard Ed25519 key failed validation: {e}"),
        };
        MailboxSecret {
            scalar: esk.scalar,
            prefix: esk.hash_prefix,
            public,
        }
    }

    pub fn public(&self) -> &MailboxPublic {
        &self.public
    }

    /// `mk' = h·mk`, `pfx' = derive_key("ferry v1 blinded nonce prefix", prefix(mk) ‖ h)`.
    pub fn blinded_signer(
        &self,
        ns: &NamespaceId,
        s_mbox: Option<&[u8; 32]>,
        epoch: u64,
    ) -> Result<BlindedSigner, AddrError> {
        let h = blinding_factor(&self.public.bytes, ns, s_mbox, epoch)?;
        let mut hasher = blake3::Hasher::new_derive_key(CONTEXT_NONCE_PREFIX);
        hasher.update(&self.prefix);
        hasher.update(h.as_bytes());
        let esk = ExpandedSecretKey {
            scalar: h * self.scalar,
            hash_prefix: *hasher.finalize().as_bytes(),
        };
        // Always derive the verifying key from the expanded key: signing with a mismatched public
        // key leaks the secret.
        let vk = VerifyingKey::from(&esk);
        let blinded_key = vk.to_bytes();
        Ok(BlindedSigner {
            esk,
            vk,
            dest: dest_of(&blinded_key),
            epoch,
        })
    }
}

/// Signs proofs for one (mailbox, namespace, epoch).
pub struct BlindedSigner {
    esk: ExpandedSecretKey,
    vk: VerifyingKey,
    dest: Dest,
    epoch: u64,
}

impl std::fmt::Debug for BlindedSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlindedSigner")
            .field("dest", &self.dest)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl BlindedSigner {
    pub fn dest(&self) -> Dest {
        self.dest
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn blinded_key(&self) -> [u8; 32] {
        self.vk.to_bytes()
    }

    /// Signs `message` with the blinded key (Ed25519; a verifier checks it with
    /// [`verify_blinded`] under [`BlindedSigner::blinded_key`], which a sender computes from `MK`).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        raw_sign::<Sha512>(&self.esk, message, &self.vk).to_bytes()
    }

    /// A proof that this signer owns `dest` for `op`, bound to the node and its challenge.
    pub fn prove(&self, node_id: &[u8; 32], challenge: &[u8; 32], op: Op) -> ProofItem {
        let msg = proof_message(node_id, challenge, &self.dest, op as u8);
        let sig = raw_sign::<Sha512>(&self.esk, &msg, &self.vk);
        ProofItem {
            dest: self.dest,
            op: op as u8,
            blinded_key: self.vk.to_bytes(),
            signature: sig.to_bytes(),
        }
    }
}

/// Checks a [`BlindedSigner::sign`] signature (`verify_strict`).
pub fn verify_blinded(blinded_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(blinded_key).is_ok_and(|vk| {
        vk.verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    })
}

/// `"ferry v1 mailbox proof" ‖ node_id(32) ‖ challenge(32) ‖ dest(16) ‖ op(1)`.
pub fn proof_message(
    node_id: &[u8; 32],
    challenge: &[u8; 32],
    dest: &Dest,
    op: u8,
) -> [u8; PROOF_MESSAGE_BYTES] {
    let mut m = [0u8; PROOF_MESSAGE_BYTES];
    let mut at = 0;
    for part in [
        PROOF_DOMAIN,
        node_id.as_slice(),
        challenge.as_slice(),
        dest.0.as_slice(),
        &[op],
    ] {
        m[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    debug_assert_eq!(at, PROOF_MESSAGE_BYTES);
    m
}

/// Checks one proof with `verify_strict`, in ADDRESSING.md's order.
pub fn verify_proof(node_id: &[u8; 32], challenge: &[u8; 32], item: &ProofItem) -> ProofStatus {
    match precheck(item) {
        Err(status) => status,
        Ok(vk) => {
            let msg = proof_message(node_id, challenge, &item.dest, item.op);
            let sig = Signature::from_bytes(&item.signature);
            match vk.verify_strict(&msg, &sig) {
                Ok(()) => ProofStatus::Ok,
                Err(_) => ProofStatus::BadSignature,
            }
        }
    }
}

fn precheck(item: &ProofItem) -> Result<VerifyingKey, ProofStatus> {
    if Op::from_u8(item.op).is_none() {
        return Err(ProofStatus::UnknownOp);
    }
    let vk = VerifyingKey::from_bytes(&item.blinded_key).map_err(|_| ProofStatus::BadKey)?;
    if vk.is_weak() {
        return Err(ProofStatus::BadKey);
    }
    if dest_of(&item.blinded_key) != item.dest {
        return Err(ProofStatus::DestMismatch);
    }
    Ok(vk)
}

/// `verify_strict` also refuses a small-order `R`; batch verification does not check that, so we do.
fn r_is_strict(signature: &[u8; 64]) -> bool {
    let mut r = [0u8; 32];
    r.copy_from_slice(&signature[..32]);
    match CompressedEdwardsY(r).decompress() {
        Some(p) => !p.is_small_order(),
        None => false,
    }
}

/// Checks a batch of proofs. All valid proofs pass with one batch verification (about half the
/// cost of checking them one by one); if the batch fails, each item is checked alone to name the
/// bad ones. The result has one status per item, in order.
pub fn verify_proofs(
    node_id: &[u8; 32],
    challenge: &[u8; 32],
    items: &[ProofItem],
) -> Vec<ProofStatus> {
    let mut statuses = vec![ProofStatus::Ok; items.len()];
    let mut msgs = Vec::with_capacity(items.len());
    let mut sigs = Vec::with_capacity(items.len());
    let mut vks = Vec::with_capacity(items.len());
    let mut idx = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match precheck(item) {
            Err(s) => statuses[i] = s,
            Ok(_) if !r_is_strict(&item.signature) => statuses[i] = ProofStatus::BadSignature,
            Ok(vk) => {
                msgs.push(proof_message(node_id, challenge, &item.dest, item.op));
                sigs.push(Signature::from_bytes(&item.signature));
                vks.push(vk);
                idx.push(i);
            }
        }
    }
    if idx.is_empty() {
        return statuses;
    }
    let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
    let batch_ok = if idx.len() == 1 {
        vks[0].verify_strict(refs[0], &sigs[0]).is_ok()
    } else {
        ed25519_dalek::verify_batch(&refs, &sigs, &vks).is_ok()
    };
    if !batch_ok {
        for (k, &i) in idx.iter().enumerate() {
            if vks[k].verify_strict(refs[k], &sigs[k]).is_err() {
                statuses[i] = ProofStatus::BadSignature;
            }
        }
    }
    statuses
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> NamespaceId {
        NamespaceId([7u8; 32])
    }

    #[test]
    fn sender_and_owner_agree_on_dest() {
        let secret = MailboxSecret::from_seed(&[1u8; 32]);
        for epoch in [0u64, 1, 493_000, u64::MAX] {
            let signer = secret.blinded_signer(&ns(), None, epoch).unwrap();
            let dest = secret.public().dest(&ns(), None, epoch).unwrap();
            assert_eq!(signer.dest(), dest);
            assert_eq!(
                signer.blinded_key(),
                secret.public().blinded(&ns(), None, epoch).unwrap()
            );
        }
    }

    #[test]
    fn dests_differ_across_epochs_namespaces_and_mailbox_secrets() {
        let p = *MailboxSecret::from_seed(&[1u8; 32]).public();
        let a = p.dest(&ns(), None, 10).unwrap();
        assert_ne!(a, p.dest(&ns(), None, 11).unwrap());
        assert_ne!(a, p.dest(&NamespaceId([8u8; 32]), None, 10).unwrap());
        assert_ne!(a, p.dest(&ns(), Some(&[9u8; 32]), 10).unwrap());
    }

    #[test]
    fn proof_checks_in_order() {
        let secret = MailboxSecret::from_seed(&[2u8; 32]);
        let signer = secret.blinded_signer(&ns(), None, 5).unwrap();
        let node = [3u8; 32];
        let ch = [4u8; 32];
        let good = signer.prove(&node, &ch, Op::Subscribe);
        assert_eq!(verify_proof(&node, &ch, &good), ProofStatus::Ok);
        // Another challenge, another node, another op: the signature no longer matches.
        assert_eq!(
            verify_proof(&node, &[5u8; 32], &good),
            ProofStatus::BadSignature
        );
        assert_eq!(
            verify_proof(&[6u8; 32], &ch, &good),
            ProofStatus::BadSignature
        );
        let mut other_op = good;
        other_op.op = Op::Drain as u8;
        assert_eq!(
            verify_proof(&node, &ch, &other_op),
            ProofStatus::BadSignature
        );
        // A proof for another dest.
        let mut wrong_dest = good;
        wrong_dest.dest = secret.public().dest(&ns(), None, 6).unwrap();
        assert_eq!(
            verify_proof(&node, &ch, &wrong_dest),
            ProofStatus::DestMismatch
        );
        let mut bad_key = good;
        bad_key.blinded_key = [0u8; 32];
        bad_key.blinded_key[0] = 1; // the identity point: weak
        assert_eq!(verify_proof(&node, &ch, &bad_key), ProofStatus::BadKey);
        let mut bad_op = good;
        bad_op.op = 99;
        assert_eq!(verify_proof(&node, &ch, &bad_op), ProofStatus::UnknownOp);
    }

    #[test]
    fn batch_names_the_bad_items() {
        let node = [3u8; 32];
        let ch = [4u8; 32];
        let mut items: Vec<ProofItem> = (0u8..10)
            .map(|i| {
                MailboxSecret::from_seed(&[i; 32])
                    .blinded_signer(&ns(), None, 100)
                    .unwrap()
                    .prove(&node, &ch, Op::Subscribe)
            })
            .collect();
        assert!(
            verify_proofs(&node, &ch, &items)
                .iter()
                .all(|s| *s == ProofStatus::Ok)
        );
        items[3].signature[40] ^= 1;
        items[7].dest.0[0] ^= 1;
        let st = verify_proofs(&node, &ch, &items);
        for (i, s) in st.iter().enumerate() {
            let want = match i {
                3 => ProofStatus::BadSignature,
                7 => ProofStatus::DestMismatch,
                _ => ProofStatus::Ok,
            };
            assert_eq!(*s, want, "item {i}");
        }
        assert_eq!(
            verify_proofs(&node, &ch, &items[3..4]),
            vec![ProofStatus::BadSignature]
        );
    }

    #[test]
    fn weak_mailbox_keys_are_refused() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            MailboxPublic::from_bytes(&identity).unwrap_err(),
            AddrError::WeakPoint
        );
        let mut not_point = [0xffu8; 32];
        not_point[31] = 0x7f;
        assert!(MailboxPublic::from_bytes(&not_point).is_err());
    }
}
