//! An adversarial node for linkability tests: a TCP proxy between SDK clients and a real node
//! that decodes every frame in both directions, keeps a node observation log (connection, frame
//! type, dest, envelope hash, time) and misbehaves on command: withholds `SendResult`s, lies
//! about the clock in `ServerHello` and `Challenge`, answers `Congested` itself for chosen dests
//! (the `Send` never reaches the node). What it logs is what any node can see of plain frames;
//! the tests ask of the log what a curious node would.
//!
//! Frames are decoded and re-encoded one by one (the codec round-trips exactly, its proptests say
//! so), so a rewritten frame keeps the stream's framing. TLS connections are not decoded: point a
//! [`Adversary::counting`] proxy at a TLS listener to count bytes and connections only.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use ferry_proto::frame::{Dest, Frame, SendStatus, decode_frame};

/// Which way a frame went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    ToNode,
    ToClient,
}

/// One frame the node saw (or would have seen) on a connection.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The proxy's connection number, from 0 in accept order.
    pub conn: u64,
    pub dir: Dir,
    /// The frame's variant name (`Send`, `Prove`, `PrekeyFetch`, …).
    pub kind: String,
    /// The dests the frame names (a `Prove` names each proven dest).
    pub dests: Vec<Dest>,
    /// blake3 of a `Send`'s or `Deliver`'s payload: the same bytes have the same hash.
    pub envelope: Option<[u8; 32]>,
    /// The node time a `ServerHello` or `Challenge` carried (after any rewriting).
    pub unix_time_s: Option<u64>,
    pub at: Instant,
}

/// What the adversary does to the frames it passes.
#[derive(Clone, Debug, Default)]
pub struct Misbehaviour {
    /// Drop every `SendResult` on its way to the client.
    pub withhold_send_results: bool,
    /// Seconds added to the node time in `ServerHello` and `Challenge` (a lying clock).
    pub clock_lie_s: i64,
    /// `Send`s to these dests are answered `Congested` by the proxy and not forwarded.
    pub congested: BTreeSet<Dest>,
}

#[derive(Default)]
struct State {
    log: Vec<Seen>,
    misbehaviour: Misbehaviour,
    connections: u64,
    /// Bytes forwarded in each direction (to the node, to the client).
    bytes: (u64, u64),
    /// Every byte a counting proxy forwarded, both directions, in arrival order.
    raw: Vec<u8>,
}

/// The proxy; lives as long as the test (its threads end with the process).
#[derive(Clone)]
pub struct Adversary {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    state: Arc<Mutex<State>>,
}

impl Adversary {
    /// A decoding, logging, misbehaving proxy in front of a plain listener.
    pub fn start(upstream: SocketAddr) -> Adversary {
        Self::spawn(upstream, true)
    }

    /// A proxy that only counts connections and bytes (for a TLS listener).
    pub fn counting(upstream: SocketAddr) -> Adversary {
        Self::spawn(upstream, false)
    }

    fn spawn(upstream: SocketAddr, decode: bool) -> Adversary {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = Adversary {
            addr: listener.local_addr().unwrap(),
            upstream: Arc::new(Mutex::new(upstream)),
            state: Arc::default(),
        };
        let me = a.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let up = *me.upstream.lock().unwrap();
                let Ok(node) = TcpStream::connect(up) else {
                    continue;
                };
                let conn = {
                    let mut st = me.state.lock().unwrap();
                    st.connections += 1;
                    st.connections - 1
                };
                let _ = client.set_nodelay(true);
                let _ = node.set_nodelay(true);
                let to_client = Arc::new(Mutex::new(client.try_clone().unwrap()));
                for dir in [Dir::ToNode, Dir::ToClient] {
                    let (from, to) = match dir {
                        Dir::ToNode => (client.try_clone().unwrap(), node.try_clone().unwrap()),
                        Dir::ToClient => (node.try_clone().unwrap(), client.try_clone().unwrap()),
                    };
                    let me = me.clone();
                    let to_client = to_client.clone();
                    std::thread::spawn(move || me.pump(conn, dir, from, to, to_client, decode));
                }
            }
        });
        a
    }

    /// Sends later connections to another node (a restarted one on new ports).
    pub fn retarget(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    pub fn set(&self, m: Misbehaviour) {
        self.state.lock().unwrap().misbehaviour = m;
    }

    pub fn log(&self) -> Vec<Seen> {
        self.state.lock().unwrap().log.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.lock().unwrap().connections
    }

    /// Bytes forwarded so far: (to the node, to the client).
    pub fn bytes(&self) -> (u64, u64) {
        self.state.lock().unwrap().bytes
    }

    /// Whether any connection carried `needle` in either direction (a counting proxy keeps a
    /// copy of everything it forwarded).
    pub fn carried(&self, needle: &[u8]) -> bool {
        self.state
            .lock()
            .unwrap()
            .raw
            .windows(needle.len())
            .any(|w| w == needle)
    }

    /// `plain` is the node's plain URL for SDK clients: `ferry://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ferry://{}", self.addr)
    }

    fn pump(
        &self,
        conn: u64,
        dir: Dir,
        mut from: TcpStream,
        mut to: TcpStream,
        to_client: Arc<Mutex<TcpStream>>,
        decode: bool,
    ) {
        let mut buf = vec![0u8; 1 << 16];
        let mut pending = BytesMut::new();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown(std::net::Shutdown::Both);
                    return;
                }
                Ok(n) => n,
            };
            {
                let mut st = self.state.lock().unwrap();
                match dir {
                    Dir::ToNode => st.bytes.0 += n as u64,
                    Dir::ToClient => st.bytes.1 += n as u64,
                }
                if !decode {
                    st.raw.extend_from_slice(&buf[..n]);
                }
            }
            if !decode {
                let w = if dir == Dir::ToClient {
                    to_client.lock().unwrap().write_all(&buf[..n])
                } else {
                    to.write_all(&buf[..n])
                };
                if w.is_err() {
                    return;
                }
                continue;
            }
            pending.extend_from_slice(&buf[..n]);
            loop {
                let frame = match decode_frame(&mut pending) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(_) => {
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                };
                let (forward, answer) = self.observe(conn, dir, frame);
                let mut out = BytesMut::new();
                if let Some(f) = forward {
                    f.encode(&mut out);
                    let w = if dir == Dir::ToClient {
                        to_client.lock().unwrap().write_all(&out)
                    } else {
                        to.write_all(&out)
                    };
                    if w.is_err() {
                        return;
                    }
                }
                if let Some(a) = answer {
                    let mut out = BytesMut::new();
                    a.encode(&mut out);
                    if to_client.lock().unwrap().write_all(&out).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Logs a frame; returns what to forward and what to answer the client directly.
    fn observe(&self, conn: u64, dir: Dir, frame: Frame) -> (Option<Frame>, Option<Frame>) {
        let mut st = self.state.lock().unwrap();
        let m = st.misbehaviour.clone();
        let lie = |t: u64| t.saturating_add_signed(m.clock_lie_s);
        let mut envelope = None;
        let mut unix_time_s = None;
        let mut dests = Vec::new();
        let mut answer = None;
        let kind = format!("{frame:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or("")
            .to_string();
        let forward = match frame {
            Frame::ServerHello {
                version,
                shard,
                node_id,
                challenge,
                unix_time_s: t,
                frame_bytes_max,
            } => {
                unix_time_s = Some(lie(t));
                Some(Frame::ServerHello {
                    version,
                    shard,
                    node_id,
                    challenge,
                    unix_time_s: lie(t),
                    frame_bytes_max,
                })
            }
            Frame::Challenge {
                challenge,
                unix_time_s: t,
            } => {
                unix_time_s = Some(lie(t));
                Some(Frame::Challenge {
                    challenge,
                    unix_time_s: lie(t),
                })
            }
            Frame::Send {
                dest,
                msg_id,
                ref payload,
                ..
            } => {
                dests.push(dest);
                envelope = Some(*blake3::hash(payload).as_bytes());
                if m.congested.contains(&dest) {
                    answer = Some(Frame::SendResult {
                        dest,
                        msg_id,
                        status: SendStatus::Congested,
                    });
                    None
                } else {
                    Some(frame)
                }
            }
            Frame::Deliver {
                dest, ref payload, ..
            } => {
                dests.push(dest);
                envelope = Some(*blake3::hash(payload).as_bytes());
                Some(frame)
            }
            Frame::SendResult { dest, .. } => {
                dests.push(dest);
                (!m.withhold_send_results).then_some(frame)
            }
            Frame::Prove { ref items } => {
                dests.extend(items.iter().map(|i| i.dest));
                Some(frame)
            }
            Frame::Subscribe { dests: ref d }
            | Frame::Unsubscribe { dests: ref d }
            | Frame::Query { dests: ref d } => {
                dests.extend(d.iter().copied());
                Some(frame)
            }
            Frame::Drain { dest }
            | Frame::PrekeyFetch { dest, .. }
            | Frame::PrekeyCount { dest } => {
                dests.push(dest);
                Some(frame)
            }
            Frame::PrekeyUpload { ref upload } => {
                dests.push(upload.dest);
                Some(frame)
            }
            Frame::PushRegister { dests: ref d, .. } => {
                dests.extend(d.iter().copied());
                Some(frame)
            }
            other => Some(other),
        };
        st.log.push(Seen {
            conn,
            dir,
            kind,
            dests,
            envelope,
            unix_time_s,
            at: Instant::now(),
        });
        (forward, answer)
    }
}
