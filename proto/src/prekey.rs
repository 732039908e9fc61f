//! PQXDH prekey bundles (Signal's PQXDH specification, revision 3): their wire format and the
//! checks a node runs on upload. Key encodings follow Signal: an X25519 key is `0x05 ‖ u` (33 B),
//! an ML-KEM-1024 encapsulation key is `0x08 ‖ ek` (1569 B); signatures are XEdDSA by the identity
//! key over the encoded key.
//!
//! Upload (body of `PrekeyUpload`, after the dest):
//! ```text
//! flags:u8 (bit 0 signed part present, bit 1 replace one-time keys)
//! [signed part: identity(33) spk_id:u32 spk(33) spk_sig(64) lr_id:u32 lr(1569) lr_sig(64)]
//! n_ec:u16 then n_ec × (id:u32 key(33))
//! n_pq:u16 then n_pq × (id:u32 key(1569) sig(64))
//! ```
//! Bundle (body of `PrekeyBundle` with status `Ok`, after dest and status):
//! ```text
//! identity(33) spk_id:u32 spk(33) spk_sig(64)
//! pq_id:u32 pq(1569) pq_sig(64) pq_last_resort:u8
//! has_ec:u8 [ec_id:u32 ec(33)]
//! ```

use bytes::{BufMut, Bytes};

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

/// Upload flag: the signed part (identity, signed prekey, last-resort PQ prekey) follows.
pub const UPLOAD_SIGNED: u8 = 0x01;
/// Upload flag: drop the slot's stored one-time keys before adding these.
pub const UPLOAD_REPLACE_ONE_TIME: u8 = 0x02;
const UPLOAD_FLAGS_KNOWN: u8 = UPLOAD_SIGNED | UPLOAD_REPLACE_ONE_TIME;

/// Wire size of the signed part.
pub const SIGNED_PART_BYTES: usize =
    EC_KEY_BYTES + 4 + EC_KEY_BYTES + SIG_BYTES + 4 + KEM_KEY_BYTES + SIG_BYTES;
/// Wire size of one one-time EC prekey.
pub const EC_ITEM_BYTES: usize = 4 + EC_KEY_BYTES;
/// Wire size of one signed one-time PQ prekey.
pub const PQ_ITEM_BYTES: usize = 4 + KEM_KEY_BYTES + SIG_BYTES;

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

/// What every bundle of a slot shares: the identity and the two keys that are never consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedPart {
    pub identity: [u8; EC_KEY_BYTES],
    pub spk: SignedEcPrekey,
    pub last_resort: KemPrekey,
}

/// One `PrekeyUpload`: the signed part (required for a slot's first upload) and one-time keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    pub dest: Dest,
    pub replace_one_time: bool,
    pub signed: Option<SignedPart>,
    pub ec: Vec<EcPrekey>,
    pub pq: Vec<KemPrekey>,
}

/// What a fetch returns: one EC and one PQ one-time key consumed, or the last-resort PQ key when
/// none are left (`pq_last_resort`), and no EC one-time key when none are left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub identity: [u8; EC_KEY_BYTES],
    pub spk: SignedEcPrekey,
    pub pq: KemPrekey,
    pub pq_last_resort: bool,
    pub ec: Option<EcPrekey>,
}

/// Which key of an upload a refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KeyKind {
    None = 0,
    Identity = 1,
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

/// Why an upload was refused: the first bad key, by kind and index within its list. A list
/// longer than [`ONE_TIME_KEYS_MAX`] is refused at its first key past the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub bad_signature: bool,
    pub kind: KeyKind,
    pub index: u16,
}

/// `index` is at most `ONE_TIME_KEYS_MAX` (const-asserted to fit a u16 in `limits.rs`):
/// `check_upload` looks at no key past it.
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

/// Checks every key and signature of `upload`, and that neither one-time list is longer than
/// [`ONE_TIME_KEYS_MAX`] (what one upload can carry). `stored_identity` is the slot's identity when
/// the upload carries no signed part (one-time PQ keys are then checked against it).
pub fn check_upload(upload: &Upload, stored_identity: Option<&[u8; 33]>) -> Result<(), Fault> {
    if upload.ec.len() > ONE_TIME_KEYS_MAX {
        return Err(fault(false, KeyKind::OneTimeEc, ONE_TIME_KEYS_MAX));
    }
    if upload.pq.len() > ONE_TIME_KEYS_MAX {
        return Err(fault(false, KeyKind::OneTimePq, ONE_TIME_KEYS_MAX));
    }
    let identity = match &upload.signed {
        Some(s) => &s.identity,
        None => match stored_identity {
            Some(i) => i,
            None => return Err(fault(false, KeyKind::SignedPrekey, 0)),
        },
    };
    let ik = ec_key_u(identity).ok_or(fault(false, KeyKind::Identity, 0))?;
    if let Some(s) = &upload.signed {
        ec_key_u(&s.spk.key).ok_or(fault(false, KeyKind::SignedPrekey, 0))?;
        if !xeddsa::verify(&ik, &s.spk.key, &s.spk.sig) {
            return Err(fault(true, KeyKind::SignedPrekey, 0));
        }
        if !kem_key_valid(&s.last_resort.key) {
            return Err(fault(false, KeyKind::LastResort, 0));
        }
        if !xeddsa::verify(&ik, &s.last_resort.key, &s.last_resort.sig) {
            return Err(fault(true, KeyKind::LastResort, 0));
        }
    }
    for (i, k) in upload.ec.iter().enumerate() {
        ec_key_u(&k.key).ok_or(fault(false, KeyKind::OneTimeEc, i))?;
    }
    for (i, k) in upload.pq.iter().enumerate() {
        if !kem_key_valid(&k.key) {
            return Err(fault(false, KeyKind::OneTimePq, i));
        }
        if !xeddsa::verify(&ik, &k.key, &k.sig) {
            return Err(fault(true, KeyKind::OneTimePq, i));
        }
    }
    Ok(())
}

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

impl Upload {
    /// Body bytes after the frame type.
    pub(crate) fn body_len(&self) -> usize {
        16 + 1
            + self.signed.as_ref().map_or(0, |_| SIGNED_PART_BYTES)
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
        if self.signed.is_some() {
            flags |= UPLOAD_SIGNED;
        }
        if self.replace_one_time {
            flags |= UPLOAD_REPLACE_ONE_TIME;
        }
        out.put_u8(flags);
        if let Some(s) = &self.signed {
            out.put_slice(&s.identity);
            out.put_u32_le(s.spk.id);
            out.put_slice(&s.spk.key);
            out.put_slice(&s.spk.sig);
            put_kem(out, &s.last_resort);
        }
        out.put_u16_le(crate::frame::count_u16(self.ec.len(), ONE_TIME_KEYS_MAX));
        for k in &self.ec {
            out.put_u32_le(k.id);
            out.put_slice(&k.key);
        }
        out.put_u16_le(crate::frame::count_u16(self.pq.len(), ONE_TIME_KEYS_MAX));
        for k in &self.pq {
            put_kem(out, k);
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
        let signed = if flags & UPLOAD_SIGNED != 0 {
            Some(SignedPart {
                identity: r.array()?,
                spk: read_spk(r)?,
                last_resort: read_kem(r)?,
            })
        } else {
            None
        };
        let n = r.count(ONE_TIME_KEYS_MAX, EC_ITEM_BYTES)?;
        let mut ec = Vec::with_capacity(n);
        for _ in 0..n {
            ec.push(EcPrekey {
                id: r.u32()?,
                key: r.array()?,
            });
        }
        let n = r.count(ONE_TIME_KEYS_MAX, PQ_ITEM_BYTES)?;
        let mut pq = Vec::with_capacity(n);
        for _ in 0..n {
            pq.push(read_kem(r)?);
        }
        Ok(Upload {
            dest,
            replace_one_time: flags & UPLOAD_REPLACE_ONE_TIME != 0,
            signed,
            ec,
            pq,
        })
    }
}

impl Bundle {
    pub(crate) const fn body_len(&self) -> usize {
        EC_KEY_BYTES
            + 4
            + EC_KEY_BYTES
            + SIG_BYTES
            + PQ_ITEM_BYTES
            + 1
            + 1
            + if self.ec.is_some() { EC_ITEM_BYTES } else { 0 }
    }

    pub(crate) fn encode(&self, out: &mut impl BufMut) {
        out.put_slice(&self.identity);
        out.put_u32_le(self.spk.id);
        out.put_slice(&self.spk.key);
        out.put_slice(&self.spk.sig);
        put_kem(out, &self.pq);
        out.put_u8(u8::from(self.pq_last_resort));
        match &self.ec {
            Some(k) => {
                out.put_u8(1);
                out.put_u32_le(k.id);
                out.put_slice(&k.key);
            }
            None => out.put_u8(0),
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<Bundle, DecodeError> {
        let identity = r.array()?;
        let spk = read_spk(r)?;
        let pq = read_kem(r)?;
        let pq_last_resort = r.bool("pq_last_resort")?;
        let ec = if r.bool("has_ec")? {
            Some(EcPrekey {
                id: r.u32()?,
                key: r.array()?,
            })
        } else {
            None
        };
        Ok(Bundle {
            identity,
            spk,
            pq,
            pq_last_resort,
            ec,
        })
    }

    /// Checks the bundle's signatures (what a fetching client does before using it).
    pub fn verify(&self) -> Result<(), Fault> {
        let upload = Upload {
            dest: Dest::default(),
            replace_one_time: false,
            signed: Some(SignedPart {
                identity: self.identity,
                spk: self.spk.clone(),
                last_resort: self.pq.clone(),
            }),
            ec: self.ec.iter().cloned().collect(),
            pq: Vec::new(),
        };
        check_upload(&upload, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kem_modulus_check() {
        let mut key = vec![0u8; KEM_KEY_BYTES];
        key[0] = KEM_KEY_TYPE;
        assert!(kem_key_valid(&key));
        // Coefficient 3328 = 0xD00 in the low slot of the first triple: valid.
        key[1] = 0x00;
        key[2] = 0x0D;
        assert!(kem_key_valid(&key));
        // 3329 = 0xD01: invalid.
        key[1] = 0x01;
        assert!(!kem_key_valid(&key));
        key[1] = 0;
        key[2] = 0;
        // High slot of the last triple of t̂ = 0xFFF.
        let last = KEM_EK_BYTES - 32;
        key[last] = 0xFF;
        key[last - 1] = 0xF0;
        assert!(!kem_key_valid(&key));
        key[last] = 0;
        key[last - 1] = 0;
        // rho bytes are not checked.
        key[KEM_KEY_BYTES - 1] = 0xFF;
        assert!(kem_key_valid(&key));
        key[0] = EC_KEY_TYPE;
        assert!(!kem_key_valid(&key));
        assert!(!kem_key_valid(&key[..100]));
    }

    #[test]
    fn ec_key_encoding() {
        let mut k = [0u8; 33];
        k[0] = EC_KEY_TYPE;
        k[1] = 9;
        assert!(ec_key_u(&k).is_some());
        k[0] = 0x06;
        assert!(ec_key_u(&k).is_none());
        let mut p = [0xFFu8; 33];
        p[0] = EC_KEY_TYPE;
        p[1] = 0xED;
        p[32] = 0x7F;
        assert!(ec_key_u(&p).is_none());
        p[1] = 0xEC;
        assert!(ec_key_u(&p).is_some());
    }

    /// A list longer than one upload may carry is refused at its first key past
    /// `ONE_TIME_KEYS_MAX`. (The fault's u16 index once clamped: 70 000 keys with the last one
    /// bad were refused at index 65 535, a key that was fine.)
    #[test]
    fn one_time_lists_past_the_limit_are_refused_not_clamped() {
        let mut good = [0u8; EC_KEY_BYTES];
        good[0] = EC_KEY_TYPE;
        good[1] = 9;
        let mut bad = good;
        bad[0] = 0x06;
        let upload = |n: usize, last: [u8; EC_KEY_BYTES]| Upload {
            dest: Dest::default(),
            replace_one_time: false,
            signed: None,
            ec: (0..n)
                .map(|i| EcPrekey {
                    id: u32::try_from(i).unwrap(),
                    key: if i + 1 == n { last } else { good },
                })
                .collect(),
            pq: Vec::new(),
        };
        let at = |index: usize| Fault {
            bad_signature: false,
            kind: KeyKind::OneTimeEc,
            index: u16::try_from(index).unwrap(),
        };
        assert_eq!(
            check_upload(&upload(ONE_TIME_KEYS_MAX, good), Some(&good)),
            Ok(())
        );
        assert_eq!(
            check_upload(&upload(ONE_TIME_KEYS_MAX, bad), Some(&good)),
            Err(at(ONE_TIME_KEYS_MAX - 1))
        );
        assert_eq!(
            check_upload(&upload(ONE_TIME_KEYS_MAX + 1, good), Some(&good)),
            Err(at(ONE_TIME_KEYS_MAX))
        );
        assert_eq!(
            check_upload(&upload(70_000, bad), Some(&good)),
            Err(at(ONE_TIME_KEYS_MAX))
        );
    }

    /// An upload that breaks its limit is a programming error at `encode`, never a count that
    /// disagrees with the keys after it.
    #[test]
    #[should_panic(expected = "over its limit")]
    fn encoding_more_one_time_keys_than_the_count_may_say_panics() {
        let mut key = [0u8; EC_KEY_BYTES];
        key[0] = EC_KEY_TYPE;
        let upload = Upload {
            dest: Dest::default(),
            replace_one_time: false,
            signed: None,
            ec: vec![EcPrekey { id: 1, key }; usize::from(u16::MAX) + 1],
            pq: Vec::new(),
        };
        upload.encode(&mut Vec::new());
    }
}
