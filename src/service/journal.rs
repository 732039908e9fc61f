//! A crash-safe append-only journal of records for the service core's state (the prekey
//! directory, push registrations). Record: `len:u32le | check(8) | payload`, where `check` is the
//! first 8 bytes of blake3(payload). Appends are buffered and made durable together by
//! [`Journal::commit`] (one `fdatasync` per batch of requests: group commit). Opening replays
//! every whole record and cuts a torn or corrupt tail. [`Journal::rewrite`] compacts: the live
//! state goes to a temporary file, which is synced and renamed over the journal, and the
//! directory is synced, so a crash leaves either the old or the new journal, never a mix.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Largest record accepted at replay (a slot with 100 PQ one-time keys is about 170 KB).
pub const RECORD_BYTES_MAX: usize = 1 << 20;
const HEADER_BYTES: usize = 4 + 8;

fn check(payload: &[u8]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&blake3::hash(payload).as_bytes()[..8]);
    c
}

/// What opening found.
#[derive(Debug, Default)]
pub struct Replay {
    pub records: Vec<Vec<u8>>,
    /// Bytes cut from the end (a torn or corrupt tail).
    pub cut_bytes: u64,
    /// Whole records inside the file whose check failed: skipped, the replay goes on.
    pub quarantined: usize,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    pending: Vec<u8>,
}

impl Journal {
    /// Opens (creating) the journal at `path` and replays it.
    pub fn open(path: &Path) -> std::io::Result<(Journal, Replay)> {
        use std::os::unix::fs::OpenOptionsExt;
        let existed = path.exists();
        // Push tokens live in one of these: readable by the node's user only.
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        if !existed {
            sync_parent(path)?;
        }
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let mut replay = Replay::default();
        let mut at = 0usize;
        while data.len() - at >= HEADER_BYTES {
            let mut len = [0u8; 4];
            len.copy_from_slice(&data[at..at + 4]);
            let len = u32::from_le_bytes(len) as usize;
            if len > RECORD_BYTES_MAX || data.len() - at - HEADER_BYTES < len {
                break;
            }
            let payload = &data[at + HEADER_BYTES..at + HEADER_BYTES + len];
            let end = at + HEADER_BYTES + len;
            if data[at + 4..at + HEADER_BYTES] != check(payload) {
                if end == data.len() {
                    break; // the last record: a torn write, cut below
                }
                // A damaged record inside the file (its length still frames it): skip it and
                // keep what follows, rather than cutting every later change.
                replay.quarantined += 1;
                at = end;
                continue;
            }
            replay.records.push(payload.to_vec());
            at = end;
        }
        let good = at as u64;
        replay.cut_bytes = data.len() as u64 - good;
        if replay.cut_bytes > 0 {
            file.set_len(good)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                len: good,
                pending: Vec::new(),
            },
            replay,
        ))
    }

    fn frame(out: &mut Vec<u8>, payload: &[u8]) {
        assert!(
            payload.len() <= RECORD_BYTES_MAX,
            "journal record too large"
        );
        out.extend_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out.extend_from_slice(&check(payload));
        out.extend_from_slice(payload);
    }

    /// Buffers a record; it is durable after the next successful [`Journal::commit`].
    pub fn append(&mut self, payload: &[u8]) {
        Self::frame(&mut self.pending, payload);
    }

    /// Writes and syncs what was appended since the last commit.
    pub fn commit(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.pending)?;
        self.file.sync_data()?;
        self.len += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Bytes in the journal file.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Replaces the journal with `records` (the live state), atomically. `Err(Rewrite::Kept)`:
    /// nothing changed, the old journal goes on. `Err(Rewrite::Broken)`: the rename happened but
    /// the new file could not be reopened or the directory synced; the journal can no longer
    /// promise durability and the caller must stop.
    pub fn rewrite<'a>(&mut self, records: impl Iterator<Item = &'a [u8]>) -> Result<(), Rewrite> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path.with_extension("journal.tmp");
        let mut buf = Vec::new();
        for r in records {
            Self::frame(&mut buf, r);
        }
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()
        };
        write().map_err(Rewrite::Kept)?;
        std::fs::rename(&tmp, &self.path).map_err(Rewrite::Kept)?;
        // From here the old file is gone: any failure is fatal.
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(Rewrite::Broken)?;
        sync_parent(&self.path).map_err(Rewrite::Broken)?;
        self.len = buf.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

/// Why a rewrite failed (see [`Journal::rewrite`]).
#[derive(Debug)]
pub enum Rewrite {
    Kept(std::io::Error),
    Broken(std::io::Error),
}

use ferry_proto::fsutil::sync_parent;

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn replays_committed_records_and_cuts_a_torn_tail() {
        let d = dir("torn");
        let p = d.join("j");
        {
            let (mut j, r) = Journal::open(&p).unwrap();
            assert!(r.records.is_empty());
            j.append(b"one");
            j.append(b"two");
            j.commit().unwrap();
            j.append(b"uncommitted"); // lost: never written
        }
        // A torn write: half a record at the end.
        {
            let mut f = OpenOptions::new().append(true).open(&p).unwrap();
            f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        }
        let (mut j, r) = Journal::open(&p).unwrap();
        assert_eq!(r.records, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(r.cut_bytes, 6);
        j.append(b"three");
        j.commit().unwrap();
        drop(j);
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(r.records.len(), 3);
        assert_eq!(r.cut_bytes, 0);
    }

    #[test]
    fn a_corrupt_record_ends_the_replay() {
        let d = dir("corrupt");
        let p = d.join("j");
        {
            let (mut j, _) = Journal::open(&p).unwrap();
            j.append(b"good");
            j.append(b"flipped");
            j.commit().unwrap();
        }
        let mut data = std::fs::read(&p).unwrap();
        let n = data.len();
        data[n - 1] ^= 1;
        std::fs::write(&p, &data).unwrap();
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(r.records, vec![b"good".to_vec()]);
        assert_eq!(r.cut_bytes, (HEADER_BYTES + 7) as u64);
    }

    #[test]
    fn a_damaged_record_inside_the_file_is_skipped_and_the_rest_kept() {
        let d = dir("middle");
        let p = d.join("j");
        {
            let (mut j, _) = Journal::open(&p).unwrap();
            j.append(b"one");
            j.append(b"two");
            j.append(b"three");
            j.commit().unwrap();
        }
        let mut data = std::fs::read(&p).unwrap();
        data[2 * HEADER_BYTES + 3 + 1] ^= 0x20; // inside "two"
        std::fs::write(&p, &data).unwrap();
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(r.records, vec![b"one".to_vec(), b"three".to_vec()]);
        assert_eq!((r.quarantined, r.cut_bytes), (1, 0));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn rewrite_replaces_the_state() {
        let d = dir("rewrite");
        let p = d.join("j");
        let (mut j, _) = Journal::open(&p).unwrap();
        for i in 0..100u32 {
            j.append(&i.to_le_bytes());
        }
        j.commit().unwrap();
        let live: Vec<Vec<u8>> = vec![b"a".to_vec(), b"b".to_vec()];
        j.rewrite(live.iter().map(|v| v.as_slice())).unwrap();
        j.append(b"c");
        j.commit().unwrap();
        drop(j);
        let (_, r) = Journal::open(&p).unwrap();
        assert_eq!(r.records, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(!d.join("j.journal.tmp").exists());
    }
}
