//! A session between two identities: PQXDH first contact, then the Double Ratchet, every message
//! in a sealed envelope.
//!
//! The initiator's messages are `Prekey` envelopes (the PQXDH `Init`, then a ratchet message)
//! until the first reply arrives, so that any of them can start the session on the other side
//! (the first may be lost, or arrive last). Every ratchet message binds, as associated data, the
//! PQXDH AD (both identities), the envelope kind and the message id, so the sender, the kind and
//! the id inside an envelope cannot be swapped. The application persists [`Session::to_bytes`]
//! and restores it with [`Session::from_bytes`].

use alloc::vec::Vec;
use zeroize::Zeroizing;

use crate::Rng;
use crate::envelope::{self, EnvelopeError, Inner, Kind};
use crate::keys::{EC_KEY_BYTES, KeyPair, decode_ec, encode_ec};
use crate::pqxdh::{self, AD_BYTES, Bundle, INIT_BYTES, Init, PqxdhError};
use crate::ratchet::{HEADER_BYTES, Ratchet, RatchetError};

/// Version of the serialised session.
const STATE_VERSION: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("key agreement: {0}")]
    Pqxdh(#[from] PqxdhError),
    #[error("ratchet: {0}")]
    Ratchet(#[from] RatchetError),
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// A prekey message names keys this device does not have (used up, or never had).
    #[error("the message names prekeys this device does not have")]
    UnknownPrekey,
    /// The message is not from the identity this session is with.
    #[error("the message is not from this session's peer")]
    WrongSender,
    /// The body is too short for its kind, or a serialised session is malformed.
    #[error("a malformed message or session")]
    Malformed,
}

/// Where a responder finds the secrets of the prekeys it published, by id.
pub trait PrekeyStore {
    fn signed_prekey(&self, id: u32) -> Option<KeyPair>;
    fn one_time_prekey(&self, id: u32) -> Option<KeyPair>;
    /// The ML-KEM decapsulation key (FIPS 203 encoding) of KEM prekey `id`.
    fn kem_prekey(&self, id: u32) -> Option<Zeroizing<Vec<u8>>>;
    /// A session was established with these one-time keys: delete them (a last-resort KEM key
    /// is kept; the store knows which it is).
    fn consume(&mut self, one_time_prekey: Option<u32>, kem_prekey: u32);
}

/// A message that opened: who sent it (authenticated), its id and its plaintext.
#[derive(Debug, PartialEq, Eq)]
pub struct Received {
    pub sender: [u8; EC_KEY_BYTES],
    pub msg_id: [u8; 16],
    pub plaintext: Vec<u8>,
}

/// One side of a conversation with one identity.
#[derive(Clone)]
pub struct Session {
    ratchet: Ratchet,
    ad: [u8; AD_BYTES],
    their_identity: [u8; EC_KEY_BYTES],
    /// The encoded `Init` sent with every message until the first reply (initiator only).
    pending_init: Option<Vec<u8>>,
    /// SHA-256 of the `Init` that started this session (both sides): later `Prekey` messages
    /// with the same `Init` belong here.
    init_id: [u8; 32],
}

impl core::fmt::Debug for Session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session")
            .field("their_identity", &self.their_identity)
            .field("pending_init", &self.pending_init.is_some())
            .field("ratchet", &self.ratchet)
            .finish()
    }
}

fn init_id(init: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(init).into()
}

fn message_ad(session_ad: &[u8; AD_BYTES], kind: Kind, msg_id: &[u8; 16]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_BYTES + 17);
    ad.extend_from_slice(session_ad);
    ad.push(kind as u8);
    ad.extend_from_slice(msg_id);
    ad
}

impl Session {
    /// First contact: checks `bundle` and starts a session with its owner.
    pub fn initiate(
        rng: &mut impl Rng,
        identity: &KeyPair,
        bundle: &Bundle<'_>,
    ) -> Result<Session, SessionError> {
        let (agreement, init) = pqxdh::initiate(rng, identity, bundle)?;
        let spk = decode_ec(&bundle.spk).ok_or(PqxdhError::BadKey)?;
        let ratchet = Ratchet::initiator(rng, &agreement.secret, &spk)?;
        let mut wire = Vec::with_capacity(INIT_BYTES);
        init.encode(&mut wire);
        Ok(Session {
            ratchet,
            ad: agreement.ad,
            their_identity: bundle.identity,
            init_id: init_id(&wire),
            pending_init: Some(wire),
        })
    }

    /// The identity this session is with.
    pub fn their_identity(&self) -> &[u8; EC_KEY_BYTES] {
        &self.their_identity
    }

    /// Whether the other side has answered (no `Init` is sent any more).
    pub fn established(&self) -> bool {
        self.pending_init.is_none()
    }

    /// Encrypts `plaintext` as message `msg_id` and seals it to the other identity.
    pub fn seal(
        &mut self,
        rng: &mut impl Rng,
        our_identity: &[u8; EC_KEY_BYTES],
        msg_id: [u8; 16],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SessionError> {
        let kind = if self.pending_init.is_some() {
            Kind::Prekey
        } else {
            Kind::Message
        };
        let their = decode_ec(&self.their_identity).ok_or(PqxdhError::BadKey)?;
        // Check the size before the ratchet moves.
        let body_len = self.pending_init.as_ref().map_or(0, Vec::len)
            + HEADER_BYTES
            + plaintext.len()
            + crate::kdf::TAG_BYTES;
        if envelope::bucket_for(envelope::INNER_HEADER_BYTES + body_len).is_none() {
            return Err(EnvelopeError::TooLarge.into());
        }
        let (header, ct) = self
            .ratchet
            .encrypt(plaintext, &message_ad(&self.ad, kind, &msg_id))?;
        let mut body = Vec::with_capacity(body_len);
        if let Some(init) = &self.pending_init {
            body.extend_from_slice(init);
        }
        body.extend_from_slice(&header);
        body.extend_from_slice(&ct);
        let inner = Inner {
            kind,
            sender: *our_identity,
            msg_id,
            body,
        };
        Ok(envelope::seal_to(rng, &their, &inner)?)
    }

    /// Decrypts an envelope's inner message in this session. Nothing changes unless it opens.
    pub fn receive(&mut self, rng: &mut impl Rng, inner: &Inner) -> Result<Received, SessionError> {
        if inner.sender != self.their_identity {
            return Err(SessionError::WrongSender);
        }
        let ratchet_part = match inner.kind {
            Kind::Message => &inner.body[..],
            Kind::Prekey => inner
                .body
                .get(INIT_BYTES..)
                .ok_or(SessionError::Malformed)?,
        };
        if ratchet_part.len() < HEADER_BYTES {
            return Err(SessionError::Malformed);
        }
        let (header, ct) = ratchet_part.split_at(HEADER_BYTES);
        let plaintext = self.ratchet.decrypt(
            rng,
            header,
            ct,
            &message_ad(&self.ad, inner.kind, &inner.msg_id),
        )?;
        // Anything from the other side proves it has the session: stop sending the Init.
        self.pending_init = None;
        Ok(Received {
            sender: inner.sender,
            msg_id: inner.msg_id,
            plaintext,
        })
    }

    /// The responder's side of first contact: a session from a `Prekey` message, if it opens.
    /// The one-time keys it used are consumed only then.
    pub fn accept(
        rng: &mut impl Rng,
        identity: &KeyPair,
        prekeys: &mut impl PrekeyStore,
        inner: &Inner,
    ) -> Result<(Session, Received), SessionError> {
        if inner.kind != Kind::Prekey {
            return Err(SessionError::Malformed);
        }
        let init = Init::decode(&inner.body)?;
        if init.identity != inner.sender {
            return Err(SessionError::WrongSender);
        }
        let spk = prekeys
            .signed_prekey(init.spk_id)
            .ok_or(SessionError::UnknownPrekey)?;
        let opk = match init.opk_id {
            Some(id) => Some(
                prekeys
                    .one_time_prekey(id)
                    .ok_or(SessionError::UnknownPrekey)?,
            ),
            None => None,
        };
        let dk = prekeys
            .kem_prekey(init.pq_id)
            .ok_or(SessionError::UnknownPrekey)?;
        let agreement = pqxdh::respond(identity, &spk, opk.as_ref(), &dk, &init)?;
        let mut session = Session {
            ratchet: Ratchet::responder(&agreement.secret, spk),
            ad: agreement.ad,
            their_identity: init.identity,
            pending_init: None,
            init_id: init_id(&inner.body[..INIT_BYTES]),
        };
        let received = session.receive(rng, inner)?;
        prekeys.consume(init.opk_id, init.pq_id);
        Ok((session, received))
    }

    /// Whether `inner` starts a session other than this one (the peer reinstalled, or both sides
    /// initiated at once): a `Prekey` message whose `Init` this session did not send or accept.
    pub fn is_new_contact(&self, inner: &Inner) -> bool {
        inner.kind == Kind::Prekey
            && inner
                .body
                .get(..INIT_BYTES)
                .is_none_or(|init| init_id(init) != self.init_id)
    }

    /// The session as bytes for the application to persist (zeroized when dropped).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let r = self.ratchet.to_bytes();
        let mut b = Zeroizing::new(Vec::with_capacity(r.len() + 110 + INIT_BYTES));
        b.push(STATE_VERSION);
        b.extend_from_slice(&self.ad);
        b.extend_from_slice(&self.their_identity);
        b.extend_from_slice(&self.init_id);
        match &self.pending_init {
            Some(init) => {
                b.push(1);
                b.extend_from_slice(init);
            }
            None => b.push(0),
        }
        b.extend_from_slice(&r);
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<Session, SessionError> {
        let fixed = 1 + AD_BYTES + EC_KEY_BYTES + 32 + 1;
        if b.len() < fixed || b[0] != STATE_VERSION {
            return Err(SessionError::Malformed);
        }
        let mut ad = [0u8; AD_BYTES];
        ad.copy_from_slice(&b[1..1 + AD_BYTES]);
        let mut their_identity = [0u8; EC_KEY_BYTES];
        their_identity.copy_from_slice(&b[1 + AD_BYTES..1 + AD_BYTES + EC_KEY_BYTES]);
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[fixed - 33..fixed - 1]);
        let (pending_init, rest) = match b[fixed - 1] {
            0 => (None, &b[fixed..]),
            1 if b.len() >= fixed + INIT_BYTES => (
                Some(b[fixed..fixed + INIT_BYTES].to_vec()),
                &b[fixed + INIT_BYTES..],
            ),
            _ => return Err(SessionError::Malformed),
        };
        if decode_ec(&their_identity).is_none() {
            return Err(SessionError::Malformed);
        }
        Ok(Session {
            ratchet: Ratchet::from_bytes(rest)?,
            ad,
            their_identity,
            pending_init,
            init_id: id,
        })
    }
}

/// The id of the PQXDH `Init` a `Prekey` message carries (SHA-256 of it): what a responder
/// remembers to refuse a replayed first contact once the session it started is gone.
pub fn prekey_init_id(inner: &Inner) -> Option<[u8; 32]> {
    (inner.kind == Kind::Prekey)
        .then(|| inner.body.get(..INIT_BYTES).map(init_id))
        .flatten()
}

/// An identity's encoded public key.
pub fn identity_public(identity: &KeyPair) -> [u8; EC_KEY_BYTES] {
    encode_ec(identity.public())
}
