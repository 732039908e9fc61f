//! ferry's wire protocol, sans-IO: no sockets, no clock, no runtime.
//!
//! Data flow: bytes from a transport → [`conn::ServerConn::on_bytes`] → frames split and decoded
//! ([`frame`]) → handshake, pings and proofs ([`addr`]) handled inside the state machine → routing
//! events ([`conn::ServerEvent`]) for the shard → replies and deliveries queued as bytes →
//! [`conn::ServerConn::take_output`] → transport. The client side ([`conn::ClientConn`]) mirrors it.
//! Every limit lives in [`limits`].

pub mod addr;
pub mod conn;
pub mod frame;
#[cfg(unix)]
pub mod fsutil;
pub mod hex;
pub mod limits;
pub mod media;
pub mod prekey;
pub mod puzzle;
pub mod xeddsa;

pub use frame::{
    BlobOpKind, BlobStatus, CapabilityStatus, Dest, DrainStatus, ErrorCode, Frame, Op,
    PrekeyStatus, ProofItem, ProofStatus, PushProvider, PushStatus, SendStatus, SubscribeStatus,
};
