//! The floor (`ferry-floor`, both engines) does the work it claims: every byte a sender writes
//! reaches its receiver once and in order, and a receiver that stops reading stops its sender
//! instead of growing the floor's memory. Real processes and sockets on loopback.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Server;

fn floor(engine: &str) -> Server {
    common::start(env!("CARGO_BIN_EXE_ferry-floor"), &["--engine", engine])
}

fn hello(kind: &[u8; 4], pair: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(kind);
    h[4..].copy_from_slice(&pair.to_le_bytes());
    h
}

/// A receiver and its sender, in that order (the other order is its own test).
fn pair(addr: SocketAddr, id: u32) -> (TcpStream, TcpStream) {
    let mut rx = TcpStream::connect(addr).expect("connect receiver");
    rx.write_all(&hello(b"FLRR", id)).expect("receiver hello");
    let mut tx = TcpStream::connect(addr).expect("connect sender");
    tx.write_all(&hello(b"FLRS", id)).expect("sender hello");
    (rx, tx)
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn both_engines_copy_every_byte_once_and_in_order() {
    for engine in ["glommio", "uring"] {
        let f = floor(engine);
        let pairs: Vec<_> = (0..4).map(|i| pair(f.addr, i)).collect();
        let mut threads = Vec::new();
        for (i, (mut rx, mut tx)) in pairs.into_iter().enumerate() {
            let data = bytes(i as u64 + 7, 4 << 20);
            let expect = data.clone();
            threads.push(std::thread::spawn(move || {
                // Writes of every size from 1 byte to 100 KB, as a client's would come.
                let mut at = 0;
                let mut step = 1;
                while at < data.len() {
                    let end = (at + step).min(data.len());
                    tx.write_all(&data[at..end]).expect("send");
                    at = end;
                    step = step * 7 % 100_003 + 1;
                }
            }));
            threads.push(std::thread::spawn(move || {
                rx.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
                let mut got = vec![0u8; expect.len()];
                rx.read_exact(&mut got).expect("receive everything");
                assert!(got == expect, "pair {i}: bytes differ");
            }));
        }
        for t in threads {
            t.join()
                .unwrap_or_else(|_| panic!("{engine}: a pair failed"));
        }
    }
}

#[test]
fn a_receiver_that_stops_reading_stops_its_sender() {
    for engine in ["glommio", "uring"] {
        let f = floor(engine);
        let (mut rx, mut tx) = pair(f.addr, 1);
        tx.set_write_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let data = bytes(3, 1 << 20);
        let mut written = 0usize;
        // Without backpressure the floor would take all 256 MiB into its memory.
        while written < 256 << 20 {
            match tx.write(&data[written % data.len()..]) {
                Ok(n) => written += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("{engine}: send: {e}"),
            }
        }
        // The kernel's socket buffers on both sides, plus what the floor holds before it stops
        // reading (the uring engine pauses above 4 MiB).
        assert!(
            written < 64 << 20,
            "{engine}: the sender wrote {} MiB into a receiver that reads nothing",
            written >> 20
        );
        // And everything written arrives once the receiver reads.
        rx.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut got = vec![0u8; written];
        rx.read_exact(&mut got).expect("receive everything written");
        // The stream is `data` over and over.
        for (i, chunk) in got.chunks(data.len()).enumerate() {
            assert!(chunk == &data[..chunk.len()], "{engine}: chunk {i} differs");
        }
    }
}

/// A client opens both ends at once, so the sender's hello may be read first: the floor keeps
/// the sender (and what it already sent) until its receiver says hello. (It used to drop it,
/// and `bench/compare --many` once waited two minutes for a pair that would never deliver.)
#[test]
fn a_sender_whose_receiver_comes_later_waits_for_it() {
    for engine in ["glommio", "uring"] {
        let f = floor(engine);
        let mut tx = TcpStream::connect(f.addr).expect("connect sender");
        tx.write_all(&hello(b"FLRS", 7)).expect("sender hello");
        let data = bytes(11, 100_000);
        tx.write_all(&data[..60_000])
            .expect("send before the receiver");
        // Let the floor read the sender's hello and bytes before the receiver exists.
        std::thread::sleep(Duration::from_millis(100));
        let mut rx = TcpStream::connect(f.addr).expect("connect receiver");
        rx.write_all(&hello(b"FLRR", 7)).expect("receiver hello");
        tx.write_all(&data[60_000..]).expect("send after");
        rx.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut got = vec![0u8; data.len()];
        rx.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("{engine}: receive: {e}"));
        assert!(got == data, "{engine}: bytes differ");
    }
}
