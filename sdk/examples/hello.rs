//! Sends one message through a running node and receives it: a mailbox listens, a contact sends.
//!
//! `cargo run -p ferry-sdk --example hello -- 127.0.0.1:7700`

use std::time::Duration;

use ferry_proto::addr::NamespaceId;
use ferry_proto::conn::ClientEvent;
use ferry_sdk::{Client, Contact, Mailbox};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7700".into())
        .parse()?;
    // An application's namespace id is a random 32-byte secret shipped in its configuration.
    let ns = NamespaceId([0x5a; 32]);

    // Bob: a fresh mailbox, listening on this hour's destination hash.
    let bob = Mailbox::generate(ns)?;
    let mut bob_conn = Client::connect(addr)?;
    let epoch = bob_conn.epoch();
    let dests = bob_conn.listen(&bob, [epoch, epoch + 1])?;
    println!(
        "bob listens on shard {} for dest {:?} (epoch {epoch})",
        bob_conn.info().shard,
        dests[0]
    );

    // Alice knows Bob's public mailbox key and computes the same dest from public values only.
    let bob_contact = Contact::new(&bob.public().to_bytes(), ns, None)?;
    let mut alice = Client::connect(addr)?;
    let dest = bob_contact.dest(alice.epoch())?;
    // Real applications encrypt end to end before this point; the node only sees opaque bytes.
    alice.send(dest, 1, ferry_sdk::FLAG_ACK, b"hello, bob");
    alice.flush()?;
    match alice.recv(Duration::from_secs(5))? {
        ClientEvent::SendResult { status, .. } => println!("alice: send result {status:?}"),
        other => println!("alice: {other:?}"),
    }
    match bob_conn.recv(Duration::from_secs(5))? {
        ClientEvent::Deliver { payload, .. } => {
            println!("bob received: {}", String::from_utf8_lossy(&payload))
        }
        other => println!("bob: {other:?}"),
    }
    Ok(())
}
