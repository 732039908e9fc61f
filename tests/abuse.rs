//! Bad input and abusive peers: each closes only its own connection, with an error code, while
//! other clients keep being served.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test helpers panic on failed set-up

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{Node, mailbox};
use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{Frame, decode_frame, frame_type};
use ferry_proto::limits::{FRAME_BYTES_MAX, VERSION_MAX, VERSION_MIN};
use ferry_sdk::{Client, ErrorCode};

const WAIT: Duration = Duration::from_secs(10);

/// Opens a raw socket, says hello, and returns it with the hello answer read.
fn raw_hello(node: &Node) -> TcpStream {
    let mut s = TcpStream::connect(node.addr()).unwrap();
    s.write_all(
        &Frame::ClientHello {
            version_min: VERSION_MIN,
            version_max: VERSION_MAX,
        }
        .to_bytes(),
    )
    .unwrap();
    let frames = read_frames_until(&mut s, |f| matches!(f, Frame::ServerHello { .. }));
    assert!(matches!(frames.last(), Some(Frame::ServerHello { .. })));
    s
}

/// Reads frames until `stop` matches one, the peer closes, or 10 s pass.
fn read_frames_until(s: &mut TcpStream, stop: impl Fn(&Frame) -> bool) -> Vec<Frame> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Ok(Some(f)) = decode_frame(&mut buf) {
            let done = stop(&f);
            frames.push(f);
            if done {
                return frames;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return frames,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads until the node closes; returns the error code it sent, asserting the socket is closed.
fn expect_error_and_close(s: &mut TcpStream) -> ErrorCode {
    let frames = read_frames_until(s, |_| false);
    let code = frames
        .iter()
        .find_map(|f| match f {
            Frame::Error { code, .. } => Some(*code),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no error frame in {frames:?}"));
    let mut one = [0u8; 1];
    assert!(
        matches!(s.read(&mut one), Ok(0) | Err(_)),
        "connection still open"
    );
    code
}

/// A working pair of clients; `check` proves they still exchange packets.
struct Witness {
    rx: Client,
    tx: Client,
    dest: ferry_sdk::Dest,
    n: u64,
}

impl Witness {
    fn new(node: &Node) -> Self {
        let mut rx = node.client();
        let dest = rx.listen(&mailbox(500), [rx.epoch()]).unwrap()[0];
        Witness {
            rx,
            tx: node.client(),
            dest,
            n: 0,
        }
    }
    fn check(&mut self) {
        self.n += 1;
        self.tx.send(self.dest, self.n, 0, b"still here");
        self.tx.flush().unwrap();
        match self.rx.recv(WAIT).unwrap() {
            ClientEvent::Deliver { msg_id, .. } => assert_eq!(msg_id, self.n),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn oversized_truncated_and_garbage_frames_close_only_that_connection() {
    let node = Node::start(&["--shards", "2"], &[]);
    let mut w = Witness::new(&node);
    w.check();

    // Oversized: a length prefix above the limit, refused before the body arrives.
    let mut s = raw_hello(&node);
    s.write_all(&u32::try_from(FRAME_BYTES_MAX + 1).unwrap().to_le_bytes())
        .unwrap();
    assert_eq!(expect_error_and_close(&mut s), ErrorCode::FrameTooLarge);
    w.check();

    // Truncated: a Send frame whose body stops inside the destination hash.
    let mut s = raw_hello(&node);
    s.write_all(&[6, 0, 0, 0, frame_type::SEND, 1, 2, 3, 4, 5])
        .unwrap();
    assert_eq!(expect_error_and_close(&mut s), ErrorCode::MalformedFrame);
    w.check();

    // Garbage: an unknown frame type.
    let mut s = raw_hello(&node);
    s.write_all(&[3, 0, 0, 0, 0x7e, 0xde, 0xad]).unwrap();
    assert_eq!(expect_error_and_close(&mut s), ErrorCode::UnknownFrameType);
    w.check();

    // Garbage before any hello.
    let mut s = TcpStream::connect(node.addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let code = expect_error_and_close(&mut s);
    assert!(
        matches!(code, ErrorCode::FrameTooLarge | ErrorCode::UnexpectedFrame),
        "{code:?}"
    );
    w.check();

    // A frame only nodes send, sent by a client.
    let mut s = raw_hello(&node);
    s.write_all(&Frame::Pong { nonce: 1 }.to_bytes()).unwrap(); // allowed
    s.write_all(
        &Frame::Challenge {
            challenge: [0; 32],
            unix_time_s: 0,
        }
        .to_bytes(),
    )
    .unwrap();
    assert_eq!(expect_error_and_close(&mut s), ErrorCode::UnexpectedFrame);
    w.check();

    // An unsupported protocol version.
    let mut s = TcpStream::connect(node.addr()).unwrap();
    s.write_all(
        &Frame::ClientHello {
            version_min: 99,
            version_max: 120,
        }
        .to_bytes(),
    )
    .unwrap();
    assert_eq!(
        expect_error_and_close(&mut s),
        ErrorCode::UnsupportedVersion
    );

    // Reserved onion cells are refused with a clear code.
    let mut s = raw_hello(&node);
    s.write_all(
        &Frame::Cell {
            payload: vec![0u8; 32].into(),
        }
        .to_bytes(),
    )
    .unwrap();
    assert_eq!(expect_error_and_close(&mut s), ErrorCode::Unsupported);
    w.check();

    assert!(node.metric("ferry_connections_closed_protocol_total") >= 5);
}

#[test]
fn handshake_idle_and_slowloris_timeouts() {
    let node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_LIMITS_HANDSHAKE_TIMEOUT_MS", "300"),
            ("FERRY_LIMITS_PING_INTERVAL_MS", "300"),
            ("FERRY_LIMITS_IDLE_TIMEOUT_MS", "900"),
            ("FERRY_LIMITS_FRAME_STALL_TIMEOUT_MS", "400"),
            ("FERRY_LIMITS_TICK_MS", "20"),
        ],
    );
    // No hello at all.
    let mut s = TcpStream::connect(node.addr()).unwrap();
    assert_eq!(expect_error_and_close(&mut s), ErrorCode::HandshakeTimeout);

    // A partial frame that never completes (slowloris).
    let mut s = raw_hello(&node);
    s.write_all(&[100, 0, 0, 0, frame_type::SEND, 1, 2])
        .unwrap();
    assert_eq!(expect_error_and_close(&mut s), ErrorCode::SlowSender);

    // A frame trickled in, one byte at a time, faster than the stall timeout but never complete.
    let mut s = raw_hello(&node);
    s.write_all(&[200, 0, 0, 0]).unwrap();
    let mut closed = false;
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        if s.write_all(&[frame_type::SEND]).is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed || expect_error_and_close(&mut s) == ErrorCode::SlowSender);

    // Never answering pings: pinged, then closed as idle.
    let mut s = raw_hello(&node);
    let frames = read_frames_until(&mut s, |_| false);
    assert!(
        frames.iter().any(|f| matches!(f, Frame::Ping { .. })),
        "{frames:?}"
    );
    assert!(
        matches!(
            frames.last(),
            Some(Frame::Error {
                code: ErrorCode::IdleTimeout,
                ..
            })
        ),
        "{frames:?}"
    );

    // A client that answers pings stays connected past the idle timeout.
    let mut c = node.client();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2_000) {
        match c.recv(Duration::from_millis(100)) {
            Err(ferry_sdk::SdkError::Timeout) | Ok(_) => {}
            Err(e) => panic!("live client dropped: {e}"),
        }
    }
    c.ping(1).unwrap();
}

#[test]
fn per_address_connection_rate_is_limited_with_an_error_code() {
    let node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_LIMITS_IP_CONNECTIONS_PER_S", "1"),
            ("FERRY_LIMITS_IP_CONNECTIONS_BURST", "3"),
        ],
    );
    let mut ok = Vec::new();
    let mut refused = None;
    for _ in 0..6 {
        match Client::connect(node.addr()) {
            Ok(c) => ok.push(c),
            Err(ferry_sdk::SdkError::Node { code, .. }) => {
                refused = Some(code);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok.len(), 3);
    assert_eq!(refused, Some(ErrorCode::RateLimited));
    assert_eq!(node.metric("ferry_connections_refused_rate_total"), 1);
    // Those already connected keep working.
    ok[0].ping(5).unwrap();
}

#[test]
fn connection_limit_refuses_with_an_error_code() {
    let node = Node::start(&["--shards", "1"], &[("FERRY_LIMITS_CONNECTIONS_MAX", "2")]);
    let _a = node.client();
    let _b = node.client();
    match Client::connect(node.addr()) {
        Err(ferry_sdk::SdkError::Node { code, .. }) => assert_eq!(code, ErrorCode::ConnectionLimit),
        other => panic!("{other:?}"),
    }
}

/// Sends 16 KiB packets to `dest` until `done()` or 20 s, reading the sender's replies as it goes
/// (a sender that stopped reading would become a slow reader itself). Returns Congested replies.
fn flood_until(
    node: &Node,
    tx: &mut Client,
    dest: ferry_sdk::Dest,
    done: impl Fn(&Node) -> bool,
) -> u64 {
    let payload = vec![7u8; 16 * 1024];
    let mut congested = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 0u64;
    while !done(node) {
        assert!(
            Instant::now() < deadline,
            "condition not reached while flooding"
        );
        for _ in 0..32 {
            id += 1;
            tx.send(dest, id, 0, &payload);
        }
        tx.flush().unwrap();
        while let Ok(ev) = tx.recv(Duration::from_millis(1)) {
            if let ClientEvent::SendResult {
                status: ferry_sdk::SendStatus::Congested,
                ..
            } = ev
            {
                congested += 1;
            }
        }
    }
    congested
}

#[test]
fn slow_reader_is_dropped_and_counted_not_buffered() {
    let node = Node::start(
        &["--shards", "2"],
        &[
            ("FERRY_LIMITS_SEND_QUEUE_BYTES_MAX", "262144"),
            ("FERRY_LIMITS_WRITE_STALL_TIMEOUT_MS", "1000"),
        ],
    );
    // A subscriber that never reads: the node answers Congested for what it cannot queue, and
    // closes the connection once its socket has taken nothing for the write-stall timeout.
    let mut slow = node.client();
    let dest = slow.listen(&mailbox(900), [slow.epoch()]).unwrap()[0];
    let mut tx = node.client();
    let congested = flood_until(&node, &mut tx, dest, |n| {
        n.metric("ferry_connections_open") <= 1
    });
    assert!(congested > 0);
    assert!(node.metric("ferry_drops_send_queue_full_total") > 0);
    assert!(node.metric("ferry_connections_closed_timeout_total") >= 1);
    drop(slow);

    // A subscriber that stops reading and then sends garbage: its error frame is stuck behind a
    // full socket, and the node must still let go of it.
    let mut stuck = node.client();
    let dest = stuck.listen(&mailbox(901), [stuck.epoch()]).unwrap()[0];
    let drops_before = node.metric("ferry_drops_send_queue_full_total");
    flood_until(&node, &mut tx, dest, |n| {
        n.metric("ferry_drops_send_queue_full_total") > drops_before
    });
    // Its queue is full and its socket too; now the garbage.
    stuck.write_raw(&[3, 0, 0, 0, 0x7e, 0, 0]).unwrap();
    let deadline = Instant::now() + WAIT;
    while node.metric("ferry_connections_open") > 1 {
        assert!(
            Instant::now() < deadline,
            "closing connection with a full socket not aborted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
