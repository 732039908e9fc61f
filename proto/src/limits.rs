//! Every protocol limit, named once: noun first, unit last. Related limits are tied together with
//! `const` assertions so that changing one cannot silently break another.

/// Bytes of the length prefix in front of every frame.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// Largest frame (type byte + body, prefix excluded) either side may send.
pub const FRAME_BYTES_MAX: usize = 64 * 1024;
/// Bytes a `Send` or `Deliver` frame spends before its payload: type(1) dest(16) msg_id(8) flags(1).
pub const PACKET_HEADER_BYTES: usize = 1 + 16 + 8 + 1;
/// Bytes a `Send` frame spends before its payload: the packet header plus ttl_s(4).
pub const SEND_HEADER_BYTES: usize = PACKET_HEADER_BYTES + 4;
/// Bytes a `Stored` frame spends before its payload: type(1) dest(16) pos(8) msg_id(8).
pub const STORED_HEADER_BYTES: usize = 1 + 16 + 8 + 8;
/// A `SendResult` frame (without its length prefix): type, dest, msg_id, status (the last byte).
pub const SEND_RESULT_BYTES: usize = 1 + 16 + 8 + 1;
/// A `Ping` or `Pong` frame (without its length prefix): type, nonce.
pub const PING_BYTES: usize = 1 + 8;
/// An `Error` frame before its message: type, code (u16), message length (u16).
pub const ERROR_HEADER_BYTES: usize = 1 + 2 + 2;
/// Largest packet payload: what is left of a maximal frame after the largest header a packet
/// travels under (it may come back as `Stored`), so every packet fits every frame that carries it.
pub const PACKET_PAYLOAD_BYTES_MAX: usize = FRAME_BYTES_MAX - STORED_HEADER_BYTES;

const _: () = assert!(PACKET_HEADER_BYTES <= STORED_HEADER_BYTES);
const _: () = assert!(SEND_HEADER_BYTES <= STORED_HEADER_BYTES);
/// Most proofs in one `Prove` frame (one batch verification).
pub const PROOFS_PER_FRAME_MAX: usize = 128;
/// Most destinations in one `Subscribe` or `Unsubscribe` frame.
pub const DESTS_PER_FRAME_MAX: usize = 256;
/// Bytes of an error message inside an `Error` frame.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 256;
/// How long a challenge stays valid, on the node's clock.
pub const CHALLENGE_VALIDITY_MS: u64 = 60_000;
/// Length of an epoch (destination hashes rotate every epoch).
pub const EPOCH_SECONDS: u64 = 3_600;
/// Proofs a connection remembers as verified under its current challenge, so a repeated
/// identical proof is answered without another signature check.
pub const PROOF_CACHE_ENTRIES_MAX: usize = PROOFS_PER_FRAME_MAX;
/// Proven (dest, op) pairs one connection may hold at once.
pub const PROVEN_PER_CONN_MAX: usize = 1_024;
/// Lowest and highest protocol version this build speaks.
pub const VERSION_MIN: u16 = 1;
pub const VERSION_MAX: u16 = 1;
/// The four bytes every `ClientHello` opens with.
pub const HELLO_MAGIC: [u8; 4] = *b"FRY\x01";

/// Bytes of a push token (an APNs device token in hex, an FCM registration token, a Web Push
/// endpoint URL).
pub const PUSH_TOKEN_BYTES_MAX: usize = 2_048;

/// Most bytes one `BlobGet` may ask for (its answer comes as several `BlobData` frames).
pub const BLOB_GET_BYTES_MAX: usize = 1 << 20;
/// `BlobGet`s one connection may have in flight (each answer is up to 1 MiB plus its proof);
/// more are answered `Busy`.
pub const BLOB_GETS_IN_FLIGHT_MAX: u32 = 4;
/// Bytes a `BlobChunk` frame spends before its data: type(1) id(32) offset(8).
pub const BLOB_CHUNK_HEADER_BYTES: usize = 1 + 32 + 8;
/// Most data in one `BlobChunk`.
pub const BLOB_CHUNK_BYTES_MAX: usize = FRAME_BYTES_MAX - BLOB_CHUNK_HEADER_BYTES;
/// Bytes a `BlobData` frame spends before its data: type(1) id(32) offset(8) more(1).
pub const BLOB_DATA_HEADER_BYTES: usize = 1 + 32 + 8 + 1;

/// Size of one proof item on the wire: dest(16) op(1) blinded key(32) signature(64).
pub const PROOF_ITEM_BYTES: usize = 16 + 1 + 32 + 64;

const _: () = assert!(PACKET_PAYLOAD_BYTES_MAX > 60 * 1024);
// The length prefix is a u32.
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
// Counts and lengths inside frames are u16: every limit behind one fits it.
const _: () = assert!(PROOFS_PER_FRAME_MAX <= u16::MAX as usize);
const _: () = assert!(DESTS_PER_FRAME_MAX <= u16::MAX as usize);
const _: () = assert!(ERROR_MESSAGE_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(PUSH_TOKEN_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(crate::prekey::ONE_TIME_KEYS_MAX <= u16::MAX as usize);
// A full Prove frame must fit in one frame.
const _: () = assert!(1 + 2 + PROOFS_PER_FRAME_MAX * PROOF_ITEM_BYTES <= FRAME_BYTES_MAX);
const _: () = assert!(1 + 2 + DESTS_PER_FRAME_MAX * 17 <= FRAME_BYTES_MAX);
const _: () = assert!(VERSION_MIN <= VERSION_MAX);
// A replayed full Prove frame is answered from the cache.
const _: () = assert!(PROOF_CACHE_ENTRIES_MAX >= PROOFS_PER_FRAME_MAX);
// A proven set must hold at least one full Prove frame.
const _: () = assert!(PROVEN_PER_CONN_MAX >= PROOFS_PER_FRAME_MAX);
// A slot's sealed head plus at least 30 PQ one-time keys fit one PrekeyUpload frame.
const _: () = assert!(
    1 + 16 + 1 + 4 + crate::prekey::HEAD_BYTES + 4 + 30 * crate::prekey::PQ_ITEM_BYTES
        <= FRAME_BYTES_MAX
);
const _: () =
    assert!(1 + 1 + 4 + 2 + PUSH_TOKEN_BYTES_MAX + 2 + DESTS_PER_FRAME_MAX * 16 <= FRAME_BYTES_MAX);
