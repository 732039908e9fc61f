//! The load generator against a real node: every workload runs, loses nothing at a low rate, and
//! writes the JSON fields the benchmark scripts read; its own CPU is measured with or without
//! the server's pid; run lengths past its limit are refused.

#![allow(clippy::unwrap_used)] // test helpers panic on failed set-up

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{Node, TlsFiles, args_with, temp_dir, tls_url};

/// `ferry-loadgen` is built beside `ferry` by `cargo build --workspace --bins` (tests/run-all.sh).
fn loadgen_bin() -> PathBuf {
    let p = PathBuf::from(common::ferry_bin()).with_file_name("ferry-loadgen");
    assert!(
        p.exists(),
        "{} missing: run the suite with `cargo test --workspace`",
        p.display()
    );
    p
}

fn run(args: &[&str]) -> serde_json::Value {
    let out = Command::new(loadgen_bin())
        .args(args)
        .arg("--quiet")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check_stream(v: &serde_json::Value) {
    for k in [
        "offered_per_s",
        "delivered_per_s",
        "sent",
        "delivered",
        "lost",
    ] {
        assert!(v.get(k).is_some(), "{k} missing in {v}");
    }
    for k in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            v["latency_us"][k].as_f64().unwrap() > 0.0,
            "latency {k} missing in {v}"
        );
    }
    assert!(v["sent"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(v["lost"].as_u64().unwrap(), 0, "{v}");
    assert_eq!(v["delivered"], v["sent"], "{v}");
}

#[test]
fn loadgen_drives_every_workload_against_a_node() {
    let dir = temp_dir("lg");
    let tls_files = TlsFiles::write(&dir);
    let cert_path = tls_files.cert_path.clone();
    // Every workload connects from 127.0.0.1, and churn opens connections as fast as the node
    // takes them: in one CI run it spent the address's connection bucket
    // (`ip_connections_burst`, 2,000) and the idle workload's 200 were refused `RateLimited`.
    // This test is about the generator; the limiter has its own (tests/abuse.rs
    // `per_address_connection_rate_is_limited_with_an_error_code`).
    let node = Node::start(
        &args_with(&["--shards", "2"], &tls_files.node_args()),
        &[("FERRY_LIMITS_IP_CONNECTIONS_PER_S", "0")],
    );
    let plain = format!("ferry://{}", node.addr());
    let tls = tls_url(node.tls.unwrap());
    let pid = node.pid().to_string();
    let common_args = [
        "--rate",
        "2000",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--pairs",
        "4",
        "--server-pid",
        &pid,
    ];

    let v = run(&[
        &["--target", plain.as_str(), "--workload", "pairs"][..],
        &common_args[..],
    ]
    .concat());
    check_stream(&v);
    assert!(v["server_cpu_cores"].as_f64().is_some(), "{v}");

    let json_out = dir.join("out.json");
    let v = run(&[
        &[
            "--target",
            tls.as_str(),
            "--tls-ca",
            cert_path.to_str().unwrap(),
            "--size",
            "1400",
        ][..],
        &common_args[..],
        &["--json-out", json_out.to_str().unwrap()][..],
    ]
    .concat());
    check_stream(&v);
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert_eq!(written, v);

    // By host name.
    let by_name = format!("ferry://localhost:{}", node.addr().port());
    let v = run(&[
        &["--target", by_name.as_str(), "--workload", "fanin"][..],
        &common_args[..],
    ]
    .concat());
    check_stream(&v);

    let v = run(&[
        "--target",
        &plain,
        "--workload",
        "offline",
        "--pairs",
        "2",
        "--messages",
        "300",
    ]);
    assert_eq!(v["stored"].as_u64().unwrap(), 600, "{v}");
    assert_eq!(v["drained"].as_u64().unwrap(), 600, "{v}");
    assert_eq!(v["lost"].as_u64().unwrap(), 0, "{v}");

    let v = run(&[
        "--target",
        &plain,
        "--workload",
        "churn",
        "--pairs",
        "2",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    assert!(v["cycles"].as_u64().unwrap() > 10, "{v}");

    let v = run(&[
        "--target",
        &plain,
        "--workload",
        "idle",
        "--pairs",
        "200",
        "--duration",
        "0.5",
        "--server-pid",
        &pid,
    ]);
    assert_eq!(v["connections"].as_u64().unwrap(), 200, "{v}");
    assert!(
        v["server_rss_per_connection_bytes"].as_f64().is_some(),
        "{v}"
    );

    // A TLS target without a trust anchor is refused with a clear message.
    let out = Command::new(loadgen_bin())
        .args(["--target", &tls])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-ca"));
}

/// Runs the load generator to its end; returns its JSON and the CPU seconds (user + system) the
/// whole process used, as the kernel accounted them to its parent.
#[allow(unsafe_code, clippy::zombie_processes)] // reaped by wait4, which also gives its rusage
fn run_measured(args: &[&str]) -> (serde_json::Value, f64) {
    let mut child = Command::new(loadgen_bin())
        .args(args)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: wait4 on our own child, writing into locals.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "loadgen failed: {err}"
    );
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        serde_json::from_slice(&out).unwrap(),
        s(usage.ru_utime) + s(usage.ru_stime),
    )
}

/// Without `--server-pid` the generator still reports its own CPU (once, it reported 0.0: its
/// start sample was taken again every turn of the loop while the server's was absent), and the
/// number fits the run: above zero, at most the one core its event loop runs on, and no more
/// CPU in the measured seconds than the whole process used.
#[test]
fn loadgen_reports_its_own_cpu_without_the_server_pid() {
    let node = Node::start(&["--shards", "2"], &[]);
    let target = format!("ferry://{}", node.addr());
    for rate in ["2000", "0"] {
        let (v, process_cpu_s) = run_measured(&[
            "--target",
            &target,
            "--rate",
            rate,
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--pairs",
            "2",
            "--window",
            "64",
        ]);
        check_stream(&v);
        assert!(v.get("server_cpu_cores").is_none(), "{v}");
        let cores = v["loadgen_cpu_cores"].as_f64().unwrap();
        assert!(cores > 0.0 && cores <= 1.05, "rate {rate}: {cores} in {v}");
        let window_cpu_s = cores * v["duration_s"].as_f64().unwrap();
        assert!(
            window_cpu_s <= process_cpu_s + 0.01,
            "rate {rate}: {window_cpu_s} s in the measured window, {process_cpu_s} s in all"
        );
    }
}

/// Many connections, few messages each: at a rate of a few messages a second, a turn of the
/// generator's event loop touches the few connections that are due or had an event, not all of
/// them (it once scanned every sender every turn); and with `--threads 2` the pairs are split
/// over two loops whose counts add up, each loop's CPU reported.
#[test]
fn loadgen_turns_touch_what_is_due_and_threads_split_the_pairs() {
    // One address plays 600 clients: lift the per-address limits.
    let node = Node::start(
        &["--shards", "2"],
        &[
            ("FERRY_LIMITS_IP_CONNECTIONS_MAX", "0"),
            ("FERRY_LIMITS_IP_CONNECTIONS_PER_S", "0"),
            ("FERRY_LIMITS_IP_PROOFS_PER_S", "0"),
        ],
    );
    let target = format!("ferry://{}", node.addr());
    let pid = node.pid().to_string();
    let v = run(&[
        "--target",
        &target,
        "--pairs",
        "300",
        "--rate",
        "200",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--server-pid",
        &pid,
    ]);
    check_stream(&v);
    assert_eq!(v["connections"].as_u64().unwrap(), 600, "{v}");
    let per_turn = v["connection_visits_per_turn"].as_f64().unwrap();
    assert!(
        per_turn < 10.0,
        "a turn touched {per_turn} of 600 connections on average: {v}"
    );
    assert!(v["loop_turns"].as_u64().unwrap() > 100, "{v}");
    assert!(v["generator_bound"].is_boolean(), "{v}");

    for rate in ["4000", "0"] {
        let v = run(&[
            "--target",
            &target,
            "--pairs",
            "6",
            "--threads",
            "2",
            "--rate",
            rate,
            "--window",
            "16",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--server-pid",
            &pid,
        ]);
        check_stream(&v);
        assert_eq!(v["loadgen_threads"].as_u64().unwrap(), 2, "{v}");
        let loops = v["loadgen_thread_cpu_cores"].as_array().unwrap();
        assert_eq!(loops.len(), 2, "{v}");
        assert!(loops.iter().all(|c| c.as_f64().unwrap() > 0.0), "{v}");
    }
}

/// A run length the nanosecond clock could not hold (or a negative one) is refused up front,
/// naming the flag; once it overflowed (a panic in debug builds, an empty run in release).
#[test]
fn loadgen_refuses_run_lengths_past_its_limit() {
    for (flag, value) in [
        ("--duration", "1e12"),
        ("--duration", "NaN"),
        ("--warmup", "-1"),
        ("--warmup", "1e300"),
    ] {
        let out = Command::new(loadgen_bin())
            .args(["--target", "ferry://127.0.0.1:1", "--quiet"])
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag} {value}: {err}");
        assert!(
            err.contains(flag) && err.contains("86400"),
            "{flag} {value}: {err}"
        );
    }
}

/// The offline workload through NATS JetStream, the store ferry's is compared with
/// (`bench/compare --offline`): every message published is acked by the stream, fetched, acked
/// by its consumer and so gone from the work-queue stream; both sides' CPU is reported.
/// nats-server comes from Debian (`.ci/run` installs it).
#[test]
fn loadgen_offline_drives_jetstream_to_an_empty_stream() {
    use std::io::BufRead;
    let dir = temp_dir("js");
    let mut nats = Command::new("nats-server")
        .args([
            "-js",
            "-sd",
            dir.to_str().unwrap(),
            "-a",
            "127.0.0.1",
            "-p",
            "-1",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server (Debian package nats-server; .ci/run installs it)");
    // "[…] Listening for client connections on 127.0.0.1:PORT"
    let mut lines = std::io::BufReader::new(nats.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_once("Listening for client connections on ")
                .map(|(_, a)| a.trim().to_string())
        })
        .expect("nats-server says where it listens");
    // Keep reading its log so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let pid = nats.id().to_string();
    let v = run(&[
        "--target",
        &format!("nats://{addr}"),
        "--workload",
        "offline",
        "--pairs",
        "3",
        "--messages",
        "700",
        "--server-pid",
        &pid,
    ]);
    let _ = nats.kill();
    let _ = nats.wait();
    assert_eq!(v["system"], "jetstream", "{v}");
    assert_eq!(v["stored"].as_u64().unwrap(), 2100, "{v}");
    assert_eq!(v["drained"].as_u64().unwrap(), 2100, "{v}");
    assert_eq!(v["lost"].as_u64().unwrap(), 0, "{v}");
    assert_eq!(v["left_in_store"].as_u64().unwrap(), 0, "{v}");
    for k in [
        "store_server_cpu_us_per_msg",
        "store_loadgen_cpu_us_per_msg",
        "drain_server_cpu_us_per_msg",
    ] {
        assert!(v[k].as_f64().is_some_and(|c| c >= 0.0), "{k} in {v}");
    }
    assert!(v["time_to_stored_us"]["p99"].as_f64().unwrap() > 0.0, "{v}");
}
