//! The event loops: each one's connections and senders, the run's shared clock, what a loop
//! counts, its timerfd, and the loop itself with its writes (plain and TLS) and reads.

use mio::Token;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll};

use crate::measure::{nanos, thread_cpu_s};
use crate::wire;
use crate::wire::{Parser, ReadStats, Route};

/// Bytes a sender may buffer when the server stops reading; beyond it messages are counted lost.
const SEND_BUFFER_BYTES_MAX: usize = 64 << 20;

/// A sender's buffer beyond which, in closed loop, it waits for the socket to take bytes.
const CLOSED_LOOP_BUFFER_BYTES: usize = 64 * 1024;

/// A wake-up due sooner than this is waited for by polling without a timeout (a timer's own
/// cost and lateness are about this size).
const SPIN_NS: u64 = 20_000;

/// One connection of the run, set up and ready for an event loop.
pub(crate) struct Conn {
    pub(crate) stream: MioStream,
    /// `ferry+tls`: the session; `out` holds plaintext until rustls takes it.
    pub(crate) tls: Option<Box<rustls::ClientConnection>>,
    pub(crate) parser: Parser,
    pub(crate) out: Vec<u8>,
    pub(crate) sender: Option<Sender>,
    /// Receiver: the pair (index into its loop's counters) it counts for.
    pub(crate) counts_for: Option<usize>,
    /// In its loop's flush list for this turn.
    pub(crate) queued: bool,
}

pub(crate) struct Sender {
    pub(crate) route: Route,
    /// [`Route::head`] for the run's size, built once.
    pub(crate) head: Vec<u8>,
    /// Its pair: an index into its loop's counters.
    pub(crate) pair: usize,
    pub(crate) next_due_ns: u64,
    /// 0: closed loop.
    pub(crate) interval_ns: u64,
    pub(crate) seq: u64,
    /// Closed loop: its buffer is full; the flush that empties it puts it back in `ready`.
    pub(crate) waits_room: bool,
}

/// The run's schedule, shared by its event loops, and what they report to the progress line.
pub(crate) struct RunClock {
    pub(crate) origin: Instant,
    pub(crate) warm_ns: u64,
    pub(crate) end_ns: u64,
    /// Deliveries of the measured window are awaited until here.
    pub(crate) drain_ns: u64,
    pub(crate) sent: std::sync::atomic::AtomicU64,
    pub(crate) received: std::sync::atomic::AtomicU64,
}

impl RunClock {
    pub(crate) fn now_ns(&self) -> u64 {
        nanos(self.origin.elapsed())
    }
}

/// What one event loop counted.
pub(crate) struct Totals {
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) late_or_dup: u64,
    pub(crate) rejected: u64,
    pub(crate) backlog_dropped: u64,
    pub(crate) corrected: Histogram<u64>,
    pub(crate) raw: Histogram<u64>,
    /// Open loop: how late each message left against its schedule (ns). A generator that keeps
    /// up sends within a turn of the due time; one that cannot falls further behind.
    pub(crate) send_lag: Histogram<u64>,
    /// This loop's thread: CPU seconds and wall seconds over the measured window.
    pub(crate) cpu_s: f64,
    pub(crate) wall_s: f64,
    /// Of that window, the wall seconds spent in zero-timeout polls that found nothing: the loop
    /// spinning for a message due within `SPIN_NS`, not working. `cpu_s - spin_s` is the loop's
    /// work; at 50,000 msg/s over 9,000 pairs (one message due every 20 µs) the loop spins most
    /// of the time and its core reads full whatever its load.
    pub(crate) spin_s: f64,
    /// Loop turns, and connections the loop touched in them (written, flushed or read): what a
    /// turn costs, which must not grow with the connections the loop holds.
    pub(crate) turns: u64,
    pub(crate) visits: u64,
}

impl Totals {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Totals {
            sent: 0,
            delivered: 0,
            late_or_dup: 0,
            rejected: 0,
            backlog_dropped: 0,
            corrected: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
            raw: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
            send_lag: Histogram::new_with_bounds(1, 60_000_000_000, 3)?,
            cpu_s: 0.0,
            wall_s: 0.0,
            spin_s: 0.0,
            turns: 0,
            visits: 0,
        })
    }
}

/// A one-shot timerfd an event loop sleeps on when its next message is due sooner than epoll's
/// millisecond timeout can say: the loop neither spins (which would hide its real cost and take
/// CPU a server on a shared core needs) nor sends late.
struct Timer {
    fd: std::os::fd::OwnedFd,
    /// When it is set to fire (ns on the run's clock), or none.
    armed_ns: Option<u64>,
}

impl Timer {
    fn new() -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd;
        #[allow(unsafe_code)]
        // SAFETY: timerfd_create takes no pointers; its result is checked before it is owned.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            bail!("timerfd_create: {}", std::io::Error::last_os_error());
        }
        #[allow(unsafe_code)]
        // SAFETY: fd is a new descriptor nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd, armed_ns: None })
    }

    /// Fires `at_ns` on the run's clock, `now_ns` being now (re-armed only when that changes).
    fn arm(&mut self, at_ns: u64, now_ns: u64) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        if self.armed_ns == Some(at_ns) {
            return Ok(());
        }
        let d = at_ns.saturating_sub(now_ns).max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (d / 1_000_000_000) as libc::time_t,
                tv_nsec: (d % 1_000_000_000) as libc::c_long,
            },
        };
        #[allow(unsafe_code)]
        // SAFETY: spec lives across the call; the old value is not asked for (null).
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            bail!("timerfd_settime: {}", std::io::Error::last_os_error());
        }
        self.armed_ns = Some(at_ns);
        Ok(())
    }

    /// After it fired: reads its count so epoll reports it again next time.
    fn fired(&mut self) {
        use std::os::fd::AsRawFd;
        let mut n = [0u8; 8];
        #[allow(unsafe_code)]
        // SAFETY: reads at most 8 bytes into a local array (non-blocking: EAGAIN is fine).
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), n.as_mut_ptr().cast(), 8) };
        self.armed_ns = None;
    }
}

/// One event loop: its connections, `pairs` pair counters. Per turn it touches only what is due
/// (a heap of open-loop senders by next due time, the closed-loop senders whose window has
/// room), what epoll reported, and the connections it wrote to: nothing scales with the number
/// of connections it holds.
pub(crate) fn event_loop(
    clock: &RunClock,
    mut conns: Vec<Conn>,
    pairs: usize,
    size: usize,
    window: u64,
) -> anyhow::Result<Totals> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::sync::atomic::Ordering::Relaxed;

    let mut poll = Poll::new()?;
    let mut timer = Timer::new()?;
    let timer_token = Token(conns.len());
    {
        use std::os::fd::AsRawFd;
        let raw = timer.fd.as_raw_fd();
        poll.registry().register(
            &mut mio::unix::SourceFd(&raw),
            timer_token,
            Interest::READABLE,
        )?;
    }
    // Open loop: senders by next due time. Closed loop: senders to write this turn, and per
    // pair the senders waiting for its window to open.
    let mut due: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut ready: Vec<usize> = Vec::new();
    let mut waiting: Vec<Vec<usize>> = vec![Vec::new(); pairs];
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry().register(
            &mut c.stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        match &c.sender {
            Some(s) if s.interval_ns == 0 => ready.push(i),
            Some(s) => due.push(Reverse((s.next_due_ns, i))),
            None => {}
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut totals = Totals::new()?;
    let mut pair_sent = vec![0u64; pairs];
    let mut pair_recv = vec![0u64; pairs];
    let mut stats = ReadStats::default();
    let mut payload = vec![0x42u8; size];
    let mut rbuf = vec![0u8; 256 * 1024];
    let mut reply = Vec::new();
    let mut plain = Vec::new();
    let mut to_flush: Vec<usize> = Vec::new();
    let mut writing: Vec<usize> = Vec::new();
    let mut opened: Vec<usize> = Vec::new();
    // Messages of the measured window sent (or dropped) so far; the loop ends once all are
    // accounted for, or at the drain deadline.
    let mut window_sent = 0u64;
    let (mut turn_sent, mut turn_recv) = (0u64, 0u64);
    // This thread's CPU and the instant at the start of the measured window, then the totals.
    let mut mark: Option<(f64, Instant)> = None;
    let mut measured_done = false;

    loop {
        totals.turns += 1;
        let now = clock.now_ns();
        if mark.is_none() && now >= clock.warm_ns {
            mark = Some((thread_cpu_s(), Instant::now()));
        }
        if !measured_done && now >= clock.end_ns {
            measured_done = true;
            if let Some((cpu0, t0)) = mark {
                totals.cpu_s = thread_cpu_s() - cpu0;
                totals.wall_s = t0.elapsed().as_secs_f64();
            }
        }
        if now >= clock.drain_ns
            || (now >= clock.end_ns
                && totals.delivered + stats.rejected + totals.backlog_dropped >= window_sent)
        {
            break;
        }
        // Write every message that is due.
        let mut emit = |c: &mut Conn, due_ns: u64, totals: &mut Totals, pair_sent: &mut [u64]| {
            let s = c.sender.as_mut().expect("only senders emit");
            s.seq += 1;
            wire::put_header(&mut payload, due_ns, now, s.seq);
            let measured = due_ns >= clock.warm_ns && due_ns < clock.end_ns;
            if measured {
                window_sent += 1;
                totals.sent += 1;
            }
            if c.out.len() > SEND_BUFFER_BYTES_MAX {
                if measured {
                    totals.backlog_dropped += 1;
                }
            } else {
                wire::encode(&s.route, &s.head, s.seq, &payload, &mut c.out);
                pair_sent[s.pair] += 1;
                turn_sent += 1;
            }
        };
        if now < clock.end_ns {
            while let Some(&Reverse((at, ci))) = due.peek() {
                if at > now {
                    break;
                }
                due.pop();
                totals.visits += 1;
                let c = &mut conns[ci];
                loop {
                    let s = c.sender.as_ref().expect("only senders are scheduled");
                    let at = s.next_due_ns;
                    if at > now || at >= clock.end_ns {
                        break;
                    }
                    emit(c, at, &mut totals, &mut pair_sent);
                    if at >= clock.warm_ns {
                        totals.send_lag.saturating_record((now - at).max(1));
                    }
                    let s = c.sender.as_mut().expect("only senders are scheduled");
                    s.next_due_ns += s.interval_ns;
                }
                if !c.queued {
                    c.queued = true;
                    to_flush.push(ci);
                }
                let next = c.sender.as_ref().expect("a sender").next_due_ns;
                if next < clock.end_ns {
                    due.push(Reverse((next, ci)));
                }
            }
            std::mem::swap(&mut ready, &mut writing);
            for ci in writing.drain(..) {
                totals.visits += 1;
                let c = &mut conns[ci];
                loop {
                    let pair = c.sender.as_ref().expect("only senders are ready").pair;
                    // Saturating: a duplicate delivery must not underflow the window.
                    if pair_sent[pair].saturating_sub(pair_recv[pair]) >= window {
                        waiting[pair].push(ci);
                        break;
                    }
                    if c.out.len() >= CLOSED_LOOP_BUFFER_BYTES {
                        c.sender.as_mut().expect("a sender").waits_room = true;
                        break;
                    }
                    emit(c, now, &mut totals, &mut pair_sent);
                }
                if !c.queued && !c.out.is_empty() {
                    c.queued = true;
                    to_flush.push(ci);
                }
            }
        }
        totals.visits += to_flush.len() as u64;
        for ci in to_flush.drain(..) {
            let c = &mut conns[ci];
            c.queued = false;
            flush(c)?;
            room_again(c, ci, &mut ready);
        }
        if turn_sent > 0 {
            clock
                .sent
                .fetch_add(std::mem::take(&mut turn_sent), Relaxed);
        }

        // Sleep until the next due message, the window's edges, or an event.
        let now = clock.now_ns();
        let mut wake = clock.drain_ns;
        if mark.is_none() {
            wake = wake.min(clock.warm_ns);
        }
        if !measured_done {
            wake = wake.min(clock.end_ns);
        }
        // After the window nothing more is sent: only deliveries (events) are awaited.
        if now < clock.end_ns {
            if let Some(&Reverse((at, _))) = due.peek() {
                wake = wake.min(at);
            }
            if !ready.is_empty() {
                wake = now;
            }
        }
        let timeout = if wake <= now + SPIN_NS {
            Some(Duration::ZERO)
        } else {
            timer.arm(wake, now)?;
            None
        };
        let spin_from = (timeout == Some(Duration::ZERO)).then(Instant::now);
        poll.poll(&mut events, timeout)?;
        if let Some(t) = spin_from
            && events.is_empty()
            && mark.is_some()
            && !measured_done
        {
            totals.spin_s += t.elapsed().as_secs_f64();
        }
        for ev in events.iter() {
            let ci = ev.token().0;
            if ev.token() == timer_token {
                timer.fired();
                continue;
            }
            totals.visits += 1;
            let c = &mut conns[ci];
            if ev.is_writable() {
                flush(c)?;
                room_again(c, ci, &mut ready);
            }
            if !ev.is_readable() {
                continue;
            }
            loop {
                match c.stream.read(&mut rbuf) {
                    Ok(0) => bail!("server closed a connection: {:?}", stats.errors),
                    Ok(n) => {
                        let recv_ns = clock.now_ns();
                        let counts_for = c.counts_for;
                        let input: &[u8] = match c.tls.as_mut() {
                            None => &rbuf[..n],
                            Some(t) => {
                                decrypt(t, &rbuf[..n], &mut plain)?;
                                &plain
                            }
                        };
                        c.parser.feed(input, &mut reply, &mut stats, |m| {
                            let Some((intended, sent, _seq)) = wire::get_header(m) else {
                                return;
                            };
                            turn_recv += 1;
                            if let Some(pair) = counts_for {
                                pair_recv[pair] += 1;
                                if !waiting[pair].is_empty() {
                                    opened.push(pair);
                                }
                            }
                            if intended >= clock.warm_ns && intended < clock.end_ns {
                                totals.delivered += 1;
                                let _ = totals
                                    .corrected
                                    .record(recv_ns.saturating_sub(intended).max(1));
                                let _ = totals.raw.record(recv_ns.saturating_sub(sent).max(1));
                            } else if intended >= clock.end_ns {
                                totals.late_or_dup += 1;
                            }
                        });
                        if !reply.is_empty() {
                            c.out.append(&mut reply);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
            // Pongs queued, or TLS records rustls wants out after reading (a key update).
            if !c.out.is_empty() || c.tls.as_ref().is_some_and(|t| t.wants_write()) {
                flush(c)?;
                room_again(c, ci, &mut ready);
            }
        }
        for pair in opened.drain(..) {
            if pair_sent[pair].saturating_sub(pair_recv[pair]) < window {
                ready.append(&mut waiting[pair]);
            }
        }
        if turn_recv > 0 {
            clock
                .received
                .fetch_add(std::mem::take(&mut turn_recv), Relaxed);
        }
        if let Some(e) = stats.errors.first() {
            bail!("{e}");
        }
    }
    totals.rejected = stats.rejected;
    Ok(totals)
}

/// A closed-loop sender that stopped for a full buffer goes back to `ready` once it has room.
fn room_again(c: &mut Conn, ci: usize, ready: &mut Vec<usize>) {
    if let Some(s) = c.sender.as_mut() {
        if s.waits_room && c.out.len() < CLOSED_LOOP_BUFFER_BYTES {
            s.waits_room = false;
            ready.push(ci);
        }
    }
}

fn flush(c: &mut Conn) -> anyhow::Result<()> {
    if let Some(t) = c.tls.as_mut() {
        // Plaintext moves into rustls only once its previous records are on the wire, so the
        // backlog stays visible (and bounded) in `out`.
        loop {
            while t.wants_write() {
                match t.write_tls(&mut c.stream) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            if c.out.is_empty() {
                return Ok(());
            }
            // 16 KiB: one TLS record, well inside rustls's default 64 KiB buffer.
            let n = c.out.len().min(16 * 1024);
            t.writer().write_all(&c.out[..n])?;
            c.out.drain(..n);
        }
    }
    while !c.out.is_empty() {
        match c.stream.write(&c.out) {
            Ok(0) => bail!("write returned 0"),
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// TLS records in, plaintext out (into `plain`, replacing its contents).
fn decrypt(
    t: &mut rustls::ClientConnection,
    mut data: &[u8],
    plain: &mut Vec<u8>,
) -> anyhow::Result<()> {
    plain.clear();
    while !data.is_empty() {
        t.read_tls(&mut data)?;
        t.process_new_packets()?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match t.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => plain.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
