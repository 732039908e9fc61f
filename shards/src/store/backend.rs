//! Where segments live. Two implementations of one seam: [`MmapBackend`] (files preallocated with
//! `posix_fallocate` and mapped with memmap2) and [`MemBackend`] (memory, with injected faults and
//! simulated crashes, for the model-based tests).

#![allow(unsafe_code)] // mmap and posix_fallocate; each use says why it is sound.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// One segment: a fixed-size byte region written in place.
pub trait Segment {
    fn bytes(&self) -> &[u8];
    /// Copies `data` to `offset`. Not durable until [`Segment::sync`].
    fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<()>;
    /// Makes every write so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Makes the whole segment durable, including what an earlier process wrote (recovery).
    fn sync_all(&mut self) -> io::Result<()> {
        self.sync()
    }
}

/// A directory of segments, by sequence number.
pub trait Backend {
    type Seg: Segment;
    /// Existing segment sequence numbers, ascending.
    fn list(&mut self) -> io::Result<Vec<u64>>;
    /// A new zero-filled segment of `len` bytes, with its space reserved on disk.
    fn create(&mut self, seq: u64, len: usize) -> io::Result<Self::Seg>;
    fn open(&mut self, seq: u64) -> io::Result<Self::Seg>;
    fn remove(&mut self, seq: u64) -> io::Result<()>;
}

/// Segments as files `seg-<seq:016x>.log` in one directory.
#[derive(Debug)]
pub struct MmapBackend {
    dir: PathBuf,
}

impl MmapBackend {
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(MmapBackend {
            dir: dir.to_path_buf(),
        })
    }
    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("seg-{seq:016x}.log"))
    }
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

/// A mapped segment file.
#[derive(Debug)]
pub struct MmapSegment {
    map: memmap2::MmapMut,
    _file: File,
    dirty_from: usize,
    dirty_to: usize,
}

fn map(file: &File) -> io::Result<memmap2::MmapMut> {
    // SAFETY: the file is owned by this process's store alone (one shard, one directory), is never
    // truncated while mapped, and its whole length was allocated with posix_fallocate, so no
    // access through the map can fault with SIGBUS on a full disk.
    unsafe { memmap2::MmapMut::map_mut(file) }
}

impl Backend for MmapBackend {
    type Seg = MmapSegment;

    fn list(&mut self) -> io::Result<Vec<u64>> {
        let mut seqs = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".log"))
            {
                if let Ok(seq) = u64::from_str_radix(hex, 16) {
                    seqs.push(seq);
                }
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    fn create(&mut self, seq: u64, len: usize) -> io::Result<MmapSegment> {
        let path = self.path(seq);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let len_off =
            libc::off_t::try_from(len).map_err(|_| io::Error::other("segment too large"))?;
        // SAFETY: plain syscall on an fd we own; reserves the blocks so writes through the map
        // cannot hit ENOSPC later.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) };
        if rc != 0 {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(io::Error::from_raw_os_error(rc));
        }
        file.sync_all()?;
        self.sync_dir()?;
        let map = map(&file)?;
        Ok(MmapSegment {
            map,
            _file: file,
            dirty_from: usize::MAX,
            dirty_to: 0,
        })
    }

    fn open(&mut self, seq: u64) -> io::Result<MmapSegment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(seq))?;
        let map = map(&file)?;
        Ok(MmapSegment {
            map,
            _file: file,
            dirty_from: usize::MAX,
            dirty_to: 0,
        })
    }

    fn remove(&mut self, seq: u64) -> io::Result<()> {
        std::fs::remove_file(self.path(seq))?;
        self.sync_dir()
    }
}

impl Segment for MmapSegment {
    fn bytes(&self) -> &[u8] {
        &self.map
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(data.len())
            .filter(|e| *e <= self.map.len());
        let Some(end) = end else {
            return Err(io::Error::other("write past the end of the segment"));
        };
        self.map[offset..end].copy_from_slice(data);
        self.dirty_from = self.dirty_from.min(offset);
        self.dirty_to = self.dirty_to.max(end);
        Ok(())
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.map.flush()?;
        self.dirty_from = usize::MAX;
        self.dirty_to = 0;
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.dirty_from < self.dirty_to {
            self.map
                .flush_range(self.dirty_from, self.dirty_to - self.dirty_from)?;
        }
        self.dirty_from = usize::MAX;
        self.dirty_to = 0;
        Ok(())
    }
}

/// Faults the in-memory backend injects.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fail the write with this number (1-based, counting every write), tearing it: a prefix of
    /// its bytes lands, the call fails.
    pub fail_write: Option<u64>,
    /// Fail the sync with this number (1-based).
    pub fail_sync: Option<u64>,
    /// Fail segment creation (disk full).
    pub fail_create: bool,
    pub writes: u64,
    pub syncs: u64,
}

#[derive(Debug, Clone)]
struct MemFile {
    /// What survives a crash.
    durable: Vec<u8>,
    /// What readers see now.
    current: Vec<u8>,
    /// Writes since the last sync: (offset, bytes).
    unsynced: Vec<(usize, Vec<u8>)>,
}

/// The shared disk of [`MemBackend`]: survives the backend, so a test can crash and reopen.
#[derive(Debug, Default)]
pub struct MemDisk {
    files: BTreeMap<u64, MemFile>,
    pub faults: Faults,
}

impl MemDisk {
    /// Simulates power loss: each unsynced write survives whole, torn (a prefix), or not at all,
    /// as `choose(index) -> 0 | 1 | 2` decides.
    pub fn crash(&mut self, mut choose: impl FnMut(usize) -> u8) {
        let mut k = 0;
        for f in self.files.values_mut() {
            for (off, data) in std::mem::take(&mut f.unsynced) {
                match choose(k) {
                    0 => f.durable[off..off + data.len()].copy_from_slice(&data),
                    1 => {
                        let cut = data.len() / 2;
                        f.durable[off..off + cut].copy_from_slice(&data[..cut]);
                    }
                    _ => {}
                }
                k += 1;
            }
            f.current = f.durable.clone();
        }
    }

    /// Flips one byte of a segment's durable and current contents (corruption at rest).
    pub fn corrupt(&mut self, seq: u64, offset: usize) {
        if let Some(f) = self.files.get_mut(&seq) {
            f.durable[offset] ^= 0x5a;
            f.current[offset] ^= 0x5a;
        }
    }

    pub fn segments(&self) -> Vec<u64> {
        self.files.keys().copied().collect()
    }
}

/// Segments in memory, on a [`MemDisk`] shared with the test.
#[derive(Debug, Clone, Default)]
pub struct MemBackend {
    pub disk: Rc<RefCell<MemDisk>>,
}

/// A segment of [`MemBackend`]. Reads see a private copy refreshed on every write, so `bytes`
/// can return a plain slice.
#[derive(Debug)]
pub struct MemSegment {
    seq: u64,
    disk: Rc<RefCell<MemDisk>>,
    view: Vec<u8>,
}

impl Backend for MemBackend {
    type Seg = MemSegment;
    fn list(&mut self) -> io::Result<Vec<u64>> {
        Ok(self.disk.borrow().segments())
    }
    fn create(&mut self, seq: u64, len: usize) -> io::Result<MemSegment> {
        let mut d = self.disk.borrow_mut();
        if d.faults.fail_create {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if d.files.contains_key(&seq) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let zero = vec![0u8; len];
        d.files.insert(
            seq,
            MemFile {
                durable: zero.clone(),
                current: zero.clone(),
                unsynced: Vec::new(),
            },
        );
        Ok(MemSegment {
            seq,
            disk: self.disk.clone(),
            view: zero,
        })
    }
    fn open(&mut self, seq: u64) -> io::Result<MemSegment> {
        let d = self.disk.borrow();
        let f = d
            .files
            .get(&seq)
            .ok_or(io::Error::from(io::ErrorKind::NotFound))?;
        Ok(MemSegment {
            seq,
            disk: self.disk.clone(),
            view: f.current.clone(),
        })
    }
    fn remove(&mut self, seq: u64) -> io::Result<()> {
        self.disk.borrow_mut().files.remove(&seq);
        Ok(())
    }
}

impl Segment for MemSegment {
    fn bytes(&self) -> &[u8] {
        &self.view
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        d.faults.writes += 1;
        let fail = d.faults.fail_write == Some(d.faults.writes);
        let f = d
            .files
            .get_mut(&self.seq)
            .ok_or(io::Error::from(io::ErrorKind::NotFound))?;
        if offset + data.len() > f.current.len() {
            return Err(io::Error::other("write past the end of the segment"));
        }
        let landed = if fail { &data[..data.len() / 2] } else { data };
        f.current[offset..offset + landed.len()].copy_from_slice(landed);
        self.view[offset..offset + landed.len()].copy_from_slice(landed);
        f.unsynced.push((offset, landed.to_vec()));
        if fail {
            Err(io::Error::other("injected write failure"))
        } else {
            Ok(())
        }
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        d.faults.syncs += 1;
        if d.faults.fail_sync == Some(d.faults.syncs) {
            return Err(io::Error::other("injected sync failure"));
        }
        let f = d
            .files
            .get_mut(&self.seq)
            .ok_or(io::Error::from(io::ErrorKind::NotFound))?;
        for (off, data) in std::mem::take(&mut f.unsynced) {
            f.durable[off..off + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }
}
