//! The admin endpoint: `/healthz`, `/readyz`, `/metrics` over plain HTTP/1.1 on the service core.
//! Blocking and one request at a time on purpose: it serves an orchestrator and a scraper, both on
//! loopback, and must never take time from the shard cores.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_shards::metrics::{Histogram, ShardMetrics};

/// What the admin endpoint reads.
#[derive(Debug)]
pub struct AdminState {
    pub shard_metrics: Vec<Arc<ShardMetrics>>,
    pub shard_ready: Vec<Arc<AtomicBool>>,
    pub draining: Arc<AtomicBool>,
    pub token: Option<String>,
    pub service_metrics: Arc<crate::service::ServiceMetrics>,
    pub media_metrics: Arc<crate::media::MediaMetrics>,
}

/// Bytes of a request head the endpoint reads at most.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// How long the endpoint waits for a connection before it looks at the stop flag again (it
/// polled every 20 ms: 50 wake-ups a second of an idle node, more than its shards).
const ACCEPT_WAIT_MS: i32 = 250;

pub fn serve(listener: TcpListener, state: Arc<AdminState>, stop: Arc<AtomicBool>) {
    let _ = listener.set_nonblocking(true);
    // A descriptor held back for the endpoint itself: when the process is out of them (the
    // shards stop short of that, `limits.fds_reserved`, but media files and store segments do
    // not), it is given up for one request and taken back, so `/metrics` still answers.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = handle(stream, &state);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                crate::sys::wait_readable(&listener, ACCEPT_WAIT_MS);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                let served = reserve.take().is_some()
                    && match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = handle(stream, &state);
                            true
                        }
                        Err(_) => false,
                    };
                reserve = std::fs::File::open("/dev/null").ok();
                if !served {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn handle(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))?;
    stream.set_write_timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() + n > REQUEST_BYTES_MAX {
            return respond(&mut stream, 400, "text/plain", "bad request\n");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET\n");
    }
    let authorized = match &state.token {
        None => true,
        Some(t) => lines.any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("authorization") && v.trim() == format!("Bearer {t}")
            })
        }),
    };
    match path {
        "/healthz" => respond(&mut stream, 200, "text/plain", "ok\n"),
        "/readyz" => {
            let ready = !state.draining.load(Ordering::Acquire)
                && state.shard_ready.iter().all(|r| r.load(Ordering::Acquire));
            if ready {
                respond(&mut stream, 200, "text/plain", "ready\n")
            } else {
                respond(&mut stream, 503, "text/plain", "not ready\n")
            }
        }
        "/metrics" if !authorized => {
            respond(&mut stream, 401, "text/plain", "bearer token required\n")
        }
        "/metrics" => respond(
            &mut stream,
            200,
            "text/plain; version=0.0.4",
            &render(state),
        ),
        _ => respond(&mut stream, 404, "text/plain", "not found\n"),
    }
}

fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// Prometheus text format: every shard's metrics summed. No label carries a destination or an
/// address.
pub fn render(state: &AdminState) -> String {
    let mut out = String::new();
    out.push_str("# HELP ferry_build_info Build information.\n# TYPE ferry_build_info gauge\n");
    out.push_str(&format!(
        "ferry_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    ));
    if let Some(p) = crate::sys::process_usage() {
        for (name, kind, help, value) in [
            (
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time of the node, in seconds.",
                p.cpu_s,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the node.",
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory of the node.",
                p.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "gauge",
                "Open file descriptors (connections, listeners, store and media files).",
                p.open_fds as f64,
            ),
            (
                "process_max_fds",
                "gauge",
                "The open-files limit.",
                crate::sys::limits(crate::sys::Resource::Nofile).0 as f64,
            ),
            (
                "process_threads",
                "gauge",
                "Threads of the node.",
                p.threads as f64,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
    }
    out.push_str("# HELP ferry_shards Shard cores running.\n# TYPE ferry_shards gauge\n");
    out.push_str(&format!("ferry_shards {}\n", state.shard_metrics.len()));
    let snaps: Vec<_> = state.shard_metrics.iter().map(|m| m.snapshot()).collect();
    if let Some(first) = snaps.first() {
        for (i, (name, kind, help, _)) in first.iter().enumerate() {
            let total: u64 = snaps.iter().map(|s| s[i].3).sum();
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {total}\n"
            ));
        }
    }
    for (name, help, pick) in [
        (
            "ferry_shard_tick_lag_seconds",
            "How late each shard's tick ran after it was due (work holding the core shows here).",
            (|m: &ShardMetrics| &m.tick_lag) as fn(&ShardMetrics) -> &Histogram,
        ),
        (
            "ferry_store_sync_seconds",
            "Group commit duration: from issuing its fdatasyncs to their completion.",
            |m: &ShardMetrics| &m.store_sync,
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for (shard, m) in state.shard_metrics.iter().enumerate() {
            pick(m).render(&mut out, name, shard);
        }
    }
    state.service_metrics.render(&mut out);
    state.media_metrics.render(&mut out);
    out
}
