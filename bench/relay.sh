#!/usr/bin/env bash
# Portcullis vs Postfix relay benchmark (see README "Performance"); with
# --cluster also one and three cluster nodes on PostgreSQL (bench/pg_cluster.py).
# Builds Portcullis and the benchmark peers (examples/bench_peer) in release
# mode, installs Postfix's tools and Dovecot (for Postfix's SASL) when
# missing, without running a system mail daemon, then runs bench/relay.py,
# which alternates Portcullis and a private Postfix instance on loopback ports.
# Needs root (private Postfix and Dovecot instances, cgroup accounting,
# a DNS server on 127.0.0.1:53 for the checks kind).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v smtp-source >/dev/null || missing+=(postfix)
command -v dovecot >/dev/null || missing+=(dovecot-core)
command -v unshare >/dev/null || missing+=(util-linux)
command -v ip >/dev/null || missing+=(iproute2)
case " $* " in
*" --cluster "*)   # PostgreSQL (primary and standby of the bench's own) and HAProxy
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql-15)
    command -v haproxy >/dev/null || missing+=(haproxy) ;;
esac
if [ ${#missing[@]} -gt 0 ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    mkdir -p /etc/postgresql-common   # no system PostgreSQL cluster
    grep -qs "create_main_cluster = false" /etc/postgresql-common/createcluster.conf ||
        echo "create_main_cluster = false" >> /etc/postgresql-common/createcluster.conf
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
postfix stop >/dev/null 2>&1 || true   # never leave the system instance on port 25
doveadm stop >/dev/null 2>&1 || true   # nor a system Dovecot
cargo build --release --quiet --bin portcullis --example bench_peer
# A private network namespace: loopback only, plus the checks kind's client
# address (see CHECKS_CLIENT in relay.py); nothing reaches the real network.
exec unshare --net -- sh -c 'ip link set lo up && ip addr add 10.99.0.1/32 dev lo &&
    exec python3 bench/relay.py --binary target/release/portcullis --peer target/release/examples/bench_peer "$@"' relay.sh "$@"
