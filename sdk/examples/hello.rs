//! Sends one message through a running node and receives it: a mailbox listens, a contact sends.
//!
//! ```text
//! cargo run -p ferry-sdk --example hello -- ferry://127.0.0.1:7700
//! cargo run -p ferry-sdk --example hello -- ferry+tls://relay.example:7443 --tls-ca ca.pem
//! ```
//!
//! The node URL: `ferry+tls://HOST[:PORT]` (TLS 1.3; port 7443 by default) or `ferry://HOST[:PORT]`
//! (plain TCP; port 7700). `--tls-ca` names a PEM file with the CA (or the self-signed
//! certificate) to trust; without it a TLS node needs a certificate from a public CA.

use std::time::Duration;

use ferry_sdk::{Client, ClientEvent, ConnectOptions, Contact, Mailbox, NamespaceId, Trust};

const USAGE: &str =
    "usage: hello [NODE_URL] [--tls-ca PEM_FILE]   (default ferry://127.0.0.1:7700)";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hello: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut url = "ferry://127.0.0.1:7700".to_string();
    let mut opts = ConnectOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tls-ca" => opts.trust = Trust::CaFile(args.next().ok_or(USAGE)?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ if a.starts_with('-') => return Err(USAGE.into()),
            _ => url = a,
        }
    }
    // An application's namespace id is a random 32-byte secret shipped in its configuration.
    let ns = NamespaceId([0x5a; 32]);

    // Bob: a fresh mailbox, listening on this hour's destination hash.
    let bob = Mailbox::generate(ns)?;
    let mut bob_conn = Client::connect_url(&url, &opts)?;
    let epoch = bob_conn.epoch();
    let dests = bob_conn.listen(&bob, [epoch, epoch + 1])?;
    println!(
        "bob listens on shard {} for dest {:?} (epoch {epoch})",
        bob_conn.info().shard,
        dests[0]
    );

    // Alice knows Bob's public mailbox key and computes the same dest from public values only.
    let bob_contact = Contact::new(&bob.public().to_bytes(), ns, None)?;
    let mut alice = Client::connect_url(&url, &opts)?;
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
