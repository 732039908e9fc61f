//! Durable file writes, in one place for every crate that keeps files (the node's key and store
//! marker, media metadata, the service journals, the SDK's directory storage).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `data` to `path` so that after a crash at any point the file holds either its old
/// contents (or is absent) or all of `data`: a temporary file beside it (`<path>.tmp`, created
/// with `mode`), synced, renamed over `path`, then the directory synced so that the rename
/// itself is durable.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    write_synced(path, data, mode)?;
    sync_parent(path)
}

/// [`write_atomic`] without the directory sync, for a caller that writes several files of one
/// directory and syncs it once after the last ([`sync_parent`]).
pub fn write_synced(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Syncs the directory holding `path` (after a create, rename or remove in it).
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_whole_with_its_mode_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("ferry-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("node.key");
        write_atomic(&p, b"first", 0o600).unwrap();
        write_atomic(&p, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.join("node.key.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
