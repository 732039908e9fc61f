//! Arbitrary bytes into a `ServerConn`, driven the way a node drives it: bytes in, events out to
//! a small mock shard, timers, output taken and (partly) written.
//!
//! Input: `[options, chunk, step, stream...]`. The stream is fed `1 + chunk` bytes at a time; the
//! clock moves `step * 250 ms` between chunks. Option bits: 0 prepend a valid `ClientHello`,
//! 1 then a valid `Prove` + `Subscribe` for a known mailbox (so the proven and subscribed paths
//! are reachable), 2 the shard refuses proofs (rate limit), 3 the socket takes only half the
//! output each turn (slow reader), 4 every new subscription is taken over by "another connection"
//! (otherwise the mock owner shard confirms it at once with `on_subscribed`).
//!
//! Checked: nothing panics; the output is always a sequence of well-formed node-to-client frames;
//! the first is `ServerHello` or `Error`; an `Error` frame is always the last frame and the
//! connection is closing with that code from then on; a closing connection yields no events and
//! no deadline; subscriptions stay proven and within their limit; byte accounting adds up.

#![no_main]

use std::sync::OnceLock;

use bytes::BytesMut;
use ferry_proto::addr::{MailboxSecret, NamespaceId};
use ferry_proto::conn::{ConnLimits, Now, ServerConn, ServerEvent};
use ferry_proto::frame::{FLAG_ACK, Frame, Op, ProofItem, SendStatus, decode_frame, frame_type};
use ferry_proto::limits::{VERSION_MAX, VERSION_MIN};
use libfuzzer_sys::fuzz_target;

const NODE_ID: [u8; 32] = [0x11; 32];
const CHALLENGE: [u8; 32] = [0x22; 32];

/// A valid `Subscribe` proof for the node's first challenge, and the matching frames.
fn preset() -> &'static (Vec<u8>, Vec<u8>) {
    static PRESET: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    PRESET.get_or_init(|| {
        let signer = MailboxSecret::from_seed(&[1; 32])
            .blinded_signer(&NamespaceId([2; 32]), None, 493_000)
            .expect("blinding");
        let item: ProofItem = signer.prove(&NODE_ID, &CHALLENGE, Op::Subscribe);
        let hello = Frame::ClientHello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
        };
        let mut prove = Frame::Prove { items: vec![item] }.to_bytes().to_vec();
        prove.extend_from_slice(
            &Frame::Subscribe {
                dests: vec![signer.dest()],
            }
            .to_bytes(),
        );
        (hello.to_bytes().to_vec(), prove)
    })
}

struct Driver {
    conn: ServerConn,
    limits: ConnLimits,
    now: Now,
    opts: u8,
    /// Bytes taken from the connection and not yet reported written.
    unwritten: usize,
    frames_seen: usize,
    error_seen: Option<ferry_proto::ErrorCode>,
    challenges: u8,
}

impl Driver {
    fn check(&mut self) {
        // Output: whole, well-formed node-to-client frames.
        if let Some(out) = self.conn.take_output() {
            self.unwritten += out.len();
            let mut buf = BytesMut::from(&out[..]);
            while !buf.is_empty() {
                let frame = decode_frame(&mut buf)
                    .expect("node output must decode")
                    .expect("node output must hold whole frames");
                let t = frame.frame_type();
                assert!(
                    t >= 0x80 || t == frame_type::PING || t == frame_type::PONG,
                    "node sent client-only frame {frame:?}"
                );
                assert!(
                    self.error_seen.is_none(),
                    "frame {frame:?} after an Error frame"
                );
                if self.frames_seen == 0 {
                    assert!(
                        matches!(frame, Frame::ServerHello { .. } | Frame::Error { .. }),
                        "first frame {frame:?}"
                    );
                } else {
                    assert!(
                        !matches!(frame, Frame::ServerHello { .. }),
                        "second ServerHello"
                    );
                }
                self.frames_seen += 1;
                if let Frame::Error { code, .. } = frame {
                    self.error_seen = Some(code);
                }
            }
        }
        // The socket takes all of it, or half of it (slow reader).
        let n = if self.opts & 8 != 0 {
            self.unwritten / 2
        } else {
            self.unwritten
        };
        if self.unwritten > 0 {
            if n == 0 {
                self.conn.on_write_blocked(self.now);
            } else {
                self.conn.on_written(self.now, n);
                self.unwritten -= n;
            }
        }
        assert_eq!(self.conn.queued_bytes(), self.unwritten);

        // After an error the connection is closing, for good, with that code.
        if let Some(code) = self.error_seen {
            assert!(self.conn.is_closing());
            assert!(!self.conn.is_open());
            assert_eq!(self.conn.close_code(), Some(code));
        }
        if self.conn.is_closing() {
            assert!(self.error_seen.is_some(), "closing without an Error frame");
            // The only deadline left while closing: output that the socket is not taking (then
            // the connection is aborted at the write-stall timeout).
            if self.conn.poll_timeout().is_some() {
                assert!(self.conn.queued_bytes() > 0, "closing with a deadline but nothing queued");
            }
            assert_eq!(self.conn.poll_event(self.now), None);
        } else {
            assert_eq!(self.conn.close_code(), None);
            // With an idle timeout, an open connection always has a deadline.
            assert!(self.limits.idle_timeout_ms == 0 || self.conn.poll_timeout().is_some());
        }
        let subs: Vec<_> = self.conn.subscriptions().copied().collect();
        assert!(subs.len() <= self.limits.subscriptions_max);
        assert!(subs.iter().all(|d| self.conn.is_proven(d, Op::Subscribe)));
    }

    /// A mock shard: loops packets back to this connection's own subscriptions.
    fn handle(&mut self, ev: ServerEvent) {
        assert!(
            self.conn.is_open(),
            "event {ev:?} from a connection that is not open"
        );
        match ev {
            ServerEvent::Send {
                dest,
                msg_id,
                flags,
                payload,
                ..
            } => {
                let status = if !self.conn.subscriptions().any(|d| *d == dest) {
                    SendStatus::NoSubscriber
                } else if self.conn.push_deliver(&dest, msg_id, flags, &payload)
                    == ferry_proto::conn::Push::Queued
                {
                    SendStatus::Delivered
                } else {
                    SendStatus::Congested
                };
                if status != SendStatus::Delivered || flags & FLAG_ACK != 0 {
                    self.conn.send_result(dest, msg_id, status);
                }
            }
            ServerEvent::Prove { items } => {
                if self.opts & 4 != 0 {
                    self.conn.refuse_proofs(&items);
                } else {
                    let tally = self.conn.answer_proofs(self.now, &items);
                    assert!(usize::try_from(tally.failed + tally.accepted).is_ok_and(|n| n <= items.len()));
                }
            }
            ServerEvent::Subscribe { dests } => {
                assert!(!dests.is_empty());
                for d in dests {
                    assert!(self.conn.subscriptions().any(|s| *s == d));
                    if self.opts & 16 != 0 {
                        self.conn.on_taken_over(d);
                        assert!(!self.conn.subscriptions().any(|s| *s == d));
                    } else {
                        // The owner shard registered it: the connection confirms with `Ok`.
                        self.conn.on_subscribed(d);
                        assert!(self.conn.is_closing() || self.conn.has_output());
                    }
                }
            }
            ServerEvent::Unsubscribe { dests } => {
                assert!(!dests.is_empty());
                for d in dests {
                    assert!(!self.conn.subscriptions().any(|s| *s == d));
                }
            }
            ServerEvent::Query { dests } => {
                // Owner shards answer: here nothing is stored.
                assert!(dests.len() <= ferry_proto::limits::DESTS_PER_FRAME_MAX);
                self.conn.push_frame(&ferry_proto::Frame::QueryResult { dests: Vec::new() });
            }
            ServerEvent::Drain { dest } => {
                assert!(self.conn.is_proven(&dest, Op::Drain));
                // One stored blob, then the end of the drain.
                let _ = self.conn.push_stored(&dest, 64, 1, b"stored");
                self.conn.on_drain_end();
                self.conn.push_frame(&ferry_proto::Frame::DrainEnd {
                    dest,
                    status: ferry_proto::DrainStatus::Done,
                });
            }
            ServerEvent::Ack { items } => {
                assert!(items.iter().all(|(d, _)| self.conn.is_proven(d, Op::Drain)));
            }
            ServerEvent::PrekeyUpload { upload } => {
                // The service core answers; here: refused, naming nothing.
                assert!(self.conn.is_proven(&upload.dest, Op::PrekeyUpdate));
                self.conn.push_frame(&ferry_proto::conn::prekey_refusal(
                    upload.dest,
                    ferry_proto::PrekeyStatus::Busy,
                ));
            }
            ServerEvent::PrekeyCount { dest } => {
                assert!(self.conn.is_proven(&dest, Op::PrekeyUpdate));
                self.conn.push_frame(&ferry_proto::conn::prekey_refusal(
                    dest,
                    ferry_proto::PrekeyStatus::NotFound,
                ));
            }
            ServerEvent::PrekeyFetch { dest, .. } => {
                self.conn.push_frame(&ferry_proto::Frame::PrekeyBundle {
                    dest,
                    status: ferry_proto::PrekeyStatus::NotFound,
                    bundle: None,
                    puzzle: None,
                });
            }
            ServerEvent::PushRegister { dests, .. } => {
                assert!(!dests.is_empty());
                assert!(dests.iter().all(|d| self.conn.is_proven(d, Op::PushRegister)));
                self.conn.push_frame(&ferry_proto::Frame::PushResult {
                    status: ferry_proto::PushStatus::Ok,
                    dests_registered: 1,
                });
            }
            ServerEvent::Blob(op) => {
                self.conn.push_frame(&ferry_proto::Frame::BlobStatus {
                    id: *op.id(),
                    op: op.kind(),
                    status: ferry_proto::BlobStatus::Unavailable,
                    offset: 0,
                    size: 0,
                });
            }
            ServerEvent::CapabilityRegister { dest, .. } => {
                self.conn
                    .capability_result(dest, ferry_proto::CapabilityStatus::Ok);
            }
            ServerEvent::ChallengeRequested => {
                self.challenges = self.challenges.wrapping_add(1);
                self.conn.issue_challenge(self.now, [self.challenges; 32]);
            }
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.conn.on_bytes(self.now, chunk);
        while let Some(ev) = self.conn.poll_event(self.now) {
            self.handle(ev);
            self.check();
        }
        self.check();
    }

    fn advance(&mut self, ms: u64) {
        self.now.mono_ms += ms;
        self.now.unix_s = 1_774_800_000 + self.now.mono_ms / 1000;
        // Run every deadline that is due (each call handles one).
        for _ in 0..8 {
            match self.conn.poll_timeout() {
                Some(t) if t <= self.now.mono_ms => {
                    self.conn.on_timeout(self.now);
                    self.check();
                }
                _ => break,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [opts, chunk, step, stream @ ..] = data else {
        return;
    };
    let limits = ConnLimits {
        subscriptions_max: 4,
        proof_failures_max: 3,
        send_queue_bytes_max: 4096,
        // Off by default in the node; on here, so the ping and idle paths are fuzzed too (and an
        // open connection always has a deadline, which the oracle checks).
        idle_timeout_ms: 90_000,
        ping_interval_ms: 30_000,
        ..ConnLimits::default()
    };
    let now = Now {
        mono_ms: 1_000,
        unix_s: 1_774_800_001,
    };
    let mut d = Driver {
        conn: ServerConn::new(limits.clone(), NODE_ID, 3, CHALLENGE, now),
        limits,
        now,
        opts: *opts,
        unwritten: 0,
        frames_seen: 0,
        error_seen: None,
        challenges: 0,
    };
    d.check();
    let (hello, prove) = preset();
    if opts & 1 != 0 {
        d.feed(hello);
        assert!(d.conn.is_open());
        if opts & 2 != 0 {
            d.feed(prove);
            // The preset proof is valid: unless the shard refused it or the dest was taken
            // over, the connection is now subscribed to its dest.
            let subscribed = d.conn.subscriptions().count();
            assert_eq!(subscribed, usize::from(opts & (4 | 16) == 0));
        }
    }
    for piece in stream.chunks(1 + usize::from(*chunk)) {
        d.feed(piece);
        d.advance(u64::from(*step) * 250);
    }
});
