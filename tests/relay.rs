//! Live relay through a real node process: delivery, order, proofs, subscriptions.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test helpers panic on failed set-up

mod common;

use std::time::Duration;

use common::{Node, mailbox, mailbox_owned_by, raise_nofile};
use ferry_proto::conn::ClientEvent;
use ferry_sdk::{Client, FLAG_ACK, Op, ProofStatus, SendStatus, SubscribeStatus};

const WAIT: Duration = Duration::from_secs(10);

/// Receives `n` packets in order (payload = u64 sequence number) or panics.
fn receive_in_order(rx: &mut Client, n: u64) {
    let mut next = 0u64;
    while next < n {
        match rx.recv(WAIT).expect("receive") {
            ClientEvent::Deliver { payload, .. } => {
                let seq = u64::from_le_bytes(payload[..8].try_into().unwrap());
                assert_eq!(seq, next, "out of order or lost");
                next += 1;
            }
            ClientEvent::Pong { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
}

fn send_sequence(tx: &mut Client, dest: ferry_sdk::Dest, n: u64, size: usize) {
    let mut payload = vec![0xabu8; size.max(8)];
    for seq in 0..n {
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        tx.send(dest, seq, 0, &payload);
        if seq % 64 == 63 {
            tx.flush().unwrap();
        }
    }
    tx.flush().unwrap();
}

#[test]
fn ten_thousand_packets_across_shards_arrive_once_and_in_order() {
    const SHARDS: usize = 3;
    let node = Node::start(&["--shards", "3"], &[]);
    let probe = node.client();
    let epoch = probe.epoch();
    drop(probe);
    // Sender on shard 0, receiver on shard 1; one dest owned by shard 2 (three cores on the path),
    // one by the sender's shard and one by the receiver's.
    let mut rx = node.client_on_shard(1);
    let mut tx = node.client_on_shard(0);
    let mut start = 0;
    for owner in [2usize, 0, 1] {
        let (mb, i) = mailbox_owned_by(owner, SHARDS, epoch, start);
        start = i + 1;
        let dests = rx.listen(&mb, [epoch]).unwrap();
        let receiver = std::thread::spawn(move || {
            receive_in_order(&mut rx, 10_000);
            rx
        });
        send_sequence(&mut tx, dests[0], 10_000, 64);
        rx = receiver.join().unwrap();
        rx.unsubscribe(&dests).unwrap();
    }
    // Nothing came back to the sender: no NoSubscriber, no Congested.
    tx.ping(7).unwrap();
    assert!(matches!(
        tx.recv(Duration::from_millis(200)),
        Err(ferry_sdk::SdkError::Timeout)
    ));
    assert!(node.metric("ferry_hops_out_total") >= 20_000);
    assert_eq!(node.metric("ferry_drops_send_queue_full_total"), 0);
    // Every cross-core batch is in the batch-size histogram, every message in its sum, and
    // the batches that arrived in the delay histogram.
    let batches = node.metric("ferry_hop_batches_out_total") as f64;
    assert_eq!(node.metric_total("ferry_hop_batch_messages_count"), batches);
    assert_eq!(
        node.metric_total("ferry_hop_batch_messages_sum"),
        node.metric("ferry_hops_out_total") as f64
    );
    let delayed = node.metric_total("ferry_hop_delay_seconds_count");
    assert!(
        delayed > 0.0 && delayed <= batches,
        "{delayed} of {batches}"
    );
}

#[test]
fn send_without_subscriber_is_answered_not_delivered() {
    let node = Node::start(&["--shards", "2"], &[("FERRY_STORE_ENABLED", "false")]);
    let mut tx = node.client();
    let dest = mailbox(1).dest(tx.epoch()).unwrap();
    tx.send(dest, 99, 0, b"hello");
    tx.flush().unwrap();
    match tx.recv(WAIT).unwrap() {
        ClientEvent::SendResult {
            dest: d,
            msg_id,
            status,
        } => {
            assert_eq!((d, msg_id, status), (dest, 99, SendStatus::NoSubscriber));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        node.metric("ferry_packets_not_delivered_no_subscriber_total"),
        1
    );
}

#[test]
fn acked_send_reports_accepted_to_a_sender_that_has_not_proven_the_dest() {
    let node = Node::start(&["--shards", "2"], &[]);
    let mut rx = node.client();
    let mut tx = node.client();
    let mb = mailbox(2);
    let dests = rx.listen(&mb, [rx.epoch()]).unwrap();
    tx.send(dests[0], 5, FLAG_ACK, b"x");
    tx.flush().unwrap();
    assert!(matches!(
        tx.recv(WAIT).unwrap(),
        ClientEvent::SendResult {
            msg_id: 5,
            // Delivered live, but `tx` has not proven the dest: it learns only Accepted.
            status: SendStatus::Accepted,
            ..
        }
    ));
    assert!(matches!(
        rx.recv(WAIT).unwrap(),
        ClientEvent::Deliver { msg_id: 5, .. }
    ));
}

#[test]
fn bad_proofs_are_refused() {
    let node = Node::start(&["--shards", "2"], &[]);
    let mut c = node.client();
    let epoch = c.epoch();
    let mb = mailbox(3);
    let signer = mb.signer(epoch).unwrap();

    // Subscribing with no proof.
    assert_eq!(
        c.subscribe(&[signer.dest()]).unwrap(),
        vec![SubscribeStatus::NotProven]
    );

    // A wrong signature.
    let mut bad = c.proofs(&[&signer], Op::Subscribe);
    bad[0].signature[10] ^= 0x40;
    assert_eq!(
        c.prove_items(&bad).unwrap(),
        vec![ProofStatus::BadSignature]
    );

    // A proof for another dest: a valid signature for this mailbox's next-epoch dest, claimed for
    // someone else's dest.
    let mut other = c.proofs(&[&signer], Op::Subscribe);
    other[0].dest = mailbox(4).dest(epoch).unwrap();
    assert_eq!(
        c.prove_items(&other).unwrap(),
        vec![ProofStatus::DestMismatch]
    );

    // A stale challenge: proofs made before the challenge was replaced.
    let old = c.proofs(&[&signer], Op::Subscribe);
    c.refresh_challenge().unwrap();
    assert_eq!(
        c.prove_items(&old).unwrap(),
        vec![ProofStatus::BadSignature]
    );

    // A proof for another op does not allow subscribing.
    assert_eq!(
        c.prove(&[&signer], Op::Drain).unwrap(),
        vec![ProofStatus::Ok]
    );
    assert_eq!(
        c.subscribe(&[signer.dest()]).unwrap(),
        vec![SubscribeStatus::NotProven]
    );

    // A proof made for another node (its id is part of the signed message).
    let foreign = signer.prove(&[9u8; 32], &c.challenge(), Op::Subscribe);
    assert_eq!(
        c.prove_items(&[foreign]).unwrap(),
        vec![ProofStatus::BadSignature]
    );

    // And the real one works.
    assert_eq!(
        c.prove(&[&signer], Op::Subscribe).unwrap(),
        vec![ProofStatus::Ok]
    );
    assert_eq!(
        c.subscribe(&[signer.dest()]).unwrap(),
        vec![SubscribeStatus::Ok]
    );
    assert_eq!(node.metric("ferry_proofs_failed_total"), 4);
}

#[test]
fn too_many_failed_proofs_close_the_connection() {
    let node = Node::start(
        &["--shards", "1"],
        &[("FERRY_LIMITS_PROOF_FAILURES_PER_CONN_MAX", "3")],
    );
    let mut c = node.client();
    let signer = mailbox(5).signer(c.epoch()).unwrap();
    let mut bad = c.proofs(&[&signer], Op::Subscribe);
    bad[0].signature[0] ^= 1;
    assert_eq!(
        c.prove_items(&bad).unwrap(),
        vec![ProofStatus::BadSignature]
    );
    assert_eq!(
        c.prove_items(&bad).unwrap(),
        vec![ProofStatus::BadSignature]
    );
    // The third failure is answered, then the node closes with an error code.
    assert_eq!(
        c.prove_items(&bad).unwrap(),
        vec![ProofStatus::BadSignature]
    );
    match c.recv(WAIT) {
        Ok(ClientEvent::Error { code, .. }) => {
            assert_eq!(code, ferry_sdk::ErrorCode::TooManyProofFailures)
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.recv(WAIT), Err(ferry_sdk::SdkError::Closed)));
}

#[test]
fn newest_subscriber_takes_over_and_closing_removes_entries_everywhere() {
    let node = Node::start(&["--shards", "3"], &[("FERRY_STORE_ENABLED", "false")]);
    let mut first = node.client_on_shard(0);
    let epoch = first.epoch();
    let (mb, _) = mailbox_owned_by(2, 3, epoch, 100);
    let dests = first.listen(&mb, [epoch]).unwrap();
    let mut second = node.client_on_shard(1);
    second.listen(&mb, [epoch]).unwrap();
    match first.recv(WAIT).unwrap() {
        ClientEvent::Unsubscribed { dest, .. } => assert_eq!(dest, dests[0]),
        other => panic!("{other:?}"),
    }
    let mut tx = node.client();
    tx.send(dests[0], 1, 0, b"to the newest");
    tx.flush().unwrap();
    assert!(matches!(
        second.recv(WAIT).unwrap(),
        ClientEvent::Deliver { msg_id: 1, .. }
    ));
    assert_eq!(node.metric("ferry_subscriptions"), 1);

    // Closing the subscriber's connection removes the owner's entry (on another shard).
    drop(second);
    let deadline = std::time::Instant::now() + WAIT;
    while node.metric("ferry_subscriptions") != 0 {
        assert!(std::time::Instant::now() < deadline, "entry not removed");
        std::thread::sleep(Duration::from_millis(10));
    }
    tx.send(dests[0], 2, 0, b"nobody");
    tx.flush().unwrap();
    assert!(matches!(
        tx.recv(WAIT).unwrap(),
        ClientEvent::SendResult {
            msg_id: 2,
            status: SendStatus::NoSubscriber,
            ..
        }
    ));
}

#[test]
fn a_thousand_concurrent_connections() {
    raise_nofile(4096);
    // All from one address: lift the per-address cap on open connections.
    let node = Node::start(
        &["--shards", "2"],
        &[("FERRY_LIMITS_IP_CONNECTIONS_MAX", "0")],
    );
    let mut clients: Vec<Client> = (0..1000).map(|_| node.client()).collect();
    assert_eq!(node.metric("ferry_connections_open"), 1000);
    let epoch = clients[0].epoch();
    // Half listen on their own mailbox, the other half each send one packet to a partner.
    let mut dests = Vec::new();
    for (i, c) in clients.iter_mut().take(500).enumerate() {
        dests.push(c.listen(&mailbox(10_000 + i as u32), [epoch]).unwrap()[0]);
    }
    for (i, c) in clients.iter_mut().skip(500).enumerate() {
        c.send(dests[i], i as u64, 0, format!("packet {i}").as_bytes());
        c.flush().unwrap();
    }
    for (i, c) in clients.iter_mut().take(500).enumerate() {
        match c.recv(WAIT).unwrap() {
            ClientEvent::Deliver {
                msg_id, payload, ..
            } => {
                assert_eq!(msg_id, i as u64);
                assert_eq!(&payload[..], format!("packet {i}").as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
    drop(clients);
}

#[test]
fn epoch_rollover_loses_nothing_when_the_next_epoch_is_proven_in_advance() {
    // Put the node's clock 2.5 s before an hour boundary.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let now_ms = now.as_millis() as i64;
    let to_boundary_ms = 3_600_000 - now_ms % 3_600_000;
    let offset_s = (to_boundary_ms - 2_500) / 1000;
    let node = Node::start(
        &["--shards", "2", "--clock-offset-s", &offset_s.to_string()],
        &[],
    );
    let mut rx = node.client_moved_clock();
    let e = rx.epoch();
    let mb = mailbox(77);
    rx.listen(&mb, [e, e + 1]).unwrap();
    let contact = ferry_sdk::Contact::new(&mb.public().to_bytes(), common::ns(), None).unwrap();
    let mut tx = node.client_moved_clock();
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            match rx.recv(Duration::from_secs(3)) {
                Ok(ClientEvent::Deliver { msg_id, dest, .. }) => got.push((msg_id, dest)),
                Ok(_) => {}
                Err(_) => return got,
            }
        }
    });
    // Send for ~5 s on the sender's view of the node clock, crossing the boundary.
    let mut sent = Vec::new();
    let start = std::time::Instant::now();
    let mut id = 0u64;
    while start.elapsed() < Duration::from_secs(5) {
        let dest = contact.dest(tx.epoch()).unwrap();
        tx.send(dest, id, 0, b"tick");
        tx.flush().unwrap();
        sent.push((id, dest));
        id += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = receiver.join().unwrap();
    assert_eq!(
        got, sent,
        "packets lost or reordered across the epoch boundary"
    );
    let epochs: std::collections::HashSet<_> = sent.iter().map(|(_, d)| *d).collect();
    assert_eq!(epochs.len(), 2, "the test must cross one boundary");
    // Nothing was answered NoSubscriber.
    assert!(matches!(
        tx.recv(Duration::from_millis(100)),
        Err(ferry_sdk::SdkError::Timeout)
    ));
}
