//! The presence oracles a stranger had, through a real node: a `Query` for a dest the connection
//! has not proven answers the same whether mail waits or not, and an acknowledged send to it is
//! answered `Accepted` whether the recipient is online or offline. The owner still learns both.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Node, mailbox};
use ferry_proto::conn::ClientEvent;
use ferry_sdk::{Client, FLAG_ACK, Op, ProofStatus, SendStatus};

const WAIT: Duration = Duration::from_secs(10);

fn status_of(tx: &mut Client, dest: ferry_sdk::Dest, msg_id: u64) -> SendStatus {
    tx.send(dest, msg_id, FLAG_ACK, b"sealed");
    common::send_result(tx, msg_id, WAIT)
}

#[test]
fn a_stranger_learns_neither_waiting_mail_nor_whether_the_recipient_is_online() {
    let node = Node::start(&["--shards", "2"], &[]);
    let mut stranger = node.client();
    let epoch = stranger.epoch();
    let bob = mailbox(61);
    let dest = bob.dest(epoch).unwrap();

    let empty_before = stranger.query(&[dest]).unwrap();
    // Offline: stored.
    let offline = status_of(&mut stranger, dest, 1);
    let waiting = stranger.query(&[dest]).unwrap();

    // The owner sees the mail waiting once it proved the dest.
    let mut owner = node.client();
    let signer = bob.signer(epoch).unwrap();
    assert_eq!(
        owner.prove(&[&signer], Op::Drain).unwrap(),
        vec![ProofStatus::Ok]
    );
    assert_eq!(owner.query(&[dest]).unwrap(), vec![dest]);
    // Proven on the owner's connection: it still learns Stored.
    assert_eq!(status_of(&mut owner, dest, 2), SendStatus::Stored);

    // Online: delivered live.
    let mut rx = node.client();
    rx.listen(&bob, [epoch]).unwrap();
    let online = status_of(&mut stranger, dest, 3);
    let after = stranger.query(&[dest]).unwrap();

    assert_eq!(
        (offline, online),
        (SendStatus::Accepted, SendStatus::Accepted)
    );
    assert!(empty_before.is_empty() && waiting.is_empty() && after.is_empty());
    // The live packet did reach the subscriber (after the two handed over on subscribe).
    loop {
        if let ClientEvent::Deliver { msg_id, .. } = rx.recv(WAIT).unwrap() {
            assert_eq!(msg_id, 3);
            break;
        }
    }
}
