//! Verified streaming of media blobs: a blob's id is blake3 of its bytes, and a range comes with
//! the hashes of blake3's tree (bao, as `bao-tree` encodes it over 16 KiB chunk groups) that link
//! it to the id. Shared by the node, which encodes ranges (`ferry_shards::media`), and the SDK,
//! which checks them. Pure computation: no I/O.

use bao_tree::io::sync::DecodeResponseIter;
use bao_tree::io::{BaoContentItem, Leaf};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};

/// A blob id: blake3 of the blob's bytes.
pub type BlobId = [u8; 32];

/// Blake3 chunks per bao group: 2^4 × 1 KiB = 16 KiB. The outboard costs 64 bytes per group
/// (0.4 % of the blob), and a proof for a range needs one hash pair per tree level above it.
pub const BLOCK_SIZE: BlockSize = BlockSize::from_chunk_log(4);
/// Bytes per bao chunk group.
pub const GROUP_BYTES: u64 = 16 * 1024;

/// Why a range answer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// The range is empty or outside the blob.
    BadRange,
    /// A byte or hash of the answer does not match the id, or the answer is cut short.
    Mismatch,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::BadRange => write!(f, "range outside the blob"),
            VerifyError::Mismatch => write!(f, "range does not verify against the blob id"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// The 1 KiB chunks covering bytes `offset .. offset + len`.
pub fn chunk_ranges(offset: u64, len: u64) -> ChunkRanges {
    let start = ChunkNum(offset / 1024);
    let end = ChunkNum((offset + len).div_ceil(1024));
    ChunkRanges::from(start..end)
}

/// Checks a range answer (`ferry_shards::media::MediaStore::read_range`) against the blob id and size, and returns the
/// verified bytes `offset .. offset + len`. Any tampered byte or hash fails.
pub fn verify_range(
    id: &BlobId,
    size: u64,
    offset: u64,
    len: u64,
    encoded: &[u8],
) -> Result<Vec<u8>, VerifyError> {
    if len == 0 || offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(VerifyError::BadRange);
    }
    // The verified bytes are returned in memory: a range this target cannot address is refused.
    let len_usize = usize::try_from(len).map_err(|_| VerifyError::BadRange)?;
    let ranges = chunk_ranges(offset, len);
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let root = bao_tree::blake3::Hash::from_bytes(*id);
    // No more than the answer holds, whatever `len` claims.
    let mut out = Vec::with_capacity(len_usize.min(encoded.len()));
    for item in DecodeResponseIter::new(root, tree, encoded, &ranges) {
        match item {
            Ok(BaoContentItem::Leaf(Leaf { offset: at, data })) => {
                // Keep the part of this verified leaf that falls in the range.
                let (lo, hi) = (at.max(offset), (at + data.len() as u64).min(offset + len));
                if lo < hi {
                    // at <= lo < hi <= at + data.len(): both fit the leaf's usize length.
                    let s = usize::try_from(lo - at).expect("inside the leaf");
                    let e = usize::try_from(hi - at).expect("inside the leaf");
                    out.extend_from_slice(&data[s..e]);
                }
            }
            Ok(BaoContentItem::Parent(_)) => {}
            Err(_) => return Err(VerifyError::Mismatch),
        }
    }
    if out.len() != len_usize {
        return Err(VerifyError::Mismatch);
    }
    Ok(out)
}

/// Bytes `offset ..` of a blob held in memory, for checking them against an outboard.
struct Window<'a> {
    offset: u64,
    data: &'a [u8],
}

impl bao_tree::io::sync::ReadAt for Window<'_> {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let missing =
            || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "outside the window");
        let start = pos.checked_sub(self.offset).ok_or_else(missing)?;
        let start = usize::try_from(start).map_err(|_| missing())?;
        let end = start
            .checked_add(buf.len())
            .filter(|e| *e <= self.data.len());
        let end = end.ok_or_else(missing)?;
        buf.copy_from_slice(&self.data[start..end]);
        Ok(buf.len())
    }
}

/// Checks raw bytes `offset .. offset + data.len()` of a blob (fetched over HTTP, say) against
/// the blob's id and its outboard (`GET /blob/<id>.obao`): the bytes must cover whole 16 KiB
/// chunk groups (`offset` a multiple of `GROUP_BYTES`, the end one too or the end of the blob).
pub fn verify_with_outboard(
    id: &BlobId,
    size: u64,
    outboard: &[u8],
    offset: u64,
    data: &[u8],
) -> Result<(), VerifyError> {
    use bao_tree::io::outboard::PreOrderOutboard;
    let end = offset
        .checked_add(data.len() as u64)
        .ok_or(VerifyError::BadRange)?;
    if data.is_empty() || end > size || offset % GROUP_BYTES != 0 {
        return Err(VerifyError::BadRange);
    }
    if end % GROUP_BYTES != 0 && end != size {
        return Err(VerifyError::BadRange);
    }
    let ob = PreOrderOutboard {
        root: bao_tree::blake3::Hash::from_bytes(*id),
        tree: BaoTree::new(size, BLOCK_SIZE),
        data: outboard,
    };
    let window = Window { offset, data };
    let ranges = chunk_ranges(offset, data.len() as u64);
    // Encoding with validation checks every leaf against the outboard and every outboard hash
    // on the way up against the id; the encoding itself is thrown away.
    bao_tree::io::sync::encode_ranges_validated(&window, &ob, &ranges, std::io::sink())
        .map_err(|_| VerifyError::Mismatch)
}
