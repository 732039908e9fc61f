//! The connection and its session: connecting (plain or TLS) and the node's hello, the challenge
//! and the node's clock, the event pump every blocking call waits on, proofs, subscriptions and
//! push registration, and taking the connection apart.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime};

use ferry_proto::addr::{BlindedSigner, epoch_of};
use ferry_proto::conn::{ClientConn, ClientEvent};
use ferry_proto::frame::{Dest, ErrorCode, Frame, Op, ProofItem, ProofStatus, SubscribeStatus};
use ferry_proto::limits::{DESTS_PER_FRAME_MAX, PROOFS_PER_FRAME_MAX};

use crate::{
    Client, ConnectOptions, Mailbox, NODE_UNIX_S_MAX, NodeInfo, NodeUrl, PENDING_EVENTS_MAX,
    PUZZLE_EFFORT_DEFAULT_MAX, Parts, SdkError, Stream, endpoint, local_unix_s,
};

impl Client {
    /// Plain TCP to an address (loopback tests; applications use [`Client::connect_url`]).
    pub fn connect(addr: SocketAddr) -> Result<Client, SdkError> {
        Self::connect_with(addr, &ConnectOptions::default())
    }

    /// Plain TCP to an address with `opts`' timeout and clock-skew bound (loopback tests).
    pub fn connect_with(addr: SocketAddr, opts: &ConnectOptions) -> Result<Client, SdkError> {
        let tcp = TcpStream::connect_timeout(&addr, opts.timeout)?;
        Self::start(tcp, None, opts)
    }

    /// Plain TCP over a socket the caller connected (bound to a chosen source address, say):
    /// says hello and returns once the node's hello has arrived.
    pub fn over_tcp(tcp: TcpStream) -> Result<Client, SdkError> {
        Self::start(tcp, None, &ConnectOptions::default())
    }

    /// Connects to the node at `url` ([`NodeUrl`]): `ferry+tls://host[:port]` is TLS 1.3 with
    /// the certificate checked against `opts.trust` for `opts.server_name` or else the host;
    /// `ferry://host[:port]` is plain TCP. A host name is resolved and its addresses are tried
    /// in turn. Returns once the node's hello has arrived.
    ///
    /// ```no_run
    /// use ferry_sdk::{Client, ConnectOptions, Trust};
    /// let opts = ConnectOptions { trust: Trust::CaFile("ca.pem".into()), ..Default::default() };
    /// let client = Client::connect_url("ferry+tls://relay.example:7443", &opts)?;
    /// # Ok::<(), ferry_sdk::SdkError>(())
    /// ```
    pub fn connect_url(url: &str, opts: &ConnectOptions) -> Result<Client, SdkError> {
        let node: NodeUrl = url.parse()?;
        // The trust anchors first: a bad CA file fails before any traffic.
        let tls = if node.tls {
            let name = opts.server_name.as_deref().unwrap_or(&node.host);
            Some(endpoint::tls_session(&opts.trust, name)?)
        } else {
            None
        };
        let mut last = None;
        for addr in node.socket_addrs()? {
            match TcpStream::connect_timeout(&addr, opts.timeout) {
                Ok(tcp) => return Self::start(tcp, tls, opts),
                Err(e) => last = Some(e),
            }
        }
        // `socket_addrs` never returns an empty list.
        Err(SdkError::Io(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
        })))
    }

    /// Speaks ferry over a connected socket (inside `tls` when given) until the node's hello.
    fn start(
        tcp: TcpStream,
        tls: Option<rustls::ClientConnection>,
        opts: &ConnectOptions,
    ) -> Result<Client, SdkError> {
        let timeout = opts.timeout;
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(conn) => Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))),
        };
        let mut c = Client {
            stream,
            conn: ClientConn::new(),
            info: NodeInfo {
                version: 0,
                shard: 0,
                node_id: [0; 32],
            },
            challenge: [0; 32],
            node_clock: (0, SystemTime::now()),
            clock_skew_s_max: opts.clock_skew_s_max,
            proved: false,
            events: VecDeque::new(),
            buf: vec![0u8; 64 * 1024],
            resendable: VecDeque::new(),
            puzzles: VecDeque::new(),
            puzzle_effort_max: PUZZLE_EFFORT_DEFAULT_MAX,
        };
        c.flush()?;
        let deadline = Instant::now() + timeout;
        loop {
            match c.next_event(deadline)? {
                ClientEvent::Ready {
                    version,
                    shard,
                    node_id,
                    challenge,
                    unix_time_s,
                } => {
                    c.info = NodeInfo {
                        version,
                        shard,
                        node_id,
                    };
                    c.set_challenge(challenge, unix_time_s)?;
                    return Ok(c);
                }
                ClientEvent::Error { code, message } => {
                    return Err(SdkError::Node { code, message });
                }
                other => c.queue(other)?,
            }
        }
    }

    fn set_challenge(&mut self, challenge: [u8; 32], node_unix_s: u64) -> Result<(), SdkError> {
        if node_unix_s > NODE_UNIX_S_MAX {
            return Err(SdkError::NodeClock {
                unix_s: node_unix_s,
            });
        }
        let local_unix_s = local_unix_s();
        if node_unix_s.abs_diff(local_unix_s) > self.clock_skew_s_max {
            return Err(SdkError::ClockSkew {
                node_unix_s,
                local_unix_s,
            });
        }
        self.challenge = challenge;
        self.node_clock = (node_unix_s, SystemTime::now());
        Ok(())
    }

    pub fn info(&self) -> NodeInfo {
        self.info
    }

    /// Whether this connection has carried a proof of ownership. A connection that sends (or
    /// fetches prekeys) should never have: the node would read the sender from the dests it
    /// proved ([`chat::Sender`](crate::chat::Sender) keeps the two apart).
    pub fn has_proved(&self) -> bool {
        self.proved
    }

    pub fn challenge(&self) -> [u8; 32] {
        self.challenge
    }

    /// The node's Unix time as this client estimates it: the time in its latest hello or
    /// challenge (accepted only within the connection's skew bound of this device's clock,
    /// [`CLOCK_SKEW_S_MAX`](crate::CLOCK_SKEW_S_MAX) by default) plus the local time elapsed
    /// since (the wall clock, which goes on during a device's sleep; a local clock set back
    /// counts as no time elapsed).
    pub fn node_unix_s(&self) -> u64 {
        let (at_s, at) = self.node_clock;
        let elapsed_s = SystemTime::now()
            .duration_since(at)
            .map_or(0, |d| d.as_secs());
        // `at_s` ≤ NODE_UNIX_S_MAX (2^40) and no device's clock runs 2^63 s ahead.
        at_s + elapsed_s
    }

    /// The current epoch on the node's clock.
    pub fn epoch(&self) -> u64 {
        epoch_of(self.node_unix_s())
    }

    pub(crate) fn queue(&mut self, ev: ClientEvent) -> Result<(), SdkError> {
        if self.events.len() >= PENDING_EVENTS_MAX {
            return Err(SdkError::Backlog);
        }
        self.events.push_back(ev);
        Ok(())
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> Result<(), SdkError> {
        while let Some(out) = self.conn.take_output() {
            self.stream.write_all(&out)?;
        }
        Ok(())
    }

    /// Writes raw bytes (tests of the node's handling of bad input).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), SdkError> {
        self.flush()?;
        self.stream.write_all(bytes)?;
        Ok(())
    }

    pub(crate) fn next_event(&mut self, deadline: Instant) -> Result<ClientEvent, SdkError> {
        loop {
            if let Some(ev) = self.conn.poll_event().map_err(SdkError::Protocol)? {
                // Pong replies to node pings are queued inside the state machine.
                self.flush()?;
                match self.on_puzzle_event(ev)? {
                    Some(ev) => return Ok(ev),
                    None => continue,
                }
            }
            self.flush()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SdkError::Timeout);
            }
            self.stream.tcp().set_read_timeout(Some(left))?;
            let n = match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(SdkError::Closed),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(SdkError::Timeout);
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Err(SdkError::Closed);
                }
                Err(e) => return Err(e.into()),
            };
            self.conn.on_bytes(&self.buf[..n]);
        }
    }

    /// The next event (delivery, send result, notice), waiting up to `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<ClientEvent, SdkError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(ev);
        }
        self.next_event(Instant::now() + timeout)
    }

    /// Waits for the first event `pick` accepts, buffering the others for `recv`.
    pub(crate) fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&ClientEvent) -> Option<T>,
    ) -> Result<T, SdkError> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.next_event(deadline)?;
            if let Some(t) = pick(&ev) {
                return Ok(t);
            }
            if let ClientEvent::Error { code, message } = ev {
                return Err(SdkError::Node { code, message });
            }
            self.queue(ev)?;
        }
    }

    /// Proofs for `signers` and `op` against the current challenge (not sent).
    pub fn proofs(&self, signers: &[&BlindedSigner], op: Op) -> Vec<ProofItem> {
        signers
            .iter()
            .map(|s| s.prove(&self.info.node_id, &self.challenge, op))
            .collect()
    }

    /// Sends proof items (at most [`PROOFS_PER_FRAME_MAX`] per frame) and waits for the verdicts.
    pub fn prove_items(&mut self, items: &[ProofItem]) -> Result<Vec<ProofStatus>, SdkError> {
        let mut out = Vec::with_capacity(items.len());
        self.proved |= !items.is_empty();
        for chunk in items.chunks(PROOFS_PER_FRAME_MAX) {
            self.conn.push(&Frame::Prove {
                items: chunk.to_vec(),
            });
            self.flush()?;
            let statuses = self.wait_for(Duration::from_secs(10), |ev| match ev {
                ClientEvent::ProveResult { items } => {
                    Some(items.iter().map(|(_, _, s)| *s).collect::<Vec<_>>())
                }
                _ => None,
            })?;
            out.extend(statuses);
        }
        Ok(out)
    }

    /// Proves ownership of each signer's dest for `op`.
    pub fn prove(
        &mut self,
        signers: &[&BlindedSigner],
        op: Op,
    ) -> Result<Vec<ProofStatus>, SdkError> {
        let items = self.proofs(signers, op);
        self.prove_items(&items)
    }

    /// Subscribes to dests already proven with `Op::Subscribe`.
    pub fn subscribe(&mut self, dests: &[Dest]) -> Result<Vec<SubscribeStatus>, SdkError> {
        // The node answers each dest once: refusals at once, successes when the owner core has
        // the entry (possibly in several SubscribeResult frames).
        let mut answers: std::collections::HashMap<Dest, SubscribeStatus> =
            std::collections::HashMap::new();
        for chunk in dests.chunks(DESTS_PER_FRAME_MAX) {
            self.conn.push(&Frame::Subscribe {
                dests: chunk.to_vec(),
            });
        }
        self.flush()?;
        let wanted: std::collections::HashSet<Dest> = dests.iter().copied().collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while answers.len() < wanted.len() {
            match self.next_event(deadline)? {
                ClientEvent::SubscribeResult { items } => {
                    for (d, s) in items {
                        if wanted.contains(&d) {
                            answers.insert(d, s);
                        }
                    }
                }
                ClientEvent::Error { code, message } => {
                    return Err(SdkError::Node { code, message });
                }
                other => self.queue(other)?,
            }
        }
        Ok(dests.iter().map(|d| answers[d]).collect())
    }

    /// Proves and subscribes to `mailbox`'s dests for `epochs`; fails unless all succeed.
    pub fn listen(
        &mut self,
        mailbox: &Mailbox,
        epochs: impl IntoIterator<Item = u64>,
    ) -> Result<Vec<Dest>, SdkError> {
        let signers: Vec<BlindedSigner> = epochs
            .into_iter()
            .map(|e| mailbox.signer(e))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&BlindedSigner> = signers.iter().collect();
        let proofs = self.prove(&refs, Op::Subscribe)?;
        if let Some(bad) = proofs.iter().find(|s| **s != ProofStatus::Ok) {
            return Err(SdkError::Node {
                code: ErrorCode::Unsupported,
                message: format!("proof refused: {bad:?}"),
            });
        }
        let dests: Vec<Dest> = signers.iter().map(|s| s.dest()).collect();
        let subs = self.subscribe(&dests)?;
        if let Some(bad) = subs.iter().find(|s| **s != SubscribeStatus::Ok) {
            return Err(SdkError::Node {
                code: ErrorCode::Unsupported,
                message: format!("subscribe refused: {bad:?}"),
            });
        }
        Ok(dests)
    }

    pub fn unsubscribe(&mut self, dests: &[Dest]) -> Result<(), SdkError> {
        for chunk in dests.chunks(DESTS_PER_FRAME_MAX) {
            self.conn.push(&Frame::Unsubscribe {
                dests: chunk.to_vec(),
            });
        }
        self.flush()
    }

    /// Asks for a fresh challenge (the previous one stops working) and waits for it.
    pub fn refresh_challenge(&mut self) -> Result<[u8; 32], SdkError> {
        self.conn.push(&Frame::ChallengeRequest);
        self.flush()?;
        let (ch, t) = self.wait_for(Duration::from_secs(10), |ev| match ev {
            ClientEvent::Challenge {
                challenge,
                unix_time_s,
            } => Some((*challenge, *unix_time_s)),
            _ => None,
        })?;
        self.set_challenge(ch, t)?;
        Ok(ch)
    }

    /// Registers a push token for dests proven for `Op::PushRegister` for `ttl_s` seconds (0
    /// removes them). Returns how many dests the token is registered for now.
    pub fn push_register(
        &mut self,
        provider: ferry_proto::frame::PushProvider,
        token: &[u8],
        dests: &[Dest],
        ttl_s: u32,
    ) -> Result<u16, SdkError> {
        use ferry_proto::frame::PushStatus;
        // One frame per `DESTS_PER_FRAME_MAX` dests, each answered before the next.
        let mut registered = 0;
        for chunk in dests.chunks(DESTS_PER_FRAME_MAX) {
            self.conn.push(&Frame::PushRegister {
                provider,
                ttl_s,
                token: bytes::Bytes::copy_from_slice(token),
                dests: chunk.to_vec(),
            });
            self.flush()?;
            registered = self.wait_for(Duration::from_secs(10), |ev| match ev {
                ClientEvent::PushResult {
                    status,
                    dests_registered,
                } => Some(if *status == PushStatus::Ok {
                    Ok(*dests_registered)
                } else {
                    Err(SdkError::Push(*status))
                }),
                _ => None,
            })??;
        }
        Ok(registered)
    }

    /// Hands the connection over to another event loop (the load generator): the socket, the TLS
    /// session if there is one, the protocol state machine and any events already read.
    pub fn into_parts(mut self) -> Result<Parts, SdkError> {
        self.flush()?;
        let events = self.events.into_iter().collect();
        Ok(match self.stream {
            Stream::Plain(s) => {
                s.set_read_timeout(None)?;
                Parts {
                    socket: s,
                    tls: None,
                    conn: self.conn,
                    events,
                }
            }
            Stream::Tls(t) => {
                let t = *t;
                t.sock.set_read_timeout(None)?;
                Parts {
                    socket: t.sock,
                    tls: Some(Box::new(t.conn)),
                    conn: self.conn,
                    events,
                }
            }
        })
    }

    /// Sends a ping and waits for its pong.
    pub fn ping(&mut self, nonce: u64) -> Result<(), SdkError> {
        self.conn.push(&Frame::Ping { nonce });
        self.flush()?;
        self.wait_for(Duration::from_secs(10), |ev| match ev {
            ClientEvent::Pong { nonce: n } if *n == nonce => Some(()),
            _ => None,
        })
    }
}
