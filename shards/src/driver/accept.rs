//! Accepting connections: the listener task (address limits, the node's connection cap, TLS or
//! plain), and what it does when the process runs out of descriptors (a reserve descriptor, closed
//! refusals, a retry later).

use super::*;

/// Accept failures are logged at most this often (all are counted).
pub(super) const ACCEPT_WARN_INTERVAL_MS: u64 = 10_000;

/// Pending connections one acceptor refuses in a row at the descriptor limit before it yields.
pub(super) const FD_LIMIT_REFUSALS_PER_TURN: usize = 64;

/// How often an acceptor at the descriptor limit looks for new connections to refuse.
pub(super) const FD_LIMIT_RETRY_MS: u64 = 20;

/// One descriptor held back by an acceptor. When the process is out of them (accept fails with
/// `EMFILE` or `ENFILE`, and the connection stays in the backlog with its TCP handshake done),
/// the acceptor closes it, accepts a pending connection into it, refuses that connection with an
/// error frame and closes it, then takes the descriptor back: clients beyond the limit are told,
/// not left waiting in silence.
#[derive(Debug)]
pub(super) struct FdReserve(Option<std::fs::File>);

impl FdReserve {
    pub(super) fn new() -> Self {
        FdReserve(std::fs::File::open("/dev/null").ok())
    }

    /// Refuses up to `max` connections pending on `listener` (`refusal` is written first when
    /// given: plaintext listeners); returns how many it refused. If another thread took the freed
    /// descriptor before the reserve could be reopened, there is no reserve until a later call
    /// gets it back (and until then nothing is refused).
    pub(super) fn refuse_pending(
        &mut self,
        listener: RawFd,
        refusal: Option<&[u8]>,
        max: usize,
    ) -> usize {
        let mut refused = 0;
        while refused < max {
            if self.0.is_none() {
                self.0 = std::fs::File::open("/dev/null").ok();
                if self.0.is_none() {
                    break;
                }
            }
            self.0 = None; // closes the reserve: one descriptor free for the accept
            let got = match accept_nonblocking(listener) {
                Ok(socket) => {
                    refuse_socket(&socket, refusal);
                    true // dropping `socket` closed it
                }
                Err(_) => false, // nothing pending (or it went away)
            };
            self.0 = std::fs::File::open("/dev/null").ok();
            if !got {
                break;
            }
            refused += 1;
        }
        refused
    }
}

/// Accepts one pending connection without waiting (the listener is put in non-blocking mode for
/// the call and restored, as glommio does for its own first attempt).
pub(super) fn accept_nonblocking(listener: RawFd) -> std::io::Result<socket2::Socket> {
    // SAFETY: the fd is the acceptor's listening socket, open for the acceptor's whole life.
    let borrowed = unsafe { BorrowedFd::borrow_raw(listener) };
    let sock = socket2::SockRef::from(&borrowed);
    let was_nonblocking = sock.nonblocking()?;
    sock.set_nonblocking(true)?;
    let accepted = sock.accept();
    sock.set_nonblocking(was_nonblocking)?;
    Ok(accepted?.0)
}

/// Best effort, without waiting: reads what the client already sent (closing a socket with
/// unread input resets it, which can discard the frame), writes `refusal`, and half-closes.
pub(super) fn refuse_socket(socket: &socket2::Socket, refusal: Option<&[u8]>) {
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    if let Some(bytes) = refusal {
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        for _ in 0..4 {
            if !matches!(socket.recv(&mut scratch), Ok(n) if n > 0) {
                break;
            }
        }
        let _ = socket.send_with_flags(bytes, libc::MSG_NOSIGNAL);
    }
    let _ = socket.shutdown(Shutdown::Write);
}

/// `listener_fd` is `listener`'s descriptor (glommio's listener does not lend it).
pub(super) async fn acceptor(
    ctx: Rc<Ctx>,
    listener: TcpListener,
    listener_fd: RawFd,
    tls: bool,
    stop: Arc<AtomicBool>,
) {
    // When a warning was last logged (each kind at most once per ACCEPT_WARN_INTERVAL_MS).
    let mut last_warn_ms: Option<u64> = None;
    let mut reserve = FdReserve::new();
    // Plaintext only: a TLS client would not understand it (it sees the connection close).
    let refusal = Frame::Error {
        code: ErrorCode::ConnectionLimit,
        message: "node out of file descriptors".into(),
    }
    .to_bytes();
    let refusal = (!tls).then_some(&refusal[..]);
    while !stop.load(Ordering::Acquire) {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: count every failure, and log at most once per
                // ACCEPT_WARN_INTERVAL so a full fd table cannot flood the log.
                let metrics = ctx.shard.borrow().metrics().clone();
                ShardMetrics::inc(&metrics.accept_errors);
                let now = ctx.clock.now().mono_ms;
                if last_warn_ms.is_none_or(|t| now >= t.saturating_add(ACCEPT_WARN_INTERVAL_MS)) {
                    last_warn_ms = Some(now);
                    tracing::warn!(error = %e, "accept failed (raise the open-files limit if this is EMFILE)");
                }
                let backoff_ms = if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    // Out of descriptors: refuse what waits in the backlog rather than leave it
                    // hanging, then look again soon.
                    let n =
                        reserve.refuse_pending(listener_fd, refusal, FD_LIMIT_REFUSALS_PER_TURN);
                    ShardMetrics::add(&metrics.connections_refused_fd_limit, n as u64);
                    if n == FD_LIMIT_REFUSALS_PER_TURN {
                        glommio::yield_if_needed().await;
                        continue;
                    }
                    FD_LIMIT_RETRY_MS
                } else {
                    50
                };
                glommio::timer::sleep(Duration::from_millis(backoff_ms)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        {
            // SAFETY: the stream is open and owned here for the whole borrow.
            let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
            if let Err(e) = ctx.driver.keepalive.apply(&socket2::SockRef::from(&fd)) {
                // Config validation keeps the values in the kernel's ranges: say it once.
                if !ctx.keepalive_warned.replace(true) {
                    tracing::warn!(error = %e, "TCP keepalive settings refused by the kernel: vanished clients may stay connected for hours");
                }
            }
        }
        let ip = match stream.peer_addr() {
            Ok(a) => a.ip(),
            Err(_) => continue,
        };
        let now = ctx.clock.now();
        let accepted = ctx.shard.borrow_mut().accept(now, ip);
        match accepted {
            Accept::Ok(conn) => {
                let cfg = if tls { ctx.tls.borrow().clone() } else { None };
                let tls_conn = match cfg {
                    None if tls => {
                        let now = ctx.clock.now().mono_ms;
                        if last_warn_ms
                            .is_none_or(|t| now >= t.saturating_add(ACCEPT_WARN_INTERVAL_MS))
                        {
                            last_warn_ms = Some(now);
                            tracing::warn!(
                                "TLS listener without a certificate: closing new connections (set tls_cert and tls_key, then SIGHUP)"
                            );
                        }
                        ctx.shard.borrow_mut().on_closed(conn);
                        continue;
                    }
                    None => None,
                    Some(cfg) => match rustls::ServerConnection::new(cfg) {
                        Ok(mut c) => {
                            // Output is bounded by the connection's send queue, not by rustls:
                            // its default 64 KiB limit would make write_all fail half-way.
                            c.set_buffer_limit(None);
                            Some(Rc::new(RefCell::new(c)))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS session setup failed");
                            ctx.shard.borrow_mut().on_closed(conn);
                            continue;
                        }
                    },
                };
                spawn_connection(ctx.clone(), conn, stream, tls_conn);
            }
            Accept::Refused(bytes) => {
                // Best effort, plaintext only: a TLS client would not understand it anyway.
                let plaintext = !tls;
                glommio::spawn_local(async move {
                    let mut s = stream;
                    if plaintext {
                        let _ = s.write_all(&bytes).await;
                    }
                    let _ = s.close().await;
                })
                .detach();
            }
        }
    }
}
