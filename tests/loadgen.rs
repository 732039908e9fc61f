//! The load generator against a real node: every workload runs, loses nothing at a low rate, and
//! writes the JSON fields the benchmark scripts read.

#![allow(clippy::unwrap_used)] // test helpers panic on failed set-up

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Node, TlsFiles, args_with, temp_dir};

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
    let node = Node::start(&args_with(&["--shards", "2"], &tls_files.node_args()), &[]);
    let plain = format!("ferry://{}", node.addr());
    let tls = format!("ferry+tls://{}", node.tls.unwrap());
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

    let v = run(&[
        &["--target", plain.as_str(), "--workload", "fanin"][..],
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
