#!/usr/bin/env python3
"""Relay throughput, Portcullis vs Postfix, in one invocation (A B A B ...).

Both relay everything to one smart host (Postfix's smtp-sink), without TLS,
from Postfix's smtp-source. Per case (message size x parallel sessions):
  end-to-end msgs/s : first message submitted -> the sink has them all
  accept-only msgs/s: the sink is down; time until the client is done
  CPU seconds       : all processes of the server (cgroup cpuacct), end-to-end run
  peak RSS          : largest sum of RSS over the server's processes, end-to-end run
Medians of --runs runs; ratio = Portcullis / Postfix (above 1: Portcullis faster).
"""
import argparse, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

CG_CPU = "/sys/fs/cgroup/cpuacct"
CG_MEM_PROCS = "/sys/fs/cgroup/memory"

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
        if not self.ok: return []
        with open(os.path.join(self.path, "cgroup.procs")) as f: return [int(x) for x in f.read().split()]
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

class Sink:
    def __init__(self, port, workdir):
        self.out = open(os.path.join(workdir, f"sink-{port}.out"), "w+")
        self.proc = subprocess.Popen(["smtp-sink", "-c", "-u", "root", f"127.0.0.1:{port}", "1024"], stdout=self.out, stderr=subprocess.STDOUT)
        wait_port(port)
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

class Portcullis:
    name = "portcullis"
    def __init__(self, binary, workdir, port, sink_port):
        self.binary, self.dir, self.port = binary, os.path.join(workdir, "portcullis"), port
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, "bench.toml")
        with open(self.config, "w") as f:
            f.write(f"""[server]
hostname = "bench.portcullis.test"
data_dir = "{self.dir}/data"
max_connections = 1000
max_connections_per_ip = 1000
[[listener]]
address = "127.0.0.1:{port}"
[[network]]
range = "127.0.0.0/8"
auth = "none"
[delivery]
mode = "smarthost"
smarthost = "127.0.0.1:{sink_port}"
smarthost_tls = "none"
concurrency = 20
per_domain_concurrency = 20
[dns]
nameservers = ["127.0.0.1:1"]
""")
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
    def __init__(self, workdir, port, sink_port):
        self.dir, self.port = os.path.join(workdir, "postfix"), port
        self.conf = os.path.join(self.dir, "conf")
        os.makedirs(self.conf, exist_ok=True)
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write(f"""compatibility_level = 3.6
queue_directory = {self.dir}/queue
data_directory = {self.dir}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.postfix.test
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink_port}
maillog_file = {self.dir}/maillog
maillog_file_prefixes = /var, /dev/stdout, /tmp, {self.dir}
default_process_limit = 200
default_destination_concurrency_limit = 20
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
biff = no
""")
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
    def start(self, cg):
        for d in ("queue", "data"):
            set_aside(os.path.join(self.dir, d))
            os.makedirs(os.path.join(self.dir, d))
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        subprocess.run(["postfix", "-c", self.conf, "start"], check=True, preexec_fn=cg.enter, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
    def stop(self):
        subprocess.run(["postfix", "-c", self.conf, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def one_run(server, size, sessions, count, end_to_end, workdir, sink_port, run_id):
    cg = Cgroup(f"portcullis-bench-{os.getpid()}-{run_id}")
    sink = Sink(sink_port, workdir) if end_to_end else None
    try:
        server.start(cg)
        os.sync()  # the previous run's dirty pages are not written during this one
        sampler = RssSampler(cg); sampler.start()
        cpu0 = cg.cpu_seconds()
        t0 = time.time()
        src = subprocess.run(["smtp-source", "-d", "-s", str(sessions), "-m", str(count), "-l", str(size),
                              "-f", "bench@client.example", "-t", "rcpt@far.example", f"127.0.0.1:{server.port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
        if src.returncode != 0:
            raise RuntimeError(f"smtp-source failed against {server.name}: {src.stderr.decode()[-300:]}")
        if end_to_end:
            deadline = time.time() + 600
            while sink.count() < count:
                if time.time() > deadline: raise RuntimeError(f"{server.name}: sink got {sink.count()} of {count}")
                time.sleep(0.005)
        elapsed = time.time() - t0
        cpu = cg.cpu_seconds() - cpu0
        sampler.stop = True; sampler.join()
        return count / elapsed, cpu, sampler.peak
    finally:
        server.stop()
        cg.remove()
        if sink: sink.stop()

def limit_run(size, sessions, count, workdir, sink_port):
    """The machine's limit: the same client straight into the sink."""
    sink = Sink(sink_port, workdir)
    try:
        os.sync()
        t0 = time.time()
        subprocess.run(["smtp-source", "-d", "-s", str(sessions), "-m", str(count), "-l", str(size),
                        "-f", "bench@client.example", "-t", "rcpt@far.example", f"127.0.0.1:{sink_port}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=True)
        deadline = time.time() + 60
        while sink.count() < count and time.time() < deadline:
            time.sleep(0.005)
        return count / (time.time() - t0)
    finally:
        sink.stop()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer messages (for a smoke test)")
    ap.add_argument("--out", default="bench/results.md")
    ap.add_argument("--cases", default="1x1,1x10,1x50,100x1,100x10,100x50",
                    help="comma-separated SIZE_KBxSESSIONS cases (default: all six)")
    ap.add_argument("--only", choices=["portcullis", "postfix"], help="run one server (no ratios; for profiling)")
    args = ap.parse_args()
    if os.geteuid() != 0: sys.exit("relay.py: run as root (private Postfix instance, cgroup accounting)")
    workdir = tempfile.mkdtemp(prefix="portcullis-bench-")
    os.chmod(workdir, 0o755)  # Postfix's daemons run as the postfix user and must reach their queue
    sink_port = free_port()
    servers = [Portcullis(os.path.abspath(args.binary), workdir, free_port(), sink_port), Postfix(workdir, free_port(), sink_port)]
    if args.only:
        servers = [s for s in servers if s.name == args.only]
    cases = [(int(kb) * 1024, int(n)) for kb, n in (c.split("x") for c in args.cases.split(","))]
    results = {}
    run_id = 0
    try:
        for size, sessions in cases:
            # Runs of a second or more: 2,000 1 KB messages took 70 ms straight
            # into the sink, where the 5 ms polling and process start-up weigh.
            count = (200 if args.quick else 20000) if size == 1024 else (50 if args.quick else 2000)
            for run in range(args.runs):
                rate = limit_run(size, sessions, count, workdir, sink_port)
                results.setdefault((size, sessions, "limit", True), []).append((rate, 0, 0))
                print(f"{'limit':10} {size//1024:>4} KB x{sessions:>3} client straight into the sink run {run+1}: {rate:8.1f} msg/s", flush=True)
                for server in servers:   # A B A B: alternate so drift hits both alike
                    for e2e in (True, False):
                        run_id += 1
                        rate, cpu, rss = one_run(server, size, sessions, count, e2e, workdir, sink_port, run_id)
                        results.setdefault((size, sessions, server.name, e2e), []).append((rate, cpu, rss))
                        print(f"{server.name:10} {size//1024:>4} KB x{sessions:>3} {'end-to-end ' if e2e else 'accept-only'} run {run+1}: {rate:8.1f} msg/s  cpu {cpu:6.2f}s  rss {rss/2**20:7.1f} MiB", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    med = lambda xs: statistics.median(xs)
    names = [s.name for s in servers]
    if len(names) == 2:
        lines = ["| case | Portcullis e2e msg/s | Postfix e2e msg/s | ratio | Portcullis accept msg/s | Postfix accept msg/s | ratio | CPU s (P / Pf) | peak RSS MiB (P / Pf) | machine limit msg/s | P e2e / limit |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines = [f"| case | {names[0]} e2e msg/s | accept msg/s | CPU s | peak RSS MiB | machine limit msg/s | e2e / limit |",
                 "|---|---|---|---|---|---|---|"]
    for size, sessions in cases:
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
    table = "\n".join(lines)
    print("\n" + table)
    if args.only:
        return  # a partial run does not replace the recorded figures
    with open(args.out, "w") as f:
        f.write(f"Medians of {args.runs} runs; ratio = Portcullis / Postfix. Command: `sudo bench/relay.sh --runs {args.runs}`\n\n{table}\n")

if __name__ == "__main__":
    main()
