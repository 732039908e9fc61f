//! The offline workload against NATS JetStream, the store ferry's store and forward is compared
//! with (`--workload offline --target nats://…`): the same shape as ferry's (`offline.rs`).
//!
//! A file-backed work-queue stream `FERRYBENCH` on subjects `ferrybench.>` is made anew; each of
//! `pairs` threads publishes `--messages` messages to its own subject with 256 outstanding, each
//! timed until JetStream's ack (the message is in the stream); then each thread makes a durable
//! pull consumer on its subject, fetches in batches of up to 256 and acks every message (a
//! work-queue stream deletes what is acked, as ferry deletes acked blobs). At the end the stream's
//! own count of messages left is read back: everything drained and acked leaves it at 0.
//!
//! A plain blocking client (one connection per thread, a buffered reader): this workload is bound
//! by the servers' stores, not by parsing, and ferry's side uses a blocking client too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

use crate::args::Args;
use crate::measure::nanos;
use crate::offline::{OfflineRun, cpu_mark, join_drained, join_stored};

const STREAM: &str = "FERRYBENCH";
/// Publishes outstanding per thread (as ferry's offline senders).
const OUTSTANDING: u64 = 256;
/// Messages per fetch (as ferry's drain pages).
const BATCH: u64 = 256;
/// How long any one answer may take before the run fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A message the server sent: `MSG`, or `HMSG` with its status code when it is a status (a
/// pull request that expired, no messages).
struct Msg {
    subject: String,
    /// The subscription it came through (a pull consumer's messages keep their own subject).
    sid: u64,
    reply: Option<String>,
    status: Option<u16>,
    payload: Vec<u8>,
}

struct Nats {
    r: BufReader<TcpStream>,
    w: TcpStream,
    out: Vec<u8>,
    line: String,
    next_inbox: u64,
}

impl Nats {
    fn connect(addr: SocketAddr) -> anyhow::Result<Nats> {
        let s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let mut n = Nats {
            r: BufReader::with_capacity(256 * 1024, s.try_clone()?),
            w: s,
            out: Vec::with_capacity(256 * 1024),
            line: String::new(),
            next_inbox: 0,
        };
        n.read_line()?;
        if !n.line.starts_with("INFO ") {
            bail!("nats: expected INFO, got {:?}", n.line);
        }
        n.out.extend_from_slice(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\
              \"lang\":\"rust\",\"version\":\"ferry-loadgen\"}\r\n",
        );
        n.ping()?;
        Ok(n)
    }

    fn read_line(&mut self) -> anyhow::Result<()> {
        self.line.clear();
        if self.r.read_line(&mut self.line)? == 0 {
            bail!("nats: connection closed");
        }
        let len = self.line.trim_end_matches(['\r', '\n']).len();
        self.line.truncate(len);
        Ok(())
    }

    fn publish(&mut self, subject: &str, reply: Option<&str>, payload: &[u8]) {
        let head = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        self.out.extend_from_slice(head.as_bytes());
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(b"\r\n");
    }

    fn subscribe(&mut self, subject: &str, sid: u64) {
        self.out
            .extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.w.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Flushes, then waits for the server's `PONG`: everything sent before it has been read.
    fn ping(&mut self) -> anyhow::Result<()> {
        self.out.extend_from_slice(b"PING\r\n");
        self.flush()?;
        loop {
            self.read_line()?;
            match self.line.as_str() {
                "PONG" => return Ok(()),
                "PING" => {
                    self.out.extend_from_slice(b"PONG\r\n");
                    self.flush()?;
                }
                l if l.starts_with("-ERR") => bail!("nats: {l}"),
                _ => {}
            }
        }
    }

    /// The next message; `PING`s are answered, `+OK` and `INFO` skipped.
    fn next(&mut self) -> anyhow::Result<Msg> {
        loop {
            self.read_line()?;
            let line = self.line.clone();
            let mut f = line.split(' ');
            match f.next() {
                Some("PING") => {
                    self.out.extend_from_slice(b"PONG\r\n");
                    self.flush()?;
                }
                Some("MSG") => {
                    let f: Vec<&str> = f.collect();
                    let (subject, sid, reply, len) = match f.as_slice() {
                        [s, sid, len] => (*s, *sid, None, *len),
                        [s, sid, r, len] => (*s, *sid, Some(*r), *len),
                        _ => bail!("nats: bad MSG line {line:?}"),
                    };
                    let payload = self.body(len.parse()?)?;
                    return Ok(Msg {
                        subject: subject.to_string(),
                        sid: sid.parse()?,
                        reply: reply.map(str::to_string),
                        status: None,
                        payload,
                    });
                }
                Some("HMSG") => {
                    let f: Vec<&str> = f.collect();
                    let (subject, sid, reply, hlen, len) = match f.as_slice() {
                        [s, sid, h, len] => (*s, *sid, None, *h, *len),
                        [s, sid, r, h, len] => (*s, *sid, Some(*r), *h, *len),
                        _ => bail!("nats: bad HMSG line {line:?}"),
                    };
                    let hlen: usize = hlen.parse()?;
                    let mut payload = self.body(len.parse()?)?;
                    let headers = payload
                        .drain(..hlen.min(payload.len()))
                        .collect::<Vec<u8>>();
                    // "NATS/1.0 408 Request Timeout\r\n…": a status, not a message.
                    let status = std::str::from_utf8(&headers)
                        .ok()
                        .and_then(|h| h.lines().next())
                        .and_then(|l| l.split(' ').nth(1))
                        .and_then(|c| c.parse().ok());
                    return Ok(Msg {
                        subject: subject.to_string(),
                        sid: sid.parse()?,
                        reply: reply.map(str::to_string),
                        status,
                        payload,
                    });
                }
                Some(l) if l.starts_with("-ERR") => bail!("nats: {line}"),
                _ => {}
            }
        }
    }

    fn body(&mut self, len: usize) -> anyhow::Result<Vec<u8>> {
        let mut b = vec![0u8; len + 2];
        self.r.read_exact(&mut b)?;
        b.truncate(len);
        Ok(b)
    }

    /// One JetStream API request; fails on an `"error"` in the answer.
    fn request(&mut self, subject: &str, body: &str) -> anyhow::Result<serde_json::Value> {
        self.next_inbox += 1;
        let inbox = format!("_INBOX.api.{}", self.next_inbox);
        // A sid of its own, unsubscribed by the server after the one answer.
        let sid = 1_000_000 + self.next_inbox;
        self.out
            .extend_from_slice(format!("SUB {inbox} {sid}\r\nUNSUB {sid} 1\r\n").as_bytes());
        self.publish(subject, Some(&inbox), body.as_bytes());
        self.flush()?;
        loop {
            let m = self.next()?;
            if m.subject != inbox {
                continue;
            }
            if let Some(s) = m.status {
                bail!("jetstream {subject}: status {s} (is JetStream on? nats-server -js)");
            }
            let v: serde_json::Value = serde_json::from_slice(&m.payload)
                .with_context(|| format!("jetstream {subject}: answer is not JSON"))?;
            if let Some(e) = v.get("error") {
                bail!("jetstream {subject}: {e}");
            }
            return Ok(v);
        }
    }
}

fn subject(i: usize) -> String {
    format!("ferrybench.{i}")
}

/// The offline workload against JetStream: see the module comment.
pub(crate) fn run_offline(args: &Args, addr: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let n = args.messages;
    let pairs = args.pairs.max(1);
    let size = args.size.max(1);
    let mut admin = Nats::connect(addr)?;
    let _ = admin.request(&format!("$JS.API.STREAM.DELETE.{STREAM}"), "");
    admin.request(
        &format!("$JS.API.STREAM.CREATE.{STREAM}"),
        &serde_json::json!({
            "name": STREAM, "subjects": ["ferrybench.>"], "storage": "file",
            "retention": "workqueue", "discard": "old", "num_replicas": 1,
            "max_msgs": -1, "max_bytes": -1, "max_age": 0, "max_msg_size": -1,
        })
        .to_string(),
    )?;

    let mark0 = cpu_mark(args.server_pid)?;
    let store_start = Instant::now();
    let threads: Vec<_> = (0..pairs)
        .map(|i| {
            std::thread::spawn(move || -> anyhow::Result<(Histogram<u64>, u64)> {
                let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3)?;
                let mut c = Nats::connect(addr)?;
                let prefix = format!("_INBOX.s{i}.");
                c.subscribe(&format!("{prefix}*"), 1);
                let subj = subject(i);
                let payload = vec![0x5au8; size];
                let mut sent_at = vec![Instant::now(); usize::try_from(n)?];
                let (mut next, mut stored) = (0u64, 0u64);
                while stored < n {
                    while next < n && next - stored < OUTSTANDING {
                        let reply = format!("{prefix}{next}");
                        c.publish(&subj, Some(&reply), &payload);
                        sent_at[usize::try_from(next)?] = Instant::now();
                        next += 1;
                    }
                    c.flush()?;
                    let m = c.next()?;
                    let Some(seq) = m.subject.strip_prefix(&prefix) else {
                        continue;
                    };
                    let seq: usize = seq.parse()?;
                    if m.status.is_some() || m.payload.windows(7).any(|w| w == b"\"error\"") {
                        bail!("publish {seq}: {}", String::from_utf8_lossy(&m.payload));
                    }
                    h.record(nanos(sent_at[seq].elapsed()).max(1))?;
                    stored += 1;
                }
                Ok((h, stored))
            })
        })
        .collect();
    let (store_h, stored) = join_stored(threads)?;
    let store_s = store_start.elapsed().as_secs_f64();
    let mark1 = cpu_mark(args.server_pid)?;

    let drain_start = Instant::now();
    let threads: Vec<_> = (0..pairs)
        .map(|i| {
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut c = Nats::connect(addr)?;
                let durable = format!("c{i}");
                c.request(
                    &format!("$JS.API.CONSUMER.DURABLE.CREATE.{STREAM}.{durable}"),
                    &serde_json::json!({
                        "stream_name": STREAM,
                        "config": {
                            "durable_name": durable, "deliver_policy": "all",
                            "ack_policy": "explicit", "filter_subject": subject(i),
                            "max_ack_pending": 10 * BATCH,
                        }
                    })
                    .to_string(),
                )?;
                let inbox = format!("_INBOX.d{i}");
                const FETCH_SID: u64 = 2;
                c.subscribe(&inbox, FETCH_SID);
                let next = format!("$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{durable}");
                let mut got = 0u64;
                while got < n {
                    let want = BATCH.min(n - got);
                    let req = format!("{{\"batch\":{want},\"expires\":5000000000}}");
                    c.publish(&next, Some(&inbox), req.as_bytes());
                    c.flush()?;
                    let mut this = 0;
                    while this < want {
                        let m = c.next()?;
                        if m.sid != FETCH_SID {
                            continue;
                        }
                        if m.status.is_some() {
                            // The request expired with fewer than asked: the rest is gone.
                            return Ok(got);
                        }
                        let reply = m
                            .reply
                            .context("a JetStream message without an ack subject")?;
                        c.publish(&reply, None, b"");
                        this += 1;
                        got += 1;
                    }
                }
                c.ping()?;
                Ok(got)
            })
        })
        .collect();
    let drained = join_drained(threads)?;
    let drain_s = drain_start.elapsed().as_secs_f64();
    let mark2 = cpu_mark(args.server_pid)?;
    // Acks are applied asynchronously: give the stream a moment to count them.
    let mut left = u64::MAX;
    for _ in 0..50 {
        let info = admin.request(&format!("$JS.API.STREAM.INFO.{STREAM}"), "")?;
        left = info["state"]["messages"].as_u64().unwrap_or(u64::MAX);
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = OfflineRun {
        system: "jetstream",
        pairs,
        size,
        stored,
        store_s,
        store_h,
        drained,
        drain_s,
        marks: [mark0, mark1, mark2],
    };
    let mut report = run.report(&args.target);
    report["left_in_store"] = serde_json::json!(left);
    Ok(report)
}
