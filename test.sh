#!/usr/bin/env bash
# Runs the whole Portcullis test suite. Installs the third-party peers the
# tests talk to (swaks with TLS support, python3, Postfix's smtp-sink, iproute2,
# PostgreSQL, HAProxy, Chromium)
# when they are missing. Run as root: the audit test makes a network namespace.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
command -v swaks >/dev/null 2>&1 || need_apt+=(swaks)
perl -MIO::Socket::SSL -e1 >/dev/null 2>&1 || need_apt+=(libio-socket-ssl-perl libnet-ssleay-perl)
perl -MAuthen::SASL -e1 >/dev/null 2>&1 || need_apt+=(libauthen-sasl-perl)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
# Postfix: its smtp-sink/smtp-source tools, and private instances (own config
# and queue in a temp dir) as a real next hop.
command -v smtp-sink >/dev/null 2>&1 || need_apt+=(postfix)
# The packaging test checks the unit with systemd-analyze and the binary with
# readelf; cargo deb splits the debug symbols off with objcopy.
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v objcopy >/dev/null 2>&1 || need_apt+=(binutils)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The audit's router test builds a network namespace with a veth pair.
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# nmap's smtp-open-relay script checks relay-test's verdicts.
command -v nmap >/dev/null 2>&1 || need_apt+=(nmap)
# A real HAProxy sends PROXY v1/v2 headers in the PROXY-protocol test.
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
# The admin page is driven by Debian's headless Chromium through Selenium;
# /metrics is parsed with the Prometheus project's own Python parser.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# Debian's own Python (/usr/bin/python3) runs the browser test, whatever python3 is first in PATH.
/usr/bin/python3 -c 'import selenium' >/dev/null 2>&1 || need_apt+=(python3-selenium)
/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need_apt+=(python3-prometheus-client)
# DKIM signatures are checked by an independent verifier: dkimpy (python3-dkim),
# with PyNaCl for Ed25519 and dnspython to ask the test's DNS server.
/usr/bin/python3 -c 'import dkim, nacl, dns.resolver' >/dev/null 2>&1 || need_apt+=(python3-dkim python3-nacl python3-dnspython)
# The cluster's queue store is tested against a real PostgreSQL (a server
# of the test's own in a temp dir, run as the postgres system user).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql-15)

if [ ${#need_apt[@]} -gt 0 ]; then
    echo "test.sh: installing ${need_apt[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    # Postfix is wanted only for its smtp-sink/smtp-source tools: no mail system, no daemon on port 25.
    echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
    # No system PostgreSQL cluster: each test starts its own.
    $SUDO mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $SUDO tee -a /etc/postgresql-common/createcluster.conf >/dev/null
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    $SUDO postfix stop >/dev/null 2>&1 || true
    # Only the binary is wanted; no system instance.
    $SUDO pkill -x haproxy >/dev/null 2>&1 || true
fi

# The packaging test reads the Debian package this builds (release build).
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
cargo deb --quiet

cargo test --all-targets "$@"
