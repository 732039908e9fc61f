#!/usr/bin/env bash
# The whole test suite: formatting, lints (clippy -D warnings), then every test of every crate,
# including the end-to-end tests that start real `ferry` node processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

# Nodes started by the tests lock memory for io_uring (about 1 MiB per shard, accounted per user)
# and the 1,000-connection test needs file descriptors.
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Two cores: never more than two compile jobs.
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The simulator's mutants (deliberate bugs it must catch) build only with this feature.
cargo clippy -p ferry-shards --all-targets --features sim-mutants --locked -- -D warnings
# Binaries first: tests/loadgen.rs runs ferry-loadgen, which `cargo test` alone does not rebuild.
cargo build --workspace --bins --examples --locked
# The uniffi bindings and the wasm package that tests/bindings.rs drives.
tests/build-bindings.sh
# The differential tests (crypto/tests/differential.rs) compare the crypto core with independent
# implementations from PyPI (xeddsa, x3dh, doubleratchet), in a venv kept between runs. (Not a
# FERRY_* name: the nodes the tests start refuse unknown FERRY_* variables.)
pyenv="${CRYPTO_REFERENCE_VENV:-/var/cache/ferry-pyenv}"
if ! "$pyenv/bin/python" -c "import xeddsa, x3dh, doubleratchet" 2>/dev/null; then
  rm -rf "$pyenv"
  python3 -m venv "$pyenv"
  "$pyenv/bin/pip" install -q xeddsa==1.2.0 x3dh==1.3.0 doubleratchet==1.3.0
fi
export CRYPTO_REFERENCE_PYTHON="$pyenv/bin/python"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# The node's end-to-end tests once more on the other I/O driver: the pass above ran the default,
# `io_engine = "auto"` (the uring driver on kernels that have what it needs), this one glommio;
# both drivers run the same suite.
FERRY_IO_ENGINE=glommio cargo test -p ferry --locked 2>&1 | tee -a "$log"
# docs/SIMULATION.md: every mutant is caught within its stated seeds.
cargo test -p ferry-shards --features sim-mutants --test sim_mutants --locked 2>&1 | tee -a "$log"

# One closing line for the whole suite (cargo's last line is a crate's doc-test summary).
awk '/^test result:/ { p += $4; f += $6 }
     /^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
