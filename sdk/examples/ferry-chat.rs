//! `ferry-chat`: end-to-end encrypted chat through a ferry node, one identity per state
//! directory. Two terminals, two identities:
//!
//! ```text
//! A$ alias ferry-chat='ferry-chat --node ferry+tls://relay.example:7443'  # the node, by URL
//! A$ ferry-chat --state alice init            # prints alice's address, publishes her prekeys
//! B$ ferry-chat --state bob init              # prints bob's address
//! A$ ferry-chat --state alice add bob ferry:…  # bob's address, given out of band
//! A$ ferry-chat --state alice send bob "hello" # first contact through bob's prekeys
//! B$ ferry-chat --state bob recv              # bob was offline: drained from the node's store
//!                                             # (a request unless bob added alice: accept it)
//! B$ ferry-chat --state bob chat alice        # interactive: lines typed go to alice
//! A$ ferry-chat --state alice send-file bob photo.jpg
//! B$ ferry-chat --state bob recv              # "alice sent file photo.jpg …": kept, not fetched
//! B$ ferry-chat --state bob fetch --all --save-dir ~/Downloads
//! ```
//!
//! The node only ever sees sealed envelopes addressed to rotating dests, and ciphertext blobs.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_sdk::chat;
use ferry_sdk::messenger::{Address, Body, DirStorage, Incoming, Messenger};
use ferry_sdk::{Client, ConnectOptions, NamespaceId, Trust};

/// The example application's namespace id (a real application builds its own into its SDK
/// configuration).
const EXAMPLE_NS: [u8; 32] = *b"ferry-chat example namespace v1!";

const USAGE: &str = "usage: ferry-chat [--node URL] [--tls-ca PEM] --state DIR COMMAND
  --node URL              ferry+tls://HOST[:PORT] (TLS, port 7443 by default) or
                          ferry://HOST[:PORT] (plain TCP, port 7700); default
                          ferry://127.0.0.1:7700
  --tls-ca PEM            the CA (or self-signed certificate) a TLS node's certificate must
                          chain to; default: the public CAs (Mozilla's list)
commands:
  init                    create this identity (if new), publish prekeys, print the address
  address                 print the address
  add NAME ADDRESS        add a contact
  contacts                list contacts
  requests                strangers whose first contact waits: ID and address
  accept ID NAME          make request ID a contact named NAME (then you can answer)
  refuse ID               refuse request ID: its messages are dropped from now on
  send NAME TEXT          send a message
  send-file NAME PATH     encrypt a file, upload it to media storage, send it
  recv [--wait SECS] [--save-dir DIR]
                          fetch what is stored, then wait for live messages (default 1 s);
                          files are saved in DIR, or kept for `fetch` without it
  fetch [ID | --all] [--save-dir DIR]
                          files received and not fetched yet: listed without ID or --all;
                          else downloaded into DIR (needed then)
  chat NAME               interactive: each line read is sent; messages are printed as they come";

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("ferry-chat: {msg}");
    std::process::exit(1);
}

struct Opts {
    node: String,
    connect: ConnectOptions,
    state: PathBuf,
    ns: NamespaceId,
    rest: Vec<String>,
}

fn opts() -> Opts {
    let mut args = std::env::args().skip(1);
    let mut node = "ferry://127.0.0.1:7700".to_string();
    let mut connect = ConnectOptions::default();
    let mut state = None;
    let mut ns = NamespaceId(EXAMPLE_NS);
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--node" => {
                node = args
                    .next()
                    .unwrap_or_else(|| fail("--node needs a URL (ferry+tls://HOST:PORT)"))
            }
            "--tls-ca" => {
                connect.trust = Trust::CaFile(
                    args.next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| fail("--tls-ca needs a PEM file")),
                )
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
    // A URL that does not parse fails here, whatever the command.
    if let Err(e) = node.parse::<ferry_sdk::NodeUrl>() {
        fail(e);
    }
    Opts {
        node,
        connect,
        state: state.unwrap_or_else(|| fail(USAGE)),
        ns,
        rest,
    }
}

/// The short id a kept attachment is shown and fetched by: the message id's first 4 bytes.
fn short_id(msg_id: &[u8; 16]) -> String {
    msg_id[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn full_id(msg_id: &[u8; 16]) -> String {
    msg_id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The identity of the request whose ID (its name until accepted) is `id`.
fn request(m: &Messenger<DirStorage>, id: &str) -> [u8; 33] {
    m.requests()
        .find(|p| p.name == id)
        .map(|p| p.identity)
        .unwrap_or_else(|| fail(format!("no request {id} (ferry-chat requests lists them)")))
}

/// Prints a message that arrived. With `save_dir` an attachment is fetched into it (and
/// forgotten); without, or if that fails, it stays kept for `fetch`.
fn print(
    m: &Incoming,
    save_dir: Option<&Path>,
    client: &mut Client,
    msgr: &mut Messenger<DirStorage>,
) {
    if m.request {
        println!(
            "(a request from a stranger, ID {}: ferry-chat accept {} NAME, or refuse {})",
            m.from_name, m.from_name, m.from_name
        );
    }
    match &m.body {
        Body::Data(d) => println!("{}: {}", m.from_name, String::from_utf8_lossy(d)),
        Body::Attachment {
            name,
            plaintext_bytes,
            ..
        // A request's file is never fetched by itself: kept until the user decides.
        } => match save_dir.filter(|_| !m.request) {
            None => println!(
                "{} sent file {name} ({plaintext_bytes} bytes; kept: ferry-chat fetch {} \
                 --save-dir DIR)",
                m.from_name,
                short_id(&m.msg_id)
            ),
            Some(dir) => match save(client, msgr, m, dir) {
                Ok(path) => println!(
                    "{} sent file {name} ({plaintext_bytes} bytes) saved {}",
                    m.from_name,
                    path.display()
                ),
                Err(e) => println!(
                    "{} sent file {name}: not saved ({e}); kept: ferry-chat fetch {}",
                    m.from_name,
                    short_id(&m.msg_id)
                ),
            },
        },
    }
}

/// Fetches kept attachment `m` into `dir` under its own name (the name only: a sender must not
/// choose where it lands), never over an existing file, and forgets it. A failed download
/// leaves no file behind and the attachment kept.
fn save(
    client: &mut Client,
    msgr: &mut Messenger<DirStorage>,
    m: &Incoming,
    dir: &Path,
) -> Result<PathBuf, String> {
    let Body::Attachment { name, .. } = &m.body else {
        return Err("not a file".into());
    };
    let base = Path::new(name)
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_os_string());
    let path = dir.join(&base);
    if path.exists() {
        return Err(format!("{} exists", path.display()));
    }
    let part = dir.join(format!(".{}.part", full_id(&m.msg_id)));
    let result = (|| {
        let f = std::fs::File::create(&part).map_err(|e| format!("{}: {e}", part.display()))?;
        let mut w = std::io::BufWriter::new(f);
        chat::fetch_file(client, &m.body, &mut w).map_err(|e| e.to_string())?;
        let f = w.into_inner().map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
        // A hard link fails if the name was taken meanwhile: nothing is overwritten.
        std::fs::hard_link(&part, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Forgotten only once the whole file is in place.
        msgr.forget_attachment(&m.msg_id).map_err(|e| e.to_string())
    })();
    let _ = std::fs::remove_file(&part);
    result.map(|()| path)
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
    let connect = || Client::connect_url(&o.node, &o.connect).unwrap_or_else(|e| fail(e));
    // Sends and prekey fetches go on connections of their own, which never prove.
    let mut sender = chat::Sender::new(&o.node, o.connect.clone());
    let rest: Vec<&str> = o.rest.iter().map(String::as_str).collect();
    match rest.as_slice() {
        ["init"] => {
            // Publishes the days' slots the node lacks (a week ahead) and tops today's up, each
            // slot on a connection of its own.
            let first = !m.has_prekeys();
            sender.refill_prekeys(&mut m).unwrap_or_else(|e| fail(e));
            if first {
                eprintln!("prekeys published");
            }
            println!("{}", m.address());
        }
        ["address"] => println!("{}", m.address()),
        ["add", name, address] => {
            let a: Address = address.parse().unwrap_or_else(|e| fail(e));
            m.add_contact(name, &a).unwrap_or_else(|e| fail(e));
        }
        ["requests"] => {
            for p in m.requests() {
                let a = Address {
                    mailbox: p.mailbox,
                    identity: p.identity,
                };
                println!("{} {a}", p.name);
            }
        }
        ["accept", id, name] => {
            let p = request(&m, id);
            m.accept_request(&p, name).unwrap_or_else(|e| fail(e));
        }
        ["refuse", id] => {
            let p = request(&m, id);
            m.refuse_request(&p).unwrap_or_else(|e| fail(e));
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
            // Earlier messages the node has not acknowledged go first, each to the dest of its
            // first send (nothing is drained here: `recv` shows what arrived). The send waits
            // for the node's answer so that the message is stored or delivered.
            if m.unacknowledged() > 0 {
                let c = connect();
                sender
                    .resend(&mut m, c.node_unix_s(), clock)
                    .unwrap_or_else(|e| fail(e));
            }
            sender
                .send(&mut m, &to, &Body::Data(text.as_bytes().to_vec()), clock)
                .unwrap_or_else(|e| fail(e));
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
            chat::send_file(&mut c, &mut sender, &mut m, &to, base, f, clock)
                .unwrap_or_else(|e| fail(e));
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
            let s = chat::sync(&mut c, &mut sender, &mut m, clock).unwrap_or_else(|e| fail(e));
            for msg in &s.messages {
                print(msg, save_dir.as_deref(), &mut c, &mut m);
            }
            let s2 =
                chat::pump(&mut c, &mut sender, &mut m, wait, clock).unwrap_or_else(|e| fail(e));
            for msg in &s2.messages {
                print(msg, save_dir.as_deref(), &mut c, &mut m);
            }
            if s.dropped + s2.dropped > 0 {
                eprintln!(
                    "{} packets did not authenticate: dropped",
                    s.dropped + s2.dropped
                );
            }
            let _ = sender.refill_prekeys(&mut m);
        }
        ["fetch", flags @ ..] => {
            let mut which = None;
            let mut all = false;
            let mut save_dir = None;
            let mut it = flags.iter();
            while let Some(f) = it.next() {
                match *f {
                    "--all" => all = true,
                    "--save-dir" => save_dir = it.next().map(PathBuf::from),
                    other if other.starts_with('-') => fail(format!("unknown flag {other}")),
                    id => which = Some(id.to_ascii_lowercase()),
                }
            }
            let kept = m.attachments().unwrap_or_else(|e| fail(e));
            if which.is_none() && !all {
                for a in &kept {
                    if let Body::Attachment {
                        name,
                        plaintext_bytes,
                        ..
                    } = &a.body
                    {
                        println!(
                            "{} {} {name} ({plaintext_bytes} bytes)",
                            short_id(&a.msg_id),
                            a.from_name
                        );
                    }
                }
                return;
            }
            let dir = save_dir.unwrap_or_else(|| fail("fetch needs --save-dir DIR"));
            let chosen: Vec<&Incoming> = match &which {
                Some(id) => {
                    let hits: Vec<&Incoming> = kept
                        .iter()
                        .filter(|a| full_id(&a.msg_id).starts_with(id.as_str()))
                        .collect();
                    match hits.len() {
                        0 => fail(format!("no file kept with id {id} (see ferry-chat fetch)")),
                        1 => hits,
                        _ => fail(format!("id {id} names several files: give more digits")),
                    }
                }
                None => kept.iter().collect(),
            };
            if chosen.is_empty() {
                return;
            }
            let mut c = connect();
            let mut failed = false;
            for a in chosen {
                let Body::Attachment { name, .. } = &a.body else {
                    continue;
                };
                match save(&mut c, &mut m, a, &dir) {
                    Ok(path) => println!("{} {name} saved {}", short_id(&a.msg_id), path.display()),
                    Err(e) => {
                        eprintln!(
                            "{} {name}: not saved ({e}); still kept",
                            short_id(&a.msg_id)
                        );
                        failed = true;
                    }
                }
            }
            if failed {
                std::process::exit(1);
            }
        }
        ["chat", name] => {
            let to = contact(&m, name);
            let mut c = connect();
            let s = chat::sync(&mut c, &mut sender, &mut m, clock).unwrap_or_else(|e| fail(e));
            for msg in &s.messages {
                print(msg, None, &mut c, &mut m);
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
                        sender
                            .send(&mut m, &to, &Body::Data(line.into_bytes()), clock)
                            .unwrap_or_else(|e| fail(e));
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        // Let the last sends be acknowledged.
                        let _ = chat::pump(
                            &mut c,
                            &mut sender,
                            &mut m,
                            Duration::from_millis(500),
                            clock,
                        );
                        break;
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                }
                let got = chat::pump(
                    &mut c,
                    &mut sender,
                    &mut m,
                    Duration::from_millis(100),
                    clock,
                )
                .unwrap_or_else(|e| fail(e));
                for msg in &got.messages {
                    print(msg, None, &mut c, &mut m);
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
        }
        _ => fail(USAGE),
    }
}
