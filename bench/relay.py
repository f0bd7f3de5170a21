#!/usr/bin/env python3
"""Relay throughput, Portcullis vs Postfix, in one invocation (A B A B ...).

Both relay everything to one smart host and are configured alike per kind:
  plain : no TLS, no AUTH; Postfix's smtp-source as client, smtp-sink as next hop
  tls   : STARTTLS from the client (full handshake per connection) and a
          verified STARTTLS to a sink that speaks TLS
  auth  : as tls, on the submission port with AUTH PLAIN on every connection;
          both check the same argon2id hash (Portcullis's users file; Postfix
          through a private Dovecot auth with that hash in a passwd-file)
  checks: no TLS; two DNS lists and forward-confirmed reverse DNS for every
          client, against one loopback DNS server (Postfix in its own mount
          namespace whose resolv.conf points there)
The tls/auth/checks kinds use bench_peer (examples/bench_peer) as client and
sink, one connection per message. Per case (message size x parallel sessions):
  end-to-end msgs/s : first message submitted -> the sink has them all
  accept-only msgs/s: the sink is down; time until the client is done
  CPU seconds       : all processes of the server (cgroup cpuacct), end-to-end run
  peak RSS          : largest sum of RSS over the server's processes, end-to-end run
Medians of --runs runs; ratio = Portcullis / Postfix (above 1: Portcullis faster).
"""
import argparse, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

CG_CPU = "/sys/fs/cgroup/cpuacct"
KINDS = ("plain", "tls", "auth", "checks")
DEFAULT_CASES = {"plain": "1x1,1x10,1x50,100x1,100x10,100x50"}
OTHER_CASES = "1x1,1x10,1x50,100x10"
USER, PASSWORD = "app", "bench-password-1234"
DNS_LISTS = ("list-one.bench.test", "list-two.bench.test")
# The checks kind's client: not loopback, whose reverse names resolvers
# answer by themselves (hickory does, as RFC 6761 allows), so both relays
# must ask the DNS server. relay.sh adds it to lo in a private network namespace.
CHECKS_CLIENT = "10.99.0.1"

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(port, limit=20):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close(); return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")

def set_aside(path):
    """Moves a finished run's spool out of the way; all are deleted at the end.
    Deleting tens of thousands of files between runs made the next run's file
    creations several times slower on ext4 without a journal (it skips
    recently deleted inodes), which hit whichever server ran next."""
    if os.path.exists(path):
        os.rename(path, f"{path}.done-{time.monotonic_ns()}")

class Cgroup:
    """A cpuacct cgroup holding one server's processes (None where not available)."""
    def __init__(self, name):
        self.path = os.path.join(CG_CPU, name)
        try:
            os.makedirs(self.path, exist_ok=True); self.ok = True
        except OSError:
            self.ok = False
    def enter(self):  # called in the child before exec
        if self.ok:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f: f.write(str(os.getpid()))
    def pids(self):
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f: return [int(x) for x in f.read().split()]
        except OSError:  # not available, or removed after a failed run
            return []
    def cpu_seconds(self):
        if not self.ok: return float("nan")
        with open(os.path.join(self.path, "cpuacct.usage")) as f: return int(f.read()) / 1e9
    def rss_bytes(self):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
                    total += int(m.group(1)) * 1024 if m else 0
            except OSError:
                pass
        return total
    def kill_all(self):
        for pid in self.pids():
            try: os.kill(pid, signal.SIGKILL)
            except OSError: pass
    def remove(self):
        if not self.ok: return
        for _ in range(50):
            self.kill_all()
            try: os.rmdir(self.path); return
            except OSError: time.sleep(0.1)

class RssSampler(threading.Thread):
    def __init__(self, cg):
        super().__init__(daemon=True); self.cg = cg; self.peak = 0; self.stop = False
    def run(self):
        while not self.stop:
            self.peak = max(self.peak, self.cg.rss_bytes()); time.sleep(0.1)

class Env:
    """What every run of one invocation shares: ports, the bench_peer
    binary, certificates, the users' hash, and for the kinds that need them
    the loopback DNS server and the Dovecot auth service Postfix asks."""
    def __init__(self, workdir, binary, peer, kinds, dns_ttl):
        self.workdir, self.binary, self.peer = workdir, binary, peer
        self.sink_port = free_port()
        self.certs = os.path.join(workdir, "certs")
        self.procs = []
        self.dns_count = None  # the checks kind's DNS server counts its answers here
        if kinds - {"plain"}:
            subprocess.run([peer, "cert", "--dir", self.certs, "--name", "relay.bench.test",
                            "--name", "sink.bench.test", "--name", "127.0.0.1"], check=True)
            os.chmod(self.certs, 0o755)
            for f in os.listdir(self.certs): os.chmod(os.path.join(self.certs, f), 0o644)
        self.users_file = os.path.join(workdir, "users")
        if "auth" in kinds:
            subprocess.run([binary, "user", "add", USER, "--password-stdin", "--users-file", self.users_file],
                           input=PASSWORD.encode(), check=True, stdout=subprocess.DEVNULL)
            self.dovecot_socket = start_dovecot(workdir, self.users_file, self.procs)
        if "checks" in kinds:
            self.dns_count = os.path.join(workdir, "dns-count")
            self.procs.append(subprocess.Popen([peer, "dns", "--listen", "127.0.0.1:53", "--count-file", self.dns_count,
                                                "--ttl", str(dns_ttl), "--host", f"client.bench.test={CHECKS_CLIENT}"]
                                               + [a for z in DNS_LISTS for a in ("--test-entry", z)]))
            with open(os.path.join(workdir, "resolv.conf"), "w") as f: f.write("nameserver 127.0.0.1\noptions attempts:2 timeout:2\n")
            with open(os.path.join(workdir, "hosts"), "w") as f: f.write("")  # 127.0.0.1's name comes from DNS
    def cert(self, name): return os.path.join(self.certs, name)
    def dns_queries(self):
        if self.dns_count is None: return 0
        try:
            with open(self.dns_count) as f: return int(f.read() or 0)
        except (OSError, ValueError):
            return 0
    def close(self):
        for p in self.procs:
            p.kill(); p.wait()

def start_dovecot(workdir, users_file, procs):
    """A private Dovecot that only authenticates (no mail protocols), for
    Postfix's `smtpd_sasl_type = dovecot`, with the very hash Portcullis
    checks and Dovecot's own auth cache on."""
    d = os.path.join(workdir, "dovecot")
    os.makedirs(os.path.join(d, "run"), exist_ok=True)
    with open(users_file) as f:
        name, hashed = next(l.strip().split(":", 1) for l in f if l.strip() and not l.startswith("#"))
    with open(os.path.join(d, "passwd"), "w") as f: f.write(f"{name}:{{ARGON2ID}}{hashed}\n")
    socket_path = os.path.join(d, "auth-postfix")
    with open(os.path.join(d, "dovecot.conf"), "w") as f:
        f.write(f"""base_dir = {d}/run
state_dir = {d}/run
protocols =
log_path = {d}/log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_cache_size = 10M
auth_cache_ttl = 1 hour
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}}
service auth {{
  unix_listener {socket_path} {{
    mode = 0666
  }}
}}
""")
    procs.append(subprocess.Popen(["dovecot", "-F", "-c", os.path.join(d, "dovecot.conf")]))
    for _ in range(100):
        if os.path.exists(socket_path): return socket_path
        time.sleep(0.1)
    raise RuntimeError(f"Dovecot did not start; see {d}/log")

class Sink:
    """Postfix's smtp-sink (plain kind)."""
    def __init__(self, env):
        self.out = open(os.path.join(env.workdir, f"sink-{env.sink_port}.out"), "w+")
        self.proc = subprocess.Popen(["smtp-sink", "-c", "-u", "root", f"127.0.0.1:{env.sink_port}", "1024"], stdout=self.out, stderr=subprocess.STDOUT)
        wait_port(env.sink_port)
    def count(self):
        # Only the file's tail: the counter line is rewritten per message, and
        # reading the whole file every poll would steal CPU from the run.
        with open(self.out.name, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 128))
            found = re.findall(rb"mesg=(\d+)", f.read())
        return int(found[-1]) if found else 0
    def stop(self):
        self.proc.kill(); self.proc.wait(); self.out.close()

class PeerSink:
    """bench_peer's sink, with STARTTLS for the tls and auth kinds."""
    def __init__(self, env, tls):
        self.file = os.path.join(env.workdir, "sink-count")
        if os.path.exists(self.file): os.unlink(self.file)
        argv = [env.peer, "sink", "--listen", f"127.0.0.1:{env.sink_port}", "--count-file", self.file]
        if tls: argv += ["--cert", env.cert("cert.pem"), "--key", env.cert("key.pem")]
        self.proc = subprocess.Popen(argv)
        wait_port(env.sink_port)
    def count(self):
        try:
            with open(self.file) as f: return int(f.read() or 0)
        except (OSError, ValueError):
            return 0
    def stop(self):
        self.proc.kill(); self.proc.wait()

def make_sink(env, kind):
    return Sink(env) if kind == "plain" else PeerSink(env, tls=kind in ("tls", "auth"))

def client_argv(env, kind, port, size, sessions, count, tls_name="relay.bench.test"):
    if kind == "plain":
        return ["smtp-source", "-d", "-s", str(sessions), "-m", str(count), "-l", str(size),
                "-f", "bench@client.example", "-t", "rcpt@far.example", f"127.0.0.1:{port}"]
    argv = [env.peer, "load", "--server", f"127.0.0.1:{port}", "--messages", str(count),
            "--sessions", str(sessions), "--size", str(size)]
    if kind in ("tls", "auth"):
        argv += ["--starttls", "--ca", env.cert("ca.pem"), "--tls-name", tls_name]
    if kind == "auth":
        argv += ["--auth", f"{USER}:{PASSWORD}"]
    if kind == "checks":
        argv += ["--source", CHECKS_CLIENT]
    return argv

def portcullis_config(env, kind, node_dir, listener):
    """A Portcullis config for `kind`, its data in `node_dir`, listening as `listener` says."""
    text = f"""[server]
hostname = "relay.bench.test"
data_dir = "{node_dir}/data"
max_connections = 1000
max_connections_per_ip = 1000
max_connection_rate_per_ip = 0
{listener}[[network]]
range = "127.0.0.0/8"
auth = "{'required' if kind == 'auth' else 'none'}"
[delivery]
mode = "smarthost"
smarthost = "127.0.0.1:{env.sink_port}"
concurrency = 20
per_domain_concurrency = 20
"""
    if kind in ("tls", "auth"):
        text += f'smarthost_tls = "starttls"\nsmarthost_ca_file = "{env.cert("ca.pem")}"\n'
        text += f'[tls]\ncert = "{env.cert("cert.pem")}"\nkey = "{env.cert("key.pem")}"\n'
    else:
        text += 'smarthost_tls = "none"\n'
    if kind == "auth":
        text += f'[auth]\nusers_file = "{env.users_file}"\n'
    if kind == "checks":
        zones = ", ".join(f'"{z}"' for z in DNS_LISTS)
        text += f'[[network]]\nrange = "{CHECKS_CLIENT}/32"\nauth = "none"\n'
        text += f'[checks]\ndnsbl = [{zones}]\nreverse_dns = "fcrdns"\nskip_for_trusted = false\n'
        text += '[dns]\nnameservers = ["127.0.0.1:53"]\n'
    else:
        text += '[dns]\nnameservers = ["127.0.0.1:1"]\n'
    return text

class Portcullis:
    name = "portcullis"
    def __init__(self, env, port, kind):
        self.binary, self.dir, self.port = env.binary, os.path.join(env.workdir, f"portcullis-{kind}"), port
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "bench.toml")
        listener_kind = "submission" if kind == "auth" else "smtp"
        listener = f'[[listener]]\naddress = "127.0.0.1:{port}"\nkind = "{listener_kind}"\n'
        with open(self.config, "w") as f: f.write(portcullis_config(env, kind, self.dir, listener))
    def start(self, cg):
        self.log = open(os.path.join(self.dir, "log"), "a")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", self.config], stdout=self.log, stderr=self.log, preexec_fn=cg.enter)
        wait_port(self.port)
    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try: self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        self.log.close()
        set_aside(os.path.join(self.dir, "data"))

class Postfix:
    name = "postfix"
    def __init__(self, env, port, kind):
        self.dir, self.port, self.kind, self.env = os.path.join(env.workdir, f"postfix-{kind}"), port, kind, env
        self.conf = os.path.join(self.dir, "conf")
        os.makedirs(self.conf, exist_ok=True)
        text = f"""compatibility_level = 3.6
queue_directory = {self.dir}/queue
data_directory = {self.dir}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.bench.test
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{env.sink_port}
maillog_file = {self.dir}/maillog
maillog_file_prefixes = /var, /dev/stdout, /tmp, {self.dir}
default_process_limit = 200
default_destination_concurrency_limit = 20
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
biff = no
"""
        if kind in ("tls", "auth"):
            # Verified TLS to the next hop, with Postfix's client session cache
            # and connection reuse (through tlsproxy) on: its best, as ours is.
            text += f"""smtpd_tls_security_level = may
smtpd_tls_cert_file = {env.cert("cert.pem")}
smtpd_tls_key_file = {env.cert("key.pem")}
smtp_tls_security_level = secure
smtp_tls_secure_cert_match = nexthop
smtp_tls_CAfile = {env.cert("ca.pem")}
smtp_tls_session_cache_database = btree:{self.dir}/data/smtp_scache
smtpd_tls_session_cache_database = btree:{self.dir}/data/smtpd_scache
smtp_tls_connection_reuse = yes
"""
        else:
            text += "smtp_tls_security_level = none\nsmtpd_tls_security_level = none\n"
        if kind == "auth":
            # Only an authenticated client may relay, and only after STARTTLS.
            text += f"""smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {env.dovecot_socket}
mynetworks = 127.255.255.254/32
smtpd_relay_restrictions = permit_sasl_authenticated, reject
"""
        if kind == "checks":
            lists = ", ".join(f"reject_rbl_client {z}" for z in DNS_LISTS)
            text += f"mynetworks = 127.0.0.0/8, {CHECKS_CLIENT}/32\n"
            text += f"smtpd_client_restrictions = {lists}, reject_unknown_client_hostname, permit\n"
        # One line per parameter, the kind's value winning: Postfix warns of
        # every repeated one in every process it starts, and its postlogd,
        # logging those warnings through its own full socket, can hang.
        params = {}
        for line in text.splitlines():
            if "=" in line:
                key, value = line.split("=", 1)
                params[key.strip()] = value.strip()
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in params.items()))
        # The Debian master.cf, with smtpd on our loopback port and nothing chrooted.
        with open("/etc/postfix/master.cf") as src, open(os.path.join(self.conf, "master.cf"), "w") as dst:
            for line in src:
                fields = line.split()
                if line[:1] not in (" ", "\t", "#", "\n") and len(fields) >= 8:
                    if fields[0] == "smtp" and fields[1] == "inet":
                        fields[0] = f"127.0.0.1:{port}"
                    fields[4] = "n"
                    line = " ".join(fields) + "\n"
                dst.write(line)
            # Debian leaves it commented out; smtp_tls_connection_reuse needs it.
            dst.write("tlsproxy unix - - n - 0 tlsproxy\n")
    def start(self, cg):
        for d in ("queue", "data"):
            set_aside(os.path.join(self.dir, d))
            os.makedirs(os.path.join(self.dir, d))
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        argv = ["postfix", "-c", self.conf, "start"]
        if self.kind == "checks":
            # Postfix asks the system's resolver: give it its own resolv.conf
            # (and an empty hosts file) in a private mount namespace.
            w = self.env.workdir
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    f"mount --bind {w}/resolv.conf /etc/resolv.conf && mount --bind {w}/hosts /etc/hosts && exec postfix -c {self.conf} start"]
        subprocess.run(argv, check=True, preexec_fn=cg.enter, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
    def stop(self):
        # Bounded: whatever is left is killed with the run's cgroup.
        try:
            subprocess.run(["postfix", "-c", self.conf, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        except subprocess.TimeoutExpired:
            print("postfix stop did not finish within 60 s; its processes are killed", flush=True)

def one_run(env, kind, server, size, sessions, count, end_to_end, run_id):
    cg = Cgroup(f"portcullis-bench-{os.getpid()}-{run_id}")
    sink = make_sink(env, kind) if end_to_end else None
    try:
        server.start(cg)
        os.sync()  # the previous run's dirty pages are not written during this one
        sampler = RssSampler(cg); sampler.start()
        elsewhere = getattr(server, "cpu_elsewhere", lambda: 0.0)
        cpu0 = cg.cpu_seconds() + elsewhere()
        queries0 = env.dns_queries()
        t0 = time.time()
        src = subprocess.run(client_argv(env, kind, server.port, size, sessions, count),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900,
                             env=dict(os.environ, RUST_BACKTRACE="0"))
        if src.returncode != 0:
            raise RuntimeError(f"the client failed against {server.name}: {src.stderr.decode()[:600]}")
        if end_to_end:
            deadline = time.time() + (60 if count < 1000 else 600)
            while sink.count() < count:
                if time.time() > deadline: raise RuntimeError(f"{server.name}: sink got {sink.count()} of {count}")
                time.sleep(0.005)
        elapsed = time.time() - t0
        cpu = cg.cpu_seconds() + elsewhere() - cpu0
        sampler.stop = True; sampler.join()
        if kind == "checks":
            time.sleep(0.02)  # the DNS server's count file is rewritten every 5 ms
            print(f"       {server.name}: {env.dns_queries() - queries0} DNS queries for {count} messages", flush=True)
        return count / elapsed, cpu, sampler.peak
    finally:
        server.stop()
        cg.remove()
        if sink: sink.stop()

def limit_run(env, kind, size, sessions, count):
    """The machine's limit: the same client straight into the sink (for
    auth, which the sink does not offer, the tls client)."""
    sink = make_sink(env, kind)
    try:
        os.sync()
        t0 = time.time()
        argv = client_argv(env, "tls" if kind == "auth" else kind, env.sink_port, size, sessions, count, "sink.bench.test")
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=True)
        deadline = time.time() + 60
        while sink.count() < count and time.time() < deadline:
            time.sleep(0.005)
        return count / (time.time() - t0)
    finally:
        sink.stop()

def message_count(kind, size, quick):
    if quick: return 200 if size == 1024 else 50
    # Runs of a second or more: 2,000 1 KB messages took 70 ms straight
    # into the sink, where the 5 ms polling and process start-up weigh.
    # Postfix checks a password at about 40 a second (argon2id through
    # Dovecot), so the auth kind sends fewer, to keep an invocation in hours.
    per_kind = {"plain": (20000, 2000), "tls": (3000, 1000), "auth": (1000, 500), "checks": (5000, 1000)}
    small, large = per_kind[kind]
    return small if size == 1024 else large

def table(results, cases, names):
    med = lambda xs: statistics.median(xs)
    if len(names) > 2:
        return cluster_table(results, cases, names)
    if len(names) == 2:
        lines = ["| case | Portcullis e2e msg/s | Postfix e2e msg/s | ratio | Portcullis accept msg/s | Postfix accept msg/s | ratio | CPU s (P / Pf) | peak RSS MiB (P / Pf) | machine limit msg/s | P e2e / limit |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines = [f"| case | {names[0]} e2e msg/s | accept msg/s | CPU s | peak RSS MiB | machine limit msg/s | e2e / limit |",
                 "|---|---|---|---|---|---|---|"]
    for size, sessions, count in cases:
        r = lambda name, e2e, i: med([x[i] for x in results[(size, sessions, name, e2e)]])
        limit = r("limit", True, 0)
        if len(names) == 2:
            pe, fe = r("portcullis", True, 0), r("postfix", True, 0)
            pa, fa = r("portcullis", False, 0), r("postfix", False, 0)
            lines.append(f"| {size//1024} KB x {sessions} | {pe:.0f} | {fe:.0f} | {pe/fe:.2f} | {pa:.0f} | {fa:.0f} | {pa/fa:.2f} | "
                         f"{r('portcullis', True, 1):.2f} / {r('postfix', True, 1):.2f} | {r('portcullis', True, 2)/2**20:.1f} / {r('postfix', True, 2)/2**20:.1f} | "
                         f"{limit:.0f} | {pe/limit:.0%} |")
        else:
            n = names[0]
            lines.append(f"| {size//1024} KB x {sessions} | {r(n, True, 0):.0f} | {r(n, False, 0):.0f} | {r(n, True, 1):.2f} | "
                         f"{r(n, True, 2)/2**20:.1f} | {limit:.0f} | {r(n, True, 0)/limit:.0%} |")
    return "\n".join(lines)

def cluster_table(results, cases, names):
    """One row per case and server, each against Postfix."""
    med = lambda xs: statistics.median(xs)
    r = lambda size, sessions, name, e2e, i: med([x[i] for x in results[(size, sessions, name, e2e)]])
    lines = ["| case | server | e2e msg/s | e2e / Postfix | accept msg/s | accept / Postfix | CPU s | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for size, sessions, count in cases:
        fe, fa = r(size, sessions, "postfix", True, 0), r(size, sessions, "postfix", False, 0)
        for n in names:
            e, a = r(size, sessions, n, True, 0), r(size, sessions, n, False, 0)
            lines.append(f"| {size//1024} KB x {sessions} | {n} | {e:.0f} | {e/fe:.2f} | {a:.0f} | {a/fa:.2f} | "
                         f"{r(size, sessions, n, True, 1):.2f} | {r(size, sessions, n, True, 2)/2**20:.1f} |")
    return "\n".join(lines)

def run_kind(env, kind, cases, runs, only, pg=None):
    servers = [Portcullis(env, free_port(), kind), Postfix(env, free_port(), kind)]
    if pg is not None:
        from pg_cluster import PortcullisCluster
        for nodes in (1, 3):
            servers.append(PortcullisCluster(env, free_port(), kind, nodes, pg, free_port, wait_port,
                                             lambda d, l: portcullis_config(env, kind, d, l)))
    if only:
        servers = [s for s in servers if s.name == only]
    results = {}
    run_id = 0
    for size, sessions, count in cases:
        for run in range(runs):
            rate = limit_run(env, kind, size, sessions, count)
            results.setdefault((size, sessions, "limit", True), []).append((rate, 0, 0))
            print(f"{kind:6} {'limit':10} {size//1024:>4} KB x{sessions:>3} client straight into the sink run {run+1}: {rate:8.1f} msg/s", flush=True)
            for server in servers:   # A B A B: alternate so drift hits both alike
                for e2e in (True, False):
                    run_id += 1
                    rate, cpu, rss = one_run(env, kind, server, size, sessions, count, e2e, f"{kind}-{run_id}")
                    results.setdefault((size, sessions, server.name, e2e), []).append((rate, cpu, rss))
                    print(f"{kind:6} {server.name:10} {size//1024:>4} KB x{sessions:>3} {'end-to-end ' if e2e else 'accept-only'} run {run+1}: {rate:8.1f} msg/s  cpu {cpu:6.2f}s  rss {rss/2**20:7.1f} MiB", flush=True)
    return table(results, cases, [s.name for s in servers])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--peer", required=True, help="the bench_peer example binary")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer messages (for a smoke test)")
    ap.add_argument("--out", default="bench/results.md")
    ap.add_argument("--kinds", default="plain", help=f"comma-separated, of {', '.join(KINDS)} (or all)")
    ap.add_argument("--cases", help="comma-separated SIZE_KBxSESSIONS cases (default: six for plain, four for the others)")
    ap.add_argument("--dns-ttl", type=int, default=300, help="TTL of the checks kind's DNS answers (0: nothing can be cached)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs) for a look afterwards")
    ap.add_argument("--only", choices=["portcullis", "postfix", "cluster-1", "cluster-3"], help="run one server (no ratios; for profiling)")
    ap.add_argument("--cluster", action="store_true", help="also one and three nodes on PostgreSQL with a synchronous standby (three behind HAProxy)")
    args = ap.parse_args()
    if os.geteuid() != 0: sys.exit("relay.py: run as root (private Postfix instance, cgroup accounting)")
    kinds = list(KINDS) if args.kinds == "all" else args.kinds.split(",")
    for k in kinds:
        if k not in KINDS: sys.exit(f"relay.py: unknown kind {k!r} (one of {', '.join(KINDS)})")
    if "checks" in kinds:
        try:
            socket.socket().bind((CHECKS_CLIENT, 0))
        except OSError:
            sys.exit(f"relay.py: the checks kind needs {CHECKS_CLIENT} on this machine: run it through bench/relay.sh")
    workdir = tempfile.mkdtemp(prefix="portcullis-bench-")
    os.chmod(workdir, 0o755)  # Postfix's daemons run as the postfix user and must reach their queue
    env = Env(workdir, os.path.abspath(args.binary), os.path.abspath(args.peer), set(kinds), args.dns_ttl)
    tables = []
    pg = None
    try:
        if args.cluster:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from pg_cluster import Postgres
            pg = Postgres(workdir, free_port, Cgroup(f"portcullis-bench-pg-{os.getpid()}"))
        for kind in kinds:
            spec = args.cases or DEFAULT_CASES.get(kind, OTHER_CASES)
            cases = [(int(kb) * 1024, int(n)) for kb, n in (c.split("x") for c in spec.split(","))]
            cases = [(size, n, message_count(kind, size, args.quick)) for size, n in cases]
            t = run_kind(env, kind, cases, args.runs, args.only, pg)
            print(f"\n{kind}:\n{t}\n", flush=True)
            tables.append((kind, t))
    finally:
        if pg is not None: pg.close(); pg.cg.remove()
        env.close()
        if args.keep: print(f"work directory kept: {workdir}")
        else: shutil.rmtree(workdir, ignore_errors=True)
    if args.only:
        return  # a partial run does not replace the recorded figures
    with open(args.out, "w") as f:
        cluster = (f" --cases {args.cases}" if args.cases else "") + (" --cluster" if args.cluster else "")
        f.write(f"Medians of {args.runs} runs; ratio = Portcullis / Postfix. Command: `sudo bench/relay.sh --runs {args.runs} --kinds {','.join(kinds)}{cluster}`\n")
        for kind, t in tables:
            f.write(f"\n### {kind}\n\n{t}\n")

if __name__ == "__main__":
    main()
