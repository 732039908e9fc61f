//! Encrypted media end to end: the SDK encrypts (STREAM) and uploads through a real node, which
//! stores the ciphertext on the owner core, verifies it against its id and serves verified
//! ranges over the protocol and over HTTP with `Range`.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Node;
use ferry_proto::frame::{BlobStatus, Frame};
use ferry_sdk::SdkError;
use ferry_sdk::media::SEGMENT_BYTES;

/// Deterministic bytes, generated as they are read (no copy in memory).
struct Gen {
    left: u64,
    x: u64,
}

impl Read for Gen {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // More left than a usize can count is more than any buffer holds.
        let n = usize::try_from(self.left).map_or(buf.len(), |left| left.min(buf.len()));
        for b in &mut buf[..n] {
            self.x = self
                .x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.x >> 56) as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn source(len: u64, seed: u64) -> Gen {
    Gen { left: len, x: seed }
}

fn bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut v = Vec::new();
    source(len, seed).read_to_end(&mut v).unwrap();
    v
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A writer that only hashes what it is given.
struct HashSink(blake3::Hasher, u64);
impl Write for HashSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        self.1 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const FAST: [(&str, &str); 2] = [
    ("FERRY_MEDIA_BLOB_BYTES_MAX", "314572800"),
    ("FERRY_MEDIA_UPLOAD_BYTES_PER_CONN_PER_S", "0"),
];

#[test]
fn a_200_mib_attachment_streams_through_with_bounded_node_memory() {
    let node = Node::start(&["--shards", "2"], &FAST);
    let pid = node.pid();
    let before = rss_kb(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    const LEN: u64 = 200 << 20;
    let mut c = node.client();
    let (sealed, key) = c.encrypt_and_upload(source(LEN, 42)).unwrap();
    assert_eq!(sealed.plaintext_bytes, LEN);
    assert_eq!(c.blob_size(sealed.id).unwrap(), sealed.ciphertext_bytes);
    let mut sink = HashSink(blake3::Hasher::new(), 0);
    c.download_and_decrypt(sealed.id, &key, sealed.ciphertext_bytes, 0, LEN, &mut sink)
        .unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let mut want = blake3::Hasher::new();
    std::io::copy(&mut source(LEN, 42), &mut want).unwrap();
    assert_eq!(sink.1, LEN);
    assert_eq!(
        sink.0.finalize(),
        want.finalize(),
        "the plaintext came back"
    );
    let growth_mib = (peak.load(Ordering::Relaxed).saturating_sub(before)) / 1024;
    assert!(growth_mib < 64, "node RSS grew by {growth_mib} MiB");
}

#[test]
fn interrupted_uploads_resume_after_a_disconnect_and_after_kill_9() {
    let node = Node::start(&["--shards", "2"], &FAST);
    let data = bytes(20 << 20, 7);
    let id = *blake3::hash(&data).as_bytes();
    let size = data.len() as u64;
    // 12 MiB, then the connection drops.
    let send_part = |c: &mut ferry_sdk::Client, upto: usize| {
        c.write_raw(&Frame::BlobBegin { id, size }.to_bytes())
            .unwrap();
        for (i, chunk) in data[..upto].chunks(60_000).enumerate() {
            let f = Frame::BlobChunk {
                id,
                offset: (i * 60_000) as u64,
                data: bytes::Bytes::copy_from_slice(chunk),
            };
            c.write_raw(&f.to_bytes()).unwrap();
        }
        // Let the owner core write them.
        c.ping(1).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut a = node.client();
    send_part(&mut a, 12 << 20);
    drop(a);
    // Another connection resumes where the node stands.
    let mut b = node.client();
    b.write_raw(&Frame::BlobBegin { id, size }.to_bytes())
        .unwrap();
    let at = loop {
        if let ferry_proto::conn::ClientEvent::BlobStatus {
            op: ferry_proto::BlobOpKind::Begin,
            offset,
            ..
        } = b.recv(Duration::from_secs(10)).unwrap()
        {
            break offset;
        }
    };
    assert_eq!(at, 12 << 20, "resumes after the 12 MiB already sent");
    drop(b);

    // A second blob: 12 MiB sent, then kill -9. What was synced (every 8 MiB) survives.
    let data2 = bytes(20 << 20, 8);
    let id2 = *blake3::hash(&data2).as_bytes();
    let mut c = node.client();
    c.write_raw(&Frame::BlobBegin { id: id2, size }.to_bytes())
        .unwrap();
    for (i, chunk) in data2[..12 << 20].chunks(60_000).enumerate() {
        let f = Frame::BlobChunk {
            id: id2,
            offset: (i * 60_000) as u64,
            data: bytes::Bytes::copy_from_slice(chunk),
        };
        c.write_raw(&f.to_bytes()).unwrap();
    }
    c.ping(2).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(c);
    let node = node.restart(true);
    let mut c = node.client();
    c.write_raw(&Frame::BlobBegin { id: id2, size }.to_bytes())
        .unwrap();
    let at2 = loop {
        if let ferry_proto::conn::ClientEvent::BlobStatus {
            op: ferry_proto::BlobOpKind::Begin,
            offset,
            ..
        } = c.recv(Duration::from_secs(10)).unwrap()
        {
            break offset;
        }
    };
    assert!(
        (8 << 20..=12 << 20).contains(&at2),
        "resumes from the durable length, got {at2}"
    );
    // Both complete through the SDK, which resumes by itself, and read back verified.
    c.upload_blob(id, size, &mut std::io::Cursor::new(&data))
        .unwrap();
    c.upload_blob(id2, size, &mut std::io::Cursor::new(&data2))
        .unwrap();
    assert_eq!(c.download_verified(id, size, 0, size).unwrap(), data);
    assert_eq!(
        c.download_verified(id2, size, 5_000_000, 1_000_000)
            .unwrap(),
        &data2[5_000_000..6_000_000]
    );
}

#[test]
fn wrong_ids_limits_and_random_verified_ranges() {
    let node = Node::start(
        &[],
        &[
            ("FERRY_MEDIA_BLOB_BYTES_MAX", "4194304"),
            ("FERRY_MEDIA_UPLOAD_BYTES_PER_CONN_PER_S", "0"),
        ],
    );
    let mut c = node.client();
    // A blob whose bytes do not hash to the id it claims.
    let data = bytes(100_000, 1);
    let mut wrong = *blake3::hash(&data).as_bytes();
    wrong[5] ^= 1;
    let r = c.upload_blob(wrong, data.len() as u64, &mut std::io::Cursor::new(&data));
    assert!(
        matches!(r, Err(SdkError::Blob(BlobStatus::Mismatch))),
        "{r:?}"
    );
    assert!(matches!(
        c.blob_size(wrong),
        Err(SdkError::Blob(BlobStatus::NotFound))
    ));
    // Above the node's maximum size.
    let big = c.upload_blob([9; 32], 5 << 20, &mut std::io::Cursor::new(vec![0u8; 10]));
    assert!(
        matches!(big, Err(SdkError::Blob(BlobStatus::TooLarge))),
        "{big:?}"
    );
    // An attachment, then random plaintext ranges: each fetched, verified and decrypted alone.
    let pt = bytes(3 * SEGMENT_BYTES as u64 + 12_345, 2);
    let (sealed, key) = c.encrypt_and_upload(&pt[..]).unwrap();
    let mut x = 99u64;
    for _ in 0..20 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        let off = (x >> 11) % pt.len() as u64;
        let len = 1 + (x >> 37) % (pt.len() as u64 - off);
        let mut out = Vec::new();
        c.download_and_decrypt(sealed.id, &key, sealed.ciphertext_bytes, off, len, &mut out)
            .unwrap();
        assert_eq!(out, &pt[off as usize..(off + len) as usize]);
    }
    // The wrong key does not decrypt.
    let mut out = Vec::new();
    let bad_key = ferry_sdk::media::MediaKey([0; 32]);
    assert!(
        c.download_and_decrypt(
            sealed.id,
            &bad_key,
            sealed.ciphertext_bytes,
            0,
            10,
            &mut out
        )
        .is_err()
    );
}

#[test]
fn uploads_are_rate_limited_per_connection() {
    let node = Node::start(
        &[],
        &[
            ("FERRY_MEDIA_UPLOAD_BYTES_PER_CONN_PER_S", "1048576"),
            ("FERRY_MEDIA_UPLOAD_BYTES_PER_CONN_BURST", "1048576"),
        ],
    );
    let data = bytes(3 << 20, 3);
    let id = *blake3::hash(&data).as_bytes();
    let mut c = node.client();
    let t = Instant::now();
    c.upload_blob(id, data.len() as u64, &mut std::io::Cursor::new(&data))
        .unwrap();
    // 1 MiB of burst, then 1 MiB/s: at least about 2 s for 3 MiB, and it still completes.
    assert!(
        t.elapsed() >= Duration::from_millis(1_800),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        c.download_verified(id, data.len() as u64, 0, 100).unwrap(),
        &data[..100]
    );
}

#[test]
fn blobs_expire_with_the_injected_clock() {
    let dir = common::temp_dir("media-ttl");
    let env = [("FERRY_MEDIA_TTL_S", "100")];
    let node = Node::start_in(dir.clone(), &[], &env);
    let data = bytes(50_000, 4);
    let id = *blake3::hash(&data).as_bytes();
    let mut c = node.client();
    c.upload_blob(id, data.len() as u64, &mut std::io::Cursor::new(&data))
        .unwrap();
    assert_eq!(c.blob_size(id).unwrap(), 50_000);
    drop(c);
    let mut node = node;
    node.terminate();
    // 200 s later, by the node's clock: gone, and its files with it.
    let later = Node::start_in(dir.clone(), &["--clock-offset-s", "200"], &env);
    let mut c = later.client();
    assert!(matches!(
        c.blob_size(id),
        Err(SdkError::Blob(BlobStatus::NotFound))
    ));
    let left: usize = std::fs::read_dir(dir.join("media"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| std::fs::read_dir(p).unwrap().count())
        .sum();
    assert_eq!(left, 0, "expired files deleted");
}

fn http(addr: std::net::SocketAddr, path: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let range = range.map(|r| format!("range: {r}\r\n")).unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\n{range}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head, resp[split + 4..].to_vec())
}

/// Reads one response off a keep-alive connection: (code, head, body by content-length; none
/// after a `HEAD` or with `304`).
fn read_response(
    r: &mut std::io::BufReader<std::net::TcpStream>,
    head_request: bool,
) -> (u16, String, Vec<u8>) {
    use std::io::BufRead;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "closed mid-head: {head}"
        );
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    if code != 304 && !head_request {
        r.read_exact(&mut body).unwrap();
    } else {
        body.clear();
    }
    (code, head.to_ascii_lowercase(), body)
}

/// The media listener keeps connections alive, revalidates by ETag (`304`), answers `HEAD`
/// with the length and no body, and caps connections per address with a clear `503`.
/// A client that sends half a request head and then nothing (slowloris) holds its connection
/// only until the head timeout (`http::HEAD_TIMEOUT`, 10 s), on the admin listener as on the
/// media one (one stack), and everyone else is served meanwhile.
#[test]
fn a_request_head_that_never_ends_is_cut_off_after_the_head_timeout() {
    let node = Node::start(&[], &[("FERRY_MEDIA_HTTP_LISTEN", "127.0.0.1:0")]);
    let media = node.media_http.expect("media-http listener");
    let t = Instant::now();
    let slow: Vec<std::net::TcpStream> = [node.admin, media]
        .into_iter()
        .map(|addr| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // The node answers others while the heads hang.
    assert_eq!(node.metric("ferry_connections_open"), 0);
    for mut s in slow {
        let mut got = Vec::new();
        // EOF (or a reset) when the node cuts it off; a read timeout (20 s) would be a failure.
        let _ = s.read_to_end(&mut got);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(9) && took < Duration::from_secs(16),
            "cut off after {took:?}: {}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn http_keeps_alive_revalidates_by_etag_and_caps_connections_per_address() {
    let node = Node::start(&[], &[("FERRY_MEDIA_HTTP_LISTEN", "127.0.0.1:0")]);
    let addr = node.media_http.expect("media-http listener");
    let data = bytes(70_000, 9);
    let id = *blake3::hash(&data).as_bytes();
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let mut c = node.client();
    c.upload_blob(id, data.len() as u64, &mut std::io::Cursor::new(&data))
        .unwrap();
    // Four requests on one connection.
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = std::io::BufReader::new(s);
    write!(w, "GET /blob/{hex} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let (code, head, body) = read_response(&mut r, false);
    assert_eq!((code, body.as_slice()), (200, data.as_slice()));
    let etag = format!("\"{hex}\"");
    assert!(head.contains(&format!("etag: {etag}")), "{head}");
    assert!(head.contains("cache-control: public, max-age="), "{head}");
    write!(
        w,
        "GET /blob/{hex} HTTP/1.1\r\nhost: x\r\nif-none-match: {etag}\r\n\r\n"
    )
    .unwrap();
    let (code, head, body) = read_response(&mut r, false);
    assert_eq!(code, 304, "{head}");
    assert!(body.is_empty() && head.contains(&format!("etag: {etag}")));
    write!(
        w,
        "GET /blob/{hex} HTTP/1.1\r\nhost: x\r\nif-none-match: \"other\"\r\nrange: bytes=10-19\r\n\r\n"
    )
    .unwrap();
    let (code, _, body) = read_response(&mut r, false);
    assert_eq!((code, body.as_slice()), (206, &data[10..20]));
    write!(w, "HEAD /blob/{hex} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let (code, head, _) = read_response(&mut r, true);
    assert_eq!(code, 200);
    assert!(head.contains("content-length: 70000"), "{head}");
    // ...and the connection still serves (HEAD sent no body to misread).
    write!(
        w,
        "GET /blob/{hex} HTTP/1.1\r\nhost: x\r\nrange: bytes=-5\r\n\r\n"
    )
    .unwrap();
    let (code, _, body) = read_response(&mut r, false);
    assert_eq!((code, body.as_slice()), (206, &data[data.len() - 5..]));
    drop((w, r));

    // One address holds at most its share of connections; the next is told 503 at once.
    let held: Vec<std::net::TcpStream> = (0..32)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // The listener has taken them all (each is a task now).
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let mut extra = std::net::TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut resp = String::new();
        let _ = extra.read_to_string(&mut resp);
        if resp.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            break resp;
        }
    };
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("retry-after: 1"),
        "{refused}"
    );
    // Another address is still served.
    let s2 = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s2.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    s2.connect(&addr.into()).unwrap();
    let mut s2: std::net::TcpStream = s2.into();
    s2.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s2,
        "GET /blob/{hex} HTTP/1.1\r\nhost: x\r\nrange: bytes=0-3\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s2.read_to_end(&mut resp).unwrap();
    assert!(
        resp.starts_with(b"HTTP/1.1 206"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
    // Closing them gives the address its share back.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _, _) = http(addr, &format!("/blob/{hex}"), Some("bytes=0-0"));
        if code == 206 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the address's share never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn http_get_serves_complete_blobs_with_ranges() {
    let node = Node::start(&[], &[("FERRY_MEDIA_HTTP_LISTEN", "127.0.0.1:0")]);
    let addr = node.media_http.expect("media-http listener");
    let data = bytes(300_000, 5);
    let id = *blake3::hash(&data).as_bytes();
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let (code, _, _) = http(addr, &format!("/blob/{hex}"), None);
    assert_eq!(code, 404, "not uploaded yet");
    let mut c = node.client();
    c.upload_blob(id, data.len() as u64, &mut std::io::Cursor::new(&data))
        .unwrap();
    let (code, head, body) = http(addr, &format!("/blob/{hex}"), None);
    assert_eq!((code, body.len()), (200, data.len()));
    assert!(head.contains("accept-ranges: bytes"));
    assert_eq!(body, data);
    let (code, head, body) = http(addr, &format!("/blob/{hex}"), Some("bytes=1000-1999"));
    assert_eq!(code, 206);
    assert!(
        head.contains("content-range: bytes 1000-1999/300000"),
        "{head}"
    );
    assert_eq!(body, &data[1000..2000]);
    let (code, _, body) = http(addr, &format!("/blob/{hex}"), Some("bytes=-10"));
    assert_eq!((code, body.as_slice()), (206, &data[data.len() - 10..]));
    let (code, _, _) = http(addr, &format!("/blob/{hex}"), Some("bytes=400000-"));
    assert_eq!(code, 416);
    // The outboard lets an HTTP client verify what it fetched (whole 16 KiB groups).
    let (code, _, obao) = http(addr, &format!("/blob/{hex}.obao"), None);
    assert_eq!(code, 200);
    assert_eq!(obao.len() as u64, (300_000u64.div_ceil(16 * 1024) - 1) * 64);
    let (code, _, part) = http(addr, &format!("/blob/{hex}"), Some("bytes=32768-65535"));
    assert_eq!(code, 206);
    ferry_proto::media::verify_with_outboard(&id, 300_000, &obao, 32_768, &part).unwrap();
    let (_, _, tail) = http(addr, &format!("/blob/{hex}"), Some("bytes=294912-"));
    ferry_proto::media::verify_with_outboard(&id, 300_000, &obao, 294_912, &tail).unwrap();
    let mut forged = part.clone();
    forged[100] ^= 1;
    assert!(
        ferry_proto::media::verify_with_outboard(&id, 300_000, &obao, 32_768, &forged).is_err()
    );
    let mut bad_obao = obao.clone();
    bad_obao[0] ^= 1;
    assert!(
        ferry_proto::media::verify_with_outboard(&id, 300_000, &bad_obao, 32_768, &part).is_err()
    );
    let (code, _, _) = http(addr, "/blob/zz", None);
    assert_eq!(code, 404);
}

#[test]
fn pipelined_downloads_recover_from_busy_answers() {
    // A media queue of one request: pipelined range requests find it full and are refused
    // `Busy` (as are pipelined upload chunks); the SDK asks again for exactly those pieces.
    let node = Node::start(
        &["--shards", "2"],
        &[
            ("FERRY_MEDIA_UPLOAD_BYTES_PER_CONN_PER_S", "0"),
            ("FERRY_MEDIA_QUEUE_MSGS_MAX", "1"),
        ],
    );
    let data = bytes(12 << 20, 17);
    let id = *blake3::hash(&data).as_bytes();
    let size = data.len() as u64;
    let mut c = node.client();
    c.upload_blob(id, size, &mut std::io::Cursor::new(&data))
        .unwrap();
    assert_eq!(c.download_verified(id, size, 0, size).unwrap(), data);
    assert_eq!(
        c.download_verified(id, size, 3_000_001, 5_000_000).unwrap(),
        &data[3_000_001..8_000_001]
    );
}

/// A download the client stops reading is closed once the node's writes make no progress for
/// `limits.write_stall_timeout_ms`: it does not hold its connection (and its share of the
/// listener's connections) forever.
#[test]
fn http_downloads_the_client_stops_reading_are_closed_after_the_write_stall_timeout() {
    let node = Node::start(
        &[],
        &[
            ("FERRY_MEDIA_HTTP_LISTEN", "127.0.0.1:0"),
            ("FERRY_LIMITS_WRITE_STALL_TIMEOUT_MS", "700"),
        ],
    );
    let addr = node.media_http.expect("media-http listener");
    let data = bytes(12 << 20, 11);
    let id = *blake3::hash(&data).as_bytes();
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let mut c = node.client();
    c.upload_blob(id, data.len() as u64, &mut std::io::Cursor::new(&data))
        .unwrap();
    // A small receive buffer, so that the node's writes stall soon.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    write!(s, "GET /blob/{hex} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let stalled_at = Instant::now();
    // Twice the stall timeout.
    std::thread::sleep(Duration::from_millis(1_400));
    // Now read: what was in flight arrives, then the close, well short of the blob.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let end = s.read_to_end(&mut got);
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the connection stayed open: {end:?}"
    );
    assert!(
        got.len() < data.len(),
        "the whole blob came ({} bytes): the stalled download was not closed",
        got.len()
    );
    println!(
        "stalled download closed: {} of {} bytes had left, read {:.1} s after the stall began",
        got.len(),
        data.len(),
        stalled_at.elapsed().as_secs_f64()
    );
}
