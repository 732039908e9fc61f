//! The Double Ratchet (Signal's specification, revision 1), with X25519, HKDF/HMAC-SHA-256 and
//! ChaCha20-Poly1305:
//!
//! ```text
//! KDF_RK(rk, dh_out) = HKDF(salt = rk, IKM = dh_out ‖ pq, info = ROOT_INFO) → (rk', ck)   [64 B]
//!     pq: reserved for a post-quantum ratchet's secret; empty in header version 1
//! KDF_CK(ck)         = (ck' = HMAC(ck, 0x02), mk = HMAC(ck, 0x01))
//! ENCRYPT(mk, pt, ad ‖ header): ChaCha20-Poly1305 with key ‖ nonce = HKDF(0^32, mk, MESSAGE_INFO)
//! header (41 B)      = version ‖ DHs.public ‖ PN (u32 BE) ‖ N (u32 BE)
//! ```
//!
//! Decryption works on a copy: the chain keys, counters and ratchet keys it would change, and the
//! skipped keys it would add or use, are staged and applied only once the AEAD accepted the
//! message. A forged or replayed message changes nothing. Skipped message keys are bounded per
//! chain (`SKIP_PER_CHAIN_MAX`: a header further ahead is refused) and in total
//! (`SKIPPED_KEYS_MAX`: the oldest are dropped). Every secret is zeroized when dropped.

use alloc::vec::Vec;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Rng;
use crate::kdf::{hkdf, hmac, open, seal};
use crate::keys::{KeyPair, dh};

/// The header version this code writes and reads.
pub const VERSION: u8 = 1;
/// Bytes of an encoded header.
pub const HEADER_BYTES: usize = 1 + 32 + 4 + 4;
/// The most message keys one header may make the receiver skip in one chain.
pub const SKIP_PER_CHAIN_MAX: u32 = 1000;
/// The most skipped message keys a session keeps (the oldest go first).
pub const SKIPPED_KEYS_MAX: usize = 2000;
// The serialised state counts its skipped keys in a u32.
const _: () = assert!(SKIPPED_KEYS_MAX <= u32::MAX as usize);
/// HKDF info of the root chain.
pub const ROOT_INFO: &[u8] = b"ferry_ratchet_root_v1";
/// HKDF info of a message key's AEAD key and nonce.
pub const MESSAGE_INFO: &[u8] = b"ferry_ratchet_message_v1";
/// Version of the serialised state.
const STATE_VERSION: u8 = 1;

/// Why a message was not decrypted. The state is unchanged in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RatchetError {
    /// The header is not `HEADER_BYTES` long or has another version.
    #[error("a malformed message header")]
    BadHeader,
    /// The header's ratchet key is a low-order point.
    #[error("the header's ratchet key is a low-order point")]
    WeakKey,
    /// The header asks to skip more than `SKIP_PER_CHAIN_MAX` keys.
    #[error("the message is too far ahead of its chain")]
    TooFarAhead,
    /// No key opens it: forged, damaged, or already decrypted (a replay).
    #[error("no key opens the message (forged, damaged or a replay)")]
    Decrypt,
    /// This side has no sending chain yet (a responder must receive first).
    #[error("no sending chain yet (receive first)")]
    NoSendingChain,
    /// A serialised state is malformed.
    #[error("a malformed ratchet state")]
    BadState,
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub dh: [u8; 32],
    /// Messages in the sender's previous sending chain.
    pub pn: u32,
    /// This message's number in its chain.
    pub n: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0] = VERSION;
        b[1..33].copy_from_slice(&self.dh);
        b[33..37].copy_from_slice(&self.pn.to_be_bytes());
        b[37..41].copy_from_slice(&self.n.to_be_bytes());
        b
    }
    pub fn decode(b: &[u8]) -> Result<Header, RatchetError> {
        if b.len() != HEADER_BYTES || b[0] != VERSION {
            return Err(RatchetError::BadHeader);
        }
        let mut dh = [0u8; 32];
        dh.copy_from_slice(&b[1..33]);
        Ok(Header {
            dh,
            pn: u32::from_be_bytes([b[33], b[34], b[35], b[36]]),
            n: u32::from_be_bytes([b[37], b[38], b[39], b[40]]),
        })
    }
}

/// A skipped message key: (their ratchet key, message number, key).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Skipped {
    #[zeroize(skip)]
    dh: [u8; 32],
    #[zeroize(skip)]
    n: u32,
    mk: [u8; 32],
    /// Insertion order (the oldest goes first when full).
    #[zeroize(skip)]
    seq: u64,
    /// A used or evicted slot is dead: its key is zeroed in place.
    #[zeroize(skip)]
    live: bool,
}

/// Skipped message keys in slots that never move: a used key is zeroed where it lies, and
/// growing copies the slots and drops the old ones (each zeroizing itself), so no copy of a key
/// is left behind in freed memory.
#[derive(Clone, Default)]
struct SkippedKeys {
    slots: Vec<Skipped>,
    next_seq: u64,
    live: usize,
}

impl SkippedKeys {
    fn len(&self) -> usize {
        self.live
    }

    fn find(&self, dh: &[u8; 32], n: u32) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.live && s.n == n && s.dh == *dh)
    }

    fn kill(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i)
            && s.live
        {
            s.mk.zeroize();
            s.live = false;
            self.live -= 1;
        }
    }

    /// Adds a key; when `SKIPPED_KEYS_MAX` are held, the oldest is dropped.
    fn insert(&mut self, dh: [u8; 32], n: u32, mk: &[u8; 32]) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let new = Skipped {
            dh,
            n,
            mk: *mk,
            seq,
            live: true,
        };
        let slot = match self.slots.iter().position(|s| !s.live) {
            Some(i) => i,
            None if self.slots.len() < SKIPPED_KEYS_MAX => {
                if self.slots.len() == self.slots.capacity() {
                    let cap = (self.slots.capacity() * 2).clamp(16, SKIPPED_KEYS_MAX);
                    let mut grown = Vec::with_capacity(cap);
                    grown.extend(self.slots.iter().cloned());
                    // The old buffer's slots zeroize themselves as they drop.
                    self.slots = grown;
                }
                self.slots.push(new);
                self.live += 1;
                return;
            }
            None => {
                // Full: the oldest goes.
                let oldest = self
                    .slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.seq)
                    .map_or(0, |(i, _)| i);
                self.kill(oldest);
                oldest
            }
        };
        // Assigning drops the dead slot's value (zeroized) in place.
        self.slots[slot] = new;
        self.live += 1;
        debug_assert!(self.live <= SKIPPED_KEYS_MAX);
    }

    /// The live keys, oldest first.
    fn live_in_order(&self) -> Vec<&Skipped> {
        let mut v: Vec<&Skipped> = self.slots.iter().filter(|s| s.live).collect();
        v.sort_by_key(|s| s.seq);
        v
    }
}

/// The part of the state one message may change (small: copied per decryption).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct Chains {
    dhs: KeyPair,
    #[zeroize(skip)]
    dhr: Option<[u8; 32]>,
    rk: [u8; 32],
    cks: Option<[u8; 32]>,
    ckr: Option<[u8; 32]>,
    #[zeroize(skip)]
    ns: u32,
    #[zeroize(skip)]
    nr: u32,
    #[zeroize(skip)]
    pn: u32,
}

/// One side of a session.
#[derive(Clone)]
pub struct Ratchet {
    c: Chains,
    skipped: SkippedKeys,
}

impl core::fmt::Debug for Ratchet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ratchet")
            .field("ns", &self.c.ns)
            .field("nr", &self.c.nr)
            .field("pn", &self.c.pn)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

fn kdf_rk(rk: &[u8; 32], dh_out: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    // Version 1: the post-quantum input is empty.
    let out = hkdf::<64>(rk, &[dh_out, &[]], ROOT_INFO);
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    a.copy_from_slice(&out[..32]);
    b.copy_from_slice(&out[32..]);
    (a, b)
}

fn kdf_ck(ck: &[u8; 32]) -> ([u8; 32], Zeroizing<[u8; 32]>) {
    (*hmac(ck, &[0x02]), hmac(ck, &[0x01]))
}

fn aad(ad: &[u8], header: &[u8; HEADER_BYTES]) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(ad.len() + HEADER_BYTES));
    v.extend_from_slice(ad);
    v.extend_from_slice(header);
    v
}

impl Ratchet {
    /// The initiator (Alice) after PQXDH: `sk` the agreed secret, `their_ratchet` Bob's signed
    /// prekey, which is his first ratchet key.
    pub fn initiator(
        rng: &mut impl Rng,
        sk: &[u8; 32],
        their_ratchet: &[u8; 32],
    ) -> Result<Ratchet, RatchetError> {
        let dhs = KeyPair::generate(rng);
        let out = dh(dhs.secret(), their_ratchet).ok_or(RatchetError::WeakKey)?;
        let (rk, cks) = kdf_rk(sk, &out);
        Ok(Ratchet {
            c: Chains {
                dhs,
                dhr: Some(*their_ratchet),
                rk,
                cks: Some(cks),
                ckr: None,
                ns: 0,
                nr: 0,
                pn: 0,
            },
            skipped: SkippedKeys::default(),
        })
    }

    /// The responder (Bob) after PQXDH: his signed prekey pair is the first ratchet key.
    pub fn responder(sk: &[u8; 32], our_ratchet: KeyPair) -> Ratchet {
        Ratchet {
            c: Chains {
                dhs: our_ratchet,
                dhr: None,
                rk: *sk,
                cks: None,
                ckr: None,
                ns: 0,
                nr: 0,
                pn: 0,
            },
            skipped: SkippedKeys::default(),
        }
    }

    /// Whether this side can send (a responder can once it has received).
    pub fn can_send(&self) -> bool {
        self.c.cks.is_some()
    }

    /// Skipped message keys held.
    pub fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }

    /// Encrypts `plaintext`, binding `ad`; returns the header and the ciphertext.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        ad: &[u8],
    ) -> Result<([u8; HEADER_BYTES], Vec<u8>), RatchetError> {
        let cks = self.c.cks.as_ref().ok_or(RatchetError::NoSendingChain)?;
        // 2^32 messages in one chain cannot happen before the other side answers; refuse
        // (before anything changes) rather than wrap.
        let ns_next = self
            .c
            .ns
            .checked_add(1)
            .ok_or(RatchetError::NoSendingChain)?;
        let (next, mk) = kdf_ck(cks);
        let header = Header {
            dh: *self.c.dhs.public(),
            pn: self.c.pn,
            n: self.c.ns,
        }
        .encode();
        self.c.cks = Some(next);
        self.c.ns = ns_next;
        let ct = seal(&mk, MESSAGE_INFO, &aad(ad, &header), plaintext);
        Ok((header, ct))
    }

    /// Decrypts a message. On any error nothing changed.
    pub fn decrypt(
        &mut self,
        rng: &mut impl Rng,
        header: &[u8],
        ciphertext: &[u8],
        ad: &[u8],
    ) -> Result<Vec<u8>, RatchetError> {
        let h = Header::decode(header)?;
        let mut hb = [0u8; HEADER_BYTES];
        hb.copy_from_slice(header);
        let aad = aad(ad, &hb);

        // A skipped key: use it, and drop it only if the message opened.
        if let Some(i) = self.skipped.find(&h.dh, h.n) {
            let pt = open(&self.skipped.slots[i].mk, MESSAGE_INFO, &aad, ciphertext)
                .ok_or(RatchetError::Decrypt)?;
            self.skipped.kill(i);
            return Ok(pt);
        }

        let mut c = self.c.clone();
        let new_dh = c.dhr != Some(h.dh);
        // The bounds, and the exact room for the keys to skip, before any key is derived (a
        // buffer that grew would leave copies of keys behind).
        let first = if new_dh && c.ckr.is_some() {
            if h.pn > c.nr.saturating_add(SKIP_PER_CHAIN_MAX) {
                return Err(RatchetError::TooFarAhead);
            }
            h.pn.saturating_sub(c.nr)
        } else {
            0
        };
        let from = if new_dh { 0 } else { c.nr };
        if h.n > from.saturating_add(SKIP_PER_CHAIN_MAX) {
            return Err(RatchetError::TooFarAhead);
        }
        let mut staged: Vec<Skipped> =
            Vec::with_capacity(first as usize + h.n.saturating_sub(from) as usize);
        if new_dh {
            // The old receiving chain's remaining keys, then a DH ratchet step.
            skip(&mut c, h.pn, &mut staged);
            c.pn = c.ns;
            c.ns = 0;
            c.nr = 0;
            c.dhr = Some(h.dh);
            let out = dh(c.dhs.secret(), &h.dh).ok_or(RatchetError::WeakKey)?;
            let (rk, ckr) = kdf_rk(&c.rk, &out);
            c.dhs = KeyPair::generate(rng);
            let out = dh(c.dhs.secret(), &h.dh).ok_or(RatchetError::WeakKey)?;
            let (rk2, cks) = kdf_rk(&rk, &out);
            c.rk = rk2;
            c.ckr = Some(ckr);
            c.cks = Some(cks);
        }
        skip(&mut c, h.n, &mut staged);
        let ckr = c.ckr.as_ref().ok_or(RatchetError::Decrypt)?;
        let (next, mk) = kdf_ck(ckr);
        c.ckr = Some(next);
        c.nr = c.nr.checked_add(1).ok_or(RatchetError::TooFarAhead)?;
        let pt = open(&mk, MESSAGE_INFO, &aad, ciphertext).ok_or(RatchetError::Decrypt)?;

        // Commit. (`staged` drops afterwards, zeroizing its copies.)
        self.c = c;
        for s in &staged {
            self.skipped.insert(s.dh, s.n, &s.mk);
        }
        debug_assert!(self.skipped.len() <= SKIPPED_KEYS_MAX);
        Ok(pt)
    }

    /// The state as bytes for the application to persist (zeroized when dropped). Load it with
    /// [`Ratchet::from_bytes`].
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let c = &self.c;
        let mut b = Zeroizing::new(Vec::with_capacity(180 + self.skipped.len() * 68));
        b.push(STATE_VERSION);
        b.extend_from_slice(c.dhs.secret());
        let opt = |b: &mut Vec<u8>, v: &Option<[u8; 32]>| {
            b.push(u8::from(v.is_some()));
            b.extend_from_slice(v.as_ref().unwrap_or(&[0u8; 32]));
        };
        opt(&mut b, &c.dhr);
        b.extend_from_slice(&c.rk);
        opt(&mut b, &c.cks);
        opt(&mut b, &c.ckr);
        for v in [c.ns, c.nr, c.pn] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        let n = u32::try_from(self.skipped.len())
            .expect("at most SKIPPED_KEYS_MAX skipped keys, which fits a u32");
        b.extend_from_slice(&n.to_be_bytes());
        for s in self.skipped.live_in_order() {
            b.extend_from_slice(&s.dh);
            b.extend_from_slice(&s.n.to_be_bytes());
            b.extend_from_slice(&s.mk);
        }
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<Ratchet, RatchetError> {
        let mut r = Reader { b, at: 0 };
        if r.u8()? != STATE_VERSION {
            return Err(RatchetError::BadState);
        }
        let dhs = KeyPair::from_secret(r.key()?);
        let dhr = r.opt()?;
        let rk = r.key()?;
        let cks = r.opt()?;
        let ckr = r.opt()?;
        let (ns, nr, pn) = (r.u32()?, r.u32()?, r.u32()?);
        let n = usize::try_from(r.u32()?).map_err(|_| RatchetError::BadState)?;
        if n > SKIPPED_KEYS_MAX {
            return Err(RatchetError::BadState);
        }
        let mut skipped = SkippedKeys::default();
        for _ in 0..n {
            let dh = r.key()?;
            let n = r.u32()?;
            let mut mk = r.key()?;
            skipped.insert(dh, n, &mk);
            mk.zeroize();
        }
        if r.at != b.len() {
            return Err(RatchetError::BadState);
        }
        Ok(Ratchet {
            c: Chains {
                dhs,
                dhr,
                rk,
                cks,
                ckr,
                ns,
                nr,
                pn,
            },
            skipped,
        })
    }
}

/// Derives and stages the receiving chain's keys up to message `until` (`decrypt` checked the
/// bound and reserved the room before any key was derived).
fn skip(c: &mut Chains, until: u32, staged: &mut Vec<Skipped>) {
    let Some(mut ck) = c.ckr else {
        return;
    };
    debug_assert!(until <= c.nr.saturating_add(SKIP_PER_CHAIN_MAX));
    let dhr = c.dhr.unwrap_or([0u8; 32]);
    while c.nr < until {
        let (next, mk) = kdf_ck(&ck);
        debug_assert!(
            staged.len() < staged.capacity(),
            "room reserved before skipping"
        );
        staged.push(Skipped {
            dh: dhr,
            n: c.nr,
            mk: *mk,
            seq: 0,
            live: true,
        });
        ck.zeroize();
        ck = next;
        c.nr += 1;
    }
    c.ckr = Some(ck);
    ck.zeroize();
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RatchetError> {
        let end = self.at.checked_add(n).ok_or(RatchetError::BadState)?;
        let s = self.b.get(self.at..end).ok_or(RatchetError::BadState)?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RatchetError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RatchetError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn key(&mut self) -> Result<[u8; 32], RatchetError> {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.take(32)?);
        Ok(k)
    }
    fn opt(&mut self) -> Result<Option<[u8; 32]>, RatchetError> {
        let flag = self.u8()?;
        let k = self.key()?;
        match flag {
            0 if k == [0u8; 32] => Ok(None),
            1 => Ok(Some(k)),
            _ => Err(RatchetError::BadState),
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    pub(crate) fn pair(seed: u64) -> (Ratchet, Ratchet, ChaCha20Rng) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let sk = [seed as u8; 32];
        let bob_spk = KeyPair::generate(&mut rng);
        let alice = Ratchet::initiator(&mut rng, &sk, bob_spk.public()).unwrap();
        let bob = Ratchet::responder(&sk, bob_spk);
        (alice, bob, rng)
    }

    #[test]
    fn a_conversation_with_ratchet_steps() {
        let (mut a, mut b, mut rng) = pair(1);
        assert!(!b.can_send());
        assert_eq!(
            b.encrypt(b"x", b"ad").unwrap_err(),
            RatchetError::NoSendingChain
        );
        for round in 0..5u8 {
            for i in 0..3u8 {
                let (h, ct) = a.encrypt(&[round, i], b"ad").unwrap();
                assert_eq!(b.decrypt(&mut rng, &h, &ct, b"ad").unwrap(), [round, i]);
            }
            let (h, ct) = b.encrypt(&[round], b"ad").unwrap();
            assert_eq!(a.decrypt(&mut rng, &h, &ct, b"ad").unwrap(), [round]);
        }
    }

    #[test]
    fn out_of_order_and_replays() {
        let (mut a, mut b, mut rng) = pair(2);
        let msgs: Vec<_> = (0..5u8).map(|i| a.encrypt(&[i], b"").unwrap()).collect();
        for i in [3usize, 0, 4, 1, 2] {
            let (h, ct) = &msgs[i];
            assert_eq!(b.decrypt(&mut rng, h, ct, b"").unwrap(), [i as u8]);
        }
        assert_eq!(b.skipped_keys(), 0);
        for (h, ct) in &msgs {
            assert_eq!(
                b.decrypt(&mut rng, h, ct, b"").unwrap_err(),
                RatchetError::Decrypt
            );
        }
    }

    #[test]
    fn forgeries_change_nothing() {
        let (mut a, mut b, mut rng) = pair(3);
        let (h, ct) = a.encrypt(b"hello", b"ad").unwrap();
        let before = b.to_bytes();
        for i in 0..h.len() {
            let mut bad = h;
            bad[i] ^= 0x40;
            assert!(b.decrypt(&mut rng, &bad, &ct, b"ad").is_err());
            assert_eq!(*b.to_bytes(), *before, "header byte {i}");
        }
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 1;
            assert!(b.decrypt(&mut rng, &h, &bad, b"ad").is_err());
        }
        assert!(b.decrypt(&mut rng, &h, &ct, b"other ad").is_err());
        assert_eq!(*b.to_bytes(), *before);
        assert_eq!(b.decrypt(&mut rng, &h, &ct, b"ad").unwrap(), b"hello");
    }

    #[test]
    fn skip_bounds() {
        let (mut a, mut b, mut rng) = pair(4);
        let mut last = None;
        for _ in 0..=SKIP_PER_CHAIN_MAX + 1 {
            last = Some(a.encrypt(b"m", b"").unwrap());
        }
        let (h, ct) = last.unwrap();
        let before = b.to_bytes();
        assert_eq!(
            b.decrypt(&mut rng, &h, &ct, b"").unwrap_err(),
            RatchetError::TooFarAhead
        );
        assert_eq!(*b.to_bytes(), *before);

        // Within the bound: every key in between is kept, and the total stays bounded.
        let (mut a, mut b, mut rng) = pair(5);
        let mut kept = Vec::new();
        for round in 0..3 {
            let msgs: Vec<_> = (0..SKIP_PER_CHAIN_MAX)
                .map(|_| a.encrypt(b"m", b"").unwrap())
                .collect();
            let (h, ct) = msgs.last().unwrap();
            b.decrypt(&mut rng, h, ct, b"").unwrap();
            kept.push(msgs);
            assert!(b.skipped_keys() <= SKIPPED_KEYS_MAX);
            // A reply makes a new chain for the next round.
            let (h, ct) = b.encrypt(b"r", b"").unwrap();
            a.decrypt(&mut rng, &h, &ct, b"").unwrap();
            let _ = round;
        }
        assert_eq!(b.skipped_keys(), SKIPPED_KEYS_MAX);
        // The oldest chain's keys were dropped; the newest still open.
        let (h, ct) = &kept[0][0];
        assert!(b.decrypt(&mut rng, h, ct, b"").is_err());
        let (h, ct) = &kept[2][0];
        assert_eq!(b.decrypt(&mut rng, h, ct, b"").unwrap(), b"m");
    }

    #[test]
    fn state_round_trips_mid_conversation() {
        let (mut a, mut b, mut rng) = pair(6);
        let m0 = a.encrypt(b"0", b"").unwrap();
        let m1 = a.encrypt(b"1", b"").unwrap();
        b.decrypt(&mut rng, &m1.0, &m1.1, b"").unwrap();
        let saved = b.to_bytes();
        let mut b2 = Ratchet::from_bytes(&saved).unwrap();
        assert_eq!(*b2.to_bytes(), *saved);
        assert_eq!(b2.decrypt(&mut rng, &m0.0, &m0.1, b"").unwrap(), b"0");
        let (h, ct) = b2.encrypt(b"r", b"").unwrap();
        assert_eq!(a.decrypt(&mut rng, &h, &ct, b"").unwrap(), b"r");
        // Truncated or extended states are refused.
        assert!(Ratchet::from_bytes(&saved[..saved.len() - 1]).is_err());
        let mut long = saved.to_vec();
        long.push(0);
        assert!(Ratchet::from_bytes(&long).is_err());
    }

    #[test]
    fn a_low_order_ratchet_key_is_refused_without_change() {
        let (mut a, mut b, mut rng) = pair(7);
        let (h, ct) = a.encrypt(b"x", b"").unwrap();
        let mut bad = Header::decode(&h).unwrap();
        bad.dh = [0u8; 32];
        let before = b.to_bytes();
        assert_eq!(
            b.decrypt(&mut rng, &bad.encode(), &ct, b"").unwrap_err(),
            RatchetError::WeakKey
        );
        assert_eq!(*b.to_bytes(), *before);
    }
}
