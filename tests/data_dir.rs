//! What one node owns alone: its data directory (locked, owner-only, every file 0600) and its
//! listen addresses (a second process on one of them is refused, not given a share of the
//! connections through `SO_REUSEPORT`).

#![allow(clippy::unwrap_used)] // test helpers panic on failed set-up

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, TlsFiles, ferry_bin, mailbox, temp_dir};
use ferry_proto::conn::ClientEvent;
use ferry_proto::frame::{PushProvider, SendStatus};

const WAIT: Duration = Duration::from_secs(30);

/// Runs `ferry run ...` and returns its stderr once it exits, which it must, unsuccessfully:
/// a node that prints "ferry ready" instead is killed and the test fails.
fn refused(args: &[String], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(ferry_bin());
    cmd.arg("run")
        .args(args)
        .env_remove("FERRY_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(!status.success(), "{args:?} exited 0");
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
            if line.starts_with("ferry ready") {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?} started anyway: {line}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} neither served nor exited"
        );
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn a_second_node_on_the_same_data_directory_is_refused_naming_the_first() {
    let node = Node::start(&["--shards", "1"], &[]);
    let mut args = strings(&[
        "--shards",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
    ]);
    args.push(node.dir.display().to_string());
    let err = refused(&args, &[]);
    assert!(
        err.contains("is in use by another ferry node")
            && err.contains(&format!("(pid {},", node.pid())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // The first node is unaffected, and the lock goes with its process, even on kill -9.
    node.client().ping(1).unwrap();
    let node = node.restart(true);
    node.client().ping(2).unwrap();
}

#[test]
fn a_listen_address_another_process_serves_is_refused() {
    let certs = temp_dir("busy-tls");
    let tls = TlsFiles::write(&certs);
    let first = Node::start(
        &["--shards", "2"],
        &[("FERRY_MEDIA_HTTP_LISTEN", "127.0.0.1:0")],
    );
    let (plain, admin, media) = (first.addr(), first.admin, first.media_http.unwrap());
    // A socket of another program (no SO_REUSEPORT) counts as well.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = other.local_addr().unwrap();
    let free = "127.0.0.1:0".to_string();
    /// A second node whose `key` listener is `busy`.
    struct Case {
        key: &'static str,
        busy: std::net::SocketAddr,
        args: Vec<String>,
        media_http: Option<String>,
    }
    let case = |key, busy: std::net::SocketAddr, args: &[&str]| Case {
        key,
        busy,
        args: strings(args),
        media_http: None,
    };
    let (plain_s, other_s, admin_s) = (plain.to_string(), other.to_string(), admin.to_string());
    let (cert, key) = (
        tls.cert_path.to_str().unwrap(),
        tls.key_path.to_str().unwrap(),
    );
    let cases = [
        case(
            "listen",
            plain,
            &["--listen", &plain_s, "--admin-listen", &free],
        ),
        case(
            "listen",
            other,
            &["--listen", &other_s, "--admin-listen", &free],
        ),
        case(
            "listen_tls",
            plain,
            &[
                "--listen",
                &free,
                "--admin-listen",
                &free,
                "--listen-tls",
                &plain_s,
                "--tls-cert",
                cert,
                "--tls-key",
                key,
            ],
        ),
        case(
            "admin_listen",
            admin,
            &["--listen", &free, "--admin-listen", &admin_s],
        ),
        Case {
            media_http: Some(media.to_string()),
            ..case(
                "media.http_listen",
                media,
                &["--listen", &free, "--admin-listen", &free],
            )
        },
    ];
    for Case {
        key,
        busy,
        mut args,
        media_http,
    } in cases
    {
        let dir = temp_dir("busy");
        args.extend(strings(&[
            "--shards",
            "2",
            "--data-dir",
            dir.to_str().unwrap(),
        ]));
        let env: Vec<(&str, &str)> = media_http
            .iter()
            .map(|m| ("FERRY_MEDIA_HTTP_LISTEN", m.as_str()))
            .collect();
        let err = refused(&args, &env);
        assert!(
            err.contains(&format!(
                "{key} {busy} is already in use by another process"
            )),
            "{key}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Every connection still reaches the first node.
    for i in 0..16 {
        let mut c = first.client();
        assert_eq!(c.info().node_id, first.client().info().node_id);
        c.ping(i).unwrap();
    }
    let _ = std::fs::remove_dir_all(&certs);
}

/// Every directory and file under `dir`, with its permission bits.
fn modes(dir: &Path, out: &mut Vec<(PathBuf, u32, bool)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), meta.permissions().mode() & 0o777, meta.is_dir()));
        if meta.is_dir() {
            modes(&p, out);
        }
    }
}

/// A run that stores blobs, uploads media, publishes prekeys and registers a push token under
/// the usual umask 022 leaves nothing that group or others can read: the data directory (which
/// existed, mode 0755) and every directory under it 0700, every file 0600.
#[test]
fn the_data_directory_is_private_and_every_file_in_it_is_0600() {
    use ferry_sdk::chat;
    use ferry_sdk::messenger::{MemoryStorage, Messenger};
    use p256::pkcs8::{EncodePrivateKey, LineEnding};

    let parent = temp_dir("private");
    let data = parent.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let apns_key = parent.join("apns.p8");
    let sk = p256::SecretKey::random(&mut rand_core::OsRng);
    std::fs::write(
        &apns_key,
        sk.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let env = [
        ("FERRY_PUSH_APNS_KEY_FILE", apns_key.to_str().unwrap()),
        ("FERRY_PUSH_APNS_KEY_ID", "KEYID12345"),
        ("FERRY_PUSH_APNS_TEAM_ID", "TEAM123456"),
        ("FERRY_PUSH_APNS_TOPIC", "org.example.chat"),
        // Nothing is stored for the registered dests, so no wake is sent.
        ("FERRY_PUSH_APNS_URL", "https://127.0.0.1:9"),
    ];
    let mut node = Node::start_wrapped(
        &["sh", "-c", "umask 022 && exec \"$0\" \"$@\""],
        data.clone(),
        &["--shards", "2"],
        &env,
    );

    // Blobs for an offline recipient: store segments on its owner shard.
    let mut tx = node.client();
    let dest = mailbox(1).dest(tx.epoch()).unwrap();
    for i in 0..5u64 {
        tx.send(
            dest,
            i,
            ferry_proto::frame::FLAG_ACK,
            b"stored while offline",
        );
    }
    tx.flush().unwrap();
    let mut stored = 0;
    while stored < 5 {
        if let ClientEvent::SendResult { status, .. } = tx.recv(WAIT).unwrap() {
            assert_eq!(status, SendStatus::Accepted);
            stored += 1;
        }
    }
    // Media: blob and metadata files.
    let (sealed, _key) = tx.encrypt_and_upload(&[7u8; 200_000][..]).unwrap();
    assert!(sealed.ciphertext_bytes > 200_000);
    // Prekeys and a push registration: the service core's journals.
    let mut bob = Messenger::open(MemoryStorage::default(), common::ns()).unwrap();
    chat::Sender::new(&format!("ferry://{}", node.addr()), Default::default())
        .publish_prekeys(&mut bob, 3)
        .unwrap();
    let token = "aaaaaaaa00000000000000000000000000000000000000000000000000000001";
    assert!(
        chat::register_push(&mut tx, &bob, PushProvider::Apns, token.as_bytes(), 1, true).unwrap()
            > 0
    );
    drop(tx);
    assert!(node.terminate().success());
    let stderr = node.stderr.lock().unwrap().clone();
    assert!(
        stderr.contains("was mode 0755, open to other users; changed it to 0700"),
        "{stderr}"
    );

    let data_mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(data_mode, 0o700, "the data directory");
    let mut all = Vec::new();
    modes(&data, &mut all);
    for sub in ["store", "media", "service"] {
        assert!(
            all.iter()
                .any(|(p, _, dir)| !dir && p.starts_with(data.join(sub))),
            "the run wrote no file under {sub}/: {all:?}"
        );
    }
    assert!(all.iter().any(|(p, _, _)| p.ends_with("node.key")));
    for (path, mode, dir) in &all {
        let want = if *dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:04o}", path.display());
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&parent);
}
