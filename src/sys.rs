//! The few system calls the node makes outside the data plane (through rustix): resource
//! limits, scheduling priority, CPU affinity, the file-creation mask, the data directory's lock,
//! and the io_uring availability check. Each failure is one clear line.

#![allow(unsafe_code)] // only the io_uring probe (a raw system call); the rest is rustix.

use anyhow::bail;
pub use rustix::process::Resource;
use rustix::process::{Rlimit, getrlimit, setrlimit};

/// What an unlimited resource limit reads as (`RLIM_INFINITY`).
pub const UNLIMITED: u64 = u64::MAX;

/// (soft, hard) of a resource limit, [`UNLIMITED`] for none.
pub fn limits(resource: Resource) -> (u64, u64) {
    let r = getrlimit(resource);
    (
        r.current.unwrap_or(UNLIMITED),
        r.maximum.unwrap_or(UNLIMITED),
    )
}

/// Raises the soft open-files limit to the hard one (as nats-server and redis do); returns it.
pub fn raise_nofile() -> u64 {
    let (soft, hard) = limits(Resource::Nofile);
    if soft < hard {
        let r = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        // Raising soft to hard needs no privilege.
        if setrlimit(Resource::Nofile, r).is_ok() {
            return hard;
        }
    }
    soft
}

/// The memory budget a node takes when `limits.memory_bytes_max` is 0: half of what the host
/// lets it have, the smaller of MemTotal and the cgroup's memory limit (v2 `memory.max`, or v1
/// `memory.limit_in_bytes`). The other half is left to the kernel's socket buffers, the page
/// cache the store's mmap'd segments live in, and everything else. `None`: nothing readable.
pub fn memory_budget_default() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let total = read("/proc/meminfo").and_then(|m| mem_total_bytes(&m));
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|v| cgroup_limit_bytes(&v));
    let host = match (total, cgroup) {
        (Some(t), Some(c)) => t.min(c),
        (t, c) => t.or(c)?,
    };
    Some(host / 2)
}

/// `MemTotal` of /proc/meminfo, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A cgroup memory limit file's value; `None` for "max" (v2) or the v1 "unlimited" sentinel.
fn cgroup_limit_bytes(v: &str) -> Option<u64> {
    let n: u64 = v.trim().parse().ok()?;
    (n < 1 << 60).then_some(n)
}

/// Fewest open files a node starts with: listeners, store segments, journals, media files and a
/// few thousand connections.
pub const NOFILE_MIN: u64 = 4_096;

/// Refuses to start with too few file descriptors (one clear line naming the fix). Returns a
/// warning to log once the node is up when the limit, not `connections_max`, will cap the
/// connections (start-up failures stay one line).
pub fn check_nofile(nofile: u64, connections_max: usize) -> anyhow::Result<Option<String>> {
    const FIX: &str = "ulimit -n 1048576, LimitNOFILE=1048576 in systemd, --ulimit nofile=1048576:1048576 in Docker";
    if nofile < NOFILE_MIN {
        bail!(
            "open-files limit is {nofile} but ferry needs at least {NOFILE_MIN} (one per connection, plus listeners, store segments and media files): raise it ({FIX})"
        );
    }
    Ok((nofile < connections_max as u64 + 1_024).then(|| {
        format!(
            "open-files limit {nofile} caps this node below limits.connections_max ({connections_max}); raise it ({FIX})"
        )
    }))
}

/// Lowers the calling thread's scheduling priority (the service core yields to shards); false
/// if the kernel refused.
pub fn lower_thread_priority(nice: i32) -> bool {
    // On Linux the nice value is per thread, and `None` (who = 0) names the calling thread.
    rustix::process::setpriority_process(None, nice).is_ok()
}

/// The process's file-creation mask: owner only. Everything the node writes (`node.key`, store
/// segments, journals, media blobs, the lock file) is then 0600 and every directory 0700,
/// whatever the mode each call site asks for.
pub const UMASK: u32 = 0o077;

/// Sets [`UMASK`] for the whole process (call before any thread starts).
pub fn restrict_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(UMASK));
}

/// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` when another open file
/// description (another process) holds it. The lock lasts until `file` is closed, and the
/// kernel drops it when the process dies, however it dies.
pub fn try_lock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Pins the calling thread to `cpu` (glommio pins the shards; the service core is a plain thread).
pub fn pin_current_thread(cpu: usize) -> bool {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    // `None`: the calling thread.
    rustix::thread::sched_setaffinity(None, &set).is_ok()
}

/// CPUs this process may run on (its affinity mask, so `taskset` works), from procfs.
pub fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
        .unwrap_or("");
    let mut cpus = parse_cpu_list(list);
    if cpus.is_empty() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        cpus = (0..n).collect();
    }
    cpus
}

pub fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

/// Checks that io_uring is allowed here (not disabled, not refused by a seccomp filter), with an
/// error that says how to allow it; before the I/O driver is chosen.
pub fn preflight_io_uring() -> anyhow::Result<()> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        let v = v.trim();
        if v != "0" {
            bail!(
                "io_uring is disabled on this host (kernel.io_uring_disabled = {v}); set it to 0: sysctl -w kernel.io_uring_disabled=0"
            );
        }
    }
    probe_io_uring()
}

/// Checks that glommio executors (`io_engine = "glommio"`) can lock the memory they register:
/// the uring driver's rings are charged to the process's memory cgroup on the kernels it runs
/// on, not to `RLIMIT_MEMLOCK`.
pub fn preflight_memlock(shards: usize, io_memory_bytes: usize) -> anyhow::Result<()> {
    // glommio registers io_memory plus its rings with the kernel for each executor.
    let per_executor = io_memory_bytes as u64 + 512 * 1024;
    let need = per_executor * shards as u64;
    let (soft, _) = limits(Resource::Memlock);
    if soft != UNLIMITED && soft < need {
        bail!(
            "locked-memory limit is {} KiB but {shards} shard(s) need {} KiB: raise it (ulimit -l unlimited, LimitMEMLOCK=infinity in systemd, --ulimit memlock=-1 in Docker) or use fewer shards",
            soft / 1024,
            need / 1024
        );
    }
    Ok(())
}

/// Creates (and closes) a one-entry io_uring, so a refusal ends start-up with its cause instead
/// of failing later inside an executor. Docker's and containerd's default seccomp profiles, and
/// systemd units whose `SystemCallFilter=` lacks them, refuse the io_uring system calls.
fn probe_io_uring() -> anyhow::Result<()> {
    // struct io_uring_params is 120 bytes; the kernel requires it zeroed apart from the flags.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and writes `params` (120 valid, writable bytes) and returns a
    // new fd or -1; nothing else is touched.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd >= 0 {
        let fd = libc::c_int::try_from(fd)
            .map_err(|_| anyhow::anyhow!("io_uring_setup returned {fd}, not a file descriptor"))?;
        // SAFETY: `fd` is the ring this function just created and owns.
        unsafe { libc::close(fd) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENOSYS) => bail!(
            "io_uring is refused ({err}): a seccomp filter blocks io_uring_setup, io_uring_enter and io_uring_register; in Docker run with --security-opt seccomp=tuning/seccomp-io_uring.json (never unconfined), under systemd add them to SystemCallFilter= (see tuning/ferry.service), or the kernel lacks io_uring (CONFIG_IO_URING)"
        ),
        // ENOMEM and the like: not a policy refusal; glommio will report what it finds.
        _ => Ok(()),
    }
}

/// Tells the service manager about the node's state (`READY=1`, `STOPPING=1`, ...) when it was
/// started by systemd with `Type=notify` (`NOTIFY_SOCKET` set); does nothing otherwise. A
/// socket path starting with `@` is in the abstract namespace.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limits_parse() {
        let meminfo = "MemTotal:       16318412 kB\nMemFree:         1234 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(16_318_412 * 1024));
        assert_eq!(mem_total_bytes("nothing"), None);
        assert_eq!(cgroup_limit_bytes("max\n"), None);
        assert_eq!(cgroup_limit_bytes("9223372036854771712\n"), None); // v1 "unlimited"
        assert_eq!(cgroup_limit_bytes("536870912\n"), Some(512 << 20));
        assert!(memory_budget_default().is_some_and(|b| b > 0));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(
            super::parse_cpu_list("0-3,8,10-11"),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(super::parse_cpu_list("1"), vec![1]);
        assert!(super::parse_cpu_list("").is_empty());
    }
}

/// What the process uses, from procfs, for the admin endpoint's `process_*` metrics (the names
/// Prometheus clients use). `None` where procfs could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessUsage {
    /// User and system CPU time.
    pub cpu_s: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
}

/// Reads [`ProcessUsage`] of this process. Counting the open descriptors lists `/proc/self/fd`:
/// work in proportion to the connections, once per scrape.
pub fn process_usage() -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from the third on.
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // USER_HZ is 100 on every Linux ABI ferry targets.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    let cpu_s = (ticks(11)? + ticks(12)?) / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(ProcessUsage {
        cpu_s,
        resident_bytes: field("VmRSS:")? * 1024,
        virtual_bytes: field("VmSize:")? * 1024,
        threads: field("Threads:")?,
        open_fds,
    })
}
