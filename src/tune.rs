//! `ferry tune --check`: reads the live system's kernel settings and limits, and prints each with
//! its current value, the recommended one and why. It changes nothing (`tuning/TUNING.md` says
//! how to apply them; `tuning/99-ferry.conf` is the sysctl profile).

use std::path::Path;

/// How a current value is judged.
enum Want {
    /// A number at least this.
    AtLeast(u64),
    /// A number at most this.
    AtMost(u64),
    /// Exactly this number.
    Equal(u64),
    /// The last number of a list (e.g. `tcp_rmem`'s maximum) at least this.
    LastAtLeast(u64),
    /// `ip_local_port_range`: at least this many ports.
    PortsAtLeast(u64),
    /// The bracketed choice of a sysfs enum is one of these.
    Choice(&'static [&'static str]),
    /// Reported only.
    Info,
}

struct Setting {
    name: &'static str,
    path: &'static str,
    want: Want,
    recommended: &'static str,
    why: &'static str,
}

const SETTINGS: &[Setting] = &[
    Setting {
        name: "kernel.io_uring_disabled",
        path: "proc/sys/kernel/io_uring_disabled",
        want: Want::Equal(0),
        recommended: "0",
        why: "the shards run on io_uring; 1 or 2 refuse it (ferry will not start)",
    },
    Setting {
        name: "fs.nr_open",
        path: "proc/sys/fs/nr_open",
        want: Want::AtLeast(1_048_576),
        recommended: ">= 1048576",
        why: "every connection is a file descriptor; LimitNOFILE cannot exceed this",
    },
    Setting {
        name: "fs.file-max",
        path: "proc/sys/fs/file-max",
        want: Want::AtLeast(2_097_152),
        recommended: ">= 2097152",
        why: "system-wide descriptors for hundreds of thousands of connections",
    },
    Setting {
        name: "net.core.somaxconn",
        path: "proc/sys/net/core/somaxconn",
        want: Want::AtLeast(65_535),
        recommended: ">= 65535",
        why: "caps every listen backlog: reconnect storms after a restart must not drop SYNs",
    },
    Setting {
        name: "net.ipv4.tcp_max_syn_backlog",
        path: "proc/sys/net/ipv4/tcp_max_syn_backlog",
        want: Want::AtLeast(65_535),
        recommended: ">= 65535",
        why: "half-open connections queued during a reconnect storm",
    },
    Setting {
        name: "net.core.rmem_max",
        path: "proc/sys/net/core/rmem_max",
        want: Want::AtLeast(16_777_216),
        recommended: ">= 16777216",
        why: "socket receive buffers (UDP for QUIC: the default is ten times too small)",
    },
    Setting {
        name: "net.core.wmem_max",
        path: "proc/sys/net/core/wmem_max",
        want: Want::AtLeast(16_777_216),
        recommended: ">= 16777216",
        why: "socket send buffers (UDP for QUIC, bulk media downloads)",
    },
    Setting {
        name: "net.ipv4.tcp_rmem",
        path: "proc/sys/net/ipv4/tcp_rmem",
        want: Want::LastAtLeast(16_777_216),
        recommended: "4096 131072 16777216",
        why: "lets busy connections grow their TCP receive window",
    },
    Setting {
        name: "net.ipv4.tcp_wmem",
        path: "proc/sys/net/ipv4/tcp_wmem",
        want: Want::LastAtLeast(16_777_216),
        recommended: "4096 131072 16777216",
        why: "lets busy connections grow their TCP send buffer",
    },
    Setting {
        name: "net.ipv4.ip_local_port_range",
        path: "proc/sys/net/ipv4/ip_local_port_range",
        want: Want::PortsAtLeast(60_000),
        recommended: "1024 65535",
        why: "outgoing connections (push providers, mesh peers) must not run out of ports",
    },
    Setting {
        name: "net.netfilter.nf_conntrack_max",
        path: "proc/sys/net/netfilter/nf_conntrack_max",
        want: Want::AtLeast(1_048_576),
        recommended: ">= 1048576 (or no conntrack)",
        why: "a full conntrack table drops new connections silently",
    },
    Setting {
        name: "vm.max_map_count",
        path: "proc/sys/vm/max_map_count",
        want: Want::AtLeast(1_048_576),
        recommended: ">= 1048576",
        why: "every store segment is an mmap, several per shard",
    },
    Setting {
        name: "vm.swappiness",
        path: "proc/sys/vm/swappiness",
        want: Want::AtMost(10),
        recommended: "<= 10 (1)",
        why: "a relay's latency suffers more from swapping than from less page cache",
    },
    Setting {
        name: "transparent_hugepage",
        path: "sys/kernel/mm/transparent_hugepage/enabled",
        want: Want::Choice(&["madvise", "never"]),
        recommended: "madvise",
        why: "always-on THP causes compaction stalls on a latency-bound process",
    },
    Setting {
        name: "net.core.busy_poll",
        path: "proc/sys/net/core/busy_poll",
        want: Want::Info,
        recommended: "0, or 50 with spare CPU",
        why: "busy polling trades CPU for lower latency; ferry's shards already poll io_uring",
    },
    Setting {
        name: "isolated CPUs",
        path: "sys/devices/system/cpu/isolated",
        want: Want::Info,
        recommended: "the shard cores",
        why: "isolcpus/nohz_full keep other work off the shard cores",
    },
    Setting {
        name: "default IRQ affinity",
        path: "proc/irq/default_smp_affinity",
        want: Want::Info,
        recommended: "away from shard cores",
        why: "network interrupts on a shard core steal its cycles; steer them to the service core",
    },
];

fn judge(want: &Want, v: &str) -> Option<bool> {
    let nums: Vec<u64> = v
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some(match want {
        Want::AtLeast(n) => *nums.first()? >= *n,
        Want::AtMost(n) => *nums.first()? <= *n,
        Want::Equal(n) => *nums.first()? == *n,
        Want::LastAtLeast(n) => *nums.last()? >= *n,
        Want::PortsAtLeast(n) => nums.get(1)?.saturating_sub(*nums.first()?) + 1 >= *n,
        Want::Choice(ok) => {
            let chosen = v.split('[').nth(1)?.split(']').next()?;
            ok.contains(&chosen)
        }
        Want::Info => return None,
    })
}

/// One report line: (status, name, current, recommended, why).
pub type Line = (&'static str, String, String, String, String);

/// Checks every setting under `root` (`/` on a live system) and the process limits.
pub fn check(root: &Path, shards: usize, io_memory_bytes: u64) -> Vec<Line> {
    let mut out = Vec::new();
    for s in SETTINGS {
        let current = std::fs::read_to_string(root.join(s.path))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "));
        let (status, cur) = match current {
            Err(_) => ("n/a", "absent".to_string()),
            Ok(v) => match judge(&s.want, &v) {
                Some(true) => ("ok", v),
                Some(false) => ("TUNE", v),
                None => ("info", if v.is_empty() { "(none)".into() } else { v }),
            },
        };
        out.push((
            status,
            s.name.to_string(),
            cur,
            s.recommended.to_string(),
            s.why.to_string(),
        ));
    }
    let (_, nofile) = crate::sys::limits(crate::sys::Resource::Nofile);
    out.push((
        if nofile >= 1_048_576 { "ok" } else { "TUNE" },
        "open files (hard limit)".into(),
        nofile.to_string(),
        ">= 1048576 (LimitNOFILE, ulimit -n, --ulimit nofile)".into(),
        "one descriptor per connection; the node raises its soft limit to this".into(),
    ));
    let need = (io_memory_bytes + 512 * 1024) * shards as u64;
    let (memlock, _) = crate::sys::limits(crate::sys::Resource::Memlock);
    out.push((
        if memlock >= need { "ok" } else { "TUNE" },
        "locked memory (soft limit)".into(),
        if memlock == crate::sys::UNLIMITED {
            "unlimited".into()
        } else {
            memlock.to_string()
        },
        format!(">= {need} for {shards} shards (LimitMEMLOCK=infinity, --ulimit memlock=-1)"),
        "io_uring registers memory per shard; too little and ferry will not start".into(),
    ));
    out
}

/// Prints the report; returns how many settings differ from the recommendation.
pub fn print(lines: &[Line]) -> usize {
    println!(
        "{:<5} {:<32} {:<28} {:<34} why",
        "", "setting", "current", "recommended"
    );
    for (status, name, cur, rec, why) in lines {
        println!("{status:<5} {name:<32} {cur:<28} {rec:<34} {why}");
    }
    let tune = lines.iter().filter(|l| l.0 == "TUNE").count();
    println!(
        "\n{tune} setting(s) differ from the recommendation; nothing was changed (see tuning/TUNING.md)."
    );
    tune
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_judged() {
        assert_eq!(judge(&Want::AtLeast(10), "12"), Some(true));
        assert_eq!(judge(&Want::AtLeast(10), "9"), Some(false));
        assert_eq!(
            judge(&Want::LastAtLeast(100), "4096 87380 6291456"),
            Some(true)
        );
        assert_eq!(
            judge(&Want::PortsAtLeast(60_000), "32768 60999"),
            Some(false)
        );
        assert_eq!(judge(&Want::PortsAtLeast(60_000), "1024 65535"), Some(true));
        let thp = Want::Choice(&["madvise", "never"]);
        assert_eq!(judge(&thp, "always [madvise] never"), Some(true));
        assert_eq!(judge(&thp, "[always] madvise never"), Some(false));
        assert_eq!(judge(&Want::Info, "x"), None);
        assert_eq!(judge(&Want::Equal(0), ""), None);
    }
}
