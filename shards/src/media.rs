//! Encrypted media blobs on disk, content-addressed: the id of a blob is blake3 of its bytes (the
//! device's ciphertext; the node never sees a key). Uploads are resumable from the last durable
//! offset, also across a restart; a blob becomes readable only once its bytes hash to its id.
//! Reads come with the proof hashes of blake3's tree (bao, through `bao-tree`), so a client can
//! check any range it fetched against the id without downloading the rest.
//!
//! One directory per owner shard. Files, for an id in hex:
//! * `<id>.part`: an upload in progress; `<id>.pmeta`: its declared size, expiry and durable
//!   length (written with temp file + rename after the `.part` was synced);
//! * `<id>.blob`: a complete, verified blob; `<id>.obao`: its pre-order outboard (the hash pairs
//!   of the tree above 16 KiB chunk groups, 64 bytes per group); `<id>.meta`: size and expiry.
//!
//! The node runs one store per core on that core's media worker (`src/media.rs`).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ahash::AHashMap;
use bao_tree::BaoTree;
use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::{CreateOutboard, encode_ranges_validated};
pub use ferry_proto::media::{BLOCK_SIZE, BlobId, GROUP_BYTES, chunk_ranges, verify_range};

use ferry_proto::conn::BlobOp;
use ferry_proto::limits::{BLOB_DATA_HEADER_BYTES, FRAME_BYTES_MAX};
use ferry_proto::{BlobOpKind, BlobStatus, Frame};

use crate::ratelimit::IpKey;
use outboard::OutboardBuilder;

/// Bytes a `.part` grows by before it is synced and its durable length recorded.
pub const SYNC_EVERY_BYTES: u64 = 8 << 20;

/// Named limits of the media store.
#[derive(Clone, Debug)]
pub struct MediaLimits {
    pub blob_bytes_max: u64,
    pub ttl_s: u64,
    /// Disk the store may use (complete and partial blobs, outboards included).
    pub disk_bytes_max: u64,
    /// Unfinished uploads at once (each holds a file, and the bytes it received of the budget).
    pub uploads_max: usize,
    /// Unfinished uploads one source address (IPv4, IPv6 /64) may hold at once, so that one
    /// source cannot take every upload slot of the core.
    pub uploads_per_source_max: usize,
    /// An unfinished upload that received nothing for this long is dropped.
    pub upload_idle_s: u64,
}

/// Default of [`MediaLimits::upload_idle_s`]: abandoned (or never fed) uploads give back their
/// slot and bytes within minutes.
pub const UPLOAD_IDLE_S_DEFAULT: u64 = 300;
/// Default of [`MediaLimits::uploads_per_source_max`].
pub const UPLOADS_PER_SOURCE_MAX_DEFAULT: usize = 16;
/// Default of [`MediaLimits::uploads_max`].
pub const UPLOADS_MAX_DEFAULT: usize = 256;
// One source alone must leave most of a core's upload slots to the others.
const _: () = assert!(UPLOADS_PER_SOURCE_MAX_DEFAULT * 8 <= UPLOADS_MAX_DEFAULT);

impl Default for MediaLimits {
    fn default() -> Self {
        MediaLimits {
            blob_bytes_max: 100 << 20,
            ttl_s: 30 * 86_400,
            disk_bytes_max: 16 << 30,
            uploads_max: UPLOADS_MAX_DEFAULT,
            uploads_per_source_max: UPLOADS_PER_SOURCE_MAX_DEFAULT,
            upload_idle_s: UPLOAD_IDLE_S_DEFAULT,
        }
    }
}

/// Why a media operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Declared size above `blob_bytes_max`.
    #[error("blob larger than the node's maximum")]
    TooLarge,
    /// The upload would take the store over `disk_bytes_max`.
    #[error("media store full")]
    DiskFull,
    /// The bytes do not hash to the id: the upload is discarded.
    #[error("bytes do not hash to the blob id")]
    Mismatch,
    /// A chunk must continue the upload where it stands.
    #[error("chunk must start at offset {expected}")]
    Offset { expected: u64 },
    /// A chunk beyond the declared size, or a size that differs from the upload's.
    #[error("size differs from the upload's declared size")]
    Size,
    /// No upload in progress for this id.
    #[error("no upload in progress for this id")]
    NoUpload,
    /// No complete blob with this id.
    #[error("no such blob")]
    NotFound,
    /// Too many unfinished uploads on this core: retry later.
    #[error("too many unfinished uploads")]
    TooManyUploads,
    /// This source address already holds `uploads_per_source_max` unfinished uploads.
    #[error("too many unfinished uploads from this address")]
    SourceBusy,
    /// A range outside the blob.
    #[error("range outside the blob")]
    BadRange,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Where an upload stands after `begin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    /// Send bytes from this offset (0 for a new upload; the durable length when resuming).
    From(u64),
    /// The blob is already stored and verified: nothing to send.
    Complete,
}

#[derive(Debug)]
struct Partial {
    size: u64,
    expires_unix_s: u64,
    /// Bytes written to `.part` (`durable` of them synced and recorded).
    len: u64,
    durable: u64,
    /// When the upload last received bytes (or began, or the store opened).
    active_unix_s: u64,
    /// The address that began it (`None` after a restart: its source is not recorded).
    source: Option<IpKey>,
    file: File,
    /// The outboard and root, built as the bytes arrive (`None` for an upload resumed after a
    /// restart: `finish` then hashes the whole part in one pass, as it always did).
    hash: Option<OutboardBuilder>,
}

#[derive(Clone, Copy, Debug)]
struct Stored {
    size: u64,
    expires_unix_s: u64,
}

/// Counters of one store, for the metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct MediaStats {
    /// Unfinished uploads dropped because they received nothing for `upload_idle_s`.
    pub reservations_expired: u64,
    /// Begins refused because their source held `uploads_per_source_max` uploads.
    pub uploads_refused_source: u64,
}

/// One shard's media store.
#[derive(Debug)]
pub struct MediaStore {
    dir: PathBuf,
    limits: MediaLimits,
    partial: AHashMap<BlobId, Partial>,
    blobs: AHashMap<BlobId, Stored>,
    /// Unfinished uploads per source address (only sources with at least one).
    uploads_by_source: AHashMap<IpKey, usize>,
    /// Bytes used on disk: bytes received by unfinished uploads (not their declared sizes: a
    /// `BlobBegin` with no data holds nothing of the budget), complete blobs and outboards.
    used: u64,
    pub stats: MediaStats,
}

/// A blob id as its file names spell it: 64 lowercase hex digits.
pub fn hex(id: &BlobId) -> String {
    ferry_proto::hex::encode(id)
}

/// The id a file name (or an HTTP path) spells, in exactly the form [`hex`] writes.
pub fn unhex(s: &str) -> Option<BlobId> {
    ferry_proto::hex::decode_array(s)
}

fn outboard_bytes(size: u64) -> u64 {
    size.div_ceil(GROUP_BYTES).saturating_sub(1) * 64
}

/// Writes `data` to `path` atomically (temp file, sync, rename, directory sync).
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    ferry_proto::fsutil::write_atomic(path, data, FILE_MODE)
}

/// Temp file, sync, rename: the directory sync is the caller's.
fn write_file_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    ferry_proto::fsutil::write_synced(path, data, FILE_MODE)
}

/// Media files are the node user's only (as everything in the data directory).
const FILE_MODE: u32 = 0o600;

fn sync_dir(path: &Path) -> std::io::Result<()> {
    ferry_proto::fsutil::sync_parent(path)
}

/// `size:u64le expires:u64le [durable:u64le]`.
fn meta_bytes(fields: &[u64]) -> Vec<u8> {
    fields.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn read_meta(path: &Path, n: usize) -> Option<Vec<u64>> {
    let data = std::fs::read(path).ok()?;
    if data.len() != 8 * n {
        return None;
    }
    Some(
        data.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("chunks_exact(8) yields 8 bytes")))
            .collect(),
    )
}

impl MediaStore {
    /// Opens (creating) the store in `dir`: complete blobs are listed, uploads in progress are
    /// cut back to their recorded durable length, expired and orphaned files are deleted.
    pub fn open(dir: &Path, limits: MediaLimits, now_unix_s: u64) -> Result<Self, MediaError> {
        std::fs::create_dir_all(dir)?;
        let mut s = MediaStore {
            dir: dir.to_path_buf(),
            limits,
            partial: AHashMap::new(),
            blobs: AHashMap::new(),
            uploads_by_source: AHashMap::new(),
            used: 0,
            stats: MediaStats::default(),
        };
        let mut names: Vec<(BlobId, String)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name().to_string_lossy().to_string();
            match name.split_once('.') {
                Some((h, ext)) => match unhex(h) {
                    Some(id) => names.push((id, ext.to_string())),
                    None => {
                        let _ = std::fs::remove_file(dir.join(&name));
                    }
                },
                None => {
                    let _ = std::fs::remove_file(dir.join(&name));
                }
            }
        }
        for (id, ext) in &names {
            match ext.as_str() {
                "meta" => {
                    // A crash after the meta file but before the rename: the verified part
                    // becomes the blob now.
                    let part = s.path(id, "part");
                    if !s.path(id, "blob").exists() && part.exists() {
                        let _ = std::fs::rename(&part, s.path(id, "blob"));
                        let _ = std::fs::remove_file(s.path(id, "pmeta"));
                    }
                    let ok = read_meta(&s.path(id, "meta"), 2).filter(|m| {
                        m[1] > now_unix_s
                            && s.path(id, "blob").exists()
                            && s.path(id, "obao").exists()
                            && !crate::mutants::active(crate::mutants::Mutant::ForgetBlobsOnRestart)
                    });
                    match ok {
                        Some(m) => {
                            s.blobs.insert(
                                *id,
                                Stored {
                                    size: m[0],
                                    expires_unix_s: m[1],
                                },
                            );
                            s.used += m[0] + outboard_bytes(m[0]);
                        }
                        None => s.remove_files(id, &["blob", "obao", "meta"]),
                    }
                }
                "pmeta" => {
                    let m = read_meta(&s.path(id, "pmeta"), 3).filter(|m| m[1] > now_unix_s);
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(s.path(id, "part"));
                    match (m, file) {
                        (Some(m), Ok(file)) if m[2] <= m[0] => {
                            // Bytes past the recorded durable length may not have reached the disk.
                            file.set_len(m[2])?;
                            s.used += m[2];
                            s.partial.insert(
                                *id,
                                Partial {
                                    size: m[0],
                                    expires_unix_s: m[1],
                                    len: m[2],
                                    durable: m[2],
                                    active_unix_s: now_unix_s,
                                    source: None,
                                    file,
                                    hash: None,
                                },
                            );
                        }
                        _ => s.remove_files(id, &["part", "pmeta"]),
                    }
                }
                _ => {}
            }
        }
        sync_dir(&s.dir.join("x"))?;
        // Files without their metadata (a crash between two renames) go.
        for (id, ext) in &names {
            let known = match ext.as_str() {
                "blob" | "obao" | "meta" => s.blobs.contains_key(id),
                "part" | "pmeta" => s.partial.contains_key(id),
                _ => false,
            };
            if !known {
                let _ = std::fs::remove_file(s.path(id, ext));
            }
        }
        Ok(s)
    }

    fn path(&self, id: &BlobId, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", hex(id)))
    }

    fn remove_files(&self, id: &BlobId, exts: &[&str]) {
        for ext in exts {
            let _ = std::fs::remove_file(self.path(id, ext));
        }
    }

    /// Bytes used on disk (received, not declared, for unfinished uploads).
    pub fn used_bytes(&self) -> u64 {
        self.used
    }

    /// Unfinished uploads.
    pub fn uploads(&self) -> usize {
        self.partial.len()
    }

    /// Unfinished uploads `source` began.
    pub fn uploads_of(&self, source: IpKey) -> usize {
        self.uploads_by_source.get(&source).copied().unwrap_or(0)
    }

    /// Size of a complete blob.
    pub fn size(&self, id: &BlobId) -> Option<u64> {
        self.blobs.get(id).map(|b| b.size)
    }

    /// Starts or resumes the upload of `size` bytes with id `id` for the client at `source`:
    /// answers where to send from. A new upload is refused when its size does not fit the disk
    /// budget now, but reserves nothing: bytes count against the budget as they arrive
    /// ([`MediaStore::write_at_time`]), so begins without data take no room from anyone.
    pub fn begin(
        &mut self,
        id: BlobId,
        size: u64,
        source: IpKey,
        now_unix_s: u64,
    ) -> Result<Begin, MediaError> {
        if let Some(b) = self.blobs.get(&id).copied() {
            if b.size != size {
                return Err(MediaError::Mismatch);
            }
            // Uploaded again (a forwarded attachment): it lives a full TTL from now.
            let expires = now_unix_s.saturating_add(self.limits.ttl_s);
            if expires > b.expires_unix_s {
                write_atomic(&self.path(&id, "meta"), &meta_bytes(&[size, expires]))?;
                if let Some(b) = self.blobs.get_mut(&id) {
                    b.expires_unix_s = expires;
                }
            }
            return Ok(Begin::Complete);
        }
        if let Some(p) = self.partial.get(&id) {
            // In this process the written bytes are all there (synced or not); after a restart
            // `len` was cut back to the durable length at open.
            return if p.size == size {
                Ok(Begin::From(p.len))
            } else {
                Err(MediaError::Size)
            };
        }
        if size > self.limits.blob_bytes_max {
            return Err(MediaError::TooLarge);
        }
        if self.used + size + outboard_bytes(size) > self.limits.disk_bytes_max {
            return Err(MediaError::DiskFull);
        }
        if self.uploads_of(source) >= self.limits.uploads_per_source_max {
            self.stats.uploads_refused_source += 1;
            return Err(MediaError::SourceBusy);
        }
        if self.partial.len() >= self.limits.uploads_max {
            return Err(MediaError::TooManyUploads);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path(&id, "part"))?;
        let expires = now_unix_s.saturating_add(self.limits.ttl_s);
        // No `.pmeta` yet: nothing is durable until the first sync writes it (a part without
        // one is dropped at open).
        *self.uploads_by_source.entry(source).or_insert(0) += 1;
        self.partial.insert(
            id,
            Partial {
                size,
                expires_unix_s: expires,
                len: 0,
                durable: 0,
                active_unix_s: now_unix_s,
                source: Some(source),
                file,
                hash: Some(OutboardBuilder::new(size)),
            },
        );
        Ok(Begin::From(0))
    }

    /// Appends `data` at `offset` (which must be where the upload stands). Every
    /// `SYNC_EVERY_BYTES` the part is synced and its durable length recorded. Returns the length.
    pub fn write(&mut self, id: &BlobId, offset: u64, data: &[u8]) -> Result<u64, MediaError> {
        self.write_at_time(id, offset, data, None)
    }

    /// [`MediaStore::write`], noting the time for the idle limit.
    pub fn write_at_time(
        &mut self,
        id: &BlobId,
        offset: u64,
        data: &[u8],
        now_unix_s: Option<u64>,
    ) -> Result<u64, MediaError> {
        let p = self.partial.get_mut(id).ok_or(MediaError::NoUpload)?;
        if let Some(now) = now_unix_s {
            p.active_unix_s = now;
        }
        if offset != p.len {
            return Err(MediaError::Offset { expected: p.len });
        }
        let n = u64::try_from(data.len()).expect("a chunk's length fits a u64");
        if p.len + n > p.size {
            return Err(MediaError::Size);
        }
        // The bytes are charged as they arrive (and the outboard at `finish`).
        if self.used + n > self.limits.disk_bytes_max {
            return Err(MediaError::DiskFull);
        }
        p.file.seek(SeekFrom::Start(offset))?;
        p.file.write_all(data)?;
        p.len += n;
        if let Some(h) = &mut p.hash {
            h.update(data);
            debug_assert_eq!(h.fed(), p.len, "the outboard has every byte written");
        }
        self.used += n;
        if p.len - p.durable >= SYNC_EVERY_BYTES {
            self.sync(id)?;
        }
        Ok(self.partial.get(id).map_or(0, |p| p.len))
    }

    /// Makes what was written durable; returns the durable length (where a resumed upload will
    /// start).
    pub fn sync(&mut self, id: &BlobId) -> Result<u64, MediaError> {
        let path = self.path(id, "pmeta");
        let p = self.partial.get_mut(id).ok_or(MediaError::NoUpload)?;
        p.file.sync_data()?;
        write_atomic(&path, &meta_bytes(&[p.size, p.expires_unix_s, p.len]))?;
        p.durable = p.len;
        Ok(p.durable)
    }

    /// Syncs every unfinished upload with bytes beyond its durable length (the drain on
    /// SIGTERM), so each resumes after a restart where its sender's acknowledged chunks end.
    /// Returns how many were synced; the first failure is returned after trying them all.
    pub fn sync_all(&mut self) -> Result<usize, MediaError> {
        let dirty: Vec<BlobId> = self
            .partial
            .iter()
            .filter(|(_, p)| p.len > p.durable)
            .map(|(id, _)| *id)
            .collect();
        let mut first_err = None;
        let mut n = 0;
        for id in dirty {
            match self.sync(&id) {
                Ok(_) => n += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(n), Err)
    }

    /// Completes an upload: the whole part must hash to the id (streamed, bounded memory). On a
    /// mismatch the upload is discarded. Then the outboard is built and the blob made readable.
    pub fn finish(&mut self, id: &BlobId) -> Result<u64, MediaError> {
        let p = self.partial.get_mut(id).ok_or(MediaError::NoUpload)?;
        if p.len != p.size {
            return Err(MediaError::Offset { expected: p.len });
        }
        p.file.sync_data()?;
        let size = p.size;
        let expires = p.expires_unix_s;
        // The outboard and root were built as the bytes came; after a restart, one pass over
        // the part builds them. The root is blake3 of the bytes.
        let (root, outboard) = match p.hash.take().and_then(OutboardBuilder::finish) {
            Some(built) => built,
            None => {
                p.file.seek(SeekFrom::Start(0))?;
                let ob = PreOrderOutboard::<Vec<u8>>::create_sized(
                    std::io::BufReader::with_capacity(1 << 20, &mut p.file),
                    size,
                    BLOCK_SIZE,
                )?;
                (ob.root, ob.data)
            }
        };
        if root.as_bytes() != id {
            self.abort(id);
            return Err(MediaError::Mismatch);
        }
        // Outboard, then the meta file (which makes the blob exist; at open a meta file whose
        // blob is still named `.part` completes the rename), then the rename; one directory
        // sync covers them all.
        let commit = || -> std::io::Result<()> {
            write_file_synced(&self.path(id, "obao"), &outboard)?;
            write_file_synced(&self.path(id, "meta"), &meta_bytes(&[size, expires]))?;
            std::fs::rename(self.path(id, "part"), self.path(id, "blob"))?;
            sync_dir(&self.path(id, "blob"))
        };
        if let Err(e) = commit() {
            self.abort(id);
            self.remove_files(id, &["obao", "meta", "blob"]);
            return Err(e.into());
        }
        let _ = std::fs::remove_file(self.path(id, "pmeta"));
        if let Some(p) = self.partial.remove(id) {
            self.forget_source(p.source);
        }
        self.used += outboard_bytes(size);
        self.blobs.insert(
            *id,
            Stored {
                size,
                expires_unix_s: expires,
            },
        );
        Ok(size)
    }

    /// Discards an upload in progress.
    pub fn abort(&mut self, id: &BlobId) {
        if let Some(p) = self.partial.remove(id) {
            self.used -= p.len;
            self.forget_source(p.source);
            self.remove_files(id, &["part", "pmeta"]);
        }
    }

    /// One upload of `source` has ended.
    fn forget_source(&mut self, source: Option<IpKey>) {
        let Some(source) = source else { return };
        let n = self
            .uploads_by_source
            .get_mut(&source)
            .expect("an upload's source is counted while it runs");
        *n -= 1;
        if *n == 0 {
            self.uploads_by_source.remove(&source);
        }
    }

    /// `len` bytes from `offset` of a complete blob, bao-encoded with the proof hashes for the
    /// 1 KiB chunks they cover (the range is widened to whole chunk groups): what a client checks
    /// with [`verify_range`]. Memory: the encoding of the range, nothing more.
    pub fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, MediaError> {
        let b = self.blobs.get(id).ok_or(MediaError::NotFound)?;
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > b.size) {
            return Err(MediaError::BadRange);
        }
        let data = File::open(self.path(id, "blob"))?;
        let obao = std::fs::read(self.path(id, "obao"))?;
        let outboard = PreOrderOutboard {
            root: bao_tree::blake3::Hash::from_bytes(*id),
            tree: BaoTree::new(b.size, BLOCK_SIZE),
            data: obao,
        };
        let ranges = chunk_ranges(offset, len);
        let mut out = Vec::new();
        // Validated as it is encoded (this also encodes partial chunk groups the way the
        // client's decoder expects): damage at rest is refused here as well as by the client.
        encode_ranges_validated(&data, &outboard, &ranges, &mut out)
            .map_err(|e| MediaError::Io(std::io::Error::other(format!("encoding a range: {e}"))))?;
        Ok(out)
    }

    /// Deletes expired blobs and uploads; returns how many.
    pub fn expire(&mut self, now_unix_s: u64) -> usize {
        let dead: Vec<BlobId> = self
            .blobs
            .iter()
            .filter(|(_, b)| b.expires_unix_s <= now_unix_s)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            if let Some(b) = self.blobs.remove(id) {
                self.used -= b.size + outboard_bytes(b.size);
            }
            // The meta file first: without it the rest is an orphan, removed at the next open.
            self.remove_files(id, &["meta", "blob", "obao"]);
        }
        let idle = self.limits.upload_idle_s;
        // At most `uploads_max` partials: the scan is bounded (and runs once a second).
        let stale: Vec<(BlobId, bool)> = self
            .partial
            .iter()
            .filter_map(|(id, p)| {
                let idle = now_unix_s >= p.active_unix_s.saturating_add(idle);
                (p.expires_unix_s <= now_unix_s || idle).then_some((*id, idle))
            })
            .collect();
        for (id, idle) in &stale {
            if *idle {
                self.stats.reservations_expired += 1;
            }
            self.abort(id);
        }
        dead.len() + stale.len()
    }
}

fn status(id: [u8; 32], op: BlobOpKind, status: BlobStatus, offset: u64, size: u64) -> Frame {
    Frame::BlobStatus {
        id,
        op,
        status,
        offset,
        size,
    }
}

fn refusal(id: [u8; 32], op: BlobOpKind, e: &MediaError) -> Frame {
    let (s, offset) = match e {
        MediaError::TooLarge => (BlobStatus::TooLarge, 0),
        MediaError::DiskFull => (BlobStatus::DiskFull, 0),
        MediaError::Mismatch => (BlobStatus::Mismatch, 0),
        MediaError::Offset { expected } => (BlobStatus::BadOffset, *expected),
        MediaError::Size | MediaError::BadRange => (BlobStatus::BadRange, 0),
        MediaError::NoUpload | MediaError::NotFound => (BlobStatus::NotFound, 0),
        MediaError::TooManyUploads | MediaError::SourceBusy => (BlobStatus::Busy, 0),
        MediaError::Io(err) if err.kind() == std::io::ErrorKind::StorageFull => {
            (BlobStatus::DiskFull, 0)
        }
        MediaError::Io(err) => {
            tracing::warn!(error = %err, "media store i/o error");
            (BlobStatus::Unavailable, 0)
        }
    };
    status(id, op, s, offset, 0)
}

/// Answers one media request of a client (a media worker's job, and the simulator's): the
/// frames for the client, in order.
pub fn answer(store: &mut MediaStore, now_unix_s: u64, op: BlobOp, source: IpKey) -> Vec<Frame> {
    use BlobOpKind as K;
    match op {
        BlobOp::Begin { id, size } => vec![match store.begin(id, size, source, now_unix_s) {
            Ok(Begin::From(off)) => status(id, K::Begin, BlobStatus::Ok, off, size),
            Ok(Begin::Complete) => status(id, K::Begin, BlobStatus::Complete, size, size),
            Err(e) => refusal(id, K::Begin, &e),
        }],
        BlobOp::Chunk { id, offset, data } => {
            match store.write_at_time(&id, offset, &data, Some(now_unix_s)) {
                Ok(len) => vec![status(id, K::Chunk, BlobStatus::Ok, len, 0)],
                Err(e) => vec![refusal(id, K::Chunk, &e)],
            }
        }
        BlobOp::Finish { id } => vec![match store.finish(&id) {
            Ok(size) => status(id, K::Finish, BlobStatus::Complete, size, size),
            Err(MediaError::NoUpload) => match store.size(&id) {
                Some(size) => status(id, K::Finish, BlobStatus::Complete, size, size),
                None => status(id, K::Finish, BlobStatus::NotFound, 0, 0),
            },
            Err(e) => refusal(id, K::Finish, &e),
        }],
        BlobOp::Get { id, offset, len } => {
            let Some(size) = store.size(&id) else {
                return vec![status(id, K::Get, BlobStatus::NotFound, 0, 0)];
            };
            if len == 0 {
                return vec![status(id, K::Get, BlobStatus::Ok, offset, size)];
            }
            match store.read_range(&id, offset, u64::from(len)) {
                Ok(encoded) => {
                    let piece = FRAME_BYTES_MAX - BLOB_DATA_HEADER_BYTES;
                    let n = encoded.len().div_ceil(piece);
                    encoded
                        .chunks(piece)
                        .enumerate()
                        .map(|(i, c)| Frame::BlobData {
                            id,
                            offset,
                            more: i + 1 < n,
                            data: bytes::Bytes::copy_from_slice(c),
                        })
                        .collect()
                }
                Err(e) => {
                    let mut f = refusal(id, K::Get, &e);
                    if let Frame::BlobStatus { offset: o, .. } = &mut f {
                        *o = offset;
                    }
                    vec![f]
                }
            }
        }
    }
}

mod outboard;
#[cfg(test)]
mod tests;
