//! The raw io_uring plumbing shared by the node's `uring` driver ([`crate::driver::uring`]) and
//! the benchmark floor (`ferry-floor --engine uring`): the ring as the
//! fastest servers set it up, a provided-buffer ring for multishot receives, and completion
//! tags. Every unsafe block here has its SAFETY note; the callers' own are at their call sites.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fd};
use io_uring::{IoUring, opcode, squeue};

/// The benchmark servers' bytes per provided buffer: one multishot completion carries at most
/// this much.
pub const BUF_LEN: u32 = 64 * 1024;
/// The benchmark servers' provided buffers (a power of two, at most 32,768). Buffers go back to
/// the ring in the turn that filled them, so this bounds how much one turn can receive:
/// 1,024 × 64 KiB.
pub const BUF_COUNT: u16 = 1024;
/// The provided-buffer group id of the one buffer ring.
pub const BGID: u16 = 1;
/// Submission queue entries; the completion queue is four times that.
pub const RING_ENTRIES: u32 = 4096;

/// One ring for one thread: `SINGLE_ISSUER` and `DEFER_TASKRUN` (completions are run only when
/// the loop asks for them, never in the middle of a turn), with `TASKRUN_FLAG`.
pub fn new_ring() -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        // Deferred completions are flagged, so that a submit that does not wait still
        // collects them.
        .setup_taskrun_flag()
        .setup_cqsize(RING_ENTRIES * 4)
        .build(RING_ENTRIES)
}

/// A completion's tag: what it is for (`op`, the high byte), the connection's slot (the low 32
/// bits) and the slot's generation (the 24 bits between), so that a completion for a closed
/// connection whose slot was reused is recognised as stale.
pub fn user_data(op: u64, slot: u32, generation: u32) -> u64 {
    (op << 56) | (u64::from(generation & 0xff_ffff) << 32) | u64::from(slot)
}

/// `(op, slot, generation)` of a tag made by [`user_data`].
pub fn split_user_data(ud: u64) -> (u64, u32, u32) {
    let slot = (ud & 0xffff_ffff) as u32;
    let generation = ((ud >> 32) & 0xff_ffff) as u32;
    (ud >> 56, slot, generation)
}

/// Queues `sqe`, submitting what is queued first when the submission queue is full.
///
/// # Safety
/// Every buffer `sqe` points at must stay valid and unmoved until its completion arrives.
pub unsafe fn push(ring: &mut IoUring, sqe: &squeue::Entry) -> io::Result<()> {
    loop {
        // SAFETY: the caller keeps what `sqe` points at alive until it completes.
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

/// Connections by slot: a slot's number and generation go into its completions' tags
/// ([`user_data`]), and a freed slot is reused with the next generation.
#[derive(Debug)]
pub struct Slots<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
    next_generation: u32,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slots<T> {
    pub fn new() -> Self {
        Slots {
            items: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
        }
    }

    /// A slot for `make(generation)`; returns the slot.
    pub fn insert(&mut self, make: impl FnOnce(u32) -> T) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1) & 0xff_ffff;
        let item = make(self.next_generation);
        match self.free.pop() {
            Some(slot) => {
                self.items[slot as usize] = Some(item);
                slot
            }
            None => {
                self.items.push(Some(item));
                u32::try_from(self.items.len() - 1).expect("fewer than 2^32 connections")
            }
        }
    }

    /// Live items.
    pub fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, slot: u32) -> Option<&T> {
        self.items.get(slot as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.items.get_mut(slot as usize)?.as_mut()
    }

    /// Frees `slot` for reuse (its completions must all have come).
    pub fn remove(&mut self, slot: u32) {
        if let Some(item) = self.items.get_mut(slot as usize)
            && item.take().is_some()
        {
            self.free.push(slot);
        }
    }
}

/// One multishot accept on `listener`.
pub fn accept_multi(listener: RawFd, tag: u64) -> squeue::Entry {
    opcode::AcceptMulti::new(Fd(listener))
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(tag)
}

/// One multishot receive on `fd` into the provided buffers.
pub fn recv_multi(fd: RawFd, tag: u64) -> squeue::Entry {
    opcode::RecvMulti::new(Fd(fd), BGID).build().user_data(tag)
}

/// A send of `buf` (at most 4 GiB of it: a short send, and the caller sends the rest).
pub fn send(fd: RawFd, buf: &[u8], tag: u64) -> squeue::Entry {
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    opcode::Send::new(Fd(fd), buf.as_ptr(), len)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(tag)
}

/// The provided-buffer ring: `count` entries in page-aligned memory the kernel reads, and the
/// buffers themselves (`count` × `len` bytes, touched only as receives fill them).
pub struct BufRing {
    /// The entries (`count` × 16 bytes; the last entry's reserved field is the tail).
    entries: memmap2::MmapMut,
    buffers: Vec<u8>,
    count: u16,
    len: u32,
    /// Our copy of the tail: entries below it are the kernel's.
    tail: u16,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("count", &self.count)
            .field("len", &self.len)
            .field("tail", &self.tail)
            .finish_non_exhaustive()
    }
}

impl BufRing {
    /// `count` buffers (a power of two, at most 32,768) of `len` bytes each. `resident`: every
    /// page is touched now, so that the buffers are part of the process's resident memory from
    /// the start (a fixed cost, not growth under load); otherwise pages are touched only as
    /// receives fill them.
    pub fn new(ring: &IoUring, count: u16, len: u32, resident: bool) -> io::Result<BufRing> {
        assert!(
            count.is_power_of_two() && count <= 32_768,
            "{count} provided buffers: a power of two up to 32,768"
        );
        assert!(len > 0, "provided buffers of 0 bytes");
        let entries = memmap2::MmapMut::map_anon(usize::from(count) * size_of::<BufRingEntry>())?;
        let mut br = BufRing {
            entries,
            // Any byte but 0 is written, page by page (zeroed memory would stay unmapped).
            buffers: vec![u8::from(resident); usize::from(count) * len as usize],
            count,
            len,
            tail: 0,
        };
        // SAFETY: the entries are an anonymous, page-aligned mapping of exactly `count` entries
        // that lives as long as `br`, which the caller keeps as long as the ring.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                br.entries.as_ptr() as u64,
                count,
                BGID,
                0,
            )?;
        }
        for bid in 0..count {
            br.give(bid);
        }
        br.publish();
        Ok(br)
    }

    fn ring_entries(&mut self) -> &mut [BufRingEntry] {
        let ptr = self.entries.as_mut_ptr().cast::<BufRingEntry>();
        // SAFETY: the mapping holds exactly `count` entries, suitably aligned (a page), and
        // `BufRingEntry` is a plain `repr(C)` struct for which any bytes are valid.
        unsafe { std::slice::from_raw_parts_mut(ptr, usize::from(self.count)) }
    }

    /// Hands buffer `bid` back (seen by the kernel at the next [`BufRing::publish`]).
    pub fn give(&mut self, bid: u16) {
        debug_assert!(bid < self.count, "buffer {bid} of {}", self.count);
        let len = self.len;
        let addr = self.buffers[usize::from(bid) * len as usize..].as_mut_ptr() as u64;
        let i = usize::from(self.tail & (self.count - 1));
        let e = &mut self.ring_entries()[i];
        e.set_addr(addr);
        e.set_len(len);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the given-back buffers visible to the kernel.
    pub fn publish(&mut self) {
        let base = self.entries.as_ptr().cast::<BufRingEntry>();
        // SAFETY: `base` is the first entry of the registered ring, so `tail` points at the
        // ring's shared tail (a u16 the kernel only reads); the release store orders the entry
        // writes above before it.
        unsafe {
            let tail = BufRingEntry::tail(base).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        &self.buffers[usize::from(bid) * self.len as usize..][..len]
    }
}
