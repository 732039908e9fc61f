//! Node start-up and shutdown: placement of shards and the service core, listeners, identity key.
//!
//! Start: config → umask 077 → data directory (created 0700, locked) → CPU placement → preflight
//! (io_uring, memlock, fds) → identity key → listeners (each refused if another process serves
//! it; then one `SO_REUSEPORT` socket per (listener, shard), bound here so every shard shares the
//! port) → service core (admin endpoint, low priority) → shard executors → "ready" lines on
//! stdout. Stop: SIGTERM or SIGINT sets the stop flag; shards close their connections with
//! `ShuttingDown` and exit.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use ferry_proto::conn::ConnLimits;
use ferry_shards::ShardConfig;
use ferry_shards::clock::Clock;
use ferry_shards::driver::{self, DriverConfig, ListenerSpec, Reload, Reloadable};
use ferry_shards::fatal::FatalStop;
use ferry_shards::ratelimit::{IpLimits, Rate};
use ferry_shards::shard::StoreSpec;
use ferry_shards::store::StoreLimits;
use socket2::{Domain, Protocol, Socket, Type};

use crate::admin::{self, AdminState};
use crate::config::{Config, SHARDS_MAX};
use crate::sys;

mod configs;
mod datadir;
mod listen;

use configs::*;
use datadir::check_store_shards;
use datadir::{load_or_create_node_key, open_data_dir};
use listen::*;

/// Where shards and the service core run.
#[derive(Debug, PartialEq, Eq)]
pub struct Placement {
    pub shard_cpus: Vec<usize>,
    pub service_cpu: Option<usize>,
}

/// Default: every allowed CPU but one is a shard core; the last is the service core. With one CPU,
/// one shard and an unpinned service thread. An explicit shard count above the CPU count wraps
/// (useful for tests of cross-core paths on small machines).
pub fn place(allowed: &[usize], shards: usize) -> Placement {
    assert!(!allowed.is_empty());
    // Automatic: capped at SHARDS_MAX on hosts with more CPUs (the rest stay idle).
    let n = if shards == 0 {
        allowed.len().saturating_sub(1).clamp(1, SHARDS_MAX)
    } else {
        shards
    };
    let shard_cpus: Vec<usize> = (0..n).map(|i| allowed[i % allowed.len()]).collect();
    let service_cpu = (allowed.len() > n).then(|| allowed[n]);
    Placement {
        shard_cpus,
        service_cpu,
    }
}

/// Runs the node until SIGTERM or SIGINT. `reresolve` rebuilds the configuration from the same
/// sources (file, environment, flags) on SIGHUP.
pub fn run(cfg: Config, reresolve: impl Fn() -> anyhow::Result<Config>) -> anyhow::Result<()> {
    cfg.validate()?;
    sys::restrict_umask();
    let mut data_dir = open_data_dir(&cfg.data_dir)?;
    let allowed = sys::allowed_cpus();
    // With an automatic shard count, a node that already has a store keeps the count it was
    // written with (dests are owned by `dest % shards`).
    let recorded = if cfg.store_enabled && cfg.shards == 0 {
        std::fs::read_to_string(cfg.data_dir.join("store").join("shards"))
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok())
    } else {
        None
    };
    if let Some(n) = recorded.filter(|n| *n > SHARDS_MAX) {
        bail!(
            "{} records {n} shards, more than the {SHARDS_MAX} a node runs: the file is damaged",
            cfg.data_dir.join("store").join("shards").display()
        );
    }
    let placement = place(&allowed, recorded.unwrap_or(cfg.shards));
    let shards = placement.shard_cpus.len();
    if cfg.store_enabled
        && cfg.limits.store_disk_bytes_max / (shards as u64)
            < 2 * cfg.limits.store_segment_bytes as u64
    {
        bail!(
            "limits.store_disk_bytes_max gives each of the {shards} shards less than two segments of limits.store_segment_bytes; raise it or use smaller segments"
        );
    }
    sys::preflight_io_uring()?;
    let engine = cfg.engine()?;
    if engine == driver::Engine::Glommio {
        sys::preflight_memlock(shards, cfg.limits.io_memory_bytes)?;
    }
    let nofile = sys::raise_nofile();
    let nofile_warning = sys::check_nofile(nofile, cfg.limits.connections_max)?;
    if cfg.limits.fds_reserved >= nofile {
        bail!(
            "limits.fds_reserved ({}) leaves no file descriptors for connections under the open-files limit {nofile}",
            cfg.limits.fds_reserved
        );
    }
    let node_seed = load_or_create_node_key(&cfg.data_dir)?;
    let node_id = ferry_proto::addr::ed25519_public(&node_seed);
    let initial = reloadable(&cfg, shards)?;
    if cfg.store_enabled {
        check_store_shards(&cfg.data_dir.join("store"), shards)?;
    }

    // Every listener is refused if another process has its address, before anything is served:
    // the admin endpoint and the media HTTP listener have no SO_REUSEPORT (their own bind is the
    // check), each shard listener is probed before its sockets are bound.
    let admin_listener = std::net::TcpListener::bind(cfg.admin_listen)
        .map_err(|e| bind_error("admin_listen", cfg.admin_listen, e))?;
    if let Some(addr) = cfg.media_http_addr()?.filter(|_| cfg.media.enabled) {
        refuse_if_served("media.http_listen", addr)?;
    }
    let mut per_shard: Vec<Vec<ListenerSpec>> = (0..shards).map(|_| Vec::new()).collect();
    let mut lines = Vec::new();
    for (addrs, tls, kind, key) in [
        (&cfg.listen, false, "plain", "listen"),
        (&cfg.listen_tls, true, "tls", "listen_tls"),
    ] {
        for addr in addrs {
            refuse_if_served(key, *addr)?;
            let (actual, sockets) = bind_per_shard(*addr, shards, cfg.limits.listen_backlog)?;
            for (i, socket) in sockets.into_iter().enumerate() {
                per_shard[i].push(ListenerSpec { socket, tls });
            }
            lines.push(format!("ferry listening {kind} {actual}"));
        }
    }
    lines.push(format!(
        "ferry listening admin {}",
        admin_listener.local_addr()?
    ));

    // Signals only set flags; this thread acts on them. Shards and the admin endpoint have their
    // own stop flags so that shutdown happens in order: not ready, then shards, then admin.
    let signal_stop = Arc::new(AtomicBool::new(false));
    let signal_reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, signal_stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, signal_stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, signal_reload.clone())?;
    // The same signals wake the main thread (the flags say which): it sleeps until one comes.
    let mut wake_on_signal = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    // A thread that can no longer promise durability reports here and stops; this thread wakes,
    // logs why and ends the process (`ferry_shards::fatal`).
    let fatal = FatalStop::new();
    {
        let wake = wake_on_signal.handle();
        fatal.set_waker(move || wake.close());
        // A panic on any of the node's threads (a shard's executor, a media worker, the admin
        // endpoint) stops the node: a dead shard would leave its dests unserved for good.
        let f = fatal.clone();
        let print = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            print(info);
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("unnamed");
            f.report(format!("thread {name} panicked: {info}"));
        }));
    }
    let shard_stop = Arc::new(AtomicBool::new(false));

    let l = &cfg.limits;
    // The tick wakes for a group commit when one is due (`store_sync_due_ms`), not at the fsync
    // interval all the time.
    let tick_ms = l.tick_ms;
    tracing::info!(?engine, io_engine = %cfg.io_engine, "shards' I/O driver");
    let driver_cfg = DriverConfig {
        engine,
        cpus: Some(placement.shard_cpus.clone()),
        io_memory_bytes: l.io_memory_bytes,
        tick_ms,
        hop_channel_batches: l.hop_channel_batches,
        read_buffer_bytes: l.read_buffer_bytes,
        drain_grace_ms: l.drain_grace_ms,
        keepalive: ferry_shards::driver::TcpKeepalive {
            idle_ms: l.tcp_keepalive_idle_ms,
            interval_ms: l.tcp_keepalive_interval_ms,
            probes: l.tcp_keepalive_probes,
            user_timeout_ms: l.tcp_user_timeout_ms,
        },
    };
    let puzzle = puzzle_config(&cfg)?;
    let service = crate::service::start(
        service_config(
            &cfg,
            shards,
            placement.service_cpu,
            Clock::new(cfg.clock_offset_s),
            &puzzle,
        )?,
        fatal.clone(),
    )
    .context("starting the service core")?;
    let media_metrics = Arc::new(crate::media::MediaMetrics::default());
    let media = if cfg.media.enabled {
        let limits = ferry_shards::media::MediaLimits {
            blob_bytes_max: cfg.media.blob_bytes_max,
            ttl_s: cfg.media.ttl_s,
            disk_bytes_max: cfg.media.disk_bytes_max,
            uploads_max: cfg.media.uploads_per_core_max,
            uploads_per_source_max: cfg.media.uploads_per_source_max,
            upload_idle_s: cfg.media.upload_idle_s,
        };
        // Blobs are owned by `id % shards`, like the store's dests: record the count.
        check_store_shards(&cfg.data_dir.join("media"), shards)?;
        let m = crate::media::start(
            &cfg.data_dir.join("media"),
            limits,
            cfg.media.queue_msgs_max,
            placement.service_cpu,
            Clock::new(cfg.clock_offset_s),
            &service.ports,
            media_metrics.clone(),
        )
        .context("starting the media workers")?;
        if let Ok(mut links) = service.links.lock() {
            for link in links.iter_mut().flatten() {
                link.media = m.sinks.clone();
            }
        }
        Some(m)
    } else {
        None
    };
    if cfg.media.enabled && !cfg.media.http_listen.is_empty() {
        let addr = &cfg.media.http_listen;
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("cannot bind media.http_listen {addr}"))?;
        lines.push(format!(
            "ferry listening media-http {}",
            listener.local_addr()?
        ));
        service.runtime.spawn(crate::media::serve_http(
            listener,
            Duration::from_millis(cfg.limits.write_stall_timeout_ms),
            cfg.data_dir.join("media"),
            shards,
            Clock::new(cfg.clock_offset_s),
        ));
    }
    let reload = Arc::new(Reload::new(initial.clone()));
    let handles = driver::start(
        shard_configs(&cfg, &initial, shards, node_id, &puzzle)?,
        per_shard,
        driver_cfg,
        Clock::new(cfg.clock_offset_s),
        shard_stop.clone(),
        fatal.clone(),
        reload.clone(),
        Some(service.links.clone()),
    )
    .context("starting shard executors")?;

    let admin_state = Arc::new(AdminState {
        shard_metrics: handles.iter().map(|h| h.metrics.clone()).collect(),
        shard_ready: handles.iter().map(|h| h.ready.clone()).collect(),
        draining: Arc::new(AtomicBool::new(false)),
        token: admin_token(&cfg)?,
        service_metrics: service.metrics.clone(),
        media_metrics,
    });
    let service_cpu = placement.service_cpu;
    service.runtime.spawn(admin::serve(
        admin_listener,
        Duration::from_millis(cfg.limits.write_stall_timeout_ms),
        admin_state.clone(),
    ));

    // Wait for every shard to be serving before announcing readiness.
    while !admin_state
        .shard_ready
        .iter()
        .all(|r| r.load(Ordering::Acquire))
    {
        if signal_stop.load(Ordering::Acquire) {
            break;
        }
        stop_if_fatal(&fatal);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut out = std::io::stdout().lock();
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    // `none`: the service thread is not pinned (no CPU left over for it).
    let service_cpu = service_cpu.map_or_else(|| "none".to_string(), |c| c.to_string());
    writeln!(
        out,
        "ferry ready shards={shards} service_cpu={service_cpu} nofile={nofile} node_id={}",
        ferry_proto::hex::encode(&node_id)
    )?;
    out.flush()?;
    drop(out);
    tracing::info!(shards, %service_cpu, "ferry node ready");
    sys::sd_notify("READY=1\nSTATUS=serving");
    for w in [nofile_warning, data_dir.warning.take()]
        .into_iter()
        .flatten()
    {
        tracing::warn!("{w}");
    }

    while !signal_stop.load(Ordering::Acquire) {
        if signal_reload.swap(false, Ordering::AcqRel) {
            sys::sd_notify("RELOADING=1");
            let next =
                reresolve().and_then(|c| Ok((cfg.restart_keys(&c)?, reloadable(&c, shards)?)));
            match next {
                Ok((restart, next)) => {
                    reload.publish(next);
                    tracing::info!("configuration reloaded: limits and TLS certificate");
                    if !restart.is_empty() {
                        tracing::warn!(
                            "configuration keys changed that only a restart applies; still running with the old values of: {}",
                            restart.join(", ")
                        );
                    }
                }
                Err(e) => {
                    tracing::error!("reload refused, keeping the running configuration: {e:#}")
                }
            }
            sys::sd_notify("READY=1");
        }
        // Sleep until a signal (or a fatal report) comes: an idle node's main thread does not
        // wake at all. A signal that came since the flags were read is pending, and the wait
        // returns at once; a closed wait (the fatal waker) returns at once too.
        stop_if_fatal(&fatal);
        if !signal_stop.load(Ordering::Acquire) && !signal_reload.load(Ordering::Acquire) {
            let _ = wake_on_signal.wait().count();
        }
        stop_if_fatal(&fatal);
    }
    tracing::info!(stop_timeout_s = cfg.stop_timeout_s, "draining");
    sys::sd_notify("STOPPING=1\nSTATUS=draining");
    admin_state.draining.store(true, Ordering::Release);
    // The drain is bounded: past stop_timeout_s the process exits 1. `Stored`, prekey and push
    // answers already follow their syncs; what the bound can cost is media chunks acknowledged
    // since their upload's last 8 MiB sync (they are resent when the upload resumes).
    // The drain's steps run on a thread of their own; this thread watches it, the deadline and
    // fatal reports (a shard whose final sync fails stops where it is and never joins), and is
    // the one that ends the process.
    let timeout = Duration::from_secs(cfg.stop_timeout_s);
    let started = std::time::Instant::now();
    let drain = std::thread::Builder::new()
        .name("ferry-drain".into())
        .spawn(move || {
            shard_stop.store(true, Ordering::Release);
            for h in handles {
                let _ = h.join.join();
            }
            // The shards are gone: the media workers finish their queues, the service core
            // syncs its journals, and both exit.
            if let Some(m) = media {
                m.stop();
            }
            // The admin endpoint and the media listener stop with the service core's runtime.
            service.stop();
        })?;
    while !drain.is_finished() {
        stop_if_fatal(&fatal);
        if started.elapsed() >= timeout {
            eprintln!(
                "ferry: the drain did not finish within stop_timeout_s = {}; exiting",
                timeout.as_secs()
            );
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = drain.join();
    stop_if_fatal(&fatal);
    tracing::info!("stopped");
    Ok(())
}

/// Ends the process (exit status 1) once a thread reported a fatal condition: logged through
/// `tracing` (JSON when configured) and told to systemd.
fn stop_if_fatal(fatal: &FatalStop) {
    if let Some(why) = fatal.reason() {
        tracing::error!(reason = %why, "stopping: durability can no longer be promised");
        eprintln!("ferry: stopping: {why}");
        sys::sd_notify(&format!("STOPPING=1\nSTATUS=fatal: {why}"));
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_keeps_a_service_core() {
        assert_eq!(
            place(&[0, 1], 0),
            Placement {
                shard_cpus: vec![0],
                service_cpu: Some(1)
            }
        );
        assert_eq!(
            place(&[0], 0),
            Placement {
                shard_cpus: vec![0],
                service_cpu: None
            }
        );
        assert_eq!(
            place(&[2, 3, 5, 7], 0),
            Placement {
                shard_cpus: vec![2, 3, 5],
                service_cpu: Some(7)
            }
        );
        assert_eq!(
            place(&[0, 1], 3),
            Placement {
                shard_cpus: vec![0, 1, 0],
                service_cpu: None
            }
        );
    }
}
