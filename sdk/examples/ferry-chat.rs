//! `ferry-chat`: end-to-end encrypted chat through a ferry node, one identity per state
//! directory. Two terminals, two identities:
//!
//! ```text
//! A$ ferry-chat --state alice init            # prints alice's address, publishes her prekeys
//! B$ ferry-chat --state bob init              # prints bob's address
//! A$ ferry-chat --state alice add bob ferry:…  # bob's address, given out of band
//! A$ ferry-chat --state alice send bob "hello" # first contact through bob's prekeys
//! B$ ferry-chat --state bob recv              # bob was offline: drained from the node's store
//! B$ ferry-chat --state bob chat alice        # interactive: lines typed go to alice
//! A$ ferry-chat --state alice send-file bob photo.jpg
//! ```
//!
//! The node only ever sees sealed envelopes addressed to rotating dests, and ciphertext blobs.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_proto::addr::NamespaceId;
use ferry_sdk::Client;
use ferry_sdk::chat;
use ferry_sdk::messenger::{Address, Body, DirStorage, Incoming, Messenger};

/// The example application's namespace id (a real application builds its own into its SDK
/// configuration).
const EXAMPLE_NS: [u8; 32] = *b"ferry-chat example namespace v1!";

const USAGE: &str = "usage: ferry-chat [--node ADDR] --state DIR COMMAND
commands:
  init                    create this identity (if new), publish prekeys, print the address
  address                 print the address
  add NAME ADDRESS        add a contact
  contacts                list contacts
  send NAME TEXT          send a message
  send-file NAME PATH     encrypt a file, upload it to media storage, send it
  recv [--wait SECS] [--save-dir DIR]
                          fetch what is stored, then wait for live messages (default 1 s)
  chat NAME               interactive: each line read is sent; messages are printed as they come";

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("ferry-chat: {msg}");
    std::process::exit(1);
}

struct Opts {
    node: SocketAddr,
    state: PathBuf,
    ns: NamespaceId,
    rest: Vec<String>,
}

fn opts() -> Opts {
    let mut args = std::env::args().skip(1);
    let mut node: SocketAddr = "127.0.0.1:7700".parse().unwrap_or_else(|e| fail(e));
    let mut state = None;
    let mut ns = NamespaceId(EXAMPLE_NS);
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--node" => {
                node = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| fail("--node needs HOST:PORT"))
            }
            "--state" => state = args.next().map(PathBuf::from),
            "--ns" => {
                let v = args.next().unwrap_or_default();
                if v.len() != 64 || !v.bytes().all(|c| c.is_ascii_hexdigit()) {
                    fail("--ns needs 64 hex digits");
                }
                let b: Vec<u8> = (0..v.len())
                    .step_by(2)
                    .filter_map(|i| v.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect();
                ns = NamespaceId(
                    b.try_into()
                        .unwrap_or_else(|_| fail("--ns needs 64 hex digits")),
                );
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => {
                rest.push(a);
                rest.extend(args.by_ref());
            }
        }
    }
    Opts {
        node,
        state: state.unwrap_or_else(|| fail(USAGE)),
        ns,
        rest,
    }
}

fn print(m: &Incoming, save_dir: Option<&PathBuf>, client: &mut Client) {
    match &m.body {
        Body::Data(d) => println!("{}: {}", m.from_name, String::from_utf8_lossy(d)),
        Body::Attachment {
            name,
            plaintext_bytes,
            ..
        } => {
            let Some(dir) = save_dir else {
                println!(
                    "{} sent file {name} ({plaintext_bytes} bytes; use --save-dir to fetch it)",
                    m.from_name
                );
                return;
            };
            // Only the file name: a sender must not choose where it lands.
            let base = std::path::Path::new(name)
                .file_name()
                .map_or_else(|| "file".into(), |n| n.to_os_string());
            let path = dir.join(base);
            let out = match std::fs::File::create(&path) {
                Ok(f) => f,
                Err(e) => {
                    println!(
                        "{} sent file {name}: cannot save {}: {e}",
                        m.from_name,
                        path.display()
                    );
                    return;
                }
            };
            match chat::fetch_file(client, &m.body, out) {
                Ok(()) => println!(
                    "{} sent file {name} ({plaintext_bytes} bytes) saved {}",
                    m.from_name,
                    path.display()
                ),
                Err(e) => println!("{} sent file {name}: download failed: {e}", m.from_name),
            }
        }
    }
}

fn contact(m: &Messenger<DirStorage>, name: &str) -> [u8; 33] {
    m.contact(name)
        .map(|p| p.identity)
        .unwrap_or_else(|| fail(format!("no contact named {name} (add it first)")))
}

fn main() {
    let o = opts();
    let storage = DirStorage::open(&o.state).unwrap_or_else(|e| fail(e));
    let mut m = Messenger::open(storage, o.ns).unwrap_or_else(|e| fail(e));
    let clock = Instant::now();
    let connect = || Client::connect(o.node).unwrap_or_else(|e| fail(format!("{}: {e}", o.node)));
    let rest: Vec<&str> = o.rest.iter().map(String::as_str).collect();
    match rest.as_slice() {
        ["init"] => {
            let mut c = connect();
            if m.has_prekeys() {
                // Published before: top the one-time keys up (rotating the signed prekey on
                // every start would only churn).
                chat::refill_prekeys(&mut c, &mut m).unwrap_or_else(|e| fail(e));
            } else {
                let (ec, pq) =
                    chat::publish_prekeys(&mut c, &mut m, 20).unwrap_or_else(|e| fail(e));
                eprintln!("prekeys published ({ec} + {pq} one-time keys)");
            }
            println!("{}", m.address());
        }
        ["address"] => println!("{}", m.address()),
        ["add", name, address] => {
            let a: Address = address.parse().unwrap_or_else(|e| fail(e));
            m.add_contact(name, &a).unwrap_or_else(|e| fail(e));
        }
        ["contacts"] => {
            for p in m.contacts() {
                let a = Address {
                    mailbox: p.mailbox,
                    identity: p.identity,
                };
                println!("{} {a}", p.name);
            }
        }
        ["send", name, text] => {
            let to = contact(&m, name);
            let mut c = connect();
            // Earlier messages the node has not acknowledged go first (nothing is drained here:
            // `recv` shows what arrived).
            chat::resend(&mut c, &mut m).unwrap_or_else(|e| fail(e));
            chat::send(
                &mut c,
                &mut m,
                &to,
                &Body::Data(text.as_bytes().to_vec()),
                clock,
            )
            .unwrap_or_else(|e| fail(e));
            // Wait for the node's answer so that the message is stored or delivered.
            let _ = chat::pump(&mut c, &mut m, Duration::from_millis(500), clock);
            if m.unacknowledged() > 0 {
                eprintln!("not yet acknowledged by the node: it is sent again next time");
            }
        }
        ["send-file", name, path] => {
            let to = contact(&m, name);
            let mut c = connect();
            let f = std::fs::File::open(path).unwrap_or_else(|e| fail(format!("{path}: {e}")));
            let base = std::path::Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("file");
            chat::send_file(&mut c, &mut m, &to, base, f, clock).unwrap_or_else(|e| fail(e));
            let _ = chat::pump(&mut c, &mut m, Duration::from_millis(500), clock);
        }
        ["recv", flags @ ..] => {
            let mut wait = Duration::from_secs(1);
            let mut save_dir = None;
            let mut it = flags.iter();
            while let Some(f) = it.next() {
                match *f {
                    "--wait" => {
                        wait = Duration::from_secs_f64(
                            it.next()
                                .and_then(|v| v.parse().ok())
                                .unwrap_or_else(|| fail("--wait needs seconds")),
                        )
                    }
                    "--save-dir" => save_dir = it.next().map(PathBuf::from),
                    other => fail(format!("unknown flag {other}")),
                }
            }
            let mut c = connect();
            let s = chat::sync(&mut c, &mut m).unwrap_or_else(|e| fail(e));
            for msg in &s.messages {
                print(msg, save_dir.as_ref(), &mut c);
            }
            let s2 = chat::pump(&mut c, &mut m, wait, clock).unwrap_or_else(|e| fail(e));
            for msg in &s2.messages {
                print(msg, save_dir.as_ref(), &mut c);
            }
            if s.dropped + s2.dropped > 0 {
                eprintln!(
                    "{} packets did not authenticate: dropped",
                    s.dropped + s2.dropped
                );
            }
            let _ = chat::refill_prekeys(&mut c, &mut m);
        }
        ["chat", name] => {
            let to = contact(&m, name);
            let mut c = connect();
            let s = chat::sync(&mut c, &mut m).unwrap_or_else(|e| fail(e));
            for msg in &s.messages {
                print(msg, None, &mut c);
            }
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            eprintln!("chatting with {name}; end with Ctrl-D");
            loop {
                match rx.try_recv() {
                    Ok(line) => {
                        chat::send(&mut c, &mut m, &to, &Body::Data(line.into_bytes()), clock)
                            .unwrap_or_else(|e| fail(e));
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        // Let the last sends be acknowledged.
                        let _ = chat::pump(&mut c, &mut m, Duration::from_millis(500), clock);
                        break;
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                }
                let got = chat::pump(&mut c, &mut m, Duration::from_millis(100), clock)
                    .unwrap_or_else(|e| fail(e));
                for msg in &got.messages {
                    print(msg, None, &mut c);
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
        }
        _ => fail(USAGE),
    }
}
