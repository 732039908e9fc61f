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

fn tcp_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
}

/// The one line a listener that cannot be bound ends start-up with; `key` is its configuration
/// key.
fn bind_error(key: &str, addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "{key} {addr} is already in use by another process (another ferry node?): stop it or choose another address"
        )
    } else {
        anyhow::anyhow!("cannot bind {key} {addr}: {e}")
    }
}

/// Refuses `addr` when another process already has a socket on it. The shard sockets set
/// `SO_REUSEPORT` so that every shard accepts on one port, and a second node on the same address
/// could then bind as well and take a share of the connections. This probe does not set
/// `SO_REUSEPORT`, so its bind fails on any socket bound there (`SO_REUSEADDR` lets it past
/// connections in TIME_WAIT, so a restart is not refused). Port 0 needs no probe: the kernel
/// picks a port no socket uses, `SO_REUSEPORT` or not.
fn refuse_if_served(key: &str, addr: SocketAddr) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let s = tcp_socket(addr)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into()).map_err(|e| bind_error(key, addr, e))
}

fn bind_reuseport(addr: SocketAddr, backlog: i32) -> anyhow::Result<std::net::TcpListener> {
    let s = tcp_socket(addr)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    s.listen(backlog)?;
    Ok(s.into())
}

/// One socket per shard for `addr`. Port 0 is resolved by the first bind, so all shards share it.
fn bind_per_shard(
    addr: SocketAddr,
    shards: usize,
    backlog: i32,
) -> anyhow::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let first = bind_reuseport(addr, backlog)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..shards {
        all.push(bind_reuseport(actual, backlog)?);
    }
    Ok((actual, all))
}

/// The lock file in the data directory; it holds the pid of the node that locks it.
pub const LOCK_FILE: &str = "node.lock";

/// The data directory, open to its owner only and locked for the life of the process.
#[derive(Debug)]
pub struct DataDir {
    /// Holds the `flock`. The kernel releases it when the process exits, however it exits.
    _lock: std::fs::File,
    /// Set when the directory was open to other users: logged once the node is up (start-up
    /// failures stay one line).
    pub warning: Option<String>,
}

/// Creates the data directory (mode 0700) if missing, takes it back to 0700 if group or others
/// could enter it, and locks it: a second node on the same directory would serve with the same
/// identity key and open the same store twice, so it is refused, naming the holder's pid.
pub fn open_data_dir(dir: &Path) -> anyhow::Result<DataDir> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data dir {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading data dir {}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    let warning = (mode & 0o077 != 0).then(|| {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            Ok(()) => format!(
                "data directory {} was mode {mode:04o}, open to other users; changed it to 0700",
                dir.display()
            ),
            Err(e) => format!(
                "data directory {} is mode {mode:04o}, open to other users, and cannot be changed to 0700 ({e}): run chmod 700 on it",
                dir.display()
            ),
        }
    });
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let locked =
        sys::try_lock_exclusive(&file).with_context(|| format!("locking {}", path.display()))?;
    if !locked {
        let holder = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .map_or_else(|| "pid unknown".to_string(), |pid| format!("pid {pid}"));
        bail!(
            "data directory {} is in use by another ferry node ({holder}, holding {}): stop it, or give this node its own data_dir",
            dir.display(),
            path.display()
        );
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(DataDir {
        _lock: file,
        warning,
    })
}

/// The node's Ed25519 identity: a 32-byte seed in `data_dir/node.key`, created on first start
/// (the directory exists: [`open_data_dir`]).
pub fn load_or_create_node_key(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = data_dir.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} must hold exactly 32 bytes", path.display()))?;
            Ok(seed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            ferry_proto::fsutil::write_atomic(&path, &seed, 0o600)?;
            Ok(seed)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The part of the configuration SIGHUP can change, as each shard applies it (the keys it reads
/// are `config::RELOADABLE_KEYS`: a reload names every other changed key as needing a restart).
fn reloadable(cfg: &Config, shards: usize) -> anyhow::Result<Reloadable> {
    let l = &cfg.limits;
    let conn_limits = ConnLimits {
        handshake_timeout_ms: l.handshake_timeout_ms,
        idle_timeout_ms: l.idle_timeout_ms,
        ping_interval_ms: l.ping_interval_ms,
        frame_stall_timeout_ms: l.frame_stall_timeout_ms,
        write_stall_timeout_ms: l.write_stall_timeout_ms,
        send_queue_bytes_max: l.send_queue_bytes_max,
        subscriptions_max: l.subscriptions_per_conn_max,
        proof_failures_max: l.proof_failures_per_conn_max,
    };
    // Each shard sees a share of every address's traffic (the kernel spreads connections), so the
    // per-address rates are split across shards; bursts too, but never below one.
    let per = |v: u64| {
        if v == 0 {
            0
        } else {
            (v / shards as u64).max(1)
        }
    };
    let ip_limits = IpLimits {
        conns: Rate {
            per_s: per(l.ip_connections_per_s),
            burst: per(l.ip_connections_burst),
        },
        bytes: Rate {
            per_s: per(l.ip_bytes_per_s),
            burst: per(l.ip_bytes_burst),
        },
        proofs: Rate {
            per_s: per(l.ip_proofs_per_s),
            burst: per(l.ip_proofs_burst),
        },
        proofs_per_conn: Rate {
            per_s: l.proofs_per_conn_per_s,
            burst: l.proofs_per_conn_burst,
        },
        proof_failures: Rate {
            per_s: per(l.ip_proof_failures_per_s),
            burst: per(l.ip_proof_failures_burst),
        },
        connections_open_max: if l.ip_connections_max == 0 {
            0
        } else {
            (l.ip_connections_max / shards).max(1)
        },
        entries_max: l.ip_table_entries_max,
    };
    // Client connections stop `fds_reserved` short of the open-files limit, so the store, media,
    // the admin endpoint and refusals still get descriptors when clients hold all they may.
    let fds_for_connections = match sys::limits(sys::Resource::Nofile).0 {
        0 => usize::MAX, // unreadable: start-up already refused that
        nofile => usize::try_from(nofile.saturating_sub(l.fds_reserved)).unwrap_or(usize::MAX),
    };
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) if !cfg.listen_tls.is_empty() => Some(crate::tls::server_config(c, k)?),
        _ => None,
    };
    Ok(Reloadable {
        conn_limits,
        ip_limits,
        connections_max: (l.connections_max.min(fds_for_connections) / shards).max(1),
        tls,
    })
}

/// Each shard's share of the node's memory budget (`limits.memory_bytes_max`, or derived from
/// the host when 0). Shards share nothing: each enforces its own share.
fn memory_bytes_per_shard(cfg: &Config, shards: usize) -> anyhow::Result<usize> {
    let node = match cfg.limits.memory_bytes_max {
        0 => sys::memory_budget_default().context(
            "cannot read the host's memory (/proc/meminfo): set limits.memory_bytes_max",
        )?,
        n => n,
    };
    let per = usize::try_from(node / shards as u64).unwrap_or(usize::MAX);
    let min = ferry_shards::shard::MEMORY_BYTES_MIN;
    if per < min {
        anyhow::bail!(
            "limits.memory_bytes_max = {node} gives each of {shards} shards {per} bytes; each needs at least {min}: raise it or run fewer shards"
        );
    }
    Ok(per)
}

fn shard_configs(
    cfg: &Config,
    r: &Reloadable,
    shards: usize,
    node_id: [u8; 32],
    puzzle: &ferry_shards::puzzle::PuzzleConfig,
) -> anyhow::Result<Vec<ShardConfig>> {
    let l = &cfg.limits;
    let memory_bytes_max = memory_bytes_per_shard(cfg, shards)?;
    let store = if cfg.store_enabled {
        let per = |v: u64| (v / shards as u64).max(1);
        Some(StoreSpec {
            dir: cfg.data_dir.join("store"),
            limits: StoreLimits {
                segment_bytes: l.store_segment_bytes,
                segment_roll_s: l.store_segment_roll_s,
                ttl_max_s: l.store_ttl_max_s,
                dest_blobs_max: l.store_dest_blobs_max,
                dest_bytes_max: l.store_dest_bytes_max,
                disk_bytes_max: per(l.store_disk_bytes_max),
                high_water_percent: l.store_high_water_percent,
                sources: ferry_shards::store::fair::SourceLimits {
                    share_percent: l.store_source_share_percent,
                    dest_share_percent: l.store_source_dest_share_percent,
                    pressure_percent: l.store_pressure_percent,
                    sources_max: l.store_sources_max,
                    ipv4_prefix_bits: l.store_source_ipv4_prefix_bits,
                    ipv6_prefix_bits: l.store_source_ipv6_prefix_bits,
                },
            },
            policy: cfg.fsync_policy()?,
        })
    } else {
        None
    };
    (0..shards)
        .map(|i| {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            Ok(ShardConfig {
                shard: u16::try_from(i).context("too many shards")?,
                shards,
                node_id,
                seed,
                conn_limits: r.conn_limits.clone(),
                ip_limits: r.ip_limits,
                connections_max: r.connections_max,
                hop_queue_msgs_max: cfg.limits.hop_queue_msgs_max,
                store: store.clone(),
                media_upload_rate: ferry_shards::ratelimit::Rate {
                    per_s: cfg.media.upload_bytes_per_conn_per_s,
                    burst: cfg.media.upload_bytes_per_conn_burst,
                },
                memory_bytes_max,
                puzzle: puzzle.clone(),
            })
        })
        .collect()
}

/// The node's puzzle settings with a fresh seed key: made once per start and handed to every
/// shard (send puzzles) and to the service core (prekey fetch puzzles), so that every core
/// derives the same seed from it without sharing anything mutable.
fn puzzle_config(cfg: &Config) -> anyhow::Result<ferry_shards::puzzle::PuzzleConfig> {
    let l = &cfg.limits;
    let mut puzzle_key = [0u8; 32];
    getrandom::fill(&mut puzzle_key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(ferry_shards::puzzle::PuzzleConfig {
        key: puzzle_key,
        seed_period_s: l.puzzle_seed_period_s,
        levels: l.puzzle_levels,
        effort_max: l.puzzle_effort_max,
        dest_fill_pct_min: l.puzzle_dest_fill_pct_min,
        store_fill_pct_min: l.puzzle_store_fill_pct_min,
        checks_per_conn: ferry_shards::ratelimit::Rate {
            per_s: l.puzzle_checks_per_conn_per_s,
            burst: l.puzzle_checks_per_conn_burst,
        },
        answers_seen_max: l.puzzle_answers_seen_max,
        capabilities_max: l.puzzle_capabilities_max,
        capability_ttl_max_s: l.puzzle_capability_ttl_max_s,
    })
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
    sys::preflight(shards, cfg.limits.io_memory_bytes)?;
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
    let driver_cfg = DriverConfig {
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

/// The service core's settings from the node configuration (reads the push credentials: a
/// missing or malformed key file stops start-up with its name).
fn service_config(
    cfg: &Config,
    shards: usize,
    cpu: Option<usize>,
    clock: Clock,
    puzzle: &ferry_shards::puzzle::PuzzleConfig,
) -> anyhow::Result<crate::service::ServiceConfig> {
    use crate::service::providers;
    use ferry_shards::prekeys::DirectoryLimits;
    use ferry_shards::push::PushLimits;
    use ferry_shards::ratelimit::Rate;
    let k = &cfg.prekeys;
    let p = &cfg.push;
    let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
    let webpush_origins_allowed =
        ferry_shards::push::endpoint::AllowList::parse(&p.webpush_origins_allowed)?;
    let mut prov = providers::Providers::default();
    if let Some(f) = path(&p.apns_key_file) {
        prov.apns = Some(providers::ApnsConfig {
            key: crate::service::load_p256(&f).context("push.apns_key_file")?,
            key_id: p.apns_key_id.clone(),
            team_id: p.apns_team_id.clone(),
            topic: p.apns_topic.clone(),
            url: p.apns_url.clone(),
            token_refresh_s: p.apns_token_refresh_s,
        });
    }
    if let Some(f) = path(&p.fcm_service_account_file) {
        let (key, client_email, project_id, token_uri) =
            crate::service::load_service_account(&f).context("push.fcm_service_account_file")?;
        prov.fcm = Some(providers::FcmConfig {
            key,
            client_email,
            project_id,
            token_url: if p.fcm_token_url.is_empty() {
                token_uri
            } else {
                p.fcm_token_url.clone()
            },
            url: p.fcm_url.clone(),
            priority: p.fcm_priority.clone(),
            ttl_s: p.fcm_ttl_s,
        });
    }
    if let Some(f) = path(&p.webpush_vapid_key_file) {
        prov.webpush = Some(providers::WebPushConfig {
            key: crate::service::load_p256(&f).context("push.webpush_vapid_key_file")?,
            subject: p.webpush_subject.clone(),
            ttl_s: p.webpush_ttl_s,
            origins_allowed: webpush_origins_allowed.clone(),
        });
    }
    Ok(crate::service::ServiceConfig {
        dir: cfg.data_dir.join("service"),
        shards,
        cpu,
        queue_max: cfg.limits.service_queue_msgs_max,
        replies_max: cfg.limits.service_replies_msgs_max,
        prekeys: k.enabled.then_some(DirectoryLimits {
            slots_max: k.slots_max,
            bytes_max: k.bytes_max,
            slot_ttl_s: k.slot_ttl_s,
            fetch_per_addr: Rate {
                per_s: k.fetch_per_addr_per_s,
                burst: k.fetch_per_addr_burst,
            },
            one_time_per_slot: ferry_shards::prekeys::HourlyRate {
                per_hour: k.one_time_per_slot_per_hour,
                burst: k.one_time_per_slot_burst,
            },
            one_time_per_source: ferry_shards::prekeys::HourlyRate {
                per_hour: k.one_time_per_source_per_hour,
                burst: k.one_time_per_source_burst,
            },
            upload_per_addr: Rate {
                per_s: k.upload_per_addr_per_s,
                burst: k.upload_per_addr_burst,
            },
            rate_entries_max: k.rate_entries_max,
            puzzle: puzzle.clone(),
        }),
        push: PushLimits {
            registrations_max: p.registrations_max,
            dests_per_token_max: p.dests_per_token_max,
            registration_ttl_max_s: p.registration_ttl_max_s,
            coalesce_window_ms: p
                .coalesce_window_s
                .checked_mul(1000)
                .context("push.coalesce_window_s is too large")?,
            webpush_origins_allowed,
            enabled: prov.enabled(),
        },
        send: ferry_shards::push::SendLimits {
            rate_per_s: [p.apns_rate_per_s, p.fcm_rate_per_s, p.webpush_rate_per_s],
            queue_max: p.queue_max,
            inflight_max: p.inflight_max,
            retries_max: p.retries_max,
            retry_base_ms: p.retry_base_ms,
        },
        providers: prov,
        ca_file: path(&p.ca_file),
        clock,
    })
}

/// Dests are owned by `dest % shards`, so a store written with another shard count cannot be
/// served: the store directory records the count (written atomically before any shard starts).
fn check_store_shards(dir: &Path, shards: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating store dir {}", dir.display()))?;
    let marker = dir.join("shards");
    match std::fs::read_to_string(&marker) {
        Ok(text) => {
            if text.trim() != shards.to_string() {
                bail!(
                    "the store in {} was written by {} shards; start with --shards {} (or move the store away)",
                    dir.display(),
                    text.trim(),
                    text.trim()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ferry_proto::fsutil::write_atomic(&marker, format!("{shards}\n").as_bytes(), 0o600)?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", marker.display())),
    }
    Ok(())
}

fn admin_token(cfg: &Config) -> anyhow::Result<Option<String>> {
    let Some(p) = &cfg.admin_token_file else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("admin token file {} is empty", p.display());
    }
    Ok(Some(token))
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
