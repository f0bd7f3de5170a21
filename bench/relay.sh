#!/usr/bin/env bash
# Portcullis vs Postfix relay benchmark (see README "Performance").
# Builds Portcullis in release mode, installs Postfix's tools when missing
# (without running a system mail daemon), then runs bench/relay.py, which
# alternates Portcullis and a private Postfix instance on loopback ports.
# Needs root (private Postfix instance, cgroup accounting).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v smtp-sink >/dev/null || ! command -v smtp-source >/dev/null; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi
postfix stop >/dev/null 2>&1 || true   # never leave the system instance on port 25
cargo build --release --quiet
exec python3 bench/relay.py --binary target/release/portcullis "$@"
