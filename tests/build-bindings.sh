#!/usr/bin/env bash
# Builds what tests/bindings.rs runs: the uniffi bindings (Python, Kotlin, Swift) generated from
# the ferry-ffi library into <target>/bindings/, and the wasm package of the crypto core
# (wasm-bindgen, Node target) into <target>/wasm-pkg/. Needs the wasm32-unknown-unknown target
# and wasm-bindgen-cli 0.2.130 (.ci/run installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

# The workspace build (tests/run-all.sh) made the cdylib and the generator.
lib="$target/debug/libferry_ffi.so"
out="$target/bindings"
rm -rf "$out"
for lang in python kotlin swift; do
  "$target/debug/uniffi-bindgen" generate --library "$lib" --language "$lang" \
    --out-dir "$out/$lang" --no-format >/dev/null
done
cp "$lib" "$out/python/"

cargo build -p ferry-wasm --target wasm32-unknown-unknown --release --locked
rm -rf "$target/wasm-pkg"
wasm-bindgen --target nodejs --out-dir "$target/wasm-pkg" \
  "$target/wasm32-unknown-unknown/release/ferry_wasm.wasm"
