//! On-disk format of the append log (docs/STORAGE.md). Pure functions over byte slices: fixed
//! little-endian integers, nothing that depends on the machine's word size.
//!
//! Segment: a 64-byte header, then records back to back, each padded to 8 bytes, then zeros (the
//! file is preallocated). A record starts with its magic and length; the end of the records is the
//! first place where the magic is absent.

use ferry_proto::Dest;

pub const SEGMENT_MAGIC: [u8; 8] = *b"FRYLOG01";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const RECORD_MAGIC: u32 = 0x4652_5943; // "CYRF" in file order
/// magic(4) len(4) checksum(8) kind(1) flags(1) reserved(2) last_live_unix_s(8) dest(16)
/// msg_id(8) target(8) payload_len(4) = 64.
pub const RECORD_HEADER_BYTES: usize = 64;
pub const RECORD_ALIGN: usize = 8;
/// A position is `segment << 32 | offset` with a 32-bit offset, so a segment is at most this long
/// (and a record length, which never exceeds its segment, fits its `u32` field).
pub const SEGMENT_BYTES_MAX: usize = u32::MAX as usize;
/// The segment number takes the upper 32 bits of a position.
pub const SEGMENT_SEQ_MAX: u64 = u32::MAX as u64;

const _: () = assert!(RECORD_HEADER_BYTES % RECORD_ALIGN == 0);
const _: () = assert!(SEGMENT_HEADER_BYTES % RECORD_ALIGN == 0);

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A stored blob for `dest`.
    Blob = 1,
    /// The blob at `target` (a record position) was acknowledged: it is dead.
    Tombstone = 2,
}

/// A record's position: segment sequence number and byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    pub segment: u64,
    pub offset: u32,
}

impl Pos {
    pub fn to_u64(self) -> u64 {
        assert!(
            self.segment <= SEGMENT_SEQ_MAX,
            "segment number above SEGMENT_SEQ_MAX"
        );
        (self.segment << 32) | u64::from(self.offset)
    }
    pub fn from_u64(v: u64) -> Pos {
        let [o0, o1, o2, o3, ..] = v.to_le_bytes();
        Pos {
            segment: v >> 32,
            offset: u32::from_le_bytes([o0, o1, o2, o3]),
        }
    }
}

/// A decoded record header (payload not copied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub len: u32,
    pub kind: Kind,
    /// Blobs: the last whole Unix second in which the blob is live (`store::is_live`).
    /// Tombstones: that of the blob they kill.
    pub last_live_unix_s: u64,
    pub dest: Dest,
    pub msg_id: u64,
    /// Tombstones: the position of the blob they kill. Blobs: 0.
    pub target: u64,
}

/// Bytes a record with `payload_len` bytes takes on disk, padding included.
pub fn record_bytes(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Covers every byte after the checksum field: the rest of the header, the payload and the padding.
fn checksum(covered: &[u8]) -> u64 {
    let mut h = blake3::Hasher::new_derive_key("ferry v1 log record");
    h.update(covered);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(out)
}

/// Encodes one record into `out` (exactly `record_bytes(payload.len())` bytes).
pub fn encode_record(out: &mut [u8], h: &RecordHeader, payload: &[u8]) {
    let total = record_bytes(payload.len());
    assert_eq!(out.len(), total, "record buffer of the wrong size");
    let total32 = u32::try_from(total).expect("a record fits a segment (SEGMENT_BYTES_MAX)");
    let payload32 = u32::try_from(payload.len()).expect("a payload fits a segment");
    out.fill(0);
    out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&total32.to_le_bytes());
    out[16] = h.kind as u8;
    out[17] = 0;
    out[20..28].copy_from_slice(&h.last_live_unix_s.to_le_bytes());
    out[28..44].copy_from_slice(&h.dest.0);
    out[44..52].copy_from_slice(&h.msg_id.to_le_bytes());
    out[52..60].copy_from_slice(&h.target.to_le_bytes());
    out[60..64].copy_from_slice(&payload32.to_le_bytes());
    out[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload.len()].copy_from_slice(payload);
    let sum = checksum(&out[16..]);
    out[8..16].copy_from_slice(&sum.to_le_bytes());
}

/// What is at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan<'a> {
    /// A valid record and its payload.
    Record(RecordHeader, &'a [u8]),
    /// No record magic: the end of the written part.
    End,
    /// Something that is not a valid record: torn or corrupt. `len` is the length its header
    /// claims when that is plausible (for skipping), else `None`.
    Invalid { len: Option<u32> },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads the record at `offset` of `seg` (the whole segment's bytes).
pub fn scan(seg: &[u8], offset: usize) -> Scan<'_> {
    if offset + 8 > seg.len() || u32_at(seg, offset) != RECORD_MAGIC {
        // A record must start with its magic; zeros mean nothing was written here.
        if offset + 8 <= seg.len() && seg[offset..offset + 8].iter().any(|b| *b != 0) {
            return Scan::Invalid { len: None };
        }
        return Scan::End;
    }
    let len = u32_at(seg, offset + 4);
    let len_usize = len as usize;
    let plausible = len_usize >= RECORD_HEADER_BYTES
        && len_usize % RECORD_ALIGN == 0
        && offset + len_usize <= seg.len();
    if !plausible {
        return Scan::Invalid { len: None };
    }
    let r = &seg[offset..offset + len_usize];
    let payload_len = u32_at(r, 60) as usize;
    if record_bytes(payload_len) != len_usize {
        return Scan::Invalid { len: Some(len) };
    }
    let payload = &r[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len];
    if checksum(&r[16..]) != u64_at(r, 8) {
        return Scan::Invalid { len: Some(len) };
    }
    let kind = match r[16] {
        1 => Kind::Blob,
        2 => Kind::Tombstone,
        _ => return Scan::Invalid { len: Some(len) },
    };
    let mut dest = [0u8; 16];
    dest.copy_from_slice(&r[28..44]);
    Scan::Record(
        RecordHeader {
            len,
            kind,
            last_live_unix_s: u64_at(r, 20),
            dest: Dest(dest),
            msg_id: u64_at(r, 44),
            target: u64_at(r, 52),
        },
        payload,
    )
}

/// The segment header: magic, version, shard, sequence number, creation time, checksum.
pub fn encode_segment_header(out: &mut [u8], shard: u16, seq: u64, created_unix_s: u64) {
    assert!(out.len() >= SEGMENT_HEADER_BYTES);
    let h = &mut out[..SEGMENT_HEADER_BYTES];
    h.fill(0);
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..14].copy_from_slice(&shard.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&created_unix_s.to_le_bytes());
    let sum = checksum(&h[0..32]);
    h[32..40].copy_from_slice(&sum.to_le_bytes());
}

/// (shard, seq, created_unix_s) of a valid segment header.
pub fn decode_segment_header(seg: &[u8]) -> Option<(u16, u64, u64)> {
    if seg.len() < SEGMENT_HEADER_BYTES
        || seg[0..8] != SEGMENT_MAGIC
        || u32_at(seg, 8) != SEGMENT_VERSION
    {
        return None;
    }
    if checksum(&seg[0..32]) != u64_at(seg, 32) {
        return None;
    }
    Some((
        u16::from_le_bytes([seg[12], seg[13]]),
        u64_at(seg, 16),
        u64_at(seg, 24),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: Kind) -> RecordHeader {
        RecordHeader {
            len: 0,
            kind,
            last_live_unix_s: 99,
            dest: Dest([7; 16]),
            msg_id: 5,
            target: 0,
        }
    }

    #[test]
    fn record_round_trip_and_corruption() {
        let payload = b"hello, store";
        let mut seg = vec![0u8; 512];
        let n = record_bytes(payload.len());
        encode_record(&mut seg[64..64 + n], &header(Kind::Blob), payload);
        match scan(&seg, 64) {
            Scan::Record(h, p) => {
                assert_eq!(p, payload);
                assert_eq!(h.len as usize, n);
                assert_eq!((h.kind, h.last_live_unix_s, h.msg_id), (Kind::Blob, 99, 5));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(scan(&seg, 64 + n), Scan::End);
        // Any flipped bit inside the record is detected.
        for i in 0..n {
            let mut bad = seg.clone();
            bad[64 + i] ^= 0x10;
            assert!(
                !matches!(scan(&bad, 64), Scan::Record(..)),
                "flip at {i} undetected"
            );
        }
    }

    #[test]
    fn segment_header_round_trip() {
        let mut seg = vec![0u8; 128];
        encode_segment_header(&mut seg, 3, 42, 1_800_000_000);
        assert_eq!(decode_segment_header(&seg), Some((3, 42, 1_800_000_000)));
        seg[20] ^= 1;
        assert_eq!(decode_segment_header(&seg), None);
    }

    #[test]
    fn positions_pack_into_u64() {
        for p in [
            Pos {
                segment: 7,
                offset: 4096,
            },
            Pos {
                segment: SEGMENT_SEQ_MAX,
                offset: u32::MAX,
            },
        ] {
            assert_eq!(Pos::from_u64(p.to_u64()), p);
        }
    }

    /// A segment number that does not fit its 32 bits would alias another segment's positions.
    #[test]
    #[should_panic(expected = "SEGMENT_SEQ_MAX")]
    fn a_segment_number_past_its_bits_is_refused() {
        let _ = Pos {
            segment: SEGMENT_SEQ_MAX + 1,
            offset: 0,
        }
        .to_u64();
    }
}
