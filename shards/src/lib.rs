//! ferry's per-core data plane.
//!
//! Data flow on one core: socket bytes → [`driver`] (glommio, the only module that knows the
//! runtime) → [`shard::Shard::on_bytes`] → per-connection protocol state machine
//! (`ferry_proto::conn::ServerConn`) → routing by `dest.owner(shards)`: a [`table::ForwardTable`]
//! lookup here or a [`shard::HopMsg`] batch to the owner core → delivery queued on the subscriber's
//! connection (here or one more hop away) → the driver writes each connection's queue as one
//! buffer. Deadlines run from a per-shard tick, which touches only what is due ([`timers`]).
//! [`clock`] is the only place the clock is read.

pub mod clock;
pub mod driver;
pub mod fatal;
pub mod media;
pub mod metrics;
pub mod mutants;
pub mod prekeys;
pub mod push;
pub mod puzzle;
pub mod ratelimit;
pub mod ring;
pub mod service;
pub mod shard;
pub mod sim;
pub mod store;
pub mod table;
pub mod timers;

pub use shard::{Accept, HopMsg, Output, Shard, ShardConfig};
pub use table::{ConnId, ConnRef, ForwardTable};
