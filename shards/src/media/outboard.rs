//! A blob's outboard and root built as its bytes arrive, in order, so that finishing an upload
//! needs no second pass over the blob (it used to re-read and hash all of it at `finish`).
//!
//! The walk is bao-tree's own post-order walk of the tree above 16 KiB chunk groups
//! (`BaoTree::post_order_chunks_iter`): each leaf is hashed as its bytes come (blake3's hasher
//! at the leaf's input offset, so no leaf is buffered), each parent as soon as both children
//! are known, and every parent's hash pair saved at its pre-order place: the same bytes as
//! `PreOrderOutboard::create_sized` over the whole blob (tested against it). Memory: one blake3
//! hasher, a stack of at most the tree's height, and the outboard so far (64 bytes per 16 KiB
//! received, 1/256 of the bytes, which the disk budget already bounds).

use bao_tree::io::outboard::PreOrderOutboard;
use bao_tree::io::sync::OutboardMut;
use bao_tree::iter::{BaoChunk, PostOrderChunkIter};
use bao_tree::{BaoTree, ChunkNum};

use super::BLOCK_SIZE;

/// The leaf being hashed: its size, how much of it came, and whether it is the whole tree.
#[derive(Debug)]
struct Leaf {
    size: usize,
    filled: usize,
    is_root: bool,
}

/// See the module comment.
pub(crate) struct OutboardBuilder {
    tree: BaoTree,
    walk: PostOrderChunkIter,
    leaf: Option<Leaf>,
    hasher: blake3::Hasher,
    stack: Vec<blake3::Hash>,
    outboard: PreOrderOutboard<Vec<u8>>,
    /// Bytes fed so far.
    fed: u64,
}

impl std::fmt::Debug for OutboardBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboardBuilder")
            .field("size", &self.tree.size())
            .field("fed", &self.fed)
            .finish_non_exhaustive()
    }
}

impl OutboardBuilder {
    /// For a blob of `size` bytes.
    pub(crate) fn new(size: u64) -> OutboardBuilder {
        let tree = BaoTree::new(size, BLOCK_SIZE);
        let mut b = OutboardBuilder {
            tree,
            walk: tree.post_order_chunks_iter(),
            leaf: None,
            hasher: blake3::Hasher::new(),
            stack: Vec::new(),
            outboard: PreOrderOutboard {
                root: blake3::Hash::from([0; 32]),
                tree,
                data: Vec::new(),
            },
            fed: 0,
        };
        b.advance();
        b
    }

    /// Bytes fed so far.
    pub(crate) fn fed(&self) -> u64 {
        self.fed
    }

    /// The next bytes of the blob. Bytes past its size are a caller's bug (the store checks the
    /// size before it writes).
    pub(crate) fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let leaf = self
                .leaf
                .as_mut()
                .expect("no more bytes than the blob's size are fed");
            let take = (leaf.size - leaf.filled).min(data.len());
            self.hasher.update(&data[..take]);
            leaf.filled += take;
            self.fed += take as u64;
            data = &data[take..];
            if leaf.filled == leaf.size {
                self.end_leaf();
            }
        }
    }

    /// The root and the outboard's bytes, once every byte was fed; `None` before.
    pub(crate) fn finish(self) -> Option<(blake3::Hash, Vec<u8>)> {
        if self.leaf.is_some() || self.fed != self.tree.size() {
            return None;
        }
        debug_assert_eq!(self.stack.len(), 1, "a finished walk leaves the root alone");
        let root = *self.stack.first()?;
        Some((root, self.outboard.data))
    }

    fn end_leaf(&mut self) {
        let Some(leaf) = self.leaf.take() else { return };
        let hasher = std::mem::replace(&mut self.hasher, blake3::Hasher::new());
        let hash = if leaf.is_root {
            hasher.finalize()
        } else {
            use blake3::hazmat::HasherExt;
            blake3::Hash::from(hasher.finalize_non_root())
        };
        self.stack.push(hash);
        self.advance();
    }

    /// Walks on to the next leaf, hashing every parent on the way.
    fn advance(&mut self) {
        for item in self.walk.by_ref() {
            match item {
                BaoChunk::Parent { node, is_root, .. } => {
                    let right = self.stack.pop().expect("a parent follows its two children");
                    let left = self.stack.pop().expect("a parent follows its two children");
                    // Into a Vec, which grows as needed: cannot fail.
                    let _ = self.outboard.save(node, &(left, right));
                    self.stack.push(parent_cv(&left, &right, is_root));
                }
                BaoChunk::Leaf {
                    size,
                    is_root,
                    start_chunk,
                    ..
                } => {
                    self.start_leaf(start_chunk, size, is_root);
                    if size == 0 {
                        // The empty blob: its one leaf is complete at once.
                        self.end_leaf();
                    }
                    return;
                }
            }
        }
    }

    fn start_leaf(&mut self, start_chunk: ChunkNum, size: usize, is_root: bool) {
        if !is_root {
            use blake3::hazmat::HasherExt;
            self.hasher.set_input_offset(start_chunk.0 * 1024);
        }
        self.leaf = Some(Leaf {
            size,
            filled: 0,
            is_root,
        });
    }
}

/// A parent's hash from its children's (bao-tree's `parent_cv`, which it does not export).
fn parent_cv(left: &blake3::Hash, right: &blake3::Hash, is_root: bool) -> blake3::Hash {
    use blake3::hazmat::{Mode, merge_subtrees_non_root, merge_subtrees_root};
    if is_root {
        merge_subtrees_root(left.as_bytes(), right.as_bytes(), Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(
            left.as_bytes(),
            right.as_bytes(),
            Mode::Hash,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bao_tree::io::sync::CreateOutboard;
    use proptest::prelude::*;

    fn reference(data: &[u8]) -> (blake3::Hash, Vec<u8>) {
        let ob = PreOrderOutboard::<Vec<u8>>::create_sized(data, data.len() as u64, BLOCK_SIZE)
            .expect("in memory");
        (ob.root, ob.data)
    }

    fn built(data: &[u8], cuts: &[usize]) -> (blake3::Hash, Vec<u8>) {
        let mut b = OutboardBuilder::new(data.len() as u64);
        let mut at = 0;
        for &c in cuts {
            let end = (at + c).min(data.len());
            b.update(&data[at..end]);
            at = end;
        }
        b.update(&data[at..]);
        b.finish().expect("every byte fed")
    }

    #[test]
    fn edge_sizes_match_bao_tree_and_blake3() {
        let data: Vec<u8> = (0u32..(5 * 16 * 1024 + 3))
            .map(|i| (i * 31 % 251).to_le_bytes()[0])
            .collect();
        for size in [
            0, 1, 1023, 1024, 1025, 16383, 16384, 16385, 32768, 49152, 65537, 81923,
        ] {
            let d = &data[..size];
            let (root, ob) = built(d, &[7, 16384, 1]);
            assert_eq!(root, blake3::hash(d), "size {size}: root");
            assert_eq!((root, ob), reference(d), "size {size}: outboard");
        }
    }

    #[test]
    fn finish_before_the_last_byte_is_none() {
        let mut b = OutboardBuilder::new(20_000);
        b.update(&[1u8; 19_999]);
        assert_eq!(b.fed(), 19_999);
        assert!(b.finish().is_none());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_size_cut_anywhere_matches_bao_tree(
            size in 0usize..300_000,
            seed in any::<u8>(),
            cuts in proptest::collection::vec(1usize..40_000, 0..20),
        ) {
            let data: Vec<u8> = (0..size).map(|i| i.to_le_bytes()[0].wrapping_mul(seed | 1)).collect();
            prop_assert_eq!(built(&data, &cuts), reference(&data));
        }
    }
}
