//! `ferry-shardring` (the node's shard state machine on the raw ring) speaks ferry as the node
//! does, so that what it measures is ferry's protocol: SDK clients connect, prove, listen and
//! relay packets through it, every one once and in order, and a send to a dest nobody listens on
//! is answered `NoSubscriber`. A real process and sockets on loopback.

mod common;

use std::time::Duration;

use ferry_proto::addr::NamespaceId;
use ferry_proto::conn::ClientEvent;
use ferry_sdk::{Client, FLAG_ACK, Mailbox, SendStatus};

const WAIT: Duration = Duration::from_secs(10);

fn mailbox(i: u8) -> Mailbox {
    let mut seed = [0u8; 32];
    seed[0] = i;
    seed[31] = 0xfe;
    Mailbox::from_seed(&seed, NamespaceId([0x42; 32]), None)
}

#[test]
fn packets_through_the_raw_ring_shard_arrive_once_and_in_order() {
    let s = common::start(env!("CARGO_BIN_EXE_ferry-shardring"), &[]);
    let mut rx = Client::connect(s.addr).expect("connect receiver");
    let mut tx = Client::connect(s.addr).expect("connect sender");
    let epoch = rx.epoch();
    let dests = rx.listen(&mailbox(1), [epoch]).expect("listen");
    const N: u64 = 5_000;
    let receiver = std::thread::spawn(move || {
        let mut next = 0u64;
        while next < N {
            match rx
                .recv(WAIT)
                .unwrap_or_else(|e| panic!("receive after {next}: {e}"))
            {
                ClientEvent::Deliver { payload, .. } => {
                    let seq = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                    assert_eq!(seq, next, "out of order or lost");
                    next += 1;
                }
                ClientEvent::Pong { .. } => {}
                other => panic!("unexpected event {other:?}"),
            }
        }
    });
    let mut payload = vec![0x5au8; 300];
    for seq in 0..N {
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        tx.send(dests[0], seq, 0, &payload);
        if seq % 128 == 127 {
            tx.flush().expect("flush");
        }
    }
    tx.flush().expect("flush");
    receiver.join().expect("every packet, in order");

    // A dest nobody listens on: the shard says so (no store here).
    let nobody = mailbox(2).dest(epoch).expect("dest");
    tx.send(nobody, 99, FLAG_ACK, b"hello");
    tx.flush().expect("flush");
    match tx.recv(WAIT).expect("an answer") {
        ClientEvent::SendResult { msg_id, status, .. } => {
            assert_eq!(msg_id, 99);
            assert_eq!(status, SendStatus::NoSubscriber);
        }
        other => panic!("unexpected event {other:?}"),
    }
}
