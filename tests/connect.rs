//! Connecting by URL, as an application does: `ferry://localhost:PORT` (the name resolved) and
//! `ferry+tls://localhost:PORT` with the CA given as a file, against a real node whose TLS
//! listener has a certificate its CA signed; the trust refused where it should be; the `hello`
//! example over TLS by URL.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Node, TlsFiles, args_with, mailbox, temp_dir};
use ferry_sdk::{Client, ClientEvent, ConnectOptions, SdkError, Trust};

/// A node with a plain listener and a TLS one whose certificate `tls`'s CA signed.
fn node_with_tls(tag: &str) -> (Node, TlsFiles, PathBuf) {
    let dir = temp_dir(tag);
    let tls = TlsFiles::write_ca_signed(&dir);
    let node = Node::start(&args_with(&["--shards", "2"], &tls.node_args()), &[]);
    (node, tls, dir)
}

fn ca_file(tls: &TlsFiles) -> ConnectOptions {
    ConnectOptions {
        trust: Trust::CaFile(tls.ca_path.clone()),
        ..Default::default()
    }
}

/// A message from `tx` to a mailbox `rx` listens on arrives.
fn round_trip(rx: &mut Client, tx: &mut Client, i: u32) {
    let dest = rx.listen(&mailbox(i), [rx.epoch()]).unwrap()[0];
    tx.send(dest, u64::from(i), 0, b"by url");
    tx.flush().unwrap();
    match rx.recv(Duration::from_secs(10)).unwrap() {
        ClientEvent::Deliver { payload, .. } => assert_eq!(&payload[..], b"by url"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn clients_connect_by_url_plain_by_name_and_tls_with_a_ca_file() {
    let (node, tls, dir) = node_with_tls("url");
    let plain_port = node.plain.unwrap().port();
    let tls_port = node.tls.unwrap().port();
    let none = ConnectOptions::default();

    // Plain TCP by host name, and by the bare IP:PORT kept for convenience.
    let mut by_name =
        Client::connect_url(&format!("ferry://localhost:{plain_port}"), &none).unwrap();
    let mut by_addr = Client::connect_url(&node.addr().to_string(), &none).unwrap();
    round_trip(&mut by_name, &mut by_addr, 1);

    // TLS by name, the node's certificate checked against the CA in a file.
    let url = format!("ferry+tls://localhost:{tls_port}");
    let mut secure = Client::connect_url(&url, &ca_file(&tls)).unwrap();
    round_trip(&mut secure, &mut by_name, 2);
    round_trip(&mut by_addr, &mut secure, 3);

    // By IP address, the certificate checked for the name it carries.
    let by_ip = format!("ferry+tls://127.0.0.1:{tls_port}");
    let named = ConnectOptions {
        server_name: Some("localhost".into()),
        ..ca_file(&tls)
    };
    Client::connect_url(&by_ip, &named)
        .unwrap()
        .ping(1)
        .unwrap();

    // Trust refused: the public CAs did not sign it, another CA did not, and the certificate
    // does not carry the IP address.
    for (url, opts) in [
        (url.clone(), none.clone()),
        (
            url.clone(),
            TlsFiles::write_ca_signed(&temp_dir("other-ca")).client_opts(),
        ),
        (by_ip.clone(), ca_file(&tls)),
    ] {
        match Client::connect_url(&url, &opts) {
            Err(SdkError::Tls(e)) => {
                assert!(e.to_string().contains("certificate"), "{url}: {e}")
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    // TLS to the plain port: the handshake fails within the timeout.
    let short = ConnectOptions {
        timeout: Duration::from_secs(3),
        ..ca_file(&tls)
    };
    assert!(Client::connect_url(&format!("ferry+tls://localhost:{plain_port}"), &short).is_err());

    // A CA file that is missing or holds no certificate: a clear error before any traffic.
    let missing = ConnectOptions {
        trust: Trust::CaFile(dir.join("missing.pem")),
        ..Default::default()
    };
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let blank = ConnectOptions {
        trust: Trust::CaFile(empty.clone()),
        ..Default::default()
    };
    for (opts, path) in [(missing, dir.join("missing.pem")), (blank, empty)] {
        match Client::connect_url(&url, &opts) {
            Err(e @ SdkError::Ca { .. }) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn wrong_urls_are_refused_with_what_is_wrong() {
    let none = ConnectOptions::default();
    for (url, says) in [
        ("http://localhost:7700", "unknown scheme \"http\""),
        ("localhost:7700", "no scheme"),
        ("ferry://", "no host"),
        ("ferry://localhost:99999", "does not parse"),
        ("ferry://local host:7700", "does not parse"),
        ("ferry://localhost:7700/inbox", "has a path"),
    ] {
        match Client::connect_url(url, &none) {
            Err(e @ SdkError::Url(_)) => assert!(e.to_string().contains(says), "{url}: {e}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    // A name that does not resolve.
    match Client::connect_url("ferry://no-such-host.invalid:7700", &none) {
        Err(e @ SdkError::Resolve { .. }) => {
            assert!(e.to_string().contains("no-such-host.invalid"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

/// `hello` (sdk/examples), built beside the tests by `cargo build -p ferry-sdk --examples`.
fn hello_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("hello");
    assert!(
        bin.is_file(),
        "{} missing: build it with cargo build -p ferry-sdk --examples",
        bin.display()
    );
    bin
}

#[test]
fn the_hello_example_sends_over_tls_by_url_with_a_ca_file() {
    let (node, tls, dir) = node_with_tls("hello");
    let url = common::tls_url(node.tls.unwrap());
    let out = Command::new(hello_bin())
        .args([url.as_str(), "--tls-ca", tls.ca_path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("bob received: hello, bob"), "{text}");
    // Without the CA: refused, and the error says why.
    let out = Command::new(hello_bin()).arg(&url).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
