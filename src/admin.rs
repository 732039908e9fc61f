//! The admin endpoint: `/healthz`, `/readyz`, `/metrics` over plain HTTP/1.1 (keep-alive), a
//! task of the service core's low-priority runtime (`crate::http`): it serves an orchestrator
//! and a scraper and must never take time from the shard cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_shards::metrics::{Exposition, Histogram, ShardMetrics};
use http::{Method, Request, Response, StatusCode, header};

use crate::http::{Body, text};

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

/// Serves the admin endpoint on `listener` (on the service core's runtime, `crate::http`).
pub async fn serve(
    listener: std::net::TcpListener,
    write_stall: std::time::Duration,
    state: Arc<AdminState>,
) {
    let caps = crate::http::ADMIN_CAPS;
    crate::http::serve(listener, caps, write_stall, "admin", move |req, _| {
        let state = state.clone();
        async move { handle(&req, &state) }
    })
    .await;
}

/// One request: `/healthz`, `/readyz`, `/metrics` (with the bearer token when one is set).
pub fn handle<B>(req: &Request<B>, state: &AdminState) -> Response<Body> {
    const PLAIN: &str = "text/plain";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n");
    }
    let authorized = match &state.token {
        None => true,
        Some(t) => req
            .headers()
            .get_all(header::AUTHORIZATION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.trim() == format!("Bearer {t}"))),
    };
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => {
            let ready = !state.draining.load(Ordering::Acquire)
                && state.shard_ready.iter().all(|r| r.load(Ordering::Acquire));
            if ready {
                text(StatusCode::OK, PLAIN, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready\n")
            }
        }
        "/metrics" if !authorized => {
            text(StatusCode::UNAUTHORIZED, PLAIN, "bearer token required\n")
        }
        "/metrics" => text(StatusCode::OK, "text/plain; version=0.0.4", render(state)),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    }
}

/// Prometheus text format: every shard's metrics summed, the histograms per shard, the service
/// core's and the media workers' blocks, all through the one encoder
/// (`ferry_shards::metrics::Exposition`). No label carries a destination or an address.
pub fn render(state: &AdminState) -> String {
    let mut out = String::new();
    {
        let e = &mut Exposition::new(&mut out);
        e.header("ferry_build_info", "gauge", "Build information.");
        e.sample(
            "ferry_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        if let Some(p) = crate::sys::process_usage() {
            let nofile = crate::sys::limits(crate::sys::Resource::Nofile).0;
            e.scalar(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time of the node, in seconds.",
                p.cpu_s,
            );
            for (name, help, value) in [
                (
                    "process_resident_memory_bytes",
                    "Resident memory of the node.",
                    p.resident_bytes,
                ),
                (
                    "process_virtual_memory_bytes",
                    "Virtual memory of the node.",
                    p.virtual_bytes,
                ),
                (
                    "process_open_fds",
                    "Open file descriptors (connections, listeners, store and media files).",
                    p.open_fds,
                ),
                ("process_max_fds", "The open-files limit.", nofile),
                ("process_threads", "Threads of the node.", p.threads),
            ] {
                e.scalar(name, "gauge", help, value);
            }
        }
        e.scalar(
            "ferry_shards",
            "gauge",
            "Shard cores running.",
            state.shard_metrics.len(),
        );
        let snaps: Vec<_> = state.shard_metrics.iter().map(|m| m.snapshot()).collect();
        if let Some(first) = snaps.first() {
            for (i, (name, kind, help, _)) in first.iter().enumerate() {
                let total: u64 = snaps.iter().map(|s| s[i].3).sum();
                e.scalar(name, kind, help, total);
            }
        }
        let shards: Vec<String> = (0..state.shard_metrics.len())
            .map(|s| s.to_string())
            .collect();
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
            (
                "ferry_hop_delay_seconds",
                "From a cross-core batch leaving its sender's outbox to the owner core handling it.",
                |m: &ShardMetrics| &m.hop_delay,
            ),
            (
                "ferry_hop_batch_messages",
                "Messages per cross-core batch a shard sent.",
                |m: &ShardMetrics| &m.hop_batch_msgs,
            ),
        ] {
            let labels: Vec<[(&str, &str); 1]> =
                shards.iter().map(|s| [("shard", s.as_str())]).collect();
            let series: Vec<(&[(&str, &str)], &Histogram)> = labels
                .iter()
                .zip(&state.shard_metrics)
                .map(|(l, m)| (&l[..], pick(m)))
                .collect();
            e.histogram(name, help, &series);
        }
    }
    state.service_metrics.render(&mut out);
    state.media_metrics.render(&mut Exposition::new(&mut out));
    out
}
