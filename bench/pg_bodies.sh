#!/usr/bin/env bash
# Where a cluster keeps message content in PostgreSQL, measured: one bytea
# column (what the queue store does), chunk rows, or large objects, written,
# read back and deleted one transaction per message, on a primary with a
# synchronous standby (examples/pg_bodies.rs, bench/pg_bodies.py).
# Usage: sudo bench/pg_bodies.sh [SIZES, default 1k,100k,1m,10m] [TOTAL_MB per size and way, default 200]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    mkdir -p /etc/postgresql-common   # no system PostgreSQL cluster
    grep -qs "create_main_cluster = false" /etc/postgresql-common/createcluster.conf ||
        echo "create_main_cluster = false" >> /etc/postgresql-common/createcluster.conf
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
fi
cargo build --release --quiet --example pg_bodies
exec python3 bench/pg_bodies.py target/release/examples/pg_bodies "$@"
