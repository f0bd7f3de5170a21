#!/usr/bin/env bash
# Crash and hostile-client script (see README "Reliability" and bench/chaos.py).
# Builds Portcullis in release mode and runs bench/chaos.py against it.
# Needs root for the full-disk phase (a small tmpfs); the rest runs as anyone.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
ulimit -n 20000 || true
exec python3 bench/chaos.py --binary target/release/portcullis "$@"
