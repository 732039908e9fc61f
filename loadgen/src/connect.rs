//! Connecting to the target: its URL resolved once to a kind and an address, how ferry connections
//! are made, and the set-up of the run's receivers and senders for each kind (ferry, NATS, Redis,
//! the floor) before an event loop takes them.

use anyhow::Context;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::bail;
use ferry_sdk::{Client, ConnectOptions, Mailbox, NamespaceId, NodeUrl, Trust};

use crate::args::Args;
use crate::wire::{Kind, Parser, Route};

/// The target's kind and address: its host resolved once. For ferry the URL is the SDK's
/// ([`NodeUrl`]), the connection settings are set here, and the address is the first one a
/// client connects to (so `localhost` works whichever of 127.0.0.1 and ::1 the node is on);
/// for the others, the first address.
pub(crate) fn parse_target(args: &Args) -> anyhow::Result<(Kind, SocketAddr)> {
    let t = args.target.as_str();
    let scheme = t.split_once("://").map_or("", |(s, _)| s);
    if scheme.starts_with("ferry") {
        let node: NodeUrl = t.parse()?;
        let mut connect = ConnectOptions::default();
        if let Some(path) = &args.tls_ca {
            // Read once: every connection of the run parses it, none reads the file.
            let pem =
                std::fs::read(path).with_context(|| format!("--tls-ca {}", path.display()))?;
            connect.trust = Trust::CaPem(pem);
        }
        // Connections go to the address found here; the certificate is checked for the name.
        connect.server_name = Some(args.tls_name.clone().unwrap_or_else(|| node.host.clone()));
        let _ = FERRY.set(Ferry {
            tls: node.tls,
            tls_ca: args.tls_ca.is_some(),
            connect,
        });
        let mut last = None;
        for addr in node.socket_addrs()? {
            match ferry_connect(addr) {
                Ok(_) => return Ok((Kind::Ferry, addr)),
                Err(e) => last = Some(e),
            }
        }
        return Err(last.unwrap_or_else(|| anyhow::anyhow!("{t}: no address")));
    }
    {
        let u = url::Url::parse(t).with_context(|| format!("target {t:?}"))?;
        let kind = match u.scheme() {
            "nats" => Kind::Nats,
            "redis" => Kind::Redis,
            "floor" => Kind::Floor,
            other => bail!("target {t:?}: unknown scheme {other:?}"),
        };
        let host = u.host_str().context("the target names no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = u.port().context("the target names no port")?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .with_context(|| format!("cannot resolve {host:?}"))?
            .next()
            .with_context(|| format!("{host:?} has no address"))?;
        Ok((kind, addr))
    }
}

pub(crate) fn mailbox(seed: u64, i: usize) -> Mailbox {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    Mailbox::from_seed(&s, NamespaceId([0x6c; 32]), None)
}

fn read_until(s: &mut TcpStream, needle: &[u8]) -> anyhow::Result<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = s.read(&mut b)?;
        if n == 0 {
            bail!("connection closed during set-up");
        }
        got.extend_from_slice(&b[..n]);
    }
    Ok(got)
}

/// Bytes a set-up client state machine had read but not yet parsed (none in practice: set-up
/// ends on a complete answer), handed to the scanner so nothing is lost.
fn pending_bytes(cc: ferry_proto::conn::ClientConn) -> Vec<u8> {
    cc.into_unread()
}

/// How every ferry connection of the run is made, set once from the command line.
#[derive(Debug)]
struct Ferry {
    tls: bool,
    /// `--tls-ca` was given (else a TLS failure hints at it).
    tls_ca: bool,
    connect: ConnectOptions,
}

static FERRY: std::sync::OnceLock<Ferry> = std::sync::OnceLock::new();

/// A connection after set-up: socket, TLS session for `ferry+tls`, and the parser of its input.
pub(crate) struct Opened {
    pub(crate) socket: TcpStream,
    pub(crate) tls: Option<Box<rustls::ClientConnection>>,
    pub(crate) parser: Parser,
}

impl Opened {
    fn plain(socket: TcpStream, parser: Parser) -> Self {
        Opened {
            socket,
            tls: None,
            parser,
        }
    }
}

pub(crate) fn ferry_connect(addr: SocketAddr) -> anyhow::Result<Client> {
    let f = FERRY.get().context("ferry settings missing")?;
    let url = NodeUrl {
        tls: f.tls,
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    match Client::connect_url(&url.to_string(), &f.connect) {
        Err(e @ ferry_sdk::SdkError::Tls(_)) if !f.tls_ca => Err(anyhow::Error::new(e).context(
            "ferry+tls:// trusts the public CAs unless --tls-ca names the node's CA (or its \
             self-signed certificate)",
        )),
        c => Ok(c?),
    }
}

fn ferry_opened(c: Client) -> anyhow::Result<Opened> {
    let parts = c.into_parts()?;
    Ok(Opened {
        socket: parts.socket,
        tls: parts.tls,
        parser: Parser::new(Kind::Ferry, 0, pending_bytes(parts.conn)),
    })
}

/// Opens a receiver subscribed to stream `i`; returns the connection and the route to it.
pub(crate) fn open_receiver(
    kind: Kind,
    addr: SocketAddr,
    seed: u64,
    i: usize,
    size: usize,
) -> anyhow::Result<(Opened, Route)> {
    match kind {
        Kind::Ferry => {
            let mut c = ferry_connect(addr)?;
            let epoch = c.epoch();
            let dest = c.listen(&mailbox(seed, i), [epoch, epoch + 1])?[0];
            Ok((ferry_opened(c)?, Route::Ferry(dest)))
        }
        Kind::Nats => {
            let mut s = TcpStream::connect(addr)?;
            read_until(&mut s, b"\r\n")?;
            let subject = format!("ferry.bench.{seed}.{i}");
            write!(
                s,
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"echo\":false}}\r\nSUB {subject} {i}\r\nPING\r\n"
            )?;
            read_until(&mut s, b"PONG\r\n")?;
            Ok((
                Opened::plain(s, Parser::new(Kind::Nats, 0, Vec::new())),
                Route::Subject(subject),
            ))
        }
        Kind::Redis => {
            let mut s = TcpStream::connect(addr)?;
            let ch = format!("ferry.bench.{seed}.{i}");
            write!(s, "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{ch}\r\n", ch.len())?;
            read_until(&mut s, b":1\r\n")?;
            Ok((
                Opened::plain(s, Parser::new(Kind::Redis, 0, Vec::new())),
                Route::Subject(ch),
            ))
        }
        Kind::Floor => {
            let mut s = TcpStream::connect(addr)?;
            let mut hello = b"FLRR".to_vec();
            hello.extend_from_slice(&u32::try_from(i)?.to_le_bytes());
            s.write_all(&hello)?;
            Ok((
                Opened::plain(s, Parser::new(Kind::Floor, size, Vec::new())),
                Route::Floor,
            ))
        }
    }
}

pub(crate) fn open_sender(
    kind: Kind,
    addr: SocketAddr,
    i: usize,
    size: usize,
) -> anyhow::Result<Opened> {
    match kind {
        Kind::Ferry => ferry_opened(ferry_connect(addr)?),
        Kind::Nats => {
            let mut s = TcpStream::connect(addr)?;
            read_until(&mut s, b"\r\n")?;
            s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")?;
            read_until(&mut s, b"PONG\r\n")?;
            Ok(Opened::plain(s, Parser::new(Kind::Nats, 0, Vec::new())))
        }
        Kind::Redis => Ok(Opened::plain(
            TcpStream::connect(addr)?,
            Parser::new(Kind::Redis, 0, Vec::new()),
        )),
        Kind::Floor => {
            let mut s = TcpStream::connect(addr)?;
            let mut hello = b"FLRS".to_vec();
            hello.extend_from_slice(&u32::try_from(i)?.to_le_bytes());
            s.write_all(&hello)?;
            Ok(Opened::plain(s, Parser::new(Kind::Floor, size, Vec::new())))
        }
    }
}
