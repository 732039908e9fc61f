//! Deploying ferry, checked with the real binary: systemd's notify protocol; io_uring refused by
//! a seccomp filter ends start-up with one line; the seccomp profile, the systemd unit, the
//! compose file and the Dockerfile allow every system call the node makes and say what they
//! must. (No Docker engine here: what the image would run is checked piece by piece.)

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation, unsafe_code)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Node, ferry_bin, kill, mailbox, temp_dir};
use ferry_proto::conn::ClientEvent;
use ferry_sdk::Op;

const WAIT: Duration = Duration::from_secs(10);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// systemd notify

/// With `NOTIFY_SOCKET` set (as systemd does for `Type=notify`) the node sends READY=1 once it
/// serves, RELOADING=1 then READY=1 around a SIGHUP, and STOPPING=1 when the drain begins.
#[test]
fn sd_notify_reports_ready_reloading_and_stopping() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("no notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut node = Node::start(
        &["--shards", "1"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    assert!(recv().lines().any(|l| l == "READY=1"));
    kill("HUP", node.pid());
    assert_eq!(recv(), "RELOADING=1");
    assert_eq!(recv(), "READY=1");
    let pid = node.pid();
    kill("TERM", pid);
    assert!(recv().lines().any(|l| l == "STOPPING=1"));
    assert!(node.wait().success());
}

// ---------------------------------------------------------------------------------------------
// io_uring refused by seccomp

/// Installs, in the child about to exec, a seccomp filter that fails io_uring_setup with EPERM
/// (what Docker's default profile does) and allows everything else.
fn deny_io_uring_setup(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    const NR: u32 = libc::SYS_io_uring_setup as u32;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt: 0,
        jf,
        k,
    };
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let filter = [
        stmt(ld, 4), // seccomp_data.arch
        jeq(ARCH, 3),
        stmt(ld, 0), // seccomp_data.nr
        jeq(NR, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: between fork and exec only async-signal-safe calls (prctl) run, and the filter
    // array outlives them (it is moved into the closure).
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn io_uring_refused_by_seccomp_ends_start_up_with_one_line_naming_the_profile() {
    let dir = temp_dir("seccomp");
    let mut cmd = Command::new(ferry_bin());
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(&dir)
    .env("RUST_LOG", "warn");
    deny_io_uring_setup(&mut cmd);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "one line, got:\n{stderr}");
    assert!(stderr.contains("io_uring is refused"), "{stderr}");
    assert!(stderr.contains("seccomp-io_uring.json"), "{stderr}");
    assert!(stderr.contains("SystemCallFilter"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ferry ready"));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// The seccomp profile

/// The names an ALLOW rule of the profile lets through, and whether with conditions on the
/// arguments.
fn profile_rules(p: &serde_json::Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut plain, mut conditional) = (BTreeSet::new(), BTreeSet::new());
    for rule in p["syscalls"].as_array().unwrap() {
        if rule["action"] != "SCMP_ACT_ALLOW" {
            continue;
        }
        let has_args = rule["args"].as_array().is_some_and(|a| !a.is_empty());
        let gated = rule.get("includes").is_some() || rule.get("excludes").is_some();
        assert!(!gated, "capability-gated rules are not expected: {rule}");
        for n in rule["names"].as_array().unwrap() {
            let n = n.as_str().unwrap().to_string();
            if has_args {
                conditional.insert(n);
            } else {
                plain.insert(n);
            }
        }
    }
    (plain, conditional)
}

#[test]
fn seccomp_profile_is_a_default_deny_profile_that_adds_io_uring() {
    let p: serde_json::Value = serde_json::from_str(&read("tuning/seccomp-io_uring.json")).unwrap();
    assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO", "default must deny");
    let arches: Vec<&str> = p["archMap"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["architecture"].as_str().unwrap())
        .collect();
    assert!(arches.contains(&"SCMP_ARCH_X86_64") && arches.contains(&"SCMP_ARCH_AARCH64"));
    let (plain, conditional) = profile_rules(&p);
    for n in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(plain.contains(n), "{n} not allowed");
    }
    // What Docker's default profile keeps from an unprivileged container stays refused.
    for n in [
        "ptrace",
        "mount",
        "umount2",
        "unshare",
        "setns",
        "pivot_root",
        "chroot",
        "bpf",
        "perf_event_open",
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "keyctl",
        "add_key",
        "process_vm_writev",
        "open_by_handle_at",
        "clock_settime",
        "userfaultfd",
    ] {
        assert!(
            !plain.contains(n) && !conditional.contains(n),
            "{n} must stay refused"
        );
    }
    // clone only without namespace flags; clone3 answered ENOSYS (the C library falls back).
    let rules = p["syscalls"].as_array().unwrap();
    let clone = rules
        .iter()
        .find(|r| r["names"].as_array().unwrap().iter().any(|n| n == "clone"))
        .unwrap();
    assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
    assert_eq!(clone["args"][0]["value"], 0x7E02_0000u64);
    let clone3 = rules
        .iter()
        .find(|r| r["names"].as_array().unwrap().iter().any(|n| n == "clone3"))
        .unwrap();
    assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
    assert_eq!(clone3["errnoRet"], 38);
    // No name twice across the unconditional rules.
    let total: usize = rules
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
        .map(|r| r["names"].as_array().unwrap().len())
        .sum();
    assert_eq!(total, plain.len(), "a name is listed twice");
}

// ---------------------------------------------------------------------------------------------
// The systemd unit

/// Expands a systemd syscall group (recursively) with systemd-analyze; a plain name is itself.
fn systemd_group(name: &str, out: &mut BTreeSet<String>) {
    if !name.starts_with('@') {
        out.insert(name.to_string());
        return;
    }
    let o = Command::new("systemd-analyze")
        .args(["syscall-filter", name])
        .output()
        .expect("systemd-analyze (package systemd; .ci/run installs it)");
    assert!(o.status.success(), "unknown group {name}");
    for line in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        systemd_group(l, out);
    }
}

/// The system calls the unit's `SystemCallFilter=` lines allow: the first line's allow list,
/// less every `~` line (systemd's semantics when the first line is an allow list).
fn unit_allowed(unit: &str) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut first = true;
    for line in unit.lines() {
        let Some(spec) = line.strip_prefix("SystemCallFilter=") else {
            continue;
        };
        if let Some(deny) = spec.strip_prefix('~') {
            assert!(!first, "the first filter line must be an allow list");
            let mut d = BTreeSet::new();
            for n in deny.split_whitespace() {
                systemd_group(n, &mut d);
            }
            allowed.retain(|n| !d.contains(n));
        } else {
            assert!(first, "only the first filter line may be an allow list");
            for n in spec.split_whitespace() {
                systemd_group(n, &mut allowed);
            }
        }
        first = false;
    }
    allowed
}

#[test]
fn systemd_unit_is_hardened_verifies_and_allows_io_uring() {
    let unit = read("tuning/ferry.service");
    for directive in [
        "Type=notify",
        "LimitNOFILE=1048576",
        "LimitMEMLOCK=infinity",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/ferry",
        "Environment=FERRY_DATA_DIR=/var/lib/ferry",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.lines().any(|l| l == directive), "missing {directive}");
    }
    // TimeoutStopSec leaves the node's own stop timeout room.
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(stop > 8, "TimeoutStopSec must exceed stop_timeout_s (8)");
    let allowed = unit_allowed(&unit);
    for n in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.contains(n), "the unit's filter refuses {n}");
    }
    assert!(!allowed.contains("mount") && !allowed.contains("ptrace"));

    // systemd-analyze verify (with the binary this build produced) has nothing to say, and the
    // offline security review rates the exposure "OK" (below 2.0 of 10).
    let dir = temp_dir("unit");
    let path = dir.join("ferry.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ferry", ferry_bin())).unwrap();
    let v = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(
        v.status.success() && said.trim().is_empty(),
        "verify: {said}"
    );
    let s = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&s.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("ferry.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(level < 2.0, "exposure {level}:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Every system call the node makes is allowed by both

/// The child processes of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A node doing each of its jobs: live relay, store and drain, a media upload and download,
/// prekey upload and fetch, a SIGHUP reload.
fn workload(node: &Node) {
    let epoch = node.client().epoch();
    let (alice, bob) = (mailbox(91), mailbox(92));
    // Live relay.
    let mut rx = node.client();
    let signer = alice.signer(epoch).unwrap();
    rx.prove(&[&signer], Op::Subscribe).unwrap();
    rx.subscribe(&[signer.dest()]).unwrap();
    let mut tx = node.client();
    tx.send(signer.dest(), 1, 0, b"live");
    tx.flush().unwrap();
    loop {
        if let ClientEvent::Deliver { payload, .. } = rx.recv(WAIT).unwrap() {
            assert_eq!(&payload[..], b"live");
            break;
        }
    }
    // Store, then drain.
    let dest = bob.dest(epoch).unwrap();
    tx.send(dest, 2, 0, b"stored");
    tx.flush().unwrap();
    let mut d = node.client();
    let bs = bob.signer(epoch).unwrap();
    d.prove(&[&bs], Op::Drain).unwrap();
    let start = Instant::now();
    loop {
        let (blobs, _) = d.drain(dest).unwrap();
        if !blobs.is_empty() {
            d.ack(&blobs).unwrap();
            break;
        }
        assert!(start.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Media.
    let data = vec![7u8; 300_000];
    let id = *blake3::hash(&data).as_bytes();
    d.upload_blob(id, data.len() as u64, &mut std::io::Cursor::new(&data))
        .unwrap();
    assert_eq!(d.download_verified(id, 300_000, 0, 300_000).unwrap(), data);
    // Prekeys.
    let ik = ferry_sdk::prekeys::IdentityKey::generate().unwrap();
    let slot = mailbox(93);
    let now = d.node_unix_s();
    let day = ferry_proto::addr::day_of(now);
    let s0 = slot.slot_signer(day).unwrap();
    d.prove(&[&s0], Op::PrekeyUpdate).unwrap();
    let plan = ferry_sdk::prekeys::PrekeyPlan {
        head: ferry_sdk::prekeys::HeadPlan::New,
        one_time_ec: 2,
        one_time_pq: 2,
        ids: ferry_sdk::prekeys::PrekeyIds::Sequential(1),
        replace_one_time: false,
        expires: now + 2 * ferry_proto::addr::DAY_SECONDS,
        ttl_s: 0,
    };
    let sealer = ferry_proto::prekey::SlotSealer::new(slot.slot_key(day), &s0);
    let (uploads, _) = ferry_sdk::prekeys::generate(&ik, &sealer, plan).unwrap();
    d.upload_prekeys(&uploads).unwrap();
    let opener = ferry_sdk::Contact::new(&slot.public().to_bytes(), common::ns(), None)
        .unwrap()
        .prekey_slot(day)
        .unwrap();
    assert_eq!(tx.fetch_prekeys(&opener).unwrap().identity, ik.public());
}

#[test]
fn the_node_makes_no_system_call_the_seccomp_profile_or_the_systemd_unit_refuses() {
    let dir = temp_dir("strace");
    let calls = dir.join("calls.txt");
    let calls_s = calls.to_str().unwrap().to_string();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut node = Node::start_wrapped(
        &["strace", "-f", "-qq", "-c", "-o", &calls_s],
        data,
        &["--shards", "2"],
        &[],
    );
    workload(&node);
    let ferry = children(node.pid());
    assert_eq!(ferry.len(), 1, "strace should have one child");
    kill("HUP", ferry[0]);
    std::thread::sleep(Duration::from_millis(300));
    kill("TERM", ferry[0]);
    assert!(node.wait().success());

    let text = std::fs::read_to_string(&calls).unwrap();
    let used: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let name = *cols.last()?;
            let numeric = cols.len() >= 5 && cols[0].parse::<f64>().is_ok();
            (numeric && name != "total").then(|| name.to_string())
        })
        .collect();
    for n in [
        "io_uring_setup",
        "io_uring_enter",
        "fdatasync",
        "sched_setaffinity",
    ] {
        assert!(
            used.contains(n),
            "the workload should make {n}; saw {used:?}"
        );
    }

    let p: serde_json::Value = serde_json::from_str(&read("tuning/seccomp-io_uring.json")).unwrap();
    let (plain, conditional) = profile_rules(&p);
    // clone3 is answered ENOSYS by the profile and the C library falls back to clone.
    let refused: Vec<&String> = used
        .iter()
        .filter(|n| !plain.contains(*n) && !conditional.contains(*n) && *n != "clone3")
        .collect();
    assert!(
        refused.is_empty(),
        "the seccomp profile refuses {refused:?}"
    );

    let unit_ok = unit_allowed(&read("tuning/ferry.service"));
    let refused: Vec<&String> = used.iter().filter(|n| !unit_ok.contains(*n)).collect();
    assert!(refused.is_empty(), "the systemd unit refuses {refused:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile and the compose file

/// The instruction lines of a Dockerfile, continuation lines joined.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let l = line.trim();
        if cur.is_empty() && (l.is_empty() || l.starts_with('#')) {
            continue;
        }
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(l);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

#[test]
fn dockerfile_copies_the_built_binary_and_its_healthcheck_and_environment_work() {
    let ins = dockerfile_instructions(&read("Dockerfile"));
    let find =
        |prefix: &str| -> Vec<&String> { ins.iter().filter(|l| l.starts_with(prefix)).collect() };
    // The build stage builds the `ferry` package's release binary and installs exactly that
    // file where the runtime stage copies it from, and the entrypoint runs the copy.
    let run = find("RUN cargo build");
    assert_eq!(run.len(), 1);
    assert!(
        run[0].contains("--release") && run[0].contains("--locked") && run[0].contains("-p ferry")
    );
    assert!(run[0].contains("install -D -m 0755 target/release/ferry /out/ferry"));
    let meta = Command::new("cargo")
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .current_dir(repo())
        .output()
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ferry")
        .unwrap();
    assert!(
        pkg["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "ferry" && t["kind"][0] == "bin"),
        "package ferry has no binary named ferry"
    );
    assert!(
        Path::new(ferry_bin()).file_name().unwrap() == "ferry",
        "the test binary is the package's ferry binary"
    );
    assert!(find("COPY --from=build /out/ferry /usr/local/bin/ferry").len() == 1);
    assert!(find("ENTRYPOINT [\"/usr/local/bin/ferry\"]").len() == 1);
    assert!(find("USER nonroot").len() == 1);
    assert!(find("VOLUME /data").len() == 1);

    // The image's environment is a valid configuration (certificate paths aside, which the
    // operator mounts), and HEALTHCHECK's command succeeds against a node whose admin endpoint
    // is where that environment puts it.
    let env_line = find("ENV ");
    assert_eq!(env_line.len(), 1);
    let env: Vec<(String, String)> = env_line[0]
        .trim_start_matches("ENV ")
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("FERRY_DATA_DIR"), "/data");
    assert_eq!(
        get("FERRY_LISTEN"),
        "",
        "no plaintext listener in the image"
    );
    let dir = temp_dir("image");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mut check = Command::new(ferry_bin());
    check.arg("check-config").env_remove("FERRY_CONFIG");
    for (k, v) in &env {
        let v = match k.as_str() {
            "FERRY_TLS_CERT" => cert.to_str().unwrap().to_string(),
            "FERRY_TLS_KEY" => key.to_str().unwrap().to_string(),
            _ => v.clone(),
        };
        check.env(k, v);
    }
    let out = check.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(effective.contains("listen = []"), "{effective}");
    assert!(
        effective.contains("listen_tls = [\"0.0.0.0:7443\"]"),
        "{effective}"
    );

    let hc = find("HEALTHCHECK");
    assert_eq!(hc.len(), 1);
    let cmd_json = hc[0].split("CMD ").nth(1).unwrap();
    let argv: Vec<String> = serde_json::from_str(cmd_json).unwrap();
    assert_eq!(argv, ["/usr/local/bin/ferry", "healthcheck"]);
    let node = Node::start(&["--shards", "1"], &[]);
    let admin = node.admin.to_string();
    let ok = Command::new(ferry_bin())
        .args(&argv[1..])
        .env("FERRY_ADMIN_LISTEN", &admin)
        .status()
        .unwrap();
    assert!(ok.success(), "HEALTHCHECK failed against a ready node");
    drop(node);
    let down = Command::new(ferry_bin())
        .args(&argv[1..])
        .env("FERRY_ADMIN_LISTEN", &admin)
        .status()
        .unwrap();
    assert!(!down.success(), "HEALTHCHECK passed with the node gone");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compose_file_gives_memlock_nofile_and_the_seccomp_profile() {
    let c = read("tuning/compose.yaml");
    let has = |s: &str| c.lines().any(|l| l.trim() == s);
    assert!(has("- seccomp=./seccomp-io_uring.json"));
    assert!(
        !c.lines()
            .any(|l| !l.trim().starts_with('#') && l.contains("unconfined")),
        "never seccomp=unconfined"
    );
    assert!(has("memlock: -1"));
    assert!(has("soft: 1048576") && has("hard: 1048576"));
    assert!(has("read_only: true"));
    assert!(has("- ferry-data:/data"));
    assert!(has("context: .."));
    // The profile it names is the one next to it.
    assert!(repo().join("tuning/seccomp-io_uring.json").is_file());
    // The README's docker run line uses the same profile and limits.
    let readme = read("README.md");
    let line = readme
        .lines()
        .find(|l| l.contains("docker run"))
        .expect("README has a docker run line");
    for part in [
        "--security-opt seccomp=tuning/seccomp-io_uring.json",
        "--ulimit memlock=-1",
        "--ulimit nofile=1048576",
        "--read-only",
        "-v ferry-data:/data",
    ] {
        assert!(line.contains(part), "README docker run lacks {part}");
    }
}
