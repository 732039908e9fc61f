#!/usr/bin/env bash
# Builds what tests/bindings.rs runs: the uniffi bindings (Python, Kotlin, Swift) generated from
# the ferry-ffi library into <target>/bindings/, and the wasm package of the crypto core
# (wasm-bindgen, Node target) into <target>/wasm-pkg/. Needs the wasm32-unknown-unknown target
# and wasm-bindgen-cli 0.2.130 (.ci/run installs both).
#
# Every file this script reads is one that cargo reports, in this run, as the artifact of the
# build it just asked for (`--message-format=json`): never a path guessed inside the target
# directory, where a warm cache could still hold an old copy. (`cargo build --workspace --bins`
# builds ferry-ffi only as an rlib dependency and never places the cdylib; that once passed only
# because a warm target directory still held a stale library.)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"

# artifact PACKAGE KIND: the one file cargo reports for PACKAGE's target of KIND in this build.
artifacts="$(mktemp)"
trap 'rm -f "$artifacts"' EXIT
cargo build -p ferry-ffi --lib --bins --locked --message-format=json-render-diagnostics >"$artifacts"
artifact() {
  python3 - "$artifacts" "$1" "$2" "$3" <<'PY'
import json, sys
path, pkg, kind, suffix = sys.argv[1:]
found = []
for line in open(path):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or m["target"]["name"] != pkg:
        continue
    if kind not in m["target"]["kind"]:
        continue
    found += [f for f in m["filenames"] if f.endswith(suffix)]
if len(found) != 1:
    sys.exit(f"build-bindings: cargo reported {found!r} for {pkg} {kind} *{suffix}")
print(found[0])
PY
}
lib="$(artifact ferry_ffi cdylib .so)"
bindgen="$(artifact uniffi-bindgen bin uniffi-bindgen)"

out="$target/bindings"
rm -rf "$out"
for lang in python kotlin swift; do
  "$bindgen" generate --library "$lib" --language "$lang" --out-dir "$out/$lang" --no-format >/dev/null
done
cp "$lib" "$out/python/"

cargo build -p ferry-wasm --target wasm32-unknown-unknown --release --locked \
  --message-format=json-render-diagnostics >"$artifacts"
wasm="$(artifact ferry_wasm cdylib .wasm)"
rm -rf "$target/wasm-pkg"
wasm-bindgen --target nodejs --out-dir "$target/wasm-pkg" "$wasm"
