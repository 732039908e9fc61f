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
    let ranges = chunk_ranges(offset, len);
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let root = bao_tree::blake3::Hash::from_bytes(*id);
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    for item in DecodeResponseIter::new(root, tree, encoded, &ranges) {
        match item {
            Ok(BaoContentItem::Leaf(Leaf { offset: at, data })) => {
                // Keep the part of this verified leaf that falls in the range.
                let (lo, hi) = (at.max(offset), (at + data.len() as u64).min(offset + len));
                if lo < hi {
                    let s = usize::try_from(lo - at).unwrap_or(0);
                    let e = usize::try_from(hi - at).unwrap_or(0);
                    out.extend_from_slice(&data[s..e]);
                }
            }
            Ok(BaoContentItem::Parent(_)) => {}
            Err(_) => return Err(VerifyError::Mismatch),
        }
    }
    if out.len() as u64 != len {
        return Err(VerifyError::Mismatch);
    }
    Ok(out)
}
