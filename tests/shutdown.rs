//! Stopping ferry, checked with the real binary: the SIGTERM drain loses nothing acknowledged
//! (stored blobs and uploaded chunks) and tells clients; `/readyz` turns 503 and new connections
//! are refused while it drains; a drain past `stop_timeout_s` exits 1 on time; a store that cannot
//! open stops the node.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation, unsafe_code)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, ferry_bin, kill, mailbox, temp_dir};
use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{BlobOpKind, BlobStatus, Frame};
use ferry_sdk::{Client, ErrorCode, Op, ProofStatus, SendStatus};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Drain

/// Streams sends to an offline mailbox until the node goes away; returns the msg ids answered
/// `Stored` and whether the node said it was shutting down.
fn stream_until_closed(addr: std::net::SocketAddr, dest: ferry_sdk::Dest) -> (BTreeSet<u64>, bool) {
    let mut tx = Client::connect(addr).unwrap();
    let mut stored = BTreeSet::new();
    let mut next = 1u64;
    loop {
        for _ in 0..8 {
            tx.send(dest, next, ferry_sdk::FLAG_ACK, &next.to_le_bytes());
            next += 1;
        }
        if tx.flush().is_err() {
            return (stored, false);
        }
        loop {
            match tx.recv(Duration::from_millis(20)) {
                Ok(ClientEvent::SendResult {
                    msg_id,
                    status: SendStatus::Accepted,
                    ..
                }) => {
                    stored.insert(msg_id);
                }
                Ok(ClientEvent::SendResult { status, .. }) => panic!("unexpected {status:?}"),
                Ok(ClientEvent::Error { code, .. }) => {
                    return (stored, code == ErrorCode::ShuttingDown);
                }
                Ok(_) => {}
                Err(ferry_sdk::SdkError::Timeout) => break,
                Err(_) => return (stored, false),
            }
        }
    }
}

/// Sends the first `upto` bytes of a blob in 60,000-byte chunks and waits for every chunk's
/// acknowledgement.
fn upload_acked(c: &mut Client, id: [u8; 32], data: &[u8], upto: usize) {
    let size = data.len() as u64;
    c.write_raw(&Frame::BlobBegin { id, size }.to_bytes())
        .unwrap();
    let chunks = data[..upto].chunks(60_000).count();
    for (i, chunk) in data[..upto].chunks(60_000).enumerate() {
        let f = Frame::BlobChunk {
            id,
            offset: (i * 60_000) as u64,
            data: bytes::Bytes::copy_from_slice(chunk),
        };
        c.write_raw(&f.to_bytes()).unwrap();
    }
    let mut acked = 0;
    while acked < chunks {
        if let ClientEvent::BlobStatus {
            op: BlobOpKind::Chunk,
            status,
            ..
        } = c.recv(WAIT).unwrap()
        {
            assert_eq!(status, BlobStatus::Ok);
            acked += 1;
        }
    }
}

fn resume_offset(c: &mut Client, id: [u8; 32], size: u64) -> u64 {
    c.write_raw(&Frame::BlobBegin { id, size }.to_bytes())
        .unwrap();
    loop {
        if let ClientEvent::BlobStatus {
            op: BlobOpKind::Begin,
            offset,
            ..
        } = c.recv(WAIT).unwrap()
        {
            return offset;
        }
    }
}

/// SIGTERM while a sender streams into the store (group commit every 200 ms, so `Stored`
/// answers are waiting for a sync when the signal comes) and an upload is half done: the node
/// answers what its last sync covers, tells the client it is shutting down, exits 0 within the
/// stop timeout, and after the restart every blob answered `Stored` is there and the upload
/// resumes exactly where its acknowledged chunks ended (not at the last 8 MiB sync).
#[test]
fn sigterm_drains_tells_clients_and_loses_nothing_acknowledged() {
    let node = Node::start(
        &["--shards", "2"],
        &[
            ("FERRY_STORE_FSYNC", "interval=200"),
            ("FERRY_STOP_TIMEOUT_S", "5"),
        ],
    );
    let epoch = node.client().epoch();
    let bob = mailbox(81);
    let dest = bob.dest(epoch).unwrap();

    let data: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let id = *blake3::hash(&data).as_bytes();
    let acked_bytes = 84 * 60_000; // 5,040,000: below the 8 MiB sync interval
    let mut up = node.client();
    upload_acked(&mut up, id, &data, acked_bytes);

    let addr = node.addr();
    let sender = std::thread::spawn(move || stream_until_closed(addr, dest));
    let start = Instant::now();
    while node.metric("ferry_store_appends_total") < 300 {
        assert!(start.elapsed() < WAIT, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut node = node;
    let t = Instant::now();
    kill("TERM", node.pid());
    let status = node.wait();
    let took = t.elapsed();
    assert!(
        status.success(),
        "{status:?}\n{}",
        node.stderr.lock().unwrap()
    );
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
    let (stored, told) = sender.join().unwrap();
    assert!(told, "the sender was not told the node is shutting down");
    assert!(stored.len() >= 100, "only {} stored", stored.len());
    // The uploader's connection got the same notice.
    let notice = loop {
        match up.recv(WAIT) {
            Ok(ClientEvent::Error { code, .. }) => break Some(code),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    assert_eq!(notice, Some(ErrorCode::ShuttingDown));

    let node = node.restart(true); // already exited: this only starts it again
    let mut rx = node.client();
    let signer = bob.signer(epoch).unwrap();
    assert_eq!(
        rx.prove(&[&signer], Op::Drain).unwrap(),
        vec![ProofStatus::Ok]
    );
    let mut got = BTreeSet::new();
    loop {
        let (blobs, more) = rx.drain(dest).unwrap();
        got.extend(blobs.iter().map(|b| b.msg_id));
        rx.ack(&blobs).unwrap();
        if !more {
            break;
        }
    }
    let missing: Vec<&u64> = stored.difference(&got).collect();
    assert!(missing.is_empty(), "answered Stored but lost: {missing:?}");

    let mut c = node.client();
    assert_eq!(
        resume_offset(&mut c, id, data.len() as u64),
        acked_bytes as u64,
        "the upload resumes where its acknowledged chunks ended"
    );
    c.upload_blob(id, data.len() as u64, &mut std::io::Cursor::new(&data))
        .unwrap();
    assert_eq!(
        c.download_verified(id, data.len() as u64, 4_000_000, 2_000_000)
            .unwrap(),
        &data[4_000_000..6_000_000]
    );
}

/// `GET path` on the admin endpoint; `None` when nothing answers.
fn try_get(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split(' ').nth(1)?.parse().ok()
}

/// While the drain runs (a 1.5 s grace here), `/readyz` answers 503 and the data port takes no
/// new connection; the node then exits 0.
#[test]
fn readyz_turns_503_and_new_connections_are_refused_while_draining() {
    let mut node = Node::start(
        &["--shards", "2"],
        &[("FERRY_LIMITS_DRAIN_GRACE_MS", "1500")],
    );
    let _connected = node.client();
    assert_eq!(try_get(node.admin, "/readyz"), Some(200));
    let t = Instant::now();
    kill("TERM", node.pid());
    let mut seen_503 = false;
    while t.elapsed() < Duration::from_secs(1) {
        match try_get(node.admin, "/readyz") {
            Some(503) => {
                seen_503 = true;
                break;
            }
            Some(200) => std::thread::sleep(Duration::from_millis(2)),
            other => panic!("readyz answered {other:?} while draining"),
        }
    }
    assert!(seen_503, "readyz never answered 503");
    // Within a tick every shard has closed its listening sockets.
    let refused = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        Client::connect(node.addr()).is_err()
    });
    assert!(
        refused,
        "new connections were still accepted while draining"
    );
    assert_eq!(try_get(node.admin, "/readyz"), Some(503));
    assert!(node.wait().success());
}

/// A drain that cannot finish within `stop_timeout_s` (here: a 5 s grace against a 1 s
/// timeout) ends the process with exit status 1 and one line saying so.
#[test]
fn a_drain_past_stop_timeout_s_exits_1_on_time() {
    let mut node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_STOP_TIMEOUT_S", "1"),
            ("FERRY_LIMITS_DRAIN_GRACE_MS", "5000"),
        ],
    );
    let _connected = node.client();
    let t = Instant::now();
    kill("TERM", node.pid());
    let status = node.wait();
    let took = t.elapsed();
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "exited after {took:?}"
    );
    // The stderr reader thread may still be catching up with the last line.
    let want = "the drain did not finish within stop_timeout_s = 1";
    let deadline = Instant::now() + Duration::from_secs(2);
    while !node.stderr.lock().unwrap().contains(want) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = node.stderr.lock().unwrap().clone();
    assert!(err.contains(want), "{err}");
}

/// A shard whose store cannot open reports it and stops where it is; the main thread logs the
/// reason and ends the process with status 1 (no other thread of the node exits the process:
/// `ferry_shards::fatal`). The node never says ready.
#[test]
fn a_store_that_cannot_open_stops_the_node_with_exit_1() {
    let dir = temp_dir("fatal-store");
    std::fs::create_dir_all(dir.join("store")).unwrap();
    // Where shard 0's segment directory goes, a file.
    std::fs::write(dir.join("store").join("shard-0"), b"not a directory").unwrap();
    let mut child = Command::new(ferry_bin())
        .args(["run", "--shards", "1", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("FERRY_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node kept running with a store it could not open");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("ferry: stopping: shard 0: store") && stderr.contains("shard-0"),
        "{stderr}"
    );
    assert!(!stdout.contains("ferry ready"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_zero_stop_timeout_is_refused() {
    let out = Command::new(ferry_bin())
        .args(["check-config"])
        .env("FERRY_STOP_TIMEOUT_S", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop_timeout_s"));
}
