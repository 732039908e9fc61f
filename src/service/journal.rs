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
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
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
            if data[at + 4..at + HEADER_BYTES] != check(payload) {
                break;
            }
            replay.records.push(payload.to_vec());
            at += HEADER_BYTES + len;
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

    /// Replaces the journal with `records` (the live state), atomically.
    pub fn rewrite<'a>(&mut self, records: impl Iterator<Item = &'a [u8]>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let mut buf = Vec::new();
        for r in records {
            Self::frame(&mut buf, r);
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.len = buf.len() as u64;
        self.pending.clear();
        Ok(())
    }
}

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
        assert!(!d.join("j.tmp").exists());
    }
}
