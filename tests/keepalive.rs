//! A client that vanishes without a FIN is forgotten by the node through TCP keepalive alone:
//! with node pings and the idle timeout off (the defaults), the kernel's unanswered probes fail
//! the socket and the shard closes the connection. The client lives in a network namespace made
//! here and joined to the node's by a veth pair; taking its end of the pair down makes it vanish
//! (the node's probes are dropped, nothing answers, no RST comes back).

#![allow(clippy::unwrap_used)] // test set-up panics loudly
#![allow(unsafe_code)] // setns(2) on one thread, to make a socket inside the namespace

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Node;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace with one veth pair to the test's own; removed on drop.
struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    host_addr: String,
    ns_addr: String,
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id() % 100_000;
        let n = Netns {
            name: format!("ferry-ka-{id}"),
            host_if: format!("fka{id}h"),
            ns_if: format!("fka{id}n"),
            // A /30 of 10.203.0.0/16 picked by pid: only on this veth pair, in this namespace.
            host_addr: format!("10.203.{}.{}", (id / 64) % 256, (id % 64) * 4 + 1),
            ns_addr: format!("10.203.{}.{}", (id / 64) % 256, (id % 64) * 4 + 2),
        };
        let steps: [&[&str]; 8] = [
            &["netns", "add", &n.name],
            &[
                "link", "add", &n.host_if, "type", "veth", "peer", "name", &n.ns_if,
            ],
            &["link", "set", &n.ns_if, "netns", &n.name],
            &[
                "addr",
                "add",
                &format!("{}/30", n.host_addr),
                "dev",
                &n.host_if,
            ],
            &["link", "set", &n.host_if, "up"],
            &[
                "-n",
                &n.name,
                "addr",
                "add",
                &format!("{}/30", n.ns_addr),
                "dev",
                &n.ns_if,
            ],
            &["-n", &n.name, "link", "set", &n.ns_if, "up"],
            &["-n", &n.name, "link", "set", "lo", "up"],
        ];
        for s in steps {
            assert!(
                ip(s),
                "ip {} failed: this test needs root and iproute2 (tests create their own \
                 network namespaces)",
                s.join(" ")
            );
        }
        n
    }

    /// Connects to `to` from inside the namespace (a thread enters it, makes the socket, and
    /// leaves; the socket stays in the namespace it was made in).
    fn connect(&self, to: SocketAddr) -> TcpStream {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            // SAFETY: setns on this thread only, with a namespace file it holds open.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
}

#[test]
fn a_vanished_client_is_forgotten_through_tcp_keepalive() {
    let ns = Netns::new();
    let listen = format!("{}:0", ns.host_addr);
    let node = Node::start(
        &["--listen", &listen],
        &[
            ("FERRY_INSECURE_PLAINTEXT", "true"),
            // Seconds instead of minutes; node pings and the idle timeout keep their default: off.
            ("FERRY_LIMITS_TCP_KEEPALIVE_IDLE_MS", "1000"),
            ("FERRY_LIMITS_TCP_KEEPALIVE_INTERVAL_MS", "1000"),
            ("FERRY_LIMITS_TCP_KEEPALIVE_PROBES", "2"),
            ("FERRY_LIMITS_TCP_USER_TIMEOUT_MS", "0"),
        ],
    );
    let addr = node.addr();
    assert_eq!(
        addr.ip().to_string(),
        ns.host_addr,
        "the node listens on the veth pair"
    );

    let mut client = ns.connect(addr);
    let mut cc = ferry_proto::conn::ClientConn::new();
    client.write_all(&cc.take_output().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.metric("ferry_connections_open") != 1 {
        assert!(
            Instant::now() < deadline,
            "the client never counted as open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Silent but present: its kernel answers the probes, so it stays (4 probe intervals).
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        node.metric("ferry_connections_open"),
        1,
        "a silent client was dropped"
    );

    // It vanishes: its end of the pair goes down, the node's probes go unanswered, and within
    // idle + probes × interval (3 s here) the node forgets it.
    assert!(ip(&["-n", &ns.name, "link", "set", &ns.ns_if, "down"]));
    let gone = Instant::now();
    while node.metric("ferry_connections_open") != 0 {
        assert!(
            gone.elapsed() < Duration::from_secs(15),
            "the vanished client is still open after {:?}",
            gone.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(client);
}
