//! Starts real `ferry` node processes for end-to-end tests and stops them on drop.

#![allow(dead_code, clippy::unwrap_used)] // test support: a failed set-up should panic loudly

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_proto::addr::NamespaceId;
use ferry_proto::conn::ClientEvent;
use ferry_sdk::{Client, Mailbox, SendStatus};

pub mod adversary;
pub mod push;

pub struct Node {
    child: Child,
    pub plain: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// The media HTTP listener, when `media.http_listen` is set.
    pub media_http: Option<SocketAddr>,
    pub dir: PathBuf,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    keep_dir: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Sends signal `sig` (`TERM`, `HUP`, …) to process `pid` with kill(1).
pub fn kill(sig: &str, pid: u32) {
    assert!(
        std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success()
    );
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("ferry-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

impl Node {
    /// Starts a node on ephemeral loopback ports with extra args and env, and waits for "ready".
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Node {
        Self::start_in(temp_dir("node"), args, env)
    }

    /// Kills the node (SIGKILL when `kill9`, else SIGTERM) and starts it again on the same data
    /// directory with the same arguments: new ephemeral ports.
    pub fn restart(mut self, kill9: bool) -> Node {
        if kill9 {
            self.kill();
        } else {
            let status = self.terminate();
            assert!(status.success(), "node did not stop cleanly: {status:?}");
        }
        let (dir, args, env) = (self.dir.clone(), self.args.clone(), self.env.clone());
        self.keep_dir = true;
        drop(self);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Self::start_in(dir, &args, &env)
    }

    pub fn start_in(dir: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Node {
        Self::start_wrapped(&[], dir, args, env)
    }

    /// Starts the node under `wrapper` (a program and its arguments, e.g. `strace -f`), which
    /// must exec `ferry run ...` as its child. Empty: the node itself.
    pub fn start_wrapped(
        wrapper: &[&str],
        dir: PathBuf,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let saved_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let saved_env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(ferry_bin());
                c
            }
            None => Command::new(ferry_bin()),
        };
        cmd.arg("run")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&dir)
            .args(args)
            .env_remove("FERRY_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ferry");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        {
            let mut err = child.stderr.take().unwrap();
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut plain, mut tls, mut admin, mut media_http) = (None, None, None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!(
                    "node did not become ready; stderr:\n{}",
                    stderr.lock().unwrap()
                ),
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["ferry", "listening", "plain", a] => plain = Some(a.parse().unwrap()),
                ["ferry", "listening", "tls", a] => tls = Some(a.parse().unwrap()),
                ["ferry", "listening", "admin", a] => admin = Some(a.parse().unwrap()),
                ["ferry", "listening", "media-http", a] => media_http = Some(a.parse().unwrap()),
                ["ferry", "ready", ..] => break,
                _ => {}
            }
        }
        Node {
            child,
            plain,
            tls,
            admin: admin.unwrap(),
            media_http,
            dir,
            stderr,
            args: saved_args,
            env: saved_env,
            keep_dir: false,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.plain.expect("plain listener")
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr()).expect("connect")
    }

    /// A client of a node whose clock a test moved (`--clock-offset-s`) by up to a day: as a
    /// device whose clock moved with it (the default refuses a node over
    /// `ferry_sdk::CLOCK_SKEW_S_MAX` off).
    pub fn client_moved_clock(&self) -> Client {
        let opts = ferry_sdk::ConnectOptions {
            clock_skew_s_max: 24 * 3600,
            ..Default::default()
        };
        Client::connect_with(self.addr(), &opts).expect("connect")
    }

    /// A client served by `shard` (connections are spread by the kernel; retry until one lands).
    pub fn client_on_shard(&self, shard: u16) -> Client {
        for _ in 0..400 {
            let c = self.client();
            if c.info().shard == shard {
                return c;
            }
        }
        panic!("no connection landed on shard {shard}");
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path)
    }

    /// The value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// The sum of a metric over its labels (`name{...} v` lines and a bare `name v`).
    pub fn metric_total(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let v = if rest.starts_with('{') {
                    rest.split_once("} ")?.1
                } else {
                    rest.strip_prefix(' ')?
                };
                v.trim().parse::<f64>().ok()
            })
            .sum()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process (or its wrapper) to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Sends SIGTERM and waits for exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn ns() -> NamespaceId {
    NamespaceId([0x42; 32])
}

/// A mailbox from a counter, so tests are reproducible.
pub fn mailbox(i: u32) -> Mailbox {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    seed[31] = 0xfe;
    Mailbox::from_seed(&seed, ns(), None)
}

/// A mailbox whose dest for `epoch` is owned by `shard` of `shards`.
pub fn mailbox_owned_by(shard: usize, shards: usize, epoch: u64, start: u32) -> (Mailbox, u32) {
    for i in start..start + 10_000 {
        let m = mailbox(i);
        if m.dest(epoch).unwrap().owner(shards) == shard {
            return (m, i);
        }
    }
    panic!("no mailbox for shard {shard}");
}

/// A certificate for "localhost" and its key, written as `cert.pem` and `key.pem` in `dir`, and
/// the CA a client trusts for it (`ca_pem`, also in the file `ca_path`).
pub struct TlsFiles {
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl TlsFiles {
    /// A self-signed certificate: its own CA (`ca_path` is `cert_path`).
    pub fn write(dir: &std::path::Path) -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        TlsFiles {
            ca_pem: cert.cert.pem(),
            ca_path: cert_path.clone(),
            cert_path,
            key_path,
        }
    }

    /// A CA (`ca.pem`) and a leaf certificate for "localhost" it signed (`cert.pem`: the leaf,
    /// then the CA), as a node on the internet has.
    pub fn write_ca_signed(dir: &std::path::Path) -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "ferry test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        let (ca_path, cert_path, key_path) = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        std::fs::write(&ca_path, ca.pem()).unwrap();
        std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
        TlsFiles {
            ca_pem: ca.pem(),
            ca_path,
            cert_path,
            key_path,
        }
    }

    /// Flags for a TLS listener on an ephemeral loopback port with this certificate.
    pub fn node_args(&self) -> Vec<String> {
        vec![
            "--listen-tls".into(),
            "127.0.0.1:0".into(),
            "--tls-cert".into(),
            self.cert_path.display().to_string(),
            "--tls-key".into(),
            self.key_path.display().to_string(),
        ]
    }

    /// Client options that trust exactly this certificate's CA (as written, even if the files
    /// are replaced since).
    pub fn client_opts(&self) -> ferry_sdk::ConnectOptions {
        ferry_sdk::ConnectOptions {
            trust: ferry_sdk::Trust::CaPem(self.ca_pem.clone().into_bytes()),
            ..Default::default()
        }
    }
}

/// The URL of a node's TLS listener at `addr`, by the name its test certificates carry.
pub fn tls_url(addr: SocketAddr) -> String {
    format!("ferry+tls://localhost:{}", addr.port())
}

/// `args` followed by `more`, as the `&[&str]` that [`Node::start`] takes.
pub fn args_with<'a>(args: &[&'a str], more: &'a [String]) -> Vec<&'a str> {
    args.iter()
        .copied()
        .chain(more.iter().map(String::as_str))
        .collect()
}

/// Raises this process's open-files soft limit to `want` (at most the hard limit, which a test
/// cannot raise) so that it can hold many client sockets; returns the hard limit.
pub fn raise_nofile(want: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let r = getrlimit(Resource::Nofile);
    let hard = r.maximum.unwrap_or(u64::MAX);
    if r.current.is_some_and(|soft| soft < want) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want.min(hard)),
                maximum: r.maximum,
            },
        );
    }
    hard
}

/// Flushes `tx` and waits (each read up to `wait`) for the `SendResult` of `msg_id`; other send
/// results and pongs are passed over, any other event panics.
pub fn send_result(tx: &mut Client, msg_id: u64, wait: Duration) -> SendStatus {
    tx.flush().unwrap();
    loop {
        match tx.recv(wait).unwrap() {
            ClientEvent::SendResult {
                msg_id: m, status, ..
            } if m == msg_id => return status,
            ClientEvent::SendResult { .. } | ClientEvent::Pong { .. } => {}
            other => panic!("{other:?}"),
        }
    }
}
