//! The data directory: its lock (one node per directory), the node key, and the store's shard count
//! marker.

use super::*;

/// The lock file in the data directory; it holds the pid of the node that locks it.
pub const LOCK_FILE: &str = "node.lock";

/// The data directory, open to its owner only and locked for the life of the process.
#[derive(Debug)]
pub struct DataDir {
    /// Holds the `flock`. The kernel releases it when the process exits, however it exits.
    _lock: std::fs::File,
    /// Set when the directory was open to other users: logged once the node is up (start-up
    /// failures stay one line).
    pub warning: Option<String>,
}

/// Creates the data directory (mode 0700) if missing, takes it back to 0700 if group or others
/// could enter it, and locks it: a second node on the same directory would serve with the same
/// identity key and open the same store twice, so it is refused, naming the holder's pid.
pub fn open_data_dir(dir: &Path) -> anyhow::Result<DataDir> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data dir {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading data dir {}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    let warning = (mode & 0o077 != 0).then(|| {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            Ok(()) => format!(
                "data directory {} was mode {mode:04o}, open to other users; changed it to 0700",
                dir.display()
            ),
            Err(e) => format!(
                "data directory {} is mode {mode:04o}, open to other users, and cannot be changed to 0700 ({e}): run chmod 700 on it",
                dir.display()
            ),
        }
    });
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let locked =
        sys::try_lock_exclusive(&file).with_context(|| format!("locking {}", path.display()))?;
    if !locked {
        let holder = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .map_or_else(|| "pid unknown".to_string(), |pid| format!("pid {pid}"));
        bail!(
            "data directory {} is in use by another ferry node ({holder}, holding {}): stop it, or give this node its own data_dir",
            dir.display(),
            path.display()
        );
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(DataDir {
        _lock: file,
        warning,
    })
}

/// The node's Ed25519 identity: a 32-byte seed in `data_dir/node.key`, created on first start
/// (the directory exists: [`open_data_dir`]).
pub fn load_or_create_node_key(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = data_dir.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} must hold exactly 32 bytes", path.display()))?;
            Ok(seed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            ferry_proto::fsutil::write_atomic(&path, &seed, 0o600)?;
            Ok(seed)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Dests are owned by `dest % shards`, so a store written with another shard count cannot be
/// served: the store directory records the count (written atomically before any shard starts).
pub(super) fn check_store_shards(dir: &Path, shards: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating store dir {}", dir.display()))?;
    let marker = dir.join("shards");
    match std::fs::read_to_string(&marker) {
        Ok(text) => {
            if text.trim() != shards.to_string() {
                bail!(
                    "the store in {} was written by {} shards; start with --shards {} (or move the store away)",
                    dir.display(),
                    text.trim(),
                    text.trim()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ferry_proto::fsutil::write_atomic(&marker, format!("{shards}\n").as_bytes(), 0o600)?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", marker.display())),
    }
    Ok(())
}
