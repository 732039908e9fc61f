//! Where segments live. Two implementations of one seam: [`MmapBackend`] (files preallocated with
//! `posix_fallocate` and mapped with memmap2) and [`MemBackend`] (memory, with injected faults and
//! simulated crashes, for the model-based tests).
//!
//! A segment is created under a temporary name and renamed into place only once its header is
//! durable ([`CreateStep`]), so a crash at any moment leaves either no segment or a valid one, plus
//! at most a temporary file that the next open removes.

#![allow(unsafe_code)] // mmap and posix_fallocate; each use says why it is sound.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A sync handed off the shard's core: it makes durable every write made to its segment before
/// it was taken ([`Segment::sync_target`]). The node's driver issues it as an io_uring
/// `fdatasync` on the reactor without waiting for it; [`SyncTarget::sync`] is the blocking form
/// (tests, the simulator).
pub trait SyncTarget {
    fn sync(self) -> io::Result<()>;
}

/// One segment: a fixed-size byte region written in place.
pub trait Segment: std::fmt::Debug {
    type Target: SyncTarget;
    /// What syncs the writes made so far away from the caller; the segment counts them as
    /// synced (a later [`Segment::sync`] covers only what comes after).
    fn sync_target(&mut self) -> io::Result<Self::Target>;
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
pub trait Backend: std::fmt::Debug {
    type Seg: Segment;
    /// What creates this backend's segments away from the log: the next segment is made ahead,
    /// off the shard's core ([`crate::store::Log::take_segment_job`]).
    type Maker: SegmentMaker<Seg = Self::Seg>;
    fn maker(&self) -> Self::Maker;
    /// Existing segment sequence numbers, ascending (temporaries are not segments).
    fn list(&mut self) -> io::Result<Vec<u64>>;
    /// Creates segment `seq`: `len` bytes reserved on disk, `header` at offset 0, zeros after it.
    /// When this returns the segment and its header are durable; until then a crash leaves no
    /// segment `seq`, at most a temporary that [`Backend::remove_temporaries`] deletes.
    fn create(&mut self, seq: u64, len: usize, header: &[u8]) -> io::Result<Self::Seg>;
    fn open(&mut self, seq: u64) -> io::Result<Self::Seg>;
    fn remove(&mut self, seq: u64) -> io::Result<()>;
    /// Deletes what interrupted creations left behind; returns their sequence numbers.
    fn remove_temporaries(&mut self) -> io::Result<Vec<u64>>;
}

/// Creates segments as [`Backend::create`] does, apart from the backend (another thread).
pub trait SegmentMaker: std::fmt::Debug {
    type Seg;
    fn make(&mut self, seq: u64, len: usize, header: &[u8]) -> io::Result<Self::Seg>;
    /// Deletes segments as [`Backend::remove`] does (a missing one is already gone), with one
    /// directory sync for them all.
    fn remove(&mut self, seqs: &[u64]) -> io::Result<()>;
}

/// The steps of creating a segment, in order. A crash after any of them leaves no segment file,
/// or (after [`CreateStep::Renamed`]) a valid one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CreateStep {
    /// `seg-<seq>.tmp` exists, empty.
    TempCreated,
    /// Its whole length is reserved (`posix_fallocate`): zeros.
    Allocated,
    /// The segment header is written (not yet durable).
    HeaderWritten,
    /// The file, header and length included, is durable (`fsync`).
    TempSynced,
    /// Renamed to `seg-<seq>.log` (the name is not yet durable).
    Renamed,
    /// The directory is synced: the segment exists for good.
    DirSynced,
}

impl CreateStep {
    pub const ALL: [CreateStep; 6] = [
        CreateStep::TempCreated,
        CreateStep::Allocated,
        CreateStep::HeaderWritten,
        CreateStep::TempSynced,
        CreateStep::Renamed,
        CreateStep::DirSynced,
    ];
}

/// Mode of every file the store creates, whatever the process umask: blobs are ciphertext, but
/// who talks to whom and when is not for other users of the host.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories the store creates.
pub const DIR_MODE: u32 = 0o700;

type StepHook = Box<dyn FnMut(CreateStep) + Send>;

/// Segments as files `seg-<seq:016x>.log` in one directory; `seg-<seq:016x>.tmp` while created.
pub struct MmapBackend {
    dir: PathBuf,
    /// Called after each step of a segment's creation: tests stop the process there.
    step_hook: Option<StepHook>,
}

impl std::fmt::Debug for MmapBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapBackend")
            .field("dir", &self.dir)
            .field("step_hook", &self.step_hook.is_some())
            .finish()
    }
}

impl MmapBackend {
    pub fn new(dir: &Path) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        Ok(MmapBackend {
            dir: dir.to_path_buf(),
            step_hook: None,
        })
    }
    /// Calls `hook` after each step of every segment creation (crash tests kill the process in
    /// it).
    #[must_use]
    pub fn with_step_hook(mut self, hook: impl FnMut(CreateStep) + Send + 'static) -> Self {
        self.step_hook = Some(Box::new(hook));
        self
    }
    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("seg-{seq:016x}.log"))
    }
    fn temp_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("seg-{seq:016x}.tmp"))
    }
    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
    fn step(&mut self, step: CreateStep) {
        if let Some(hook) = self.step_hook.as_mut() {
            hook(step);
        }
    }
    /// `seq` from `seg-<seq:016x><suffix>`.
    fn seqs_named(&self, suffix: &str) -> io::Result<Vec<u64>> {
        let mut seqs = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(suffix))
            {
                if hex.len() == 16 {
                    if let Ok(seq) = u64::from_str_radix(hex, 16) {
                        seqs.push(seq);
                    }
                }
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }
    /// The temporary file of segment `seq`, allocated, with its header, durable (steps up to
    /// [`CreateStep::TempSynced`]).
    fn create_temp(&mut self, seq: u64, len: usize, header: &[u8]) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(self.temp_path(seq))?;
        self.step(CreateStep::TempCreated);
        let len_off =
            libc::off_t::try_from(len).map_err(|_| io::Error::other("segment too large"))?;
        // SAFETY: plain syscall on an fd we own; reserves the blocks so writes through the map
        // cannot hit ENOSPC later.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len_off) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        self.step(CreateStep::Allocated);
        file.write_all_at(header, 0)?;
        self.step(CreateStep::HeaderWritten);
        file.sync_all()?;
        self.step(CreateStep::TempSynced);
        Ok(file)
    }
}

/// A mapped segment file.
#[derive(Debug)]
pub struct MmapSegment {
    map: memmap2::MmapMut,
    /// Kept open for the map's lifetime, and duplicated for off-core syncs.
    file: File,
    dirty_from: usize,
    dirty_to: usize,
}

fn map(file: &File) -> io::Result<memmap2::MmapMut> {
    // SAFETY: the file is owned by this process's store alone (one shard, one directory), is never
    // truncated while mapped, and its whole length was allocated with posix_fallocate, so no
    // access through the map can fault with SIGBUS on a full disk.
    unsafe { memmap2::MmapMut::map_mut(file) }
}

/// Creates segment files in a store's directory, on whatever thread runs it (no step hook: the
/// crash tests drive [`Backend::create`]).
#[derive(Debug, Clone)]
pub struct MmapMaker {
    dir: PathBuf,
}

impl SegmentMaker for MmapMaker {
    type Seg = MmapSegment;
    fn make(&mut self, seq: u64, len: usize, header: &[u8]) -> io::Result<MmapSegment> {
        let mut backend = MmapBackend {
            dir: self.dir.clone(),
            step_hook: None,
        };
        backend.create(seq, len, header)
    }
    fn remove(&mut self, seqs: &[u64]) -> io::Result<()> {
        let backend = MmapBackend {
            dir: self.dir.clone(),
            step_hook: None,
        };
        for seq in seqs {
            match std::fs::remove_file(backend.path(*seq)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        backend.sync_dir()
    }
}

impl Backend for MmapBackend {
    type Seg = MmapSegment;
    type Maker = MmapMaker;

    fn maker(&self) -> MmapMaker {
        MmapMaker {
            dir: self.dir.clone(),
        }
    }

    fn list(&mut self) -> io::Result<Vec<u64>> {
        self.seqs_named(".log")
    }

    fn create(&mut self, seq: u64, len: usize, header: &[u8]) -> io::Result<MmapSegment> {
        if header.len() > len {
            return Err(io::Error::other("segment header longer than the segment"));
        }
        let temp = self.temp_path(seq);
        let path = self.path(seq);
        let file = match self.create_temp(seq, len, header) {
            Ok(f) => f,
            Err(e) => {
                // Nothing named `seq` is in place; the next open would remove this too.
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&temp, &path) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        self.step(CreateStep::Renamed);
        if let Err(e) = self.sync_dir() {
            // The caller will not use this number again; leave no untracked segment behind.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.step(CreateStep::DirSynced);
        let map = map(&file)?;
        Ok(MmapSegment {
            map,
            file,
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
            file,
            dirty_from: usize::MAX,
            dirty_to: 0,
        })
    }

    fn remove(&mut self, seq: u64) -> io::Result<()> {
        std::fs::remove_file(self.path(seq))?;
        self.sync_dir()
    }

    fn remove_temporaries(&mut self) -> io::Result<Vec<u64>> {
        let seqs = self.seqs_named(".tmp")?;
        for seq in &seqs {
            std::fs::remove_file(self.temp_path(*seq))?;
        }
        if !seqs.is_empty() {
            self.sync_dir()?;
        }
        Ok(seqs)
    }
}

/// A segment file's own descriptor (a duplicate): `fdatasync` on it writes back the pages the
/// map dirtied (they are the file's page cache), even after the segment is closed or removed.
impl SyncTarget for File {
    fn sync(self) -> io::Result<()> {
        self.sync_data()
    }
}

impl Segment for MmapSegment {
    type Target = File;
    fn sync_target(&mut self) -> io::Result<File> {
        let file = self.file.try_clone()?;
        self.dirty_from = usize::MAX;
        self.dirty_to = 0;
        Ok(file)
    }
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
    /// Fail handing a sync off the core (the node's duplicate descriptor: out of descriptors).
    pub fail_sync_target: bool,
    /// Fail segment deletions (a read-only or failing directory).
    pub fail_remove: bool,
    /// Stop the next segment creation right after this step, as a crash there would: the call
    /// fails and nothing is cleaned up (follow with [`MemDisk::crash`] and a reopen).
    pub crash_in_create: Option<CreateStep>,
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
    /// How many times `unsynced` was emptied (a sync or a crash): a deferred sync taken before
    /// knows whether the writes it covers are still the first of the list.
    emptied: u64,
}

impl MemFile {
    fn zeroed(len: usize) -> MemFile {
        MemFile {
            durable: vec![0; len],
            current: vec![0; len],
            unsynced: Vec::new(),
            emptied: 0,
        }
    }

    /// Makes the oldest `n` unsynced writes durable.
    fn land(&mut self, n: usize) {
        for (off, data) in self.unsynced.drain(..n) {
            self.durable[off..off + data.len()].copy_from_slice(&data);
        }
    }
}

/// The shared disk of [`MemBackend`]: survives the backend, so a test can crash and reopen.
#[derive(Debug, Default)]
pub struct MemDisk {
    files: BTreeMap<u64, MemFile>,
    /// Segments being created (`seg-<seq>.tmp`).
    temps: BTreeMap<u64, MemFile>,
    /// Segments renamed into place whose directory entry is not yet durable.
    renamed_unsynced: Vec<u64>,
    pub faults: Faults,
}

impl MemDisk {
    /// Simulates power loss: each unsynced write survives whole, torn (a prefix), or not at all,
    /// and each rename not yet made durable survives or is undone, as `choose(index) -> 0 | 1 |
    /// 2` decides (2: lost).
    pub fn crash(&mut self, mut choose: impl FnMut(usize) -> u8) {
        let mut k = 0;
        for seq in std::mem::take(&mut self.renamed_unsynced) {
            if choose(k) == 2 {
                if let Some(f) = self.files.remove(&seq) {
                    self.temps.insert(seq, f);
                }
            }
            k += 1;
        }
        for f in self.files.values_mut().chain(self.temps.values_mut()) {
            f.emptied += 1;
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

    /// Puts a zero-filled segment file in place, as a crash inside segment creation in versions
    /// before the temporary name left it.
    pub fn put_zeroed(&mut self, seq: u64, len: usize) {
        self.files.insert(seq, MemFile::zeroed(len));
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

    pub fn temporaries(&self) -> Vec<u64> {
        self.temps.keys().copied().collect()
    }

    /// The current bytes of segment `seq`.
    pub fn segment_bytes(&self, seq: u64) -> Option<Vec<u8>> {
        self.files.get(&seq).map(|f| f.current.clone())
    }
}

fn injected_crash(step: CreateStep) -> io::Error {
    io::Error::other(format!("injected crash after {step:?}"))
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

impl SegmentMaker for MemBackend {
    type Seg = MemSegment;
    fn make(&mut self, seq: u64, len: usize, header: &[u8]) -> io::Result<MemSegment> {
        self.create(seq, len, header)
    }
    fn remove(&mut self, seqs: &[u64]) -> io::Result<()> {
        for seq in seqs {
            Backend::remove(self, *seq)?;
        }
        Ok(())
    }
}

impl Backend for MemBackend {
    type Seg = MemSegment;
    type Maker = MemBackend;

    fn maker(&self) -> MemBackend {
        self.clone()
    }

    fn list(&mut self) -> io::Result<Vec<u64>> {
        Ok(self.disk.borrow().segments())
    }
    fn create(&mut self, seq: u64, len: usize, header: &[u8]) -> io::Result<MemSegment> {
        let mut d = self.disk.borrow_mut();
        if d.faults.fail_create {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if header.len() > len {
            return Err(io::Error::other("segment header longer than the segment"));
        }
        if d.files.contains_key(&seq) || d.temps.contains_key(&seq) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let crash_at = d.faults.crash_in_create.take();
        let stop = |step: CreateStep| crash_at == Some(step);
        // The steps of MmapBackend::create, each one a place to crash.
        d.temps.insert(seq, MemFile::zeroed(0));
        if stop(CreateStep::TempCreated) {
            return Err(injected_crash(CreateStep::TempCreated));
        }
        d.temps.insert(seq, MemFile::zeroed(len));
        if stop(CreateStep::Allocated) {
            return Err(injected_crash(CreateStep::Allocated));
        }
        let temp = d.temps.get_mut(&seq).ok_or(io::ErrorKind::NotFound)?;
        temp.current[..header.len()].copy_from_slice(header);
        temp.unsynced.push((0, header.to_vec()));
        if stop(CreateStep::HeaderWritten) {
            return Err(injected_crash(CreateStep::HeaderWritten));
        }
        temp.unsynced.clear();
        temp.durable.clone_from(&temp.current);
        if stop(CreateStep::TempSynced) {
            return Err(injected_crash(CreateStep::TempSynced));
        }
        let f = d.temps.remove(&seq).ok_or(io::ErrorKind::NotFound)?;
        let view = f.current.clone();
        d.files.insert(seq, f);
        d.renamed_unsynced.push(seq);
        if stop(CreateStep::Renamed) {
            return Err(injected_crash(CreateStep::Renamed));
        }
        d.renamed_unsynced.retain(|s| *s != seq);
        if stop(CreateStep::DirSynced) {
            return Err(injected_crash(CreateStep::DirSynced));
        }
        Ok(MemSegment {
            seq,
            disk: self.disk.clone(),
            view,
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
        let mut d = self.disk.borrow_mut();
        if d.faults.fail_remove {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        d.files.remove(&seq);
        d.renamed_unsynced.retain(|s| *s != seq);
        Ok(())
    }
    fn remove_temporaries(&mut self) -> io::Result<Vec<u64>> {
        let temps = std::mem::take(&mut self.disk.borrow_mut().temps);
        Ok(temps.into_keys().collect())
    }
}

/// A deferred sync of a [`MemSegment`]: when it runs, the writes made before it was taken land
/// (later ones stay unsynced, as a real fsync may or may not cover them: the strict choice, so a
/// commit that claims too much is caught), and the disk's sync faults apply.
#[derive(Debug)]
pub struct MemSyncTarget {
    seq: u64,
    disk: Rc<RefCell<MemDisk>>,
    /// Unsynced writes of the segment when the target was taken, and the file's `emptied` then.
    writes: usize,
    emptied: u64,
}

impl SyncTarget for MemSyncTarget {
    fn sync(self) -> io::Result<()> {
        let mut d = self.disk.borrow_mut();
        d.faults.syncs += 1;
        if d.faults.fail_sync == Some(d.faults.syncs) {
            return Err(io::Error::other("injected sync failure"));
        }
        // Removed since (reclaimed), or its writes already made durable by a sync on the core:
        // nothing left of what it covers.
        if let Some(f) = d
            .files
            .get_mut(&self.seq)
            .filter(|f| f.emptied == self.emptied)
        {
            let n = self.writes.min(f.unsynced.len());
            f.land(n);
        }
        Ok(())
    }
}

impl Segment for MemSegment {
    type Target = MemSyncTarget;
    fn sync_target(&mut self) -> io::Result<MemSyncTarget> {
        if self.disk.borrow().faults.fail_sync_target {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let (writes, emptied) = self
            .disk
            .borrow()
            .files
            .get(&self.seq)
            .map_or((0, 0), |f| (f.unsynced.len(), f.emptied));
        Ok(MemSyncTarget {
            seq: self.seq,
            disk: self.disk.clone(),
            writes,
            emptied,
        })
    }
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
        f.emptied += 1;
        let n = f.unsynced.len();
        f.land(n);
        Ok(())
    }
}
