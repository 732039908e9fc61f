//! The binary as an operator meets it: TLS, refusal of plaintext off loopback, check-config,
//! healthcheck, admin endpoint, shutdown.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test helpers panic on failed set-up

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Node, TlsFiles, args_with, ferry_bin, mailbox, temp_dir, tls_url};
use ferry_proto::conn::ClientEvent;
use ferry_sdk::Client;

#[test]
fn tls_and_plain_clients_talk_through_one_node() {
    let tls = TlsFiles::write(&temp_dir("tls"));
    let tls_args = tls.node_args();
    let node = Node::start(&args_with(&["--shards", "2"], &tls_args), &[]);
    let opts = tls.client_opts();
    let mut rx = Client::connect_url(&tls_url(node.tls.unwrap()), &opts).unwrap();
    let dest = rx.listen(&mailbox(1), [rx.epoch()]).unwrap()[0];
    let mut tx = node.client();
    for i in 0..100u64 {
        tx.send(dest, i, 0, &[i as u8; 300]);
    }
    tx.flush().unwrap();
    for i in 0..100u64 {
        match rx.recv(Duration::from_secs(10)).unwrap() {
            ClientEvent::Deliver {
                msg_id, payload, ..
            } => {
                assert_eq!(msg_id, i);
                assert_eq!(&payload[..], &[i as u8; 300][..]);
            }
            other => panic!("{other:?}"),
        }
    }
    // Maximal packets: more than rustls's default 64 KiB buffer in one coalesced write.
    let big = vec![0xc3u8; ferry_sdk::PACKET_PAYLOAD_BYTES_MAX];
    for i in 0..8u64 {
        tx.send(dest, 1000 + i, 0, &big);
    }
    tx.flush().unwrap();
    for i in 0..8u64 {
        match rx.recv(Duration::from_secs(10)).unwrap() {
            ClientEvent::Deliver {
                msg_id, payload, ..
            } => {
                assert_eq!(msg_id, 1000 + i);
                assert!(payload[..] == big[..]);
            }
            other => panic!("{other:?}"),
        }
    }
    // A TLS client that does not trust the certificate fails the handshake.
    let other = TlsFiles::write(&temp_dir("other-tls")).client_opts();
    assert!(Client::connect_url(&tls_url(node.tls.unwrap()), &other).is_err());
    // Plain bytes on the TLS port: closed, node unaffected.
    let mut plain_on_tls = std::net::TcpStream::connect(node.tls.unwrap()).unwrap();
    use std::io::{Read, Write};
    plain_on_tls
        .write_all(b"\x08\x00\x00\x00\x01FRY\x01\x01\x00\x01\x00")
        .unwrap();
    plain_on_tls
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = plain_on_tls.read_to_end(&mut sink);
    rx.ping(1).unwrap();
}

#[test]
fn plaintext_on_a_public_address_needs_explicit_consent() {
    let out = Command::new(ferry_bin())
        .args([
            "run",
            "--listen",
            "0.0.0.0:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(temp_dir("refuse"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-plaintext"), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "one clear line, no backtrace: {err}"
    );
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let dir = temp_dir("cfg");
    let file = dir.join("ferry.toml");
    std::fs::write(&file, "shards = 3\n[limits]\nidle_timeout_ms = 45000\n").unwrap();
    let out = Command::new(ferry_bin())
        .args(["check-config", "--config"])
        .arg(&file)
        .env("FERRY_LIMITS_TICK_MS", "50")
        .args(["--shards", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("shards = 4"), "{text}");
    assert!(text.contains("idle_timeout_ms = 45000"), "{text}");
    assert!(text.contains("tick_ms = 50"), "{text}");
    // Unknown keys are refused with the file named.
    std::fs::write(&file, "shardz = 3\n").unwrap();
    let out = Command::new(ferry_bin())
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ferry.toml"));
}

#[test]
fn admin_endpoint_and_healthcheck_and_sigterm() {
    let mut node = Node::start(&["--shards", "2"], &[]);
    assert_eq!(node.http_get("/healthz").0, 200);
    assert_eq!(node.http_get("/readyz").0, 200);
    let (status, body) = node.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("ferry_build_info{version="));
    assert!(body.contains("# TYPE ferry_connections_accepted_total counter"));
    // The process metrics operators' dashboards expect, with real values.
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_max_fds") >= value("process_open_fds"));
    assert!(value("process_threads") >= 3.0);
    assert!(body.contains("# TYPE ferry_shard_tick_lag_seconds histogram"));
    assert!(body.contains("ferry_shard_tick_lag_seconds_bucket{shard=\"1\",le=\"+Inf\"}"));
    assert_eq!(node.http_get("/nope").0, 404);
    let hc = Command::new(ferry_bin())
        .args(["healthcheck", "--admin-listen", &node.admin.to_string()])
        .status()
        .unwrap();
    assert!(hc.success());
    let _c = node.client();
    let status = node.terminate();
    assert!(status.success(), "{status:?}");
    let hc = Command::new(ferry_bin())
        .args(["healthcheck", "--admin-listen", &node.admin.to_string()])
        .output()
        .unwrap();
    assert!(!hc.status.success());
}

#[test]
fn metrics_need_the_token_when_one_is_set() {
    let dir = temp_dir("tok");
    let tok = dir.join("token");
    std::fs::write(&tok, "s3cret\n").unwrap();
    let node = Node::start(&[], &[("FERRY_ADMIN_TOKEN_FILE", tok.to_str().unwrap())]);
    assert_eq!(node.http_get("/metrics").0, 401);
    let mut s = std::net::TcpStream::connect(node.admin).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(node.http_get("/healthz").0, 200);
}

#[test]
fn sighup_reloads_limits_and_certificate_without_dropping_connections() {
    let dir = temp_dir("hup");
    let first = TlsFiles::write(&dir);
    let tls_args = first.node_args();
    let file = dir.join("ferry.toml");
    std::fs::write(&file, "[limits]\nconnections_max = 100\n").unwrap();
    let node = Node::start(
        &args_with(
            &["--shards", "1", "--config", file.to_str().unwrap()],
            &tls_args,
        ),
        &[],
    );
    let mut a = node.client();
    let mut t = Client::connect_url(&tls_url(node.tls.unwrap()), &first.client_opts()).unwrap();

    // New limit and new certificate, then SIGHUP.
    std::fs::write(&file, "[limits]\nconnections_max = 2\n").unwrap();
    let second = TlsFiles::write(&dir);
    let hup = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // The limit applies to new connections once the shard's tick has picked it up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(node.plain.unwrap()) {
            Err(ferry_sdk::SdkError::Node { code, .. }) => {
                assert_eq!(code, ferry_sdk::ErrorCode::ConnectionLimit);
                break;
            }
            Ok(c) => drop(c),
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new limit not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Existing connections were not dropped.
    a.ping(1).unwrap();
    t.ping(2).unwrap();
    drop(a);
    // New TLS connections get the new certificate.
    assert!(Client::connect_url(&tls_url(node.tls.unwrap()), &first.client_opts()).is_err());
    // The slots of `a` and of the refused handshake free up once the shard has seen them close:
    // retry while the limit of 2 still counts them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut fresh = loop {
        match Client::connect_url(&tls_url(node.tls.unwrap()), &second.client_opts()) {
            Ok(c) => break c,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "no TLS connection with the new certificate: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    fresh.ping(3).unwrap();

    // A broken file on SIGHUP is refused and the running configuration stays.
    std::fs::write(&file, "[limits]\nconnections_max = 0\n").unwrap();
    Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node.stderr.lock().unwrap().contains("reload refused") {
        assert!(std::time::Instant::now() < deadline, "no reload answer");
        std::thread::sleep(Duration::from_millis(10));
    }
    fresh.ping(4).unwrap();
    assert!(
        node.stderr.lock().unwrap().contains("reload refused"),
        "{}",
        node.stderr.lock().unwrap()
    );
}

#[test]
fn a_store_written_with_another_shard_count_is_refused_with_one_line() {
    let dir = temp_dir("shards");
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::write(dir.join("store").join("shards"), "2\n").unwrap();
    let out = Command::new(ferry_bin())
        .args([
            "run",
            "--shards",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("written by 2 shards") && err.contains("--shards 2"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `ferry tune --check` reads the system and reports; it writes nothing.
#[test]
fn tune_check_reports_every_setting_and_changes_nothing() {
    let root = temp_dir("tune-root");
    let put = |path: &str, v: &str| {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, v).unwrap();
    };
    put("proc/sys/kernel/io_uring_disabled", "2\n");
    put("proc/sys/net/core/somaxconn", "128\n");
    put("proc/sys/vm/swappiness", "1\n");
    put("proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t16777216\n");
    put(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never\n",
    );
    let before: Vec<_> = walk(&root);
    let out = Command::new(common::ferry_bin())
        .args(["tune", "--check", "--shards", "2", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .to_string()
    };
    assert!(line("kernel.io_uring_disabled").starts_with("TUNE"));
    assert!(
        line("net.core.somaxconn").starts_with("TUNE")
            && line("net.core.somaxconn").contains("128")
    );
    assert!(line("vm.swappiness").starts_with("ok"));
    assert!(line("net.ipv4.tcp_rmem").starts_with("ok"));
    assert!(line("transparent_hugepage").starts_with("TUNE"));
    assert!(line("vm.max_map_count").starts_with("n/a"));
    assert!(text.contains("nothing was changed"));
    assert_eq!(walk(&root), before, "tune --check wrote nothing");
    // Without --check it refuses, with the reason.
    let out = Command::new(common::ferry_bin())
        .arg("tune")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only reports"));
}

fn walk(d: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// Start-up self-checks end start-up with one line naming the fix, not a panic: too few file
/// descriptors, too little locked memory for glommio's executors (limits lowered in a child
/// shell; the uring driver locks no memory of its own).
#[test]
fn too_few_files_or_too_little_locked_memory_end_start_up_with_the_fix() {
    for (ulimit, engine, expect) in [
        (
            "ulimit -n 1000",
            "auto",
            ["open-files limit is 1000", "ulimit -n"],
        ),
        (
            "ulimit -l 64",
            "glommio",
            ["locked-memory limit is 64 KiB", "ulimit -l"],
        ),
    ] {
        let dir = temp_dir("limits");
        let script = format!(
            "{ulimit} && exec {} run --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir {}",
            ferry_bin(),
            dir.display()
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .env("FERRY_IO_ENGINE", engine)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{ulimit}: started anyway");
        let err = String::from_utf8_lossy(&out.stderr);
        for e in expect {
            assert!(err.contains(e), "{ulimit}: {err}");
        }
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

/// Runs `ferry check-config` with `file` (when given) and `env`; returns (success, stderr).
fn check_config(file: Option<&std::path::Path>, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(ferry_bin());
    cmd.arg("check-config").env_remove("FERRY_CONFIG");
    if let Some(f) = file {
        cmd.arg("--config").arg(f);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configuration_errors_are_one_line_and_an_unknown_key_names_the_nearest() {
    let dir = temp_dir("cfg-errors");
    let file = dir.join("ferry.toml");
    let f = file.display().to_string();
    for (text, want) in [
        (
            "[limits]\nidle_timeut_ms = 5000\n",
            format!(
                "ferry: unknown key `limits.idle_timeut_ms` in {f}; did you mean `idle_timeout_ms`?"
            ),
        ),
        (
            "idle_timeout_ms = 5000\n",
            format!(
                "ferry: unknown key `idle_timeout_ms` in {f}; did you mean `limits.idle_timeout_ms`?"
            ),
        ),
        (
            "shards = \"four\"\n",
            format!(
                "ferry: `shards`: invalid type: string \"four\", expected a whole number ≥ 0 in {f}"
            ),
        ),
        (
            "shards = [\n",
            format!("ferry: parsing {f}: line 2, column 1: invalid array, expected `]`"),
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let (ok, err) = check_config(Some(&file), &[]);
        assert!(!ok, "{text}");
        assert_eq!(err, format!("{want}\n"), "{text}");
    }
    let (ok, err) = check_config(None, &[("FERRY_LIMITS_IDLE_TIMEUT_MS", "5000")]);
    assert!(!ok);
    assert_eq!(
        err,
        "ferry: unknown configuration variable FERRY_LIMITS_IDLE_TIMEUT_MS; did you mean FERRY_LIMITS_IDLE_TIMEOUT_MS?\n"
    );
}

#[test]
fn out_of_range_values_are_refused_naming_the_key_the_value_and_the_range() {
    let dir = temp_dir("cfg-range");
    let file = dir.join("ferry.toml");
    std::fs::write(&file, "shards = 99999999999\n").unwrap();
    let (ok, err) = check_config(Some(&file), &[]);
    assert!(!ok);
    assert_eq!(
        err,
        "ferry: shards = 99999999999 is out of range: allowed 0 to 1024 (0 = one per CPU)\n"
    );
    for (var, value, want) in [
        (
            "FERRY_LIMITS_IDLE_TIMEOUT_MS",
            "86400001",
            "limits.idle_timeout_ms = 86400001 is out of range: allowed 0 to 86400000 (0 = never)",
        ),
        (
            "FERRY_MEDIA_BLOB_BYTES_MAX",
            "999999999999999",
            "media.blob_bytes_max = 999999999999999 is out of range: allowed 1 to 68719476736",
        ),
        (
            "FERRY_PUSH_RETRIES_MAX",
            "1000",
            "push.retries_max = 1000 is out of range: allowed 0 to 100",
        ),
    ] {
        let (ok, err) = check_config(None, &[(var, value)]);
        assert!(!ok, "{var}={value}");
        assert_eq!(err, format!("ferry: {want}\n"), "{var}={value}");
    }
    // `run` refuses the same way, before it touches anything.
    let out = Command::new(ferry_bin())
        .args(["run", "--shards", "5000", "--data-dir"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ferry: shards = 5000 is out of range: allowed 0 to 1024 (0 = one per CPU)\n"
    );
    assert!(!dir.join("data").exists());
}

/// A node process, killed when dropped (a failed assertion leaves no node behind).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node started from `args` alone (its listeners from the configuration), with stderr going
/// to the file `log`: returns the process and its stdout lines up to and including "ready".
fn start_logging_to(
    args: &[&str],
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> (Running, Vec<String>) {
    use std::io::BufRead;
    let mut cmd = Command::new(ferry_bin());
    cmd.arg("run")
        .args(args)
        .env_remove("FERRY_CONFIG")
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Running(cmd.spawn().unwrap());
    let mut lines = Vec::new();
    let mut out = std::io::BufReader::new(child.0.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let _ = child.0.wait();
            panic!(
                "node exited before ready: {}",
                std::fs::read_to_string(log).unwrap()
            );
        }
        let ready = line.starts_with("ferry ready");
        lines.push(line.trim_end().to_string());
        if ready {
            return (child, lines);
        }
    }
}

/// Waits until `log` contains `needle` (a node logs asynchronously); returns the log.
fn wait_for_log(log: &std::path::Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{needle}` in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_warns_about_changed_keys_that_need_a_restart() {
    let dir = temp_dir("hup-restart");
    let file = dir.join("ferry.toml");
    let log = dir.join("stderr.log");
    let base = format!(
        "admin_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nshards = 1\n",
        dir.join("data").display()
    );
    std::fs::write(
        &file,
        format!("{base}listen = [\"127.0.0.1:0\"]\nlog_format = \"text\"\n"),
    )
    .unwrap();
    let (node, _) = start_logging_to(
        &["--config", file.to_str().unwrap()],
        &[("RUST_LOG", "info")],
        &log,
    );
    // `listen` and `log_format` need a restart; `idle_timeout_ms` is applied and not named.
    std::fs::write(
        &file,
        format!(
            "{base}listen = [\"127.0.0.1:1\"]\nlog_format = \"json\"\n[limits]\nidle_timeout_ms = 60000\n"
        ),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &node.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let text = wait_for_log(&log, "only a restart applies");
    let warning = text
        .lines()
        .find(|l| l.contains("only a restart applies"))
        .unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.ends_with("still running with the old values of: listen, log_format"),
        "{warning}"
    );
    assert!(text.contains("configuration reloaded"), "{text}");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What people read from the binary carries no Rust `Debug` text (`Some(1)`, `Os { code: .. }`)
/// and no terminal colour codes in a log that goes to a file.
#[test]
fn output_for_people_has_no_debug_text_and_log_files_no_colour() {
    let dir = temp_dir("human");
    let log = dir.join("stderr.log");
    let data = dir.join("data");
    let (node, stdout) = start_logging_to(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("RUST_LOG", "info")],
        &log,
    );
    let ready = stdout.last().unwrap();
    let cpu = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("service_cpu="))
        .unwrap();
    assert!(
        cpu == "none" || cpu.parse::<usize>().is_ok(),
        "service_cpu={cpu}"
    );
    let text = wait_for_log(&log, "ferry node ready");
    let mut seen = stdout.join("\n") + "\n" + &text;
    drop(node);

    // A node that cannot start, a failed health check and a refused configuration.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // dropped: nothing listens there now
    for args in [
        vec!["healthcheck", "--admin-listen", &closed.to_string()],
        vec!["check-config", "--shards", "99999"],
        vec![
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    ] {
        let out = Command::new(ferry_bin()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        seen.push_str(&err);
    }
    assert!(seen.contains("Connection refused (os error 111)"), "{seen}");
    for debug in ["Some(", "None", "Os {", "Kind(", "\x1b["] {
        assert!(!seen.contains(debug), "`{debug}` in:\n{seen}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dev_cert_gives_a_chain_a_node_serves_and_a_client_trusting_ca_pem_accepts() {
    use std::os::unix::fs::PermissionsExt;

    let dir = temp_dir("devcert");
    let out_dir = dir.join("certs");
    let out = Command::new(ferry_bin())
        .args(["dev-cert", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out_dir = out_dir.canonicalize().unwrap();
    let (ca, cert, key) = (
        out_dir.join("ca.pem"),
        out_dir.join("cert.pem"),
        out_dir.join("key.pem"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("tls_cert = \"{}\"", cert.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("tls_key = \"{}\"", key.display())),
        "{text}"
    );
    assert!(text.contains(&ca.display().to_string()), "{text}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600, "the private key");

    let node = Node::start(
        &[
            "--shards",
            "1",
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    // What the README shows: connect by URL, trusting ca.pem, by name and by address.
    let port = node.tls.unwrap().port();
    let trusting = |server_name: Option<&str>| ferry_sdk::ConnectOptions {
        trust: ferry_sdk::Trust::CaFile(ca.clone()),
        server_name: server_name.map(str::to_string),
        ..Default::default()
    };
    for url in [
        format!("ferry+tls://localhost:{port}"),
        format!("ferry+tls://127.0.0.1:{port}"),
    ] {
        let mut c =
            Client::connect_url(&url, &trusting(None)).unwrap_or_else(|e| panic!("{url}: {e}"));
        c.ping(1).unwrap();
    }
    // A name the certificate is not for is refused.
    let url = format!("ferry+tls://localhost:{port}");
    assert!(Client::connect_url(&url, &trusting(Some("ferry.example"))).is_err());

    // A second run does not overwrite the key.
    let before = std::fs::read(&key).unwrap();
    let again = Command::new(ferry_bin())
        .args(["dev-cert", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}
