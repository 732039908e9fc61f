//! Connection state machines, sans-IO. Bytes in with `on_bytes`, events out with `poll_event`,
//! bytes out with `take_output`, timers with `poll_timeout` / `on_timeout`. Time is an input
//! ([`Now`]); randomness (challenges) is an input. Nothing here touches a socket or a clock.
//!
//! Server flow: `ClientHello` → `ServerHello` (version, node id, challenge, node time) → any of
//! `Prove`, `Subscribe`, `Unsubscribe`, `Send`, `Ping`, `ChallengeRequest`. Anything unexpected or
//! malformed queues an `Error` frame and moves the connection to `Closing`: the driver writes the
//! remaining output and closes.

mod client;
mod server;

pub use client::{ClientConn, ClientError, ClientEvent};
pub use server::{BlobOp, ProofTally, Push, ServerConn, ServerEvent, prekey_refusal};

/// The two clocks every state machine needs, read once per event by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (arbitrary origin): deadlines.
    pub mono_ms: u64,
    /// Wall-clock Unix seconds: epochs and the time a challenge carries.
    pub unix_s: u64,
}

/// Per-connection limits the node applies (named config keys in the node).
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub handshake_timeout_ms: u64,
    /// No byte received for this long: `Error IdleTimeout`, close. 0 = never (the node's
    /// default: a silent client costs nothing, and a dead one is found by TCP keepalive).
    pub idle_timeout_ms: u64,
    /// No byte received for this long: one `Ping`. 0 = the node never pings (its default).
    pub ping_interval_ms: u64,
    /// A partial frame must make progress within this time (slowloris).
    pub frame_stall_timeout_ms: u64,
    /// Output waiting for the socket may not stay stuck longer than this (slow reader).
    pub write_stall_timeout_ms: u64,
    /// Bytes of output a connection may have queued; deliveries beyond it are dropped and counted.
    pub send_queue_bytes_max: usize,
    pub subscriptions_max: usize,
    /// Failed proofs after which the connection is closed.
    pub proof_failures_max: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 0,
            ping_interval_ms: 0,
            frame_stall_timeout_ms: 30_000,
            write_stall_timeout_ms: 30_000,
            send_queue_bytes_max: 1 << 20,
            subscriptions_max: 512,
            proof_failures_max: 16,
        }
    }
}
