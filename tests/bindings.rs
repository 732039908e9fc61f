//! The SDK from other languages: uniffi's Python bindings against a real node (the Kotlin and
//! Swift ones are generated from the same library), and the wasm build of the crypto core under
//! Node. `tests/run-all.sh` builds what these need before the tests run (the cdylib and its
//! generated bindings in `<target>/bindings/`, the wasm package in `<target>/wasm-pkg/`).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Node, TlsFiles, args_with, temp_dir, tls_url};

/// The cargo target directory these tests were built in.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn need(p: &std::path::Path) {
    assert!(
        p.exists(),
        "{} missing: tests/run-all.sh builds it (uniffi bindings and the wasm package)",
        p.display()
    );
}

#[test]
fn uniffi_bindings_are_generated_and_the_python_ones_talk_to_a_node() {
    let dir = target_dir().join("bindings");
    for f in [
        "python/ferry_ffi.py",
        "python/libferry_ffi.so",
        "kotlin/uniffi/ferry_ffi/ferry_ffi.kt",
        "swift/ferry_ffi.swift",
        "swift/ferry_ffiFFI.h",
    ] {
        need(&dir.join(f));
    }
    // The generated Kotlin and Swift expose the same API the Python test uses.
    let kt = std::fs::read_to_string(dir.join("kotlin/uniffi/ferry_ffi/ferry_ffi.kt")).unwrap();
    let swift = std::fs::read_to_string(dir.join("swift/ferry_ffi.swift")).unwrap();
    for api in [
        "sendText",
        "publishPrekeys",
        "addContact",
        "fetchFile",
        "fetchAttachment",
        "attachments",
    ] {
        assert!(
            kt.contains(api) && swift.contains(api),
            "{api} not generated"
        );
    }

    let tmp = temp_dir("ffi");
    let tls = TlsFiles::write_ca_signed(&tmp);
    let node = Node::start(&args_with(&["--shards", "2"], &tls.node_args()), &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/ffi/tests/smoke.py");
    // Alice connects by plain URL (the name resolved), Bob by TLS with the CA in a file.
    let out = Command::new("python3")
        .arg(script)
        .arg(dir.join("python"))
        .arg(format!("ferry://localhost:{}", node.addr().port()))
        .arg(tls_url(node.tls.unwrap()))
        .arg(&tls.ca_path)
        .arg(&tmp)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python smoke test failed:\n{text}");
    assert!(text.contains("smoke test: ok"), "{text}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn the_wasm_crypto_core_round_trips_under_node() {
    let pkg = target_dir().join("wasm-pkg");
    need(&pkg.join("ferry_wasm.js"));
    need(&pkg.join("ferry_wasm_bg.wasm"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/wasm/tests/roundtrip.js");
    let out = Command::new("node").arg(script).arg(&pkg).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "node round trip failed:\n{text}");
    assert!(text.contains("round trip: ok"), "{text}");
}
