//! The messenger's stored records that are not a single field: outbox entries, a contact's
//! sessions, kept incoming messages. Each decoder refuses what its encoder cannot have written.

use ferry_crypto::keys::EC_KEY_BYTES;
use ferry_crypto::session::Session;
use ferry_proto::frame::Dest;
use zeroize::Zeroizing;

use super::{Body, CONTACT_NAME_BYTES_MAX, Incoming, MessengerError, SESSIONS_PER_CONTACT_MAX};

/// The first byte of an outbox record that keeps its first send's dest and epoch:
/// `version ‖ to (33) ‖ epoch (u64 BE) ‖ dest (16) ‖ envelope`. Older records are
/// `to ‖ envelope`, and `to` starts with `EC_KEY_TYPE`, which this is not.
pub const OUTBOX_RECORD_VERSION: u8 = 2;
const _: () = assert!(OUTBOX_RECORD_VERSION != ferry_crypto::keys::EC_KEY_TYPE);
const OUTBOX_HEADER_BYTES: usize = 1 + EC_KEY_BYTES + 8 + 16;

pub(super) fn encode_outgoing(
    to: &[u8; EC_KEY_BYTES],
    dest: Dest,
    epoch: u64,
    envelope: &[u8],
) -> Vec<u8> {
    let mut rec = Vec::with_capacity(OUTBOX_HEADER_BYTES + envelope.len());
    rec.push(OUTBOX_RECORD_VERSION);
    rec.extend_from_slice(to);
    rec.extend_from_slice(&epoch.to_be_bytes());
    rec.extend_from_slice(&dest.0);
    rec.extend_from_slice(envelope);
    rec
}

/// An outbox record: (to, first send's dest and epoch if kept, envelope).
#[allow(clippy::type_complexity)]
pub(super) fn decode_outgoing(
    b: &[u8],
) -> Option<([u8; EC_KEY_BYTES], Option<(Dest, u64)>, Vec<u8>)> {
    if b.first() == Some(&OUTBOX_RECORD_VERSION) {
        let to: [u8; EC_KEY_BYTES] = b.get(1..1 + EC_KEY_BYTES)?.try_into().ok()?;
        let at = 1 + EC_KEY_BYTES;
        let epoch = u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?);
        let dest = Dest(b.get(at + 8..at + 24)?.try_into().ok()?);
        Some((
            to,
            Some((dest, epoch)),
            b.get(OUTBOX_HEADER_BYTES..)?.to_vec(),
        ))
    } else {
        let to: [u8; EC_KEY_BYTES] = b.get(..EC_KEY_BYTES)?.try_into().ok()?;
        Some((to, None, b[EC_KEY_BYTES..].to_vec()))
    }
}

/// A count or length written as a big-endian u32 in a stored record. Each is far below 2^32 (a
/// session with `SKIPPED_KEYS_MAX` skipped keys is under 200 KiB, an ML-KEM key 3 168 bytes,
/// prekeys come at most 100 per upload), and one that is not would make the record lie about
/// what follows: that is a bug, so it stops here.
pub(super) fn prefix_u32(n: usize) -> [u8; 4] {
    u32::try_from(n)
        .expect("a record's count or length over u32::MAX")
        .to_be_bytes()
}

pub(super) fn encode_sessions(list: &[Session]) -> Zeroizing<Vec<u8>> {
    let mut b = Zeroizing::new(Vec::new());
    assert!(list.len() <= SESSIONS_PER_CONTACT_MAX);
    b.push(u8::try_from(list.len()).expect("SESSIONS_PER_CONTACT_MAX fits a u8"));
    for s in list {
        let one = s.to_bytes();
        b.extend_from_slice(&prefix_u32(one.len()));
        b.extend_from_slice(&one);
    }
    b
}

pub(super) fn decode_sessions(b: &[u8]) -> Result<Vec<Session>, MessengerError> {
    let bad = MessengerError::Malformed("session record");
    let (&n, mut rest) = b
        .split_first()
        .ok_or(MessengerError::Malformed("session record"))?;
    let mut out = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        if rest.len() < 4 {
            return Err(bad);
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let one = rest
            .get(4..4 + len)
            .ok_or(MessengerError::Malformed("session record"))?;
        out.push(Session::from_bytes(one)?);
        rest = &rest[4 + len..];
    }
    if !rest.is_empty() {
        return Err(bad);
    }
    Ok(out)
}

pub(super) fn encode_incoming(m: &Incoming) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&m.from);
    b.extend_from_slice(&m.msg_id);
    // Names come from `add_contact` and stored contact records, both held to the limit.
    let name = m.from_name.as_bytes();
    assert!(
        name.len() <= CONTACT_NAME_BYTES_MAX,
        "contact name over CONTACT_NAME_BYTES_MAX"
    );
    b.extend_from_slice(
        &u16::try_from(name.len())
            .expect("CONTACT_NAME_BYTES_MAX fits a u16")
            .to_be_bytes(),
    );
    b.extend_from_slice(name);
    b.extend_from_slice(&m.body.to_bytes());
    b
}

pub(super) fn decode_incoming(b: &[u8]) -> Option<Incoming> {
    let from: [u8; EC_KEY_BYTES] = b.get(..EC_KEY_BYTES)?.try_into().ok()?;
    let msg_id: [u8; 16] = b.get(EC_KEY_BYTES..EC_KEY_BYTES + 16)?.try_into().ok()?;
    let at = EC_KEY_BYTES + 16;
    let n = usize::from(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let from_name = String::from_utf8(b.get(at + 2..at + 2 + n)?.to_vec()).ok()?;
    let body = Body::from_bytes(b.get(at + 2 + n..)?)?;
    Some(Incoming {
        from,
        from_name,
        msg_id,
        body,
        // The messenger knows (`Messenger::inbox`): whether `from` is a request now.
        request: false,
    })
}
