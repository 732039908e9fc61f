//! ferry's end-to-end encryption core. No I/O, no clock, no global randomness: every random input
//! comes from the caller's `CryptoRng`, so the whole core runs the same under a seeded RNG (the
//! golden transcripts), in a fuzzer, in wasm and behind FFI.
//!
//! * [`xeddsa`]: signatures with X25519 identity keys (Signal's XEdDSA).
//! * [`pqxdh`]: first contact (Signal's PQXDH, revision 3): X25519 + ML-KEM-1024, SHA-256.
//! * [`ratchet`]: the Double Ratchet (Signal's specification) with ChaCha20-Poly1305 and
//!   HKDF/HMAC-SHA-256, decrypting on a copy of its state, with bounded skipped keys.
//! * [`session`]: the two together, per contact, in sealed envelopes; serialisable.
//! * [`envelope`]: the sealed envelope the node sees: an ephemeral key and a ciphertext padded
//!   to a size bucket; sender, message id and everything else inside.
//!
//! `no_std` with `alloc`. Secrets are zeroized when dropped.

#![no_std]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod envelope;
pub mod kdf;
pub mod keys;
pub mod pqxdh;
pub mod ratchet;
pub mod session;
pub mod xeddsa;

/// Random bytes and keys for the core: any cryptographically secure RNG (rand_core 0.6).
pub trait Rng: rand_core::RngCore + rand_core::CryptoRng {}
impl<T: rand_core::RngCore + rand_core::CryptoRng> Rng for T {}
