//! Send puzzles through a real node and the SDK: a send to a dest under pressure is answered
//! `PuzzleRequired`, which the SDK solves and sends again by itself, so the application sees
//! `Accepted`; a contact holding the mailbox's capability sends without a puzzle.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::time::Duration;

use common::{Node, mailbox};
use ferry_proto::puzzle;
use ferry_sdk::{CapabilityStatus, Client, FLAG_ACK, Op, ProofStatus, SendStatus};

const WAIT: Duration = Duration::from_secs(20);

fn status_of(tx: &mut Client, msg_id: u64) -> SendStatus {
    common::send_result(tx, msg_id, WAIT)
}

#[test]
fn the_sdk_solves_puzzles_for_a_pressured_dest_and_a_capability_skips_them() {
    let node = Node::start(
        &["--shards", "1"],
        // Four blobs per dest: the third send finds it half full (level 1), the fourth at 75 %.
        // One sender fills the dest: puzzles, not per-source shares (tests/store_fairness.rs).
        &[
            ("FERRY_LIMITS_STORE_DEST_BLOBS_MAX", "4"),
            ("FERRY_LIMITS_STORE_SOURCE_DEST_SHARE_PERCENT", "100"),
        ],
    );
    let mut tx = node.client();
    let epoch = tx.epoch();
    let dest = mailbox(7).dest(epoch).unwrap();
    for i in 1..=4u64 {
        tx.send(dest, i, FLAG_ACK, b"hello");
        assert_eq!(status_of(&mut tx, i), SendStatus::Accepted, "send {i}");
    }
    assert_eq!(node.metric("ferry_puzzles_required_total"), 2);
    assert_eq!(node.metric("ferry_puzzles_valid_total"), 2);
    // A client that will not solve sees the answer itself.
    tx.set_puzzle_effort_max(0);
    tx.send(dest, 5, FLAG_ACK, b"hello");
    assert_eq!(status_of(&mut tx, 5), SendStatus::PuzzleRequired);

    // The owner of another mailbox registers its contacts' capability under a Drain proof.
    let owner_box = mailbox(8);
    let mut owner = node.client();
    let signer = owner_box.signer(epoch).unwrap();
    assert_eq!(
        owner.prove(&[&signer], Op::Drain).unwrap(),
        vec![ProofStatus::Ok]
    );
    let owned = signer.dest();
    let secret = [0x77; 32];
    let token = puzzle::capability_token(&secret, epoch);
    assert_eq!(
        owner
            .register_capability(owned, 3_600, puzzle::capability_verifier(&token))
            .unwrap(),
        CapabilityStatus::Ok
    );
    let mut contact = node.client();
    contact.set_puzzle_effort_max(0);
    for i in 1..=4u64 {
        contact.send_with_capability(owned, i, FLAG_ACK, 0, token, b"from a contact");
        assert_eq!(status_of(&mut contact, i), SendStatus::Accepted, "send {i}");
    }
    assert_eq!(
        node.metric("ferry_puzzles_valid_total"),
        2,
        "no puzzle solved"
    );
}

/// The messenger uses capabilities by itself: Alice's listen connection registers the verifier
/// of the pairwise mailbox she keeps for Bob (`chat::listen`), she goes offline, and Bob, a contact, fills her dest to
/// its quota through `chat::Sender` without a single puzzle; a stranger's sends to a dest of the
/// same quota meet puzzles from half full.
#[test]
fn a_contacts_messages_to_an_offline_mailbox_pass_pressure_without_puzzles() {
    use ferry_sdk::chat::{self, Sender};
    use ferry_sdk::messenger::{Body, MemoryStorage, Messenger};
    let node = Node::start(
        &["--shards", "1"],
        &[
            ("FERRY_LIMITS_STORE_DEST_BLOBS_MAX", "4"),
            ("FERRY_LIMITS_STORE_SOURCE_DEST_SHARE_PERCENT", "100"),
        ],
    );
    let clock = std::time::Instant::now();
    let url = format!("ferry://{}", node.addr());
    let ns = common::ns();
    let mut alice = Messenger::open(MemoryStorage::default(), ns).unwrap();
    let mut bob = Messenger::open(MemoryStorage::default(), ns).unwrap();
    let (mut ca, mut cb) = (node.client(), node.client());
    let (mut sa, mut sb) = (
        Sender::new(&url, Default::default()),
        Sender::new(&url, Default::default()),
    );
    sb.publish_prekeys(&mut bob, 3).unwrap();
    chat::sync(&mut ca, &mut sa, &mut alice, clock).unwrap();
    alice.add_contact("bob", &bob.address()).unwrap();
    // A new contact: its pairwise mailbox is listened on (and its verifier registered) at once.
    assert!(alice.contacts_changed());
    chat::listen(&mut ca, &mut alice).unwrap();
    let (a_id, b_id) = (alice.address().identity, bob.address().identity);
    sa.send(&mut alice, &b_id, &Body::Data(b"hi bob".to_vec()), clock)
        .unwrap();
    let got = chat::sync(&mut cb, &mut sb, &mut bob, clock).unwrap();
    assert_eq!(
        got.messages.len(),
        1,
        "Bob learns Alice's pairwise mailbox for him"
    );
    bob.accept_request(&a_id, "alice").unwrap();
    // Alice goes offline; what Bob writes now is stored at her pairwise mailbox's dest.
    let open = node.metric("ferry_connections_open");
    drop(ca);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.metric("ferry_connections_open") >= open {
        assert!(
            std::time::Instant::now() < deadline,
            "Alice's connection never closed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for i in 0..4 {
        let body = Body::Data(format!("message {i}").into_bytes());
        sb.send(&mut bob, &a_id, &body, clock).unwrap();
    }
    assert_eq!(bob.unacknowledged(), 0, "every message accepted");
    assert_eq!(node.metric("ferry_puzzles_required_total"), 0);
    assert_eq!(node.metric("ferry_puzzles_valid_total"), 0);
    // The same quota without a capability: puzzles from the third send (half full).
    let mut tx = node.client();
    let dest = mailbox(9).dest(tx.epoch()).unwrap();
    for i in 1..=4u64 {
        tx.send(dest, i, FLAG_ACK, b"stranger");
        assert_eq!(status_of(&mut tx, i), SendStatus::Accepted, "send {i}");
    }
    assert_eq!(node.metric("ferry_puzzles_required_total"), 2);
    // Alice comes back and reads all four.
    let mut ca = node.client();
    let got = chat::sync(&mut ca, &mut sa, &mut alice, clock).unwrap();
    assert_eq!(got.messages.len(), 4);
}
