//! The wire adapters: how one benchmark message is written to, and read back from, each system
//! under test. Every message carries the same 24-byte header inside its payload:
//! `intended_ns:u64 | sent_ns:u64 | seq:u64` (little-endian), padded to the requested size.

use bytes::BufMut;
use ferry_proto::frame::{Dest, SendStatus, frame_type, put_send_header};
use ferry_proto::limits::PACKET_HEADER_BYTES;

pub const HEADER_BYTES: usize = 24;

/// Systems the load generator can drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ferry,
    Nats,
    Redis,
    /// bench/floor: raw bytes copied from sender to receiver, fixed-size messages.
    Floor,
}

/// Where a sender's messages go.
#[derive(Clone, Debug)]
pub enum Route {
    Ferry(Dest),
    /// NATS subject or Redis channel.
    Subject(String),
    Floor,
}

pub fn put_header(buf: &mut [u8], intended_ns: u64, sent_ns: u64, seq: u64) {
    buf[..8].copy_from_slice(&intended_ns.to_le_bytes());
    buf[8..16].copy_from_slice(&sent_ns.to_le_bytes());
    buf[16..24].copy_from_slice(&seq.to_le_bytes());
}

pub fn get_header(payload: &[u8]) -> Option<(u64, u64, u64)> {
    if payload.len() < HEADER_BYTES {
        return None;
    }
    let u = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[r]);
        u64::from_le_bytes(b)
    };
    Some((u(0..8), u(8..16), u(16..24)))
}

/// Appends one message carrying `payload` to `out`.
pub fn encode(route: &Route, kind: Kind, seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    match (kind, route) {
        (Kind::Ferry, Route::Ferry(dest)) => {
            put_send_header(out, dest, seq, 0, 0, payload.len());
            out.extend_from_slice(payload);
        }
        (Kind::Nats, Route::Subject(s)) => {
            out.extend_from_slice(b"PUB ");
            out.extend_from_slice(s.as_bytes());
            out.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
        (Kind::Redis, Route::Subject(s)) => {
            out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
            out.put_slice(format!("${}\r\n", s.len()).as_bytes());
            out.extend_from_slice(s.as_bytes());
            out.put_slice(format!("\r\n${}\r\n", payload.len()).as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
        (Kind::Floor, Route::Floor) => out.extend_from_slice(payload),
        (k, r) => panic!("route {r:?} does not fit {k:?}"),
    }
}

/// What reading a connection produced besides payloads.
#[derive(Debug, Default)]
pub struct ReadStats {
    /// Sends the system refused or could not deliver (ferry NoSubscriber/Congested, Redis 0).
    pub rejected: u64,
    pub errors: Vec<String>,
}

/// Incoming-byte parser of one connection.
#[derive(Debug)]
pub enum Parser {
    /// A set-up ferry connection: frames are scanned in place (length, type, payload slice), as
    /// lean as the NATS and Redis scanners, so the generator costs the same for every system.
    Ferry(Vec<u8>),
    Nats(Vec<u8>),
    Redis(Vec<u8>),
    Floor {
        buf: Vec<u8>,
        size: usize,
    },
}

impl Parser {
    /// Feeds bytes; calls `on_payload` per message; appends protocol replies (pongs) to `reply`.
    pub fn feed(
        &mut self,
        data: &[u8],
        reply: &mut Vec<u8>,
        stats: &mut ReadStats,
        mut on_payload: impl FnMut(&[u8]),
    ) {
        match self {
            Parser::Ferry(buf) => {
                buf.extend_from_slice(data);
                let mut at = 0;
                while buf.len() - at >= 5 {
                    let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
                        as usize;
                    if buf.len() - at < 4 + len {
                        break;
                    }
                    let frame = &buf[at + 4..at + 4 + len];
                    match frame[0] {
                        // Deliver: type, dest(16), msg_id(8), flags(1), payload.
                        frame_type::DELIVER if len >= PACKET_HEADER_BYTES => {
                            on_payload(&frame[PACKET_HEADER_BYTES..])
                        }
                        // SendResult: type, dest(16), msg_id(8), status(1). The generator does
                        // not prove the dests it sends to, so a success is `Accepted` (and only
                        // with FLAG_ACK, which it does not set): any result is a refusal.
                        frame_type::SEND_RESULT
                            if len == 26
                                && frame[25] != SendStatus::Delivered as u8
                                && frame[25] != SendStatus::Accepted as u8 =>
                        {
                            stats.rejected += 1
                        }
                        frame_type::PING if len == 9 => {
                            reply.extend_from_slice(&[9, 0, 0, 0, frame_type::PONG]);
                            reply.extend_from_slice(&frame[1..9]);
                        }
                        frame_type::ERROR => stats.errors.push(format!(
                            "ferry error frame: {}",
                            String::from_utf8_lossy(&frame[5.min(len)..])
                        )),
                        _ => {}
                    }
                    at += 4 + len;
                }
                buf.drain(..at);
            }
            Parser::Nats(buf) => {
                buf.extend_from_slice(data);
                let mut at = 0;
                while let Some(nl) = find_crlf(&buf[at..]) {
                    let line = &buf[at..at + nl];
                    if let Some(rest) = line.strip_prefix(b"MSG ") {
                        let n: usize = std::str::from_utf8(rest)
                            .ok()
                            .and_then(|r| r.split(' ').next_back())
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(0);
                        let start = at + nl + 2;
                        if buf.len() < start + n + 2 {
                            break;
                        }
                        on_payload(&buf[start..start + n]);
                        at = start + n + 2;
                        continue;
                    }
                    if line == b"PING" {
                        reply.extend_from_slice(b"PONG\r\n");
                    } else if line.starts_with(b"-ERR") {
                        stats
                            .errors
                            .push(String::from_utf8_lossy(line).into_owned());
                    }
                    at += nl + 2;
                }
                buf.drain(..at);
            }
            Parser::Redis(buf) => {
                buf.extend_from_slice(data);
                let mut at = 0;
                while let Some((item, used)) = resp(&buf[at..]) {
                    match item {
                        Resp::Int(0) => stats.rejected += 1,
                        Resp::Array(parts) if parts.len() == 3 && parts[0] == b"message" => {
                            on_payload(parts[2])
                        }
                        Resp::Error(e) => {
                            stats.errors.push(String::from_utf8_lossy(e).into_owned())
                        }
                        _ => {}
                    }
                    at += used;
                }
                buf.drain(..at);
            }
            Parser::Floor { buf, size } => {
                buf.extend_from_slice(data);
                let whole = buf.len() / *size * *size;
                for m in buf[..whole].chunks(*size) {
                    on_payload(m);
                }
                buf.drain(..whole);
            }
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

enum Resp<'a> {
    Int(i64),
    Simple,
    Error(&'a [u8]),
    Array(Vec<&'a [u8]>),
}

/// Parses one RESP reply (integers, simple strings, errors, arrays of bulk strings or integers).
fn resp(b: &[u8]) -> Option<(Resp<'_>, usize)> {
    let nl = find_crlf(b)?;
    let line = &b[1..nl];
    let num = || std::str::from_utf8(line).ok()?.parse::<i64>().ok();
    match b.first()? {
        b':' => Some((Resp::Int(num()?), nl + 2)),
        b'+' => Some((Resp::Simple, nl + 2)),
        b'-' => Some((Resp::Error(line), nl + 2)),
        b'*' => {
            let n = usize::try_from(num()?).ok()?;
            let mut at = nl + 2;
            let mut parts = Vec::with_capacity(n);
            for _ in 0..n {
                let rest = &b[at..];
                let l = find_crlf(rest)?;
                match rest.first()? {
                    b'$' => {
                        let len: usize = std::str::from_utf8(&rest[1..l]).ok()?.parse().ok()?;
                        if rest.len() < l + 2 + len + 2 {
                            return None;
                        }
                        parts.push(&rest[l + 2..l + 2 + len]);
                        at += l + 2 + len + 2;
                    }
                    _ => {
                        parts.push(&rest[1..l]);
                        at += l + 2;
                    }
                }
            }
            Some((Resp::Array(parts), at))
        }
        b'$' => {
            let len = usize::try_from(num()?).ok()?;
            if b.len() < nl + 2 + len + 2 {
                return None;
            }
            Some((Resp::Simple, nl + 2 + len + 2))
        }
        _ => Some((Resp::Error(b"unparseable reply"), b.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferry_scanner_matches_the_codec() {
        use ferry_proto::frame::Frame;
        let mut payload = vec![0u8; 64];
        put_header(&mut payload, 4, 5, 6);
        let mut wire = Vec::new();
        wire.extend_from_slice(&Frame::Ping { nonce: 9 }.to_bytes());
        wire.extend_from_slice(
            &Frame::Deliver {
                dest: Dest([1; 16]),
                msg_id: 3,
                flags: 0,
                payload: payload.clone().into(),
            }
            .to_bytes(),
        );
        wire.extend_from_slice(
            &Frame::SendResult {
                dest: Dest([1; 16]),
                msg_id: 3,
                status: SendStatus::Congested,
            }
            .to_bytes(),
        );
        let (mut got, mut reply, mut st) = (Vec::new(), Vec::new(), ReadStats::default());
        let mut p = Parser::Ferry(Vec::new());
        for chunk in wire.chunks(3) {
            p.feed(chunk, &mut reply, &mut st, |m| got.push(get_header(m)));
        }
        assert_eq!(got, vec![Some((4, 5, 6))]);
        assert_eq!(st.rejected, 1);
        assert_eq!(reply, Frame::Pong { nonce: 9 }.to_bytes().to_vec());
    }

    #[test]
    fn nats_and_redis_round_trip() {
        let mut payload = vec![0u8; 64];
        put_header(&mut payload, 1, 2, 3);
        let mut got = Vec::new();
        let mut reply = Vec::new();
        let mut st = ReadStats::default();
        let mut p = Parser::Nats(Vec::new());
        let mut wire = b"INFO {}\r\nPING\r\nMSG a.1 1 64\r\n".to_vec();
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(b"\r\n");
        for chunk in wire.chunks(7) {
            p.feed(chunk, &mut reply, &mut st, |m| got.push(get_header(m)));
        }
        assert_eq!(got, vec![Some((1, 2, 3))]);
        assert_eq!(reply, b"PONG\r\n");

        let mut p = Parser::Redis(Vec::new());
        let mut wire = b":0\r\n*3\r\n$9\r\nsubscribe\r\n$3\r\nch1\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$3\r\nch1\r\n$64\r\n".to_vec();
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(b"\r\n");
        got.clear();
        for chunk in wire.chunks(5) {
            p.feed(chunk, &mut reply, &mut st, |m| got.push(get_header(m)));
        }
        assert_eq!(got, vec![Some((1, 2, 3))]);
        assert_eq!(st.rejected, 1);
    }
}
