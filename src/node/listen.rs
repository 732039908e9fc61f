//! Listening sockets: one per listener with `SO_REUSEPORT` per shard (the kernel spreads
//! connections over the shards), and clear errors for an address that is taken or served already.

use super::*;

pub(super) fn tcp_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
}

/// The one line a listener that cannot be bound ends start-up with; `key` is its configuration
/// key.
pub(super) fn bind_error(key: &str, addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
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
pub(super) fn refuse_if_served(key: &str, addr: SocketAddr) -> anyhow::Result<()> {
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

pub(super) fn bind_reuseport(
    addr: SocketAddr,
    backlog: i32,
) -> anyhow::Result<std::net::TcpListener> {
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
pub(super) fn bind_per_shard(
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
