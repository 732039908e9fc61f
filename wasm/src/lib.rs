//! ferry's end-to-end encryption in JavaScript (wasm32 + wasm-bindgen): what must run on the
//! device, with the transport left to the page or the Node program.
//!
//! ```js
//! const bob = new Identity();
//! const bobKeys = bob.makePrekeys(10);             // publish bobKeys.bundle(); keep bobKeys
//! const alice = new Identity();
//! const s = Session.initiate(alice, bobKeys.bundle());
//! const env = s.seal(alice, utf8("hello"));        // send env to bob's dest
//! const opened = Session.accept(bob, bobKeys, env); // bob: a session and the plaintext
//! const reply = opened.session().seal(bob, utf8("hi"));
//! s.open(alice, reply);                            // → "hi"; throws if it does not authenticate
//! const saved = s.toBytes();                       // persist; Session.fromBytes(saved)
//! ```
//!
//! Randomness comes from `crypto.getRandomValues`. Every secret stays inside the wasm memory
//! until the object is freed (`free()`), then it is zeroized.

use std::collections::BTreeMap;

use ferry_crypto::envelope;
use ferry_crypto::keys::{EC_KEY_BYTES, KeyPair, encode_ec};
use ferry_crypto::pqxdh::{self, KEM_DK_BYTES, KEM_KEY_BYTES};
use ferry_crypto::session::{self, PrekeyStore};
use rand_core::{OsRng, RngCore};
use wasm_bindgen::prelude::*;
use zeroize::Zeroizing;

/// A crypto error as a JavaScript `Error` with its message (`session: ratchet: no key opens the
/// message …`).
fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Most one-time keys of each kind one `Prekeys` holds (each pair costs about 4.8 KB of wasm
/// memory): `makePrekeys` refuses more, and a stored record that announces more is not one.
pub const ONE_TIME_PREKEYS_MAX: u32 = 10_000;
// A record counts the one-time EC keys, and the KEM keys (the one-time ones and the last-resort
// one), in a u32.
const _: () = assert!(ONE_TIME_PREKEYS_MAX < u32::MAX);

/// `n` as the u32 count or length that announces it in a record, asserting `n <= max` (every
/// `max` is const-asserted to fit a u32): a clamped count would write a record that no longer
/// parses.
fn record_u32(n: usize, max: u32) -> u32 {
    u32::try_from(n)
        .ok()
        .filter(|n| *n <= max)
        .unwrap_or_else(|| panic!("prekeys record field of {n}, over its limit {max}"))
}

/// An X25519 identity key that also signs (XEdDSA).
#[wasm_bindgen]
#[derive(Debug)]
pub struct Identity {
    kp: KeyPair,
}

#[wasm_bindgen]
impl Identity {
    /// A new random identity.
    #[wasm_bindgen(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Identity {
        Identity {
            kp: KeyPair::generate(&mut OsRng),
        }
    }

    /// An identity from its stored 32-byte secret.
    #[wasm_bindgen(js_name = fromSecret)]
    pub fn from_secret(secret: &[u8]) -> Result<Identity, JsError> {
        let s: [u8; 32] = secret
            .try_into()
            .map_err(|_| JsError::new("an identity secret is 32 bytes"))?;
        Ok(Identity {
            kp: KeyPair::from_secret(s),
        })
    }

    /// The secret, to store (keep it where the platform keeps secrets).
    pub fn secret(&self) -> Vec<u8> {
        self.kp.secret().to_vec()
    }

    /// The encoded public key (33 bytes: 0x05 ‖ u).
    pub fn public(&self) -> Vec<u8> {
        encode_ec(self.kp.public()).to_vec()
    }

    /// A signed prekey, a last-resort ML-KEM-1024 key and `one_time` one-time keys of each kind
    /// (at most `ONE_TIME_PREKEYS_MAX`; throws for more).
    #[wasm_bindgen(js_name = makePrekeys)]
    pub fn make_prekeys(&self, one_time: u32) -> Result<Prekeys, JsError> {
        if one_time > ONE_TIME_PREKEYS_MAX {
            return Err(JsError::new(&format!(
                "{one_time} one-time prekeys asked for: at most {ONE_TIME_PREKEYS_MAX}"
            )));
        }
        Ok(self.prekeys(one_time))
    }
}

impl Identity {
    /// `make_prekeys` after its check.
    fn prekeys(&self, one_time: u32) -> Prekeys {
        debug_assert!(one_time <= ONE_TIME_PREKEYS_MAX);
        let sign = |m: &[u8]| {
            let mut z = [0u8; 64];
            OsRng.fill_bytes(&mut z);
            ferry_crypto::xeddsa::sign(self.kp.secret(), m, &z)
        };
        let spk = KeyPair::generate(&mut OsRng);
        let spk_sig = sign(&encode_ec(spk.public()));
        let mut p = Prekeys {
            identity: encode_ec(self.kp.public()),
            spk,
            spk_sig,
            one_time: BTreeMap::new(),
            kem: BTreeMap::new(),
        };
        for id in 0..=one_time {
            let (public, secret) = pqxdh::kem_keypair(&mut OsRng);
            let sig = sign(&public);
            // Id 0 is the last-resort KEM key; 1.. are one-time keys.
            p.kem.insert(id, (public, secret, sig, id == 0));
            if id > 0 {
                p.one_time.insert(id, KeyPair::generate(&mut OsRng));
            }
        }
        p
    }
}

type Kem = (Vec<u8>, Zeroizing<Vec<u8>>, [u8; 64], bool);

/// Prekeys: the secrets stay here; `bundle()` is what a directory hands to one initiator.
#[wasm_bindgen]
pub struct Prekeys {
    identity: [u8; EC_KEY_BYTES],
    spk: KeyPair,
    spk_sig: [u8; 64],
    one_time: BTreeMap<u32, KeyPair>,
    kem: BTreeMap<u32, Kem>,
}

impl std::fmt::Debug for Prekeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prekeys")
            .field("one_time", &self.one_time.len())
            .field("kem", &self.kem.len())
            .finish_non_exhaustive()
    }
}

/// Signed prekey id (there is one per `Prekeys`).
const SPK_ID: u32 = 1;

#[wasm_bindgen]
impl Prekeys {
    /// A bundle using the lowest one-time keys left (or the last-resort KEM key and no
    /// one-time EC key): identity ‖ spk id ‖ spk ‖ spk sig ‖ pq id ‖ pq ‖ pq sig ‖ has opk ‖
    /// opk id ‖ opk (big-endian ids).
    pub fn bundle(&self) -> Vec<u8> {
        let opk = self.one_time.iter().next();
        let (pq_id, (pq, _, pq_sig, _)) = self
            .kem
            .iter()
            .find(|(_, k)| !k.3)
            .or_else(|| self.kem.iter().next())
            .map(|(id, k)| (*id, k))
            .unwrap_or_else(|| unreachable!("the last-resort key is never removed"));
        let mut b = Vec::with_capacity(BUNDLE_BYTES);
        b.extend_from_slice(&self.identity);
        b.extend_from_slice(&SPK_ID.to_be_bytes());
        b.extend_from_slice(&encode_ec(self.spk.public()));
        b.extend_from_slice(&self.spk_sig);
        b.extend_from_slice(&pq_id.to_be_bytes());
        b.extend_from_slice(pq);
        b.extend_from_slice(pq_sig);
        b.push(u8::from(opk.is_some()));
        b.extend_from_slice(&opk.map_or(0, |(id, _)| *id).to_be_bytes());
        b.extend_from_slice(&opk.map_or([0; EC_KEY_BYTES], |(_, k)| encode_ec(k.public())));
        debug_assert_eq!(b.len(), BUNDLE_BYTES);
        b
    }

    /// The secrets, to persist (keep them where the platform keeps secrets): without them, a
    /// first contact made with this bundle cannot be accepted after a reload.
    ///
    /// Record: identity ‖ spk secret ‖ spk sig ‖ n_ec:u32 ‖ n_ec × (id:u32 ‖ secret) ‖
    /// n_kem:u32 ‖ n_kem × (id:u32 ‖ last:u8 ‖ public ‖ sig ‖ len:u32 ‖ secret), big-endian.
    #[wasm_bindgen(js_name = toBytes)]
    pub fn to_bytes(&self) -> Vec<u8> {
        // Every `Prekeys` came from `make_prekeys` or `decode`, which hold each count to
        // ONE_TIME_PREKEYS_MAX (plus the last-resort KEM key) and each KEM secret to KEM_DK_BYTES;
        // accepting a first message only removes keys.
        let mut b = Vec::new();
        b.extend_from_slice(&self.identity);
        b.extend_from_slice(self.spk.secret());
        b.extend_from_slice(&self.spk_sig);
        b.extend_from_slice(&record_u32(self.one_time.len(), ONE_TIME_PREKEYS_MAX).to_be_bytes());
        for (id, k) in &self.one_time {
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(k.secret());
        }
        b.extend_from_slice(&record_u32(self.kem.len(), ONE_TIME_PREKEYS_MAX + 1).to_be_bytes());
        for (id, (public, secret, sig, last)) in &self.kem {
            b.extend_from_slice(&id.to_be_bytes());
            b.push(u8::from(*last));
            b.extend_from_slice(public);
            b.extend_from_slice(sig);
            assert_eq!(secret.len(), KEM_DK_BYTES, "a KEM secret of another size");
            b.extend_from_slice(&KEM_DK_BYTES_U32.to_be_bytes());
            b.extend_from_slice(secret);
        }
        b
    }

    #[wasm_bindgen(js_name = fromBytes)]
    pub fn from_bytes(b: &[u8]) -> Result<Prekeys, JsError> {
        Prekeys::decode(b).ok_or_else(|| JsError::new("not a prekeys record"))
    }

    /// One-time keys of each kind left (EC, PQ).
    pub fn left(&self) -> Vec<u32> {
        let pq = self.kem.values().filter(|k| !k.3).count();
        vec![
            record_u32(self.one_time.len(), ONE_TIME_PREKEYS_MAX),
            record_u32(pq, ONE_TIME_PREKEYS_MAX),
        ]
    }
}

/// [`KEM_DK_BYTES`], the length a record gives every KEM secret.
const KEM_DK_BYTES_U32: u32 = 3168;
const _: () = assert!(KEM_DK_BYTES_U32 as usize == KEM_DK_BYTES);

impl Prekeys {
    /// Parses a record of [`Prekeys::to_bytes`]; `None` when it is not one: cut short, trailing
    /// bytes, a count over `ONE_TIME_PREKEYS_MAX`, a KEM secret that is not `KEM_DK_BYTES` long,
    /// or no last-resort KEM key.
    fn decode(b: &[u8]) -> Option<Prekeys> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = b.get(at..at.checked_add(n)?)?;
            at += n;
            Some(s)
        };
        fn u32_of(s: &[u8]) -> Option<u32> {
            Some(u32::from_be_bytes(s.try_into().ok()?))
        }
        let identity: [u8; EC_KEY_BYTES] = take(EC_KEY_BYTES)?.try_into().ok()?;
        let spk: [u8; 32] = take(32)?.try_into().ok()?;
        let spk_sig: [u8; 64] = take(64)?.try_into().ok()?;
        let mut p = Prekeys {
            identity,
            spk: KeyPair::from_secret(spk),
            spk_sig,
            one_time: BTreeMap::new(),
            kem: BTreeMap::new(),
        };
        let n_ec = u32_of(take(4)?)?;
        if n_ec > ONE_TIME_PREKEYS_MAX {
            return None;
        }
        for _ in 0..n_ec {
            let id = u32_of(take(4)?)?;
            let s: [u8; 32] = take(32)?.try_into().ok()?;
            p.one_time.insert(id, KeyPair::from_secret(s));
        }
        let n_kem = u32_of(take(4)?)?;
        if n_kem > ONE_TIME_PREKEYS_MAX + 1 {
            return None;
        }
        for _ in 0..n_kem {
            let id = u32_of(take(4)?)?;
            let last = take(1)?[0] == 1;
            let public = take(KEM_KEY_BYTES)?.to_vec();
            let sig: [u8; 64] = take(64)?.try_into().ok()?;
            if u32_of(take(4)?)? != KEM_DK_BYTES_U32 {
                return None;
            }
            let secret = Zeroizing::new(take(KEM_DK_BYTES)?.to_vec());
            p.kem.insert(id, (public, secret, sig, last));
        }
        // Exactly one last-resort key, so at most ONE_TIME_PREKEYS_MAX one-time ones.
        if at != b.len() || p.kem.values().filter(|k| k.3).count() != 1 {
            return None;
        }
        Some(p)
    }
}

const BUNDLE_BYTES: usize =
    EC_KEY_BYTES + 4 + EC_KEY_BYTES + 64 + 4 + KEM_KEY_BYTES + 64 + 1 + 4 + EC_KEY_BYTES;

impl PrekeyStore for Prekeys {
    fn signed_prekey(&self, id: u32) -> Option<KeyPair> {
        (id == SPK_ID).then(|| self.spk.clone())
    }
    fn one_time_prekey(&self, id: u32) -> Option<KeyPair> {
        self.one_time.get(&id).cloned()
    }
    fn kem_prekey(&self, id: u32) -> Option<Zeroizing<Vec<u8>>> {
        self.kem.get(&id).map(|k| k.1.clone())
    }
    fn consume(&mut self, one_time_prekey: Option<u32>, kem_prekey: u32) {
        if let Some(id) = one_time_prekey {
            self.one_time.remove(&id);
        }
        if self.kem.get(&kem_prekey).is_some_and(|k| !k.3) {
            self.kem.remove(&kem_prekey);
        }
    }
}

fn decode_bundle(b: &[u8]) -> Result<pqxdh::Bundle<'_>, JsError> {
    if b.len() != BUNDLE_BYTES {
        return Err(JsError::new("not a bundle"));
    }
    let u32_at = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let key = |at: usize| -> [u8; EC_KEY_BYTES] {
        let mut k = [0u8; EC_KEY_BYTES];
        k.copy_from_slice(&b[at..at + EC_KEY_BYTES]);
        k
    };
    let sig = |at: usize| -> [u8; 64] {
        let mut s = [0u8; 64];
        s.copy_from_slice(&b[at..at + 64]);
        s
    };
    let mut at = EC_KEY_BYTES;
    let spk_id = u32_at(at);
    let spk = key(at + 4);
    let spk_sig = sig(at + 4 + EC_KEY_BYTES);
    at += 4 + EC_KEY_BYTES + 64;
    let pq_id = u32_at(at);
    let pq = &b[at + 4..at + 4 + KEM_KEY_BYTES];
    let pq_sig = sig(at + 4 + KEM_KEY_BYTES);
    at += 4 + KEM_KEY_BYTES + 64;
    let opk = match b[at] {
        0 => None,
        1 => Some((u32_at(at + 1), key(at + 5))),
        _ => return Err(JsError::new("not a bundle")),
    };
    Ok(pqxdh::Bundle {
        identity: key(0),
        spk_id,
        spk,
        spk_sig,
        pq_id,
        pq,
        pq_sig,
        opk,
    })
}

/// An end-to-end session with one identity.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Session {
    s: session::Session,
}

/// A session a first message started, and that message's plaintext.
#[wasm_bindgen]
pub struct Accepted {
    session: Option<Session>,
    plaintext: Vec<u8>,
    sender: Vec<u8>,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted").finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl Accepted {
    /// The session (once: it moves out).
    pub fn session(&mut self) -> Result<Session, JsError> {
        self.session
            .take()
            .ok_or_else(|| JsError::new("session already taken"))
    }
    pub fn plaintext(&self) -> Vec<u8> {
        self.plaintext.clone()
    }
    /// The sender's encoded identity (authenticated).
    pub fn sender(&self) -> Vec<u8> {
        self.sender.clone()
    }
}

#[wasm_bindgen]
impl Session {
    /// First contact with the owner of `bundle` (checks every signature and key; throws if one
    /// is bad).
    pub fn initiate(identity: &Identity, bundle: &[u8]) -> Result<Session, JsError> {
        let b = decode_bundle(bundle)?;
        Ok(Session {
            s: session::Session::initiate(&mut OsRng, &identity.kp, &b).map_err(js_err)?,
        })
    }

    /// The responder's side of a first message: a new session and the plaintext. The one-time
    /// keys it used are removed from `prekeys`.
    pub fn accept(
        identity: &Identity,
        prekeys: &mut Prekeys,
        envelope_bytes: &[u8],
    ) -> Result<Accepted, JsError> {
        let inner = envelope::open_with(&identity.kp, envelope_bytes).map_err(js_err)?;
        let (s, r) =
            session::Session::accept(&mut OsRng, &identity.kp, prekeys, &inner).map_err(js_err)?;
        Ok(Accepted {
            session: Some(Session { s }),
            plaintext: r.plaintext,
            sender: r.sender.to_vec(),
        })
    }

    /// Encrypts `plaintext` into a sealed envelope for the other side (a random message id).
    pub fn seal(&mut self, identity: &Identity, plaintext: &[u8]) -> Result<Vec<u8>, JsError> {
        let mut msg_id = [0u8; 16];
        OsRng.fill_bytes(&mut msg_id);
        self.s
            .seal(
                &mut OsRng,
                &encode_ec(identity.kp.public()),
                msg_id,
                plaintext,
            )
            .map_err(js_err)
    }

    /// Decrypts an envelope from the other side; throws (and changes nothing) if it does not
    /// authenticate.
    pub fn open(&mut self, identity: &Identity, envelope_bytes: &[u8]) -> Result<Vec<u8>, JsError> {
        let inner = envelope::open_with(&identity.kp, envelope_bytes).map_err(js_err)?;
        Ok(self
            .s
            .receive(&mut OsRng, &inner)
            .map_err(js_err)?
            .plaintext)
    }

    /// The other side's encoded identity.
    #[wasm_bindgen(js_name = theirIdentity)]
    pub fn their_identity(&self) -> Vec<u8> {
        self.s.their_identity().to_vec()
    }

    /// The state, to persist (secret).
    #[wasm_bindgen(js_name = toBytes)]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.s.to_bytes().to_vec()
    }

    #[wasm_bindgen(js_name = fromBytes)]
    pub fn from_bytes(b: &[u8]) -> Result<Session, JsError> {
        Ok(Session {
            s: session::Session::from_bytes(b).map_err(js_err)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// identity ‖ spk secret ‖ spk sig: where a record's counts begin.
    const HEAD_BYTES: usize = EC_KEY_BYTES + 32 + 64;

    #[test]
    fn a_prekeys_record_round_trips() {
        let p = Identity::new().prekeys(2);
        let bytes = p.to_bytes();
        let q = Prekeys::decode(&bytes).unwrap();
        assert_eq!(q.to_bytes(), bytes);
        assert_eq!(q.left(), [2, 2]);
        assert_eq!(q.bundle(), p.bundle());
    }

    /// A stored record is checked against the limits every `Prekeys` keeps, so that writing it
    /// again never needs a count or a length that does not fit (once: a KEM secret's length, or
    /// a count past u32, was written as 0 before the bytes it did not count).
    #[test]
    fn a_record_past_its_limits_is_not_one() {
        let bytes = Identity::new().prekeys(0).to_bytes();
        let (head, kem) = (&bytes[..HEAD_BYTES], &bytes[HEAD_BYTES + 4..]);
        assert_eq!(
            bytes[HEAD_BYTES..HEAD_BYTES + 4],
            [0; 4],
            "no one-time EC keys"
        );
        let with_ec = |n: u32, entries: u32| {
            let mut b = head.to_vec();
            b.extend_from_slice(&n.to_be_bytes());
            for id in 0..entries {
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&[7; 32]);
            }
            b.extend_from_slice(kem);
            b
        };
        assert!(Prekeys::decode(&with_ec(1, 1)).is_some());
        let over = ONE_TIME_PREKEYS_MAX + 1;
        assert!(Prekeys::decode(&with_ec(over, over)).is_none());
        // A KEM secret one byte short, its length saying so.
        let len_at = bytes.len() - KEM_DK_BYTES - 4;
        let mut short = bytes.clone();
        short[len_at..len_at + 4].copy_from_slice(&(KEM_DK_BYTES_U32 - 1).to_be_bytes());
        short.pop();
        assert!(Prekeys::decode(&short).is_none());
        // No last-resort KEM key: its bundle could not be built.
        let mut none = bytes[..HEAD_BYTES + 4].to_vec();
        none.extend_from_slice(&0u32.to_be_bytes());
        assert!(Prekeys::decode(&none).is_none());
        assert!(Prekeys::decode(&bytes).is_some());
    }
}
