//! Media uploads against one anonymous source (issue 14): `BlobBegin`s declaring the largest
//! size with no data must neither fill the disk budget nor take every upload slot of a core, and
//! the uploads they begin must give their slots back within the idle limit. Clients connect
//! from distinct 127.0.0.x addresses.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::time::{Duration, Instant};

use common::Node;
use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{BlobOpKind, BlobStatus, Frame};
use ferry_sdk::Client;

/// A client from `127.0.0.<last>`.
fn client_from(node: &Node, last: u8) -> Client {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source = std::net::SocketAddr::from(([127, 0, 0, last], 0));
    sock.bind(&source.into()).unwrap();
    sock.connect(&node.addr().into()).unwrap();
    Client::over_tcp(sock.into()).unwrap()
}

/// Sends `BlobBegin`s for `ids`, all declaring `size`, and returns their answers in order.
fn begins(c: &mut Client, ids: &[[u8; 32]], size: u64) -> Vec<BlobStatus> {
    for id in ids {
        c.write_raw(&Frame::BlobBegin { id: *id, size }.to_bytes())
            .unwrap();
    }
    let mut out = Vec::new();
    while out.len() < ids.len() {
        if let ClientEvent::BlobStatus {
            op: BlobOpKind::Begin,
            status,
            ..
        } = c.recv(Duration::from_secs(10)).unwrap()
        {
            out.push(status);
        }
    }
    out
}

fn id_of(tag: u8, i: u32) -> [u8; 32] {
    let mut id = *blake3::hash(&i.to_le_bytes()).as_bytes();
    id[0] = tag;
    id
}

#[test]
fn empty_begins_from_one_source_leave_uploads_to_others_and_expire() {
    const BLOB_MAX: u64 = 100 << 20;
    let node = Node::start(
        &["--shards", "1"],
        &[
            // Room for two declared blobs of the largest size: two empty begins once took it all.
            ("FERRY_MEDIA_DISK_BYTES_MAX", "209715200"),
            ("FERRY_MEDIA_UPLOADS_PER_CORE_MAX", "64"),
            ("FERRY_MEDIA_UPLOADS_PER_SOURCE_MAX", "8"),
            ("FERRY_MEDIA_UPLOAD_IDLE_S", "3"),
        ],
    );
    // The attack as found: 171 begins of 100 MiB, no data, from one address.
    let mut attacker = client_from(&node, 2);
    let ids: Vec<[u8; 32]> = (0..171).map(|i| id_of(0xA0, i)).collect();
    let got = begins(&mut attacker, &ids, BLOB_MAX);
    let ok = got.iter().filter(|s| **s == BlobStatus::Ok).count();
    let busy = got.iter().filter(|s| **s == BlobStatus::Busy).count();
    assert_eq!((ok, busy), (8, 163), "{got:?}");
    assert_eq!(node.metric("ferry_media_uploads_refused_source_total"), 163);

    // Another address uploads a blob in full, and reads it back.
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i * 31 + 7) as u8).collect();
    let id = *blake3::hash(&data).as_bytes();
    let mut honest = client_from(&node, 3);
    assert_eq!(
        begins(&mut honest, &[id], data.len() as u64),
        [BlobStatus::Ok]
    );
    honest
        .upload_blob(id, data.len() as u64, &mut std::io::Cursor::new(&data))
        .unwrap();
    assert_eq!(
        honest
            .download_verified(id, data.len() as u64, 1_000, 5_000)
            .unwrap(),
        &data[1_000..6_000]
    );

    // The attacker's empty uploads expire after the idle limit, counted, and its address may
    // begin again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.metric("ferry_media_reservations_expired_total") < 8 {
        assert!(Instant::now() < deadline, "idle uploads not expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    let again: Vec<[u8; 32]> = (0..8).map(|i| id_of(0xB0, i)).collect();
    assert!(
        begins(&mut attacker, &again, BLOB_MAX)
            .iter()
            .all(|s| *s == BlobStatus::Ok)
    );
}
