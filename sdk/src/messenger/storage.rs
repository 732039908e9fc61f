//! Where the messenger keeps its state: the [`Storage`] trait and its two backends, in memory
//! and in a directory (one file per key, written durably, locked against a second process).

use std::collections::BTreeMap;

/// Key-value storage the messenger keeps its state in. Keys are short ASCII paths
/// (`identity`, `namespace`, `contact/<hex>`, `session/<hex>`, `prekeys`, `inits`,
/// `outbox/<hex>`, `inbox/<hex>`, `attachment/<hex>`, `seen`); values are opaque bytes, most of them secret (a
/// contact record holds that contact's mailbox secret): store them where the platform keeps
/// secrets. A read error must be an error, never "absent": the messenger would otherwise make a
/// new identity.
pub trait Storage {
    fn get(&self, key: &str) -> std::io::Result<Option<Vec<u8>>>;
    /// Stores `value` durably before returning (a message may be acknowledged after it).
    fn put(&mut self, key: &str, value: &[u8]) -> std::io::Result<()>;
    fn delete(&mut self, key: &str) -> std::io::Result<()>;
    /// Every key starting with `prefix`.
    fn keys(&self, prefix: &str) -> std::io::Result<Vec<String>>;
}

/// Storage in memory (tests, or an application that persists elsewhere).
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage(pub BTreeMap<String, Vec<u8>>);

impl Storage for MemoryStorage {
    fn get(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
    }
    fn put(&mut self, key: &str, value: &[u8]) -> std::io::Result<()> {
        self.0.insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> std::io::Result<()> {
        self.0.remove(key);
        Ok(())
    }
    fn keys(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        Ok(self
            .0
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
}

/// Storage in a directory: one file per key (`/` becomes a subdirectory, mode 0700), written
/// atomically (temporary file, sync, rename, directory sync), mode 0600. The directory is
/// locked while open: two processes on one state would reuse ratchet keys.
#[derive(Debug)]
pub struct DirStorage {
    dir: std::path::PathBuf,
    _lock: std::fs::File,
}

fn make_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// An exclusive, non-blocking `flock` on `f` (released when the file is closed).
#[allow(unsafe_code)]
fn try_lock(f: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor this process owns for as long as `f` lives.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

impl DirStorage {
    /// Opens (creating) the directory and locks it; a second open fails while the first lives.
    pub fn open(dir: impl Into<std::path::PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        make_dir(&dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))?;
        if !try_lock(&lock) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("{} is in use by another process", dir.display()),
            ));
        }
        Ok(DirStorage { dir, _lock: lock })
    }
    fn path(&self, key: &str) -> std::path::PathBuf {
        self.dir.join(key)
    }
}

impl Storage for DirStorage {
    fn get(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn put(&mut self, key: &str, value: &[u8]) -> std::io::Result<()> {
        let path = self.path(key);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        make_dir(&parent)?;
        ferry_proto::fsutil::write_atomic(&path, value, 0o600)
    }
    fn delete(&mut self, key: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    fn keys(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        let (dir, sub, start) = match prefix.rsplit_once('/') {
            Some((d, s)) => (self.dir.join(d), format!("{d}/"), s.to_string()),
            None => (self.dir.clone(), String::new(), prefix.to_string()),
        };
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in rd {
            let name = e?.file_name();
            let Some(n) = name.to_str() else { continue };
            if n.starts_with(&start) && !n.ends_with(".tmp") && !n.starts_with('.') {
                out.push(format!("{sub}{n}"));
            }
        }
        out.sort();
        Ok(out)
    }
}
