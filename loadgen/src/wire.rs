//! The wire adapters: how one benchmark message is written to, and read back from, each system
//! under test. Every message carries the same 24-byte header inside its payload:
//! `intended_ns:u64 | sent_ns:u64 | seq:u64` (little-endian), padded to the requested size.
//!
//! Both directions cost the generator as little as a client can: a sender's per-message prefix
//! is built once ([`Route::head`]), so a message is two copies into the connection's buffer; a
//! receiver's bytes are scanned where they were read, and only an incomplete last message is
//! kept for the next read (no per-message allocation, copy or `drain`).

use ferry_proto::frame::{Dest, SendStatus, frame_type, put_send_header};
use ferry_proto::limits::{ERROR_HEADER_BYTES, PACKET_HEADER_BYTES, PING_BYTES, SEND_RESULT_BYTES};

pub const HEADER_BYTES: usize = 24;

/// The length prefix of a `Pong` (the size of a `Ping`).
#[allow(clippy::cast_possible_truncation)] // 9 bytes; asserted below.
const PONG_PREFIX: [u8; 4] = (PING_BYTES as u32).to_le_bytes();
const _: () = assert!(PING_BYTES < 256);

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

impl Route {
    /// What precedes every payload of `size` bytes on this route, built once per sender (ferry's
    /// header carries the message id, so it is written per message instead: empty here).
    pub fn head(&self, kind: Kind, size: usize) -> Vec<u8> {
        match (kind, self) {
            (Kind::Nats, Route::Subject(s)) => format!("PUB {s} {size}\r\n").into_bytes(),
            (Kind::Redis, Route::Subject(s)) => {
                format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n{s}\r\n${size}\r\n", s.len()).into_bytes()
            }
            (Kind::Ferry, Route::Ferry(_)) | (Kind::Floor, Route::Floor) => Vec::new(),
            (k, r) => panic!("route {r:?} does not fit {k:?}"),
        }
    }
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

/// Appends one message carrying `payload` to `out`; `head` is [`Route::head`] for this size.
pub fn encode(route: &Route, head: &[u8], seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    if let Route::Ferry(dest) = route {
        put_send_header(out, dest, seq, 0, 0, payload.len());
    }
    out.extend_from_slice(head);
    out.extend_from_slice(payload);
    if let Route::Subject(_) = route {
        out.extend_from_slice(b"\r\n");
    }
}

/// What reading a connection produced besides payloads.
#[derive(Debug, Default)]
pub struct ReadStats {
    /// Sends the system refused or could not deliver (ferry NoSubscriber/Congested, Redis 0).
    pub rejected: u64,
    pub errors: Vec<String>,
}

/// Incoming-byte parser of one connection: the bytes of an incomplete last message, and how to
/// scan.
#[derive(Debug)]
pub struct Parser {
    kind: Kind,
    /// Floor: the fixed message size.
    size: usize,
    partial: Vec<u8>,
}

impl Parser {
    /// A parser for `kind`, starting with bytes already read during set-up.
    pub fn new(kind: Kind, size: usize, unread: Vec<u8>) -> Self {
        Parser {
            kind,
            size,
            partial: unread,
        }
    }

    /// Feeds bytes; calls `on_payload` per message; appends protocol replies (pongs) to `reply`.
    pub fn feed(
        &mut self,
        data: &[u8],
        reply: &mut Vec<u8>,
        stats: &mut ReadStats,
        mut on_payload: impl FnMut(&[u8]),
    ) {
        if self.partial.is_empty() {
            let used = scan(self.kind, self.size, data, reply, stats, &mut on_payload);
            self.partial.extend_from_slice(&data[used..]);
        } else {
            self.partial.extend_from_slice(data);
            let used = scan(
                self.kind,
                self.size,
                &self.partial,
                reply,
                stats,
                &mut on_payload,
            );
            self.partial.drain(..used);
        }
    }
}

/// Scans whole messages of `buf`; returns the bytes used (the rest is an incomplete message).
fn scan(
    kind: Kind,
    size: usize,
    buf: &[u8],
    reply: &mut Vec<u8>,
    stats: &mut ReadStats,
    on_payload: &mut impl FnMut(&[u8]),
) -> usize {
    let mut at = 0;
    match kind {
        Kind::Ferry => {
            while buf.len() - at >= 5 {
                let len =
                    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
                if buf.len() - at < 4 + len {
                    break;
                }
                let frame = &buf[at + 4..at + 4 + len];
                match frame[0] {
                    // Deliver: type, dest(16), msg_id(8), flags(1), payload.
                    frame_type::DELIVER if len >= PACKET_HEADER_BYTES => {
                        on_payload(&frame[PACKET_HEADER_BYTES..])
                    }
                    // SendResult: type, dest(16), msg_id(8), status(1). The generator does not
                    // prove the dests it sends to, so a success is `Accepted` (and only with
                    // FLAG_ACK, which it does not set): any result is a refusal.
                    frame_type::SEND_RESULT
                        if len == SEND_RESULT_BYTES
                            && frame[SEND_RESULT_BYTES - 1] != SendStatus::Delivered as u8
                            && frame[SEND_RESULT_BYTES - 1] != SendStatus::Accepted as u8 =>
                    {
                        stats.rejected += 1
                    }
                    frame_type::PING if len == PING_BYTES => {
                        reply.extend_from_slice(&PONG_PREFIX);
                        reply.push(frame_type::PONG);
                        reply.extend_from_slice(&frame[1..PING_BYTES]);
                    }
                    frame_type::ERROR => stats.errors.push(format!(
                        "ferry error frame: {}",
                        String::from_utf8_lossy(&frame[ERROR_HEADER_BYTES.min(len)..])
                    )),
                    _ => {}
                }
                at += 4 + len;
            }
        }
        Kind::Nats => {
            while let Some(nl) = find_crlf(&buf[at..]) {
                let line = &buf[at..at + nl];
                if let Some(rest) = line.strip_prefix(b"MSG ") {
                    // MSG <subject> <sid> [reply-to] <#bytes>: the count is the last field.
                    let n = rest
                        .rsplit(|&b| b == b' ')
                        .next()
                        .and_then(decimal)
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
        }
        Kind::Redis => {
            while let Some((item, used)) = resp(&buf[at..]) {
                match item {
                    Resp::Int(0) => stats.rejected += 1,
                    Resp::Message(m) => on_payload(m),
                    Resp::Error(e) => stats.errors.push(String::from_utf8_lossy(e).into_owned()),
                    _ => {}
                }
                at += used;
            }
        }
        Kind::Floor => {
            let whole = buf.len() / size * size;
            for m in buf[..whole].chunks(size) {
                on_payload(m);
            }
            at = whole;
        }
    }
    at
}

/// An unsigned decimal number, as NATS and RESP write lengths.
fn decimal(b: &[u8]) -> Option<usize> {
    if b.is_empty() || b.len() > 18 {
        return None;
    }
    b.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = b[from..].iter().position(|&c| c == b'\r') {
        let at = from + i;
        if b.get(at + 1) == Some(&b'\n') {
            return Some(at);
        }
        if at + 1 >= b.len() {
            return None;
        }
        from = at + 1;
    }
    None
}

enum Resp<'a> {
    Int(i64),
    Other,
    Error(&'a [u8]),
    /// A pub/sub push `["message", channel, payload]`: the payload.
    Message(&'a [u8]),
}

/// Parses one RESP reply (integers, simple strings, errors, arrays of bulk strings or integers)
/// without allocating.
fn resp(b: &[u8]) -> Option<(Resp<'_>, usize)> {
    let nl = find_crlf(b)?;
    let line = &b[1..nl];
    match b.first()? {
        b':' => {
            let neg = line.first() == Some(&b'-');
            let n = decimal(if neg { &line[1..] } else { line })? as i64;
            Some((Resp::Int(if neg { -n } else { n }), nl + 2))
        }
        b'+' => Some((Resp::Other, nl + 2)),
        b'-' => Some((Resp::Error(line), nl + 2)),
        b'*' => {
            let n = decimal(line)?;
            let mut at = nl + 2;
            // The first and last of up to three parts are all a pub/sub push needs.
            let (mut first, mut last): (&[u8], &[u8]) = (&[], &[]);
            for k in 0..n {
                let rest = &b[at..];
                let l = find_crlf(rest)?;
                let part = match rest.first()? {
                    b'$' => {
                        let len = decimal(&rest[1..l])?;
                        if rest.len() < l + 2 + len + 2 {
                            return None;
                        }
                        at += l + 2 + len + 2;
                        &rest[l + 2..l + 2 + len]
                    }
                    _ => {
                        at += l + 2;
                        &rest[1..l]
                    }
                };
                if k == 0 {
                    first = part;
                }
                last = part;
            }
            if n == 3 && first == b"message" {
                Some((Resp::Message(last), at))
            } else {
                Some((Resp::Other, at))
            }
        }
        b'$' => {
            let len = decimal(line)?;
            if b.len() < nl + 2 + len + 2 {
                return None;
            }
            Some((Resp::Other, nl + 2 + len + 2))
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
        let mut p = Parser::new(Kind::Ferry, 0, Vec::new());
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
        let mut p = Parser::new(Kind::Nats, 0, Vec::new());
        let mut wire = b"INFO {}\r\nPING\r\nMSG a.1 1 64\r\n".to_vec();
        wire.extend_from_slice(&payload);
        wire.extend_from_slice(b"\r\n");
        for chunk in wire.chunks(7) {
            p.feed(chunk, &mut reply, &mut st, |m| got.push(get_header(m)));
        }
        assert_eq!(got, vec![Some((1, 2, 3))]);
        assert_eq!(reply, b"PONG\r\n");

        let mut p = Parser::new(Kind::Redis, 0, Vec::new());
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

    /// Messages split anywhere across reads come out whole and once, whether a read ends inside
    /// a message (kept for the next read) or on its edge (scanned in place); NATS's count is
    /// found after a reply-to field too.
    #[test]
    fn split_reads_give_every_message_once() {
        let mut payload = vec![7u8; 40];
        let mut wire = Vec::new();
        let mut nats = Vec::new();
        let route = Route::Subject("a.b".into());
        let head = route.head(Kind::Nats, payload.len());
        assert_eq!(head, b"PUB a.b 40\r\n");
        for seq in 0..5u64 {
            put_header(&mut payload, seq, seq, seq);
            encode(&Route::Floor, &[], seq, &payload, &mut wire);
            nats.extend_from_slice(b"MSG a.b 1 reply.to 40\r\n");
            nats.extend_from_slice(&payload);
            nats.extend_from_slice(b"\r\n");
        }
        for (kind, bytes) in [(Kind::Floor, &wire), (Kind::Nats, &nats)] {
            for cut in [1, 13, 40, 41, 63, bytes.len()] {
                let mut p = Parser::new(kind, 40, Vec::new());
                let (mut got, mut reply, mut st) = (Vec::new(), Vec::new(), ReadStats::default());
                for chunk in bytes.chunks(cut) {
                    p.feed(chunk, &mut reply, &mut st, |m| {
                        got.push(get_header(m).map(|h| h.2))
                    });
                }
                let want: Vec<_> = (0..5).map(Some).collect();
                assert_eq!(got, want, "{kind:?} in reads of {cut}");
                assert!(p.partial.is_empty(), "{kind:?} in reads of {cut}");
            }
        }
    }
}
