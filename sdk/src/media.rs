//! Media encryption on the device: a random 32-byte key per attachment, the bytes sealed with
//! ChaCha20-Poly1305 in the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár; `aead`'s
//! `StreamBE32`: a 32-bit big-endian segment counter and a last-segment flag in the nonce), and
//! the blob id = blake3 of the ciphertext, which the node stores and serves. The key and the id
//! travel inside an end-to-end encrypted message; the node never sees the key.
//!
//! Ciphertext layout: plaintext segments of `SEGMENT_BYTES` (the last one shorter, possibly
//! empty), each followed by its 16-byte tag. Segment `i` starts at `i × (SEGMENT_BYTES + 16)`, so
//! any plaintext range maps to a ciphertext range that can be fetched (and verified against the
//! id, see `ferry_proto::media::verify_range`) and decrypted on its own. Reordering,
//! truncating or extending segments fails authentication: each segment's nonce carries its index,
//! and only the real last segment is sealed with the last flag.
//!
//! Memory: one segment at a time, whatever the size. `Client::encrypt_and_upload` and
//! `Client::download_and_decrypt` (with the rest of the client's media calls, below) carry it
//! over the protocol. The ciphertext size must come from the message that names the blob (with
//! the id and the key), not from the node.

use std::io::{Read, Write};

use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};

use std::time::{Duration, Instant};

use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::Frame;

use crate::{BLOB_STALLS_MAX, BLOB_WINDOW_CHUNKS, SdkError};

/// Plaintext bytes per STREAM segment.
pub const SEGMENT_BYTES: usize = 64 * 1024;
/// Tag bytes after each segment.
pub const TAG_BYTES: usize = 16;
const SEALED_SEGMENT_BYTES: u64 = (SEGMENT_BYTES + TAG_BYTES) as u64;

/// The key of one attachment (never reused: the STREAM nonce prefix is fixed at zero).
#[derive(Clone, PartialEq, Eq)]
pub struct MediaKey(pub [u8; 32]);

impl std::fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaKey(…)")
    }
}

impl MediaKey {
    pub fn generate() -> Result<Self, SdkError> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| SdkError::Io(std::io::Error::other(e.to_string())))?;
        Ok(MediaKey(k))
    }

    fn stream(&self) -> StreamBE32<ChaCha20Poly1305> {
        let aead = ChaCha20Poly1305::new(&self.0.into());
        StreamBE32::from_aead(aead, &Default::default())
    }
}

/// What `encrypt` produced: the blob id (blake3 of the ciphertext) and the sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub id: [u8; 32],
    pub plaintext_bytes: u64,
    pub ciphertext_bytes: u64,
}

fn bad() -> SdkError {
    SdkError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "media segment does not authenticate",
    ))
}

/// Reads up to `buf.len()` bytes (fewer only at the end of `r`).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Encrypts everything `plaintext` yields into `out`, one segment in memory at a time.
pub fn encrypt(
    key: &MediaKey,
    mut plaintext: impl Read,
    mut out: impl Write,
) -> Result<Sealed, SdkError> {
    let stream = key.stream();
    let mut hasher = blake3::Hasher::new();
    let (mut pt_bytes, mut ct_bytes) = (0u64, 0u64);
    let mut cur = vec![0u8; SEGMENT_BYTES];
    let mut next = vec![0u8; SEGMENT_BYTES];
    let mut n = read_full(&mut plaintext, &mut cur)?;
    let mut index: u32 = 0;
    loop {
        // Look ahead one segment: the last one is sealed with the last flag.
        let m = if n == SEGMENT_BYTES {
            read_full(&mut plaintext, &mut next)?
        } else {
            0
        };
        let last = n < SEGMENT_BYTES || m == 0;
        let mut seg = cur[..n].to_vec();
        stream
            .encrypt_in_place(index, last, b"", &mut seg)
            .map_err(|_| bad())?;
        hasher.update(&seg);
        out.write_all(&seg)?;
        pt_bytes += n as u64;
        ct_bytes += seg.len() as u64;
        if last {
            break;
        }
        std::mem::swap(&mut cur, &mut next);
        n = m;
        index = index.checked_add(1).ok_or_else(|| {
            SdkError::Io(std::io::Error::other("attachment too large for STREAM"))
        })?;
    }
    Ok(Sealed {
        id: *hasher.finalize().as_bytes(),
        plaintext_bytes: pt_bytes,
        ciphertext_bytes: ct_bytes,
    })
}

/// Plaintext size of a ciphertext of `ciphertext_bytes`, if that size is possible.
pub fn plaintext_len(ciphertext_bytes: u64) -> Option<u64> {
    let segments = ciphertext_bytes.div_ceil(SEALED_SEGMENT_BYTES).max(1);
    ciphertext_bytes.checked_sub(segments * TAG_BYTES as u64)
}

/// The ciphertext byte range `(offset, len)` that holds plaintext `offset .. offset + len` of a
/// blob of `ciphertext_bytes` (whole segments).
pub fn ciphertext_range(
    plain_offset: u64,
    plain_len: u64,
    ciphertext_bytes: u64,
) -> Option<(u64, u64)> {
    let total = plaintext_len(ciphertext_bytes)?;
    let end = plain_offset.checked_add(plain_len)?;
    if plain_len == 0 || end > total {
        return None;
    }
    let first = plain_offset / SEGMENT_BYTES as u64;
    let last = (end - 1) / SEGMENT_BYTES as u64;
    let start = first * SEALED_SEGMENT_BYTES;
    let stop = ((last + 1) * SEALED_SEGMENT_BYTES).min(ciphertext_bytes);
    Some((start, stop - start))
}

/// Decrypts plaintext `plain_offset .. plain_offset + plain_len` from `sealed`, the ciphertext
/// range [`ciphertext_range`] named (fetched and verified against the id first).
pub fn decrypt_range(
    key: &MediaKey,
    ciphertext_bytes: u64,
    plain_offset: u64,
    plain_len: u64,
    sealed: &[u8],
) -> Result<Vec<u8>, SdkError> {
    let (ct_off, ct_len) =
        ciphertext_range(plain_offset, plain_len, ciphertext_bytes).ok_or_else(bad)?;
    if sealed.len() as u64 != ct_len {
        return Err(bad());
    }
    let stream = key.stream();
    let segments = ciphertext_bytes.div_ceil(SEALED_SEGMENT_BYTES).max(1);
    let first = ct_off / SEALED_SEGMENT_BYTES;
    // The segments' plaintext is shorter than `sealed`.
    let mut plain = Vec::with_capacity(sealed.len());
    for (i, seg) in sealed.chunks(SEGMENT_BYTES + TAG_BYTES).enumerate() {
        let index = first + i as u64;
        let mut buf = seg.to_vec();
        let position = u32::try_from(index).map_err(|_| bad())?;
        stream
            .decrypt_in_place(position, index + 1 == segments, b"", &mut buf)
            .map_err(|_| bad())?;
        plain.extend_from_slice(&buf);
    }
    let skip = usize::try_from(plain_offset - first * SEGMENT_BYTES as u64).map_err(|_| bad())?;
    let take = usize::try_from(plain_len).map_err(|_| bad())?;
    Ok(plain[skip..skip + take].to_vec())
}

/// Checks a node's answer for the ciphertext range that holds plaintext `plain_offset ..
/// plain_offset + plain_len` (the range [`ciphertext_range`] names, bao-encoded by the node)
/// against the blob id, then decrypts it: the whole path from the node's bytes to plaintext.
pub fn open_range(
    key: &MediaKey,
    id: &[u8; 32],
    ciphertext_bytes: u64,
    plain_offset: u64,
    plain_len: u64,
    encoded: &[u8],
) -> Result<Vec<u8>, SdkError> {
    let (ct_off, ct_len) =
        ciphertext_range(plain_offset, plain_len, ciphertext_bytes).ok_or_else(bad)?;
    let sealed = ferry_proto::media::verify_range(id, ciphertext_bytes, ct_off, ct_len, encoded)
        .map_err(|e| SdkError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    decrypt_range(key, ciphertext_bytes, plain_offset, plain_len, &sealed)
}

/// Media over the protocol: uploads that resume, verified and range downloads, and the
/// encrypt-then-upload and download-then-decrypt pairs over them.
impl crate::Client {
    /// Waits for the `BlobStatus` answering request `kind` for `id` (others, such as late
    /// chunk acknowledgements after a restart, are skipped).
    fn blob_status(
        &mut self,
        id: [u8; 32],
        kind: ferry_proto::frame::BlobOpKind,
    ) -> Result<(ferry_proto::frame::BlobStatus, u64, u64), SdkError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.next_event(deadline)? {
                ClientEvent::BlobStatus {
                    id: i,
                    op,
                    status,
                    offset,
                    size,
                } if i == id => {
                    if op == kind {
                        return Ok((status, offset, size));
                    }
                }
                ClientEvent::Error { code, message } => {
                    return Err(SdkError::Node { code, message });
                }
                other => self.queue(other)?,
            }
        }
    }

    /// Uploads `size` bytes from `data` as blob `id` (blake3 of those bytes), resuming where the
    /// node's upload stands (after a disconnect or a node restart, call it again), with up to
    /// `BLOB_WINDOW_CHUNKS` chunks in flight. Over the connection's upload rate (or with the
    /// owner core busy) it waits and resumes. Returns once the node has verified the blob.
    pub fn upload_blob<R: std::io::Read + std::io::Seek>(
        &mut self,
        id: [u8; 32],
        size: u64,
        data: &mut R,
    ) -> Result<(), SdkError> {
        use ferry_proto::frame::{BlobOpKind as K, BlobStatus as B};
        use ferry_proto::limits::BLOB_CHUNK_BYTES_MAX;
        // Consecutive refusals without progress.
        let mut stalls = 0u32;
        'resume: loop {
            self.conn.push(&Frame::BlobBegin { id, size });
            self.flush()?;
            let (st, mut at, _) = self.blob_status(id, K::Begin)?;
            match st {
                B::Complete => return Ok(()),
                B::Ok => {}
                B::Busy if stalls < BLOB_STALLS_MAX => {
                    stalls += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'resume;
                }
                other => return Err(SdkError::Blob(other)),
            }
            data.seek(std::io::SeekFrom::Start(at))?;
            let mut in_flight = 0usize;
            let mut buf = vec![0u8; BLOB_CHUNK_BYTES_MAX];
            while at < size || in_flight > 0 {
                while in_flight < BLOB_WINDOW_CHUNKS && at < size {
                    // What is left, or a whole chunk when that does not even fit a usize.
                    let n = usize::try_from(size - at)
                        .map_or(BLOB_CHUNK_BYTES_MAX, |left| left.min(BLOB_CHUNK_BYTES_MAX));
                    data.read_exact(&mut buf[..n])?;
                    self.conn.push(&Frame::BlobChunk {
                        id,
                        offset: at,
                        data: bytes::Bytes::copy_from_slice(&buf[..n]),
                    });
                    at += n as u64;
                    in_flight += 1;
                }
                self.flush()?;
                let (st, _, _) = self.blob_status(id, K::Chunk)?;
                match st {
                    B::Ok => {
                        in_flight -= 1;
                        stalls = 0;
                    }
                    B::Busy | B::RateLimited | B::BadOffset if stalls < BLOB_STALLS_MAX => {
                        // Let the node catch up (or the rate refill), then ask where it stands;
                        // the acks of chunks still in flight are skipped by kind.
                        stalls += 1;
                        std::thread::sleep(Duration::from_millis(100));
                        continue 'resume;
                    }
                    other => return Err(SdkError::Blob(other)),
                }
            }
            self.conn.push(&Frame::BlobFinish { id });
            self.flush()?;
            let (st, _, _) = self.blob_status(id, K::Finish)?;
            return match st {
                B::Complete => Ok(()),
                other => Err(SdkError::Blob(other)),
            };
        }
    }

    /// The size of stored blob `id`.
    pub fn blob_size(&mut self, id: [u8; 32]) -> Result<u64, SdkError> {
        use ferry_proto::frame::BlobStatus as B;
        self.conn.push(&Frame::BlobGet {
            id,
            offset: 0,
            len: 0,
        });
        self.flush()?;
        match self.blob_status(id, ferry_proto::frame::BlobOpKind::Get)? {
            (B::Ok, _, size) => Ok(size),
            (st, _, _) => Err(SdkError::Blob(st)),
        }
    }

    /// Bytes `offset .. offset + len` of blob `id` (of `size` bytes: take it from the message
    /// that named the blob, not from the node), each piece of up to 1 MiB verified against the
    /// id before it is returned (`ferry_proto::media::verify_range`). Up to
    /// `BLOB_GETS_IN_FLIGHT_MAX` requests are kept in flight.
    pub fn download_verified(
        &mut self,
        id: [u8; 32],
        size: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, SdkError> {
        use ferry_proto::frame::{BlobOpKind as K, BlobStatus as B};
        use ferry_proto::limits::{BLOB_GET_BYTES_MAX, BLOB_GETS_IN_FLIGHT_MAX};
        // BLOB_GET_BYTES_MAX as the request's u32 length field.
        const GET_BYTES_MAX: u32 = 1 << 20;
        const _: () = assert!(GET_BYTES_MAX as usize == BLOB_GET_BYTES_MAX);
        let (Some(end), Ok(len_bytes)) = (offset.checked_add(len), usize::try_from(len)) else {
            return Err(SdkError::Blob(B::BadRange));
        };
        let mut out = Vec::with_capacity(len_bytes);
        // Requests in order: (offset, length, encoded answer so far, complete).
        let mut pending: std::collections::VecDeque<(u64, u32, Vec<u8>, bool)> =
            std::collections::VecDeque::new();
        let mut next = offset;
        let mut stalls = 0u32;
        let deadline = Instant::now() + Duration::from_secs(300);
        while out.len() as u64 != len {
            while next < end && pending.len() < BLOB_GETS_IN_FLIGHT_MAX as usize {
                // What is left, or a whole request when that does not even fit a u32.
                let n =
                    u32::try_from(end - next).map_or(GET_BYTES_MAX, |left| left.min(GET_BYTES_MAX));
                self.conn.push(&Frame::BlobGet {
                    id,
                    offset: next,
                    len: n,
                });
                pending.push_back((next, n, Vec::new(), false));
                next += u64::from(n);
            }
            self.flush()?;
            match self.next_event(deadline)? {
                ClientEvent::BlobData {
                    id: i,
                    offset: o,
                    more,
                    data,
                } if i == id => {
                    if let Some(p) = pending.iter_mut().find(|p| p.0 == o && !p.3) {
                        p.2.extend_from_slice(&data);
                        p.3 = !more;
                    }
                }
                ClientEvent::BlobStatus {
                    id: i,
                    op: K::Get,
                    status,
                    offset: o,
                    ..
                } if i == id => {
                    if status != B::Busy || stalls >= BLOB_STALLS_MAX {
                        return Err(SdkError::Blob(status));
                    }
                    // Refused for now: ask again for that piece.
                    stalls += 1;
                    std::thread::sleep(Duration::from_millis(5));
                    if let Some(p) = pending.iter().find(|p| p.0 == o && !p.3) {
                        self.conn.push(&Frame::BlobGet {
                            id,
                            offset: p.0,
                            len: p.1,
                        });
                    }
                }
                ClientEvent::Error { code, message } => {
                    return Err(SdkError::Node { code, message });
                }
                other => self.queue(other)?,
            }
            while pending.front().is_some_and(|p| p.3) {
                if let Some((at, n, encoded, _)) = pending.pop_front() {
                    let piece =
                        ferry_proto::media::verify_range(&id, size, at, u64::from(n), &encoded)
                            .map_err(|e| {
                                SdkError::Io(std::io::Error::new(
                                    std::io::ErrorKind::InvalidData,
                                    e,
                                ))
                            })?;
                    out.extend_from_slice(&piece);
                }
            }
        }
        Ok(out)
    }

    /// Encrypts `plaintext` with a fresh key (STREAM, one segment in memory at a time, through a
    /// temporary file) and uploads the ciphertext. Returns what the recipient needs: the blob id,
    /// the key and the ciphertext size (send them inside an end-to-end encrypted message).
    ///
    /// If this process may die mid-upload of a large file, encrypt to a file the application
    /// keeps (`crate::media::encrypt`) and upload it with [`Client::upload_blob`], which resumes where
    /// the node stands; this helper deletes its temporary file and key on any error.
    pub fn encrypt_and_upload(
        &mut self,
        plaintext: impl std::io::Read,
    ) -> Result<(crate::media::Sealed, crate::media::MediaKey), SdkError> {
        let key = crate::media::MediaKey::generate()?;
        let mut name = [0u8; 8];
        getrandom::fill(&mut name)
            .map_err(|e| SdkError::Io(std::io::Error::other(e.to_string())))?;
        let path = std::env::temp_dir().join(format!(
            "ferry-upload-{}.tmp",
            name.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?;
            let mut w = std::io::BufWriter::new(&mut f);
            let sealed = crate::media::encrypt(&key, plaintext, &mut w)?;
            std::io::Write::flush(&mut w)?;
            drop(w);
            self.upload_blob(
                sealed.id,
                sealed.ciphertext_bytes,
                &mut std::io::BufReader::new(&mut f),
            )?;
            Ok(sealed)
        })();
        let _ = std::fs::remove_file(&path);
        result.map(|sealed| (sealed, key))
    }

    /// Downloads, verifies and decrypts plaintext `plain_offset .. plain_offset + plain_len` of
    /// an attachment, whole STREAM segments at a time (about 4 MiB per window, 1 MiB per
    /// request, four requests in flight). `ciphertext_bytes` comes from the message.
    pub fn download_and_decrypt(
        &mut self,
        id: [u8; 32],
        key: &crate::media::MediaKey,
        ciphertext_bytes: u64,
        plain_offset: u64,
        plain_len: u64,
        mut out: impl std::io::Write,
    ) -> Result<(), SdkError> {
        // About 4 MiB of sealed segments per window: four 1 MiB requests in flight.
        let window = 60 * crate::media::SEGMENT_BYTES as u64;
        let end = plain_offset + plain_len;
        let mut at = plain_offset;
        while at < end {
            // Up to the end of the window's last segment.
            let stop = ((at / window) + 1) * window;
            let n = stop.min(end) - at;
            let (co, cl) = crate::media::ciphertext_range(at, n, ciphertext_bytes)
                .ok_or(SdkError::Blob(ferry_proto::frame::BlobStatus::BadRange))?;
            let sealed = self.download_verified(id, ciphertext_bytes, co, cl)?;
            out.write_all(&crate::media::decrypt_range(
                key,
                ciphertext_bytes,
                at,
                n,
                &sealed,
            )?)?;
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::cast_possible_truncation)] // test sizes are a few segments
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trip_any_size_and_any_range() {
        for n in [
            0,
            1,
            SEGMENT_BYTES - 1,
            SEGMENT_BYTES,
            SEGMENT_BYTES + 1,
            3 * SEGMENT_BYTES + 77,
        ] {
            let key = MediaKey::generate().unwrap();
            let pt = data(n);
            let mut ct = Vec::new();
            let sealed = encrypt(&key, &pt[..], &mut ct).unwrap();
            assert_eq!(sealed.ciphertext_bytes, ct.len() as u64);
            assert_eq!(sealed.id, *blake3::hash(&ct).as_bytes());
            assert_eq!(plaintext_len(ct.len() as u64), Some(n as u64));
            if n == 0 {
                assert!(ciphertext_range(0, 1, ct.len() as u64).is_none());
                continue;
            }
            for (off, len) in [
                (0, n),
                (n / 2, n - n / 2),
                (n - 1, 1),
                (n / 3, 1.max(n / 5)),
            ] {
                let (co, cl) = ciphertext_range(off as u64, len as u64, ct.len() as u64).unwrap();
                let got = decrypt_range(
                    &key,
                    ct.len() as u64,
                    off as u64,
                    len as u64,
                    &ct[co as usize..(co + cl) as usize],
                )
                .unwrap();
                assert_eq!(got, &pt[off..off + len], "n={n} off={off} len={len}");
            }
        }
    }

    /// Encrypt on the device, store in a node's media store, read a verified range back, open
    /// it: everything but the transport.
    #[test]
    fn through_the_node_store_and_back() {
        let dir = std::env::temp_dir().join(format!("ferry-sdk-media-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = ferry_shards::media::MediaStore::open(
            &dir,
            ferry_shards::media::MediaLimits::default(),
            0,
        )
        .unwrap();
        let key = MediaKey::generate().unwrap();
        let pt = data(5 * SEGMENT_BYTES + 1234);
        let mut ct = Vec::new();
        let sealed = encrypt(&key, &pt[..], &mut ct).unwrap();
        store
            .begin(
                sealed.id,
                sealed.ciphertext_bytes,
                ferry_shards::ratelimit::IpKey::V4([127, 0, 0, 1]),
                0,
            )
            .unwrap();
        store.write(&sealed.id, 0, &ct).unwrap();
        store.finish(&sealed.id).unwrap();
        for (off, len) in [(0usize, pt.len()), (70_000, 200_000), (pt.len() - 10, 10)] {
            let (co, cl) =
                ciphertext_range(off as u64, len as u64, sealed.ciphertext_bytes).unwrap();
            let enc = store.read_range(&sealed.id, co, cl).unwrap();
            let got = open_range(
                &key,
                &sealed.id,
                sealed.ciphertext_bytes,
                off as u64,
                len as u64,
                &enc,
            )
            .unwrap();
            assert_eq!(got, &pt[off..off + len]);
            let mut bad = enc.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(
                open_range(
                    &key,
                    &sealed.id,
                    sealed.ciphertext_bytes,
                    off as u64,
                    len as u64,
                    &bad
                )
                .is_err()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tampering_truncation_and_the_wrong_key_fail() {
        let key = MediaKey::generate().unwrap();
        let pt = data(2 * SEGMENT_BYTES + 10);
        let mut ct = Vec::new();
        encrypt(&key, &pt[..], &mut ct).unwrap();
        let n = ct.len() as u64;
        let all = |ct: &[u8], k: &MediaKey| decrypt_range(k, n, 0, pt.len() as u64, ct);
        assert!(all(&ct, &key).is_ok());
        let mut bad = ct.clone();
        bad[SEGMENT_BYTES + 100] ^= 1;
        assert!(all(&bad, &key).is_err());
        assert!(all(&ct, &MediaKey([9; 32])).is_err());
        // Dropping the last segment: the new last one was not sealed as last.
        let cut = 2 * SEALED_SEGMENT_BYTES as usize;
        let shorter = &ct[..cut];
        assert!(
            decrypt_range(&key, cut as u64, 0, 2 * SEGMENT_BYTES as u64 - 32, shorter).is_err()
        );
        // Swapping two segments fails too.
        let s = SEALED_SEGMENT_BYTES as usize;
        let mut swapped = ct[s..2 * s].to_vec();
        swapped.extend_from_slice(&ct[..s]);
        swapped.extend_from_slice(&ct[2 * s..]);
        assert!(all(&swapped, &key).is_err());
        assert!(!format!("{key:?}").contains('9'));
    }
}
