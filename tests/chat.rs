//! End to end through a real node with the `ferry-chat` example: two identities, first contact
//! through the prekey directory while the recipient is offline, the stored messages delivered when
//! it returns, a reply, a file through media storage, a live chat between two running
//! processes. Then the node's data directory and a capture of every byte between the clients and
//! the node are searched for the plaintexts: none may appear. And over TLS by URL: files received
//! without `--save-dir` stay kept, across processes, until `fetch` saves them.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Node, TlsFiles, args_with, temp_dir, tls_url};

/// The example binary, built beside this test (`cargo build --examples`, as tests/run-all.sh
/// does; `cargo test` builds examples too).
fn chat_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("ferry-chat");
    assert!(
        bin.is_file(),
        "{} missing: build it with cargo build -p ferry-sdk --examples",
        bin.display()
    );
    bin
}

/// A TCP proxy that records every byte in both directions.
fn recording_proxy(upstream: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let capture = Arc::new(Mutex::new(Vec::new()));
    let cap = capture.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let cap = cap.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = to.shutdown(std::net::Shutdown::Write);
                                return;
                            }
                            Ok(n) => {
                                cap.lock().unwrap().extend_from_slice(&buf[..n]);
                                if to.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        }
    });
    (addr, capture)
}

struct Chat {
    /// A node URL (or a bare IP:PORT).
    node: String,
    /// The CA to trust for a `ferry+tls` node.
    tls_ca: Option<PathBuf>,
    state: PathBuf,
}

impl Chat {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(chat_bin());
        c.arg("--node").arg(&self.node);
        if let Some(ca) = &self.tls_ca {
            c.arg("--tls-ca").arg(ca);
        }
        c.arg("--state").arg(&self.state).args(args);
        c
    }
    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "ferry-chat {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    /// Runs a command that must fail; returns its stderr.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(!out.status.success(), "ferry-chat {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Lines of a child's stdout, as they come.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    lines_from(child.stdout.take().unwrap())
}

fn lines_from(out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(want) => return l,
            Ok(_) => {}
            Err(_) => panic!("no line with {want:?}"),
        }
    }
}

#[test]
fn two_identities_chat_through_a_node_that_never_sees_a_plaintext() {
    let node = Node::start(&["--shards", "2"], &[]);
    let (proxy, capture) = recording_proxy(node.addr());
    let dir = temp_dir("chat");
    // The bare IP:PORT a node URL may be written as.
    let alice = Chat {
        node: proxy.to_string(),
        tls_ca: None,
        state: dir.join("alice"),
    };
    let bob = Chat {
        node: proxy.to_string(),
        tls_ca: None,
        state: dir.join("bob"),
    };
    let a_addr = alice.run(&["init"]).trim().to_string();
    let b_addr = bob.run(&["init"]).trim().to_string();
    assert!(a_addr.starts_with("ferry:") && b_addr.starts_with("ferry:"));
    alice.run(&["add", "bob", &b_addr]);
    bob.run(&["add", "alice", &a_addr]);

    // Bob is offline: first contact through his prekeys, stored by the node.
    let hello = "PLAINTEXT-MARKER-7f3a hello bob";
    alice.run(&["send", "bob", hello]);
    alice.run(&["send", "bob", "PLAINTEXT-MARKER-7f3a second"]);
    let got = bob.run(&["recv"]);
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        vec![
            format!("alice: {hello}"),
            "alice: PLAINTEXT-MARKER-7f3a second".to_string()
        ]
    );
    // Nothing twice.
    assert_eq!(bob.run(&["recv"]), "");
    let reply = "REPLY-MARKER-91c2 hi alice";
    bob.run(&["send", "alice", reply]);
    assert_eq!(alice.run(&["recv"]).trim(), format!("bob: {reply}"));

    // A file through media storage.
    let mut content = Vec::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while content.len() < 300_000 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        content.extend_from_slice(&x.to_le_bytes());
        if content.len() % 4096 == 0 {
            content.extend_from_slice(b"FILE-MARKER-c4b8");
        }
    }
    let file = dir.join("report.bin");
    std::fs::write(&file, &content).unwrap();
    alice.run(&["send-file", "bob", file.to_str().unwrap()]);
    let saved = dir.join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    let out = bob.run(&["recv", "--save-dir", saved.to_str().unwrap()]);
    assert!(out.contains("alice sent file report.bin"), "{out}");
    assert_eq!(std::fs::read(saved.join("report.bin")).unwrap(), content);

    // Two running chats: a line typed on one side appears on the other.
    let mut b_proc = bob
        .cmd(&["chat", "alice"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let b_lines = lines_of(&mut b_proc);
    let b_said = lines_from(b_proc.stderr.take().unwrap());
    let mut a_proc = alice
        .cmd(&["chat", "bob"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let a_lines = lines_of(&mut a_proc);
    let a_said = lines_from(a_proc.stderr.take().unwrap());
    // Each side listens once its process has synced, and then says so.
    wait_line(&b_said, "chatting with alice");
    wait_line(&a_said, "chatting with bob");
    let live = "LIVE-MARKER-5d0e typed live";
    writeln!(a_proc.stdin.as_mut().unwrap(), "{live}").unwrap();
    assert_eq!(wait_line(&b_lines, "LIVE-MARKER"), format!("alice: {live}"));
    writeln!(b_proc.stdin.as_mut().unwrap(), "LIVE-MARKER-5d0e and back").unwrap();
    assert_eq!(
        wait_line(&a_lines, "and back"),
        "bob: LIVE-MARKER-5d0e and back"
    );
    drop(a_proc.stdin.take());
    drop(b_proc.stdin.take());
    assert!(a_proc.wait().unwrap().success());
    assert!(b_proc.wait().unwrap().success());

    // The node saw none of it: not in its data directory, not on the wire.
    let needles: Vec<&[u8]> = vec![
        b"PLAINTEXT-MARKER",
        b"REPLY-MARKER",
        b"LIVE-MARKER",
        b"FILE-MARKER",
        &content[1000..1032],
        b"report.bin",
    ];
    let cap = capture.lock().unwrap().clone();
    assert!(cap.len() > content.len(), "the capture saw the traffic");
    for n in &needles {
        assert!(
            !contains(&cap, n),
            "plaintext on the wire: {}",
            String::from_utf8_lossy(n)
        );
    }
    let mut all = Vec::new();
    files(&node.dir, &mut all);
    assert!(
        all.iter().any(|p| p.to_string_lossy().contains("media")),
        "the node stored the file"
    );
    for f in &all {
        let mut b = std::fs::read(f).unwrap();
        // Store segments are preallocated: search what was written (a debug build is slow over
        // 64 MiB of zeros).
        let end = b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
        b.truncate(end);
        for n in &needles {
            assert!(
                !contains(&b, n),
                "plaintext in {}: {}",
                f.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deterministic bytes that do not compress.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed;
    while out.len() < len {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The ids `ferry-chat fetch` lists for the files kept, by file name.
fn kept(bob: &Chat) -> BTreeMap<String, String> {
    bob.run(&["fetch"])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[1], "alice", "{l}");
            (f[2].to_string(), f[0].to_string())
        })
        .collect()
}

/// Files shown by a `recv` without `--save-dir` are kept, not lost: each command is a new
/// process (a restart), and `fetch` lists them and saves each one exactly, by id or all at
/// once, never over an existing file. Over TLS, by URL, with the CA in a file.
#[test]
fn files_received_without_save_dir_are_kept_until_fetch_saves_them() {
    let dir = temp_dir("fetch");
    let tls = TlsFiles::write_ca_signed(&dir);
    let node = Node::start(&args_with(&["--shards", "2"], &tls.node_args()), &[]);
    let chat = |name: &str| Chat {
        node: tls_url(node.tls.unwrap()),
        tls_ca: Some(tls.ca_path.clone()),
        state: dir.join(name),
    };
    let (alice, bob) = (chat("alice"), chat("bob"));
    let a_addr = alice.run(&["init"]).trim().to_string();
    let b_addr = bob.run(&["init"]).trim().to_string();
    alice.run(&["add", "bob", &b_addr]);
    bob.run(&["add", "alice", &a_addr]);

    let photo = content(3_000_000, 1);
    let notes = content(10_000, 2);
    std::fs::write(dir.join("photo.bin"), &photo).unwrap();
    std::fs::write(dir.join("notes.txt"), &notes).unwrap();
    for f in ["photo.bin", "notes.txt"] {
        alice.run(&["send-file", "bob", dir.join(f).to_str().unwrap()]);
    }
    let out = bob.run(&["recv"]);
    assert!(
        out.contains("alice sent file photo.bin (3000000 bytes; kept: ferry-chat fetch "),
        "{out}"
    );
    assert!(
        out.contains("alice sent file notes.txt (10000 bytes"),
        "{out}"
    );
    // Shown once; kept.
    assert_eq!(bob.run(&["recv"]), "");
    let ids = kept(&bob);
    assert_eq!(ids.keys().collect::<Vec<_>>(), ["notes.txt", "photo.bin"]);
    assert!(
        out.contains(&format!("fetch {} ", ids["photo.bin"])),
        "{out}"
    );

    let saved = dir.join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    let saved_s = saved.to_str().unwrap();
    assert!(
        bob.refused(&["fetch", &ids["photo.bin"]])
            .contains("--save-dir")
    );
    let out = bob.run(&["fetch", &ids["photo.bin"], "--save-dir", saved_s]);
    assert!(out.contains("photo.bin saved"), "{out}");
    assert!(std::fs::read(saved.join("photo.bin")).unwrap() == photo);
    assert_eq!(kept(&bob).keys().collect::<Vec<_>>(), ["notes.txt"]);
    assert!(
        bob.refused(&["fetch", &ids["photo.bin"], "--save-dir", saved_s])
            .contains("no file kept")
    );

    // The same name again: not written over the first, still kept; then saved elsewhere.
    alice.run(&["send-file", "bob", dir.join("notes.txt").to_str().unwrap()]);
    std::fs::write(saved.join("notes.txt"), b"mine").unwrap();
    let out = bob.run(&["recv", "--save-dir", saved_s]);
    assert!(out.contains("not saved") && out.contains("exists"), "{out}");
    assert_eq!(std::fs::read(saved.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(bob.run(&["fetch"]).lines().count(), 2);
    let elsewhere = dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    // Both copies at once: the first is saved, the second finds its name taken.
    let err = bob.refused(&["fetch", "--all", "--save-dir", elsewhere.to_str().unwrap()]);
    assert!(
        err.contains("exists") && err.contains("still kept"),
        "{err}"
    );
    assert_eq!(std::fs::read(elsewhere.join("notes.txt")).unwrap(), notes);
    assert_eq!(bob.run(&["fetch"]).lines().count(), 1);
    std::fs::remove_file(saved.join("notes.txt")).unwrap();
    bob.run(&["fetch", "--all", "--save-dir", saved_s]);
    assert_eq!(std::fs::read(saved.join("notes.txt")).unwrap(), notes);
    assert_eq!(bob.run(&["fetch"]), "");
    // No partial files left behind.
    for d in [&saved, &elsewhere] {
        for e in std::fs::read_dir(d).unwrap() {
            let name = e.unwrap().file_name();
            assert!(!name.to_string_lossy().ends_with(".part"), "{name:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
