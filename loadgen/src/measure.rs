//! What the generator samples besides latency: CPU seconds of this process and of a thread, the
//! server's CPU and RSS from procfs, and durations in nanoseconds.

use std::time::Duration;

use anyhow::bail;

/// Nanoseconds of a duration this process measured or was given (at most days: far from
/// 2^64 ns, 584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).expect("a duration under 584 years")
}

/// This process's CPU seconds (user + system, all threads) so far, to the microsecond.
pub(crate) fn own_cpu_s() -> anyhow::Result<f64> {
    let mut r = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    #[allow(unsafe_code)]
    // SAFETY: getrusage writes one rusage into memory this function owns.
    let (rc, r) = unsafe {
        let rc = libc::getrusage(libc::RUSAGE_SELF, r.as_mut_ptr());
        (rc, r.assume_init())
    };
    if rc != 0 {
        bail!("getrusage: {}", std::io::Error::last_os_error());
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(s(r.ru_utime) + s(r.ru_stime))
}

/// Server CPU seconds (user + system) and RSS in KiB from procfs.
pub(crate) fn server_usage(pid: u32) -> Option<(f64, f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = 100.0; // USER_HZ is 100 on every Linux ABI ferry targets
    let utime = f.get(11)?.parse::<f64>().ok()? / tick;
    let stime = f.get(12)?.parse::<f64>().ok()? / tick;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((utime, stime, rss))
}

/// The calling thread's CPU seconds so far.
pub(crate) fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: clock_gettime writes one timespec into memory this function owns.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is always there on Linux");
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}
