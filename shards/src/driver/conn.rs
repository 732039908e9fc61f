//! One connection's tasks: the read loop (bytes, or TLS records, into the shard; paused by the
//! shard's backpressure until woken) and the write loop (each connection's queued output as one
//! buffer, under the write-stall clock).

use super::*;

pub(super) type Tls = Rc<RefCell<rustls::ServerConnection>>;

pub(super) fn spawn_connection(ctx: Rc<Ctx>, conn: ConnId, stream: TcpStream, tls: Option<Tls>) {
    let fd = stream.as_raw_fd();
    let (wake_tx, wake_rx) = local_channel::new_bounded(1);
    ctx.writers.borrow_mut().insert(conn, (wake_tx, fd));
    let (resume_tx, resume_rx) = local_channel::new_bounded(1);
    ctx.readers.borrow_mut().insert(conn, resume_tx);
    let (reader, writer) = futures_lite::io::split(stream);
    glommio::spawn_local(read_loop(ctx.clone(), conn, reader, tls.clone(), resume_rx)).detach();
    glommio::spawn_local(write_loop(ctx, conn, writer, tls, wake_rx)).detach();
}

pub(super) async fn read_loop(
    ctx: Rc<Ctx>,
    conn: ConnId,
    mut reader: futures_lite::io::ReadHalf<TcpStream>,
    tls: Option<Tls>,
    resume: local_channel::LocalReceiver<()>,
) {
    loop {
        // Backpressure: stop reading while an outbox towards another core is over half full, or
        // while this connection's own replies are backlogged (it sends but does not read). The
        // shard holds the reader and names it when the pressure ends (`resume_readers`, after the
        // write or hop batch that ended it): no timer, so a reader never waits past the event.
        if ctx.shard.borrow_mut().hold_reader(conn) {
            if resume.recv().await.is_none() {
                break;
            }
            continue;
        }
        // The byte rate is per address: while another connection of this address has put the
        // address's bucket in debt, this one waits too.
        let pause = ctx.shard.borrow_mut().read_pause_ms(ctx.clock.now(), conn);
        if pause > 0 {
            glommio::timer::sleep(Duration::from_millis(pause)).await;
            continue;
        }
        // One read buffer per shard, not per connection: glommio's poll_read uses the buffer
        // only during the poll (a direct recv, or arming a readiness poll when it would block),
        // so the borrow never spans a suspension and an idle connection holds no buffer.
        let read = std::future::poll_fn(|cx| {
            let mut buf = ctx.read_buf.borrow_mut();
            Pin::new(&mut reader).poll_read(cx, &mut buf)
        })
        .await;
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let pause = feed(&ctx, conn, tls.as_ref(), n);
        ctx.after_work();
        if pause > 0 {
            glommio::timer::sleep(Duration::from_millis(pause)).await;
        }
    }
    // The peer closed or the socket failed: forget the connection everywhere.
    ctx.readers.borrow_mut().remove(&conn);
    ctx.shard.borrow_mut().on_closed(conn);
    ctx.after_work();
    if let Some((w, _)) = ctx.writers.borrow().get(&conn) {
        let _ = w.try_send(());
    }
}

/// Hands the first `n` bytes of the shard's read buffer to the connection (through TLS when it
/// has it). Returns the read pause (ms).
pub(super) fn feed(ctx: &Ctx, conn: ConnId, tls: Option<&Tls>, n: usize) -> u64 {
    let now = ctx.clock.now();
    let buf = ctx.read_buf.borrow();
    match tls {
        None => ctx.shard.borrow_mut().on_bytes(now, conn, &buf[..n]),
        Some(t) => match tls_input(ctx, conn, t, &buf[..n], &mut ctx.plain_buf.borrow_mut()) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "TLS error");
                ctx.shard
                    .borrow_mut()
                    .close(conn, ErrorCode::TlsError, "TLS error");
                0
            }
        },
    }
}

/// Feeds TLS records to the shard ([`super::tls_to_shard`]) and wakes the writer when rustls has
/// records to send. Returns the read pause (ms).
pub(super) fn tls_input(
    ctx: &Ctx,
    conn: ConnId,
    tls: &Tls,
    data: &[u8],
    plain: &mut [u8],
) -> Result<u64, rustls::Error> {
    let mut t = tls.borrow_mut();
    let pause = super::tls_to_shard(
        &mut ctx.shard.borrow_mut(),
        &ctx.clock,
        conn,
        &mut t,
        data,
        plain,
    )?;
    if t.wants_write() {
        if let Some((w, _)) = ctx.writers.borrow().get(&conn) {
            let _ = w.try_send(());
        }
    }
    Ok(pause)
}

pub(super) async fn write_loop(
    ctx: Rc<Ctx>,
    conn: ConnId,
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    tls: Option<Tls>,
    wake: local_channel::LocalReceiver<()>,
) {
    let mut wire: Vec<u8> = Vec::new();
    'outer: while wake.recv().await.is_some() {
        loop {
            let out = ctx.shard.borrow_mut().take_output(conn);
            let plain_len = out.bytes.as_ref().map_or(0, |b| b.len());
            let result = match &tls {
                None => match &out.bytes {
                    Some(b) => write_with_stall_clock(&ctx, conn, &mut writer, b).await,
                    None => Ok(()),
                },
                Some(t) => {
                    wire.clear();
                    {
                        let mut t = t.borrow_mut();
                        if let Some(b) = &out.bytes {
                            // Cannot fail: the buffer limit is off (see the acceptor).
                            if t.writer().write_all(b).is_err() {
                                tracing::debug!("TLS writer refused plaintext");
                            }
                        }
                        if out.close {
                            t.send_close_notify();
                        }
                        while t.wants_write() {
                            if t.write_tls(&mut wire).is_err() {
                                break;
                            }
                        }
                    }
                    if wire.is_empty() {
                        Ok(())
                    } else {
                        write_with_stall_clock(&ctx, conn, &mut writer, &wire).await
                    }
                }
            };
            if result.is_err() {
                break 'outer;
            }
            // Also with 0 bytes: it stops the slow-reader clock once nothing is queued.
            ctx.shard
                .borrow_mut()
                .on_written(ctx.clock.now(), conn, plain_len);
            // The backlog shrank: a reader held by it goes on now.
            ctx.resume_readers();
            if out.close {
                break 'outer;
            }
            if plain_len == 0 {
                break;
            }
        }
    }
    let _ = writer.flush().await;
    // Remove the fd from the registry before the stream can be dropped.
    if let Some((_, fd)) = ctx.writers.borrow_mut().remove(&conn) {
        shutdown_fd(fd);
    }
    ctx.shard.borrow_mut().on_closed(conn);
    ctx.after_work();
}

pub(super) async fn write_with_stall_clock(
    ctx: &Ctx,
    conn: ConnId,
    writer: &mut futures_lite::io::WriteHalf<TcpStream>,
    bytes: &[u8],
) -> std::io::Result<()> {
    ctx.shard
        .borrow_mut()
        .on_write_blocked(ctx.clock.now(), conn);
    writer.write_all(bytes).await
}
