//! The push journal's records (module doc of `registry` has the format): sealing a device's
//! registration for a dest under a key derived from the dest, opening it again, and the record
//! encodings (sealed, removal, locked, and the old linkable form still read).

use super::*;

pub(super) const DAY_S: u64 = 86_400;
/// A sealed record of an FCM token, with the journal's header: what compaction counts per
/// registration of one device at one dest.
pub(super) const RECORD_BYTES_TYPICAL: u64 = 37 + 12 + 256 + 16 + 12;
/// The lengths a sealed token's plaintext is padded to (the first that fits), so that a
/// record's length tells at most the provider's kind: every APNs token (64 hex digits) fits the
/// first, FCM tokens (about 160 characters) the second, Web Push endpoints (a few hundred
/// bytes) the third; only an endpoint over about 1 KB takes the last.
pub(super) const SEAL_PAD_STEPS: [usize; 4] = [128, 256, 1024, 11 + PUSH_TOKEN_BYTES_MAX];
pub(super) const SEAL_NONCE_BYTES: usize = 12;

/// The key a dest's registrations are sealed under: only someone who knows the dest opens them.
pub(super) fn seal_key(dest: &Dest) -> [u8; 32] {
    blake3::derive_key("ferry v1 push token seal", &dest.0)
}

/// A registration's id under its dest: the same for one device and dest in every record (so a
/// later record replaces an earlier one), unrelated across dests.
pub(super) fn entry_id(seal: &[u8; 32], key: &DeviceKey) -> [u8; 16] {
    let mut h = blake3::Hasher::new_keyed(seal);
    h.update(&[key.0]);
    h.update(key.1.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

pub(super) fn aead_key(seal: &[u8; 32]) -> ring::aead::LessSafeKey {
    ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, seal)
            .unwrap_or_else(|_| unreachable!("a 32-byte key")),
    )
}

/// `nonce ‖ ChaCha20-Poly1305(pad(provider ‖ until ‖ token_len ‖ token))`, the tag as AAD.
pub(super) fn seal(
    dest: &Dest,
    key: &DeviceKey,
    until: u64,
    nonce: [u8; SEAL_NONCE_BYTES],
) -> Vec<u8> {
    let seal = seal_key(dest);
    let mut pt = Vec::with_capacity(SEAL_PAD_STEPS[0]);
    pt.push(key.0);
    pt.put_u64_le(until);
    pt.put_u16_le(len_u16(key.1.len(), PUSH_TOKEN_BYTES_MAX));
    pt.extend_from_slice(key.1.as_bytes());
    let padded = SEAL_PAD_STEPS
        .into_iter()
        .find(|&n| n >= pt.len())
        .unwrap_or_else(|| unreachable!("a token is at most PUSH_TOKEN_BYTES_MAX"));
    pt.resize(padded, 0);
    aead_key(&seal)
        .seal_in_place_append_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(push_dest_tag(dest)),
            &mut pt,
        )
        .unwrap_or_else(|_| unreachable!("a record is far below ChaCha20-Poly1305's limit"));
    let mut out = nonce.to_vec();
    out.extend_from_slice(&pt);
    out
}

/// Opens a sealed registration: (device, until), or `None` if it does not open.
pub(super) fn unseal(seal: &[u8; 32], tag: &[u8; 16], sealed: &[u8]) -> Option<(DeviceKey, u64)> {
    let nonce: [u8; SEAL_NONCE_BYTES] = sealed.get(..SEAL_NONCE_BYTES)?.try_into().ok()?;
    let mut ct = sealed.get(SEAL_NONCE_BYTES..)?.to_vec();
    let pt = aead_key(seal)
        .open_in_place(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(*tag),
            &mut ct,
        )
        .ok()?;
    let provider = *pt.first()?;
    PushProvider::from_u8(provider)?;
    let until = u64::from_le_bytes(pt.get(1..9)?.try_into().ok()?);
    let tl = usize::from(u16::from_le_bytes(pt.get(9..11)?.try_into().ok()?));
    if tl > PUSH_TOKEN_BYTES_MAX {
        return None;
    }
    let token = std::str::from_utf8(pt.get(11..11 + tl)?).ok()?.to_string();
    Some(((provider, token), until))
}

/// The record of one device's registration for one dest (`until` 0: removed).
pub(super) fn sealed_record(
    dest: &Dest,
    key: &DeviceKey,
    until: u64,
    nonce: [u8; SEAL_NONCE_BYTES],
) -> Vec<u8> {
    let tag = push_dest_tag(dest);
    let entry = entry_id(&seal_key(dest), key);
    if until == 0 {
        return removal_record(&tag, &entry);
    }
    let day = u32::try_from(until / DAY_S + 1).unwrap_or(u32::MAX);
    locked_record(
        &tag,
        &entry,
        &Sealed {
            day,
            sealed: seal(dest, key, until, nonce),
        },
    )
}

pub(super) fn removal_record(tag: &[u8; 16], entry: &[u8; 16]) -> Vec<u8> {
    let mut r = Vec::with_capacity(37);
    r.push(b'S');
    r.extend_from_slice(tag);
    r.extend_from_slice(entry);
    r.put_u32_le(0);
    r
}

pub(super) fn locked_record(tag: &[u8; 16], entry: &[u8; 16], s: &Sealed) -> Vec<u8> {
    let mut r = Vec::with_capacity(37 + s.sealed.len());
    r.push(b'S');
    r.extend_from_slice(tag);
    r.extend_from_slice(entry);
    r.put_u32_le(s.day);
    r.extend_from_slice(&s.sealed);
    r
}

/// An `S` record's fields: (tag, entry, day, sealed).
pub(super) type SealedFields<'a> = ([u8; 16], [u8; 16], u32, &'a [u8]);

/// The fields of an `S` record; a removal (day 0) has nothing sealed.
pub(super) fn parse_sealed_record(r: &[u8]) -> Option<SealedFields<'_>> {
    if *r.first()? != b'S' {
        return None;
    }
    let tag: [u8; 16] = r.get(1..17)?.try_into().ok()?;
    let entry: [u8; 16] = r.get(17..33)?.try_into().ok()?;
    let day = u32::from_le_bytes(r.get(33..37)?.try_into().ok()?);
    let sealed = r.get(37..)?;
    let ok = if day == 0 {
        sealed.is_empty()
    } else {
        SEAL_PAD_STEPS.contains(&sealed.len().saturating_sub(SEAL_NONCE_BYTES + 16))
    };
    ok.then_some((tag, entry, day, sealed))
}

/// `len` as a u16, asserting the registry's invariant `len <= max` (each `max` is const-asserted
/// to fit a u16 above): a clamped length would write a record that never replays.
pub(super) fn len_u16(len: usize, max: usize) -> u16 {
    assert!(
        len <= max,
        "push record field of {len}, over its limit {max}"
    );
    u16::try_from(len).unwrap_or_else(|_| unreachable!("limit {max} fits a u16"))
}

/// A record of the old form (`R`), which journals written before sealing hold: tests build them
/// to check their replay.
#[cfg(test)]
pub(super) fn record(key: &DeviceKey, items: &[(Dest, u64)]) -> Vec<u8> {
    let mut r = Vec::with_capacity(6 + key.1.len() + items.len() * 24);
    r.push(b'R');
    r.push(key.0);
    r.put_u16_le(len_u16(key.1.len(), PUSH_TOKEN_BYTES_MAX));
    r.extend_from_slice(key.1.as_bytes());
    r.put_u16_le(len_u16(items.len(), DESTS_PER_TOKEN_MAX));
    for (d, u) in items {
        r.extend_from_slice(&d.0);
        r.put_u64_le(*u);
    }
    r
}

pub(super) fn parse_record(r: &[u8]) -> Option<(DeviceKey, Vec<(Dest, u64)>)> {
    if *r.first()? != b'R' {
        return None;
    }
    let provider = *r.get(1)?;
    PushProvider::from_u8(provider)?;
    let tl = usize::from(u16::from_le_bytes(r.get(2..4)?.try_into().ok()?));
    if tl > PUSH_TOKEN_BYTES_MAX {
        return None;
    }
    let token = std::str::from_utf8(r.get(4..4 + tl)?).ok()?.to_string();
    let mut at = 4 + tl;
    let n = usize::from(u16::from_le_bytes(r.get(at..at + 2)?.try_into().ok()?));
    at += 2;
    let mut items = Vec::with_capacity(n);
    for _ in 0..n {
        let d = Dest(r.get(at..at + 16)?.try_into().ok()?);
        let u = u64::from_le_bytes(r.get(at + 16..at + 24)?.try_into().ok()?);
        items.push((d, u));
        at += 24;
    }
    (at == r.len()).then_some(((provider, token), items))
}
