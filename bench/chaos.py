#!/usr/bin/env python3
"""Crash and hostile-client script (see README "Reliability").

    sudo bench/chaos.sh [--cycles 20] [--hostile-seconds 30] [--skip-disk]

Three phases, each against the real binary on loopback:

1. kill -9 under load: four clients send uniquely tagged messages while the
   server is killed with SIGKILL and restarted `--cycles` times and the next
   hop (a small sink in this script) goes up and down. Afterwards the sink
   stays up until the queue drains. Reported: messages acknowledged (250
   after DATA), delivered, lost (acknowledged, never delivered: must be 0),
   duplicates (delivered more than once: allowed, counted).
2. hostile clients beside normal traffic: 2,000 slow-loris connections,
   1 MB command lines, NUL bytes in data, 10,000 RCPTs, random bytes, TLS
   handshakes that never finish and an AUTH flood of wrong passwords with
   hang-ups, all at once, while one normal client keeps sending. Reported:
   the normal client's messages, failures and latency (median, 99th
   percentile), the server's peak RSS, and that it is still alive.
3. taking the relay away (security round 3), with every limit at its
   default: bare connections held on the implicit-TLS port, strangers
   filling the submission port, NOOP holders, password guesses from
   rotating addresses, a transcript flood and slowloris on the admin page,
   all at once, while the office client sends and the admin page is asked
   for /metrics. Reported: the office client's messages, failures and
   latency, the admin answers, the server's descriptors and the transcripts'
   size; every office message and admin request must succeed.
4. full disk: the spool on a 6 MB tmpfs, filled until the server answers
   452; then the tmpfs grows, the sink comes up, and every acknowledged
   message must arrive.
"""

import argparse
import os
import random
import re
import resource
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

LISTEN = "127.0.0.1"
CLIENT = "127.0.0.2"     # trusted "LAN client"
OUTSIDER = "127.0.0.3"   # hostile, untrusted
SINK = "127.0.0.4"       # the next hop


def free_port(ip):
    s = socket.socket()
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- the sink

class Sink:
    """A minimal SMTP server recording the chaos token of every message it
    accepts; can be switched off (listener closed, sessions dropped)."""

    def __init__(self, ip, port):
        self.addr = (ip, port)
        self.tokens = []
        self.bad = []   # messages without a token (content not ours)
        self.ids = []   # (queue id in Received:, token)
        self.lock = threading.Lock()
        self.listener = None
        self.conns = set()
        self.stopping = False

    def up(self):
        if self.listener:
            return
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):
            try:
                s.bind(self.addr)
                break
            except OSError:
                time.sleep(0.1)
        s.listen(256)
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self):
        s, self.listener = self.listener, None
        if s:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self.lock:
            conns, self.conns = list(self.conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass

    def _accept(self, s):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            with self.lock:
                self.conns.add(c)
            threading.Thread(target=self._session, args=(c,), daemon=True).start()

    def _session(self, c):
        f = c.makefile("rb")
        try:
            c.sendall(b"220 sink ESMTP\r\n")
            while True:
                line = f.readline(1 << 20)
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    c.sendall(b"250-sink\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go\r\n")
                    body = []
                    while True:
                        l = f.readline(1 << 20)
                        if not l:
                            return
                        if l in (b".\r\n", b".\n"):
                            break
                        body.append(l)
                    text = b"".join(body)
                    m = re.search(rb"X-Chaos-Token: (\S+)", text)
                    qid = re.search(rb"\bid ([0-9A-F]{18,20})", text)
                    with self.lock:
                        if m:
                            self.tokens.append(m.group(1).decode())
                            self.ids.append((qid.group(1).decode() if qid else "?", m.group(1).decode()))
                        else:
                            self.bad.append(text[:300])
                    c.sendall(b"250 ok\r\n")
                elif verb == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"250 ok\r\n")
        except OSError:
            return
        finally:
            with self.lock:
                self.conns.discard(c)
            try:
                c.close()
            except OSError:
                pass

    def delivered(self):
        with self.lock:
            return list(self.tokens)


# -------------------------------------------------------------- the server

class Server:
    def __init__(self, binary, data_dir, port, sink_port, extra="", default_limits=False):
        self.binary = binary
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="chaos-")
        self.config = os.path.join(self.dir, "portcullis.toml")
        limits = "" if default_limits else (
            "max_connections = 5000\nmax_connections_per_ip = 5000\nmax_connection_rate_per_ip = 0\n")
        with open(self.config, "w") as f:
            f.write(f"""
[server]
data_dir = "{data_dir}"
hostname = "relay.chaos.test"
{limits}[[listener]]
address = "{LISTEN}:{port}"
kind = "smtp"
[[network]]
range = "{CLIENT}/32"
auth = "none"
[delivery]
mode = "smarthost"
smarthost = "{SINK}:{sink_port}"
smarthost_tls = "none"
retry_schedule = ["1s", "2s"]
[dns]
nameservers = ["127.0.0.1:1"]
{extra}
""")
        self.proc = None

    def start(self):
        def raise_limits():
            resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
        self.log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--config", self.config],
            stdout=self.log, stderr=self.log, preexec_fn=raise_limits)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection((LISTEN, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit("the server did not start; see " + self.log.name)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def alive(self):
        return self.proc.poll() is None

    def rss_kib(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0


QUEUED_AS = {}


def send_one(port, token, timeout=10):
    """One message from the LAN client; True when acknowledged."""
    s = smtplib.SMTP(LISTEN, port, timeout=timeout, source_address=(CLIENT, 0))
    try:
        s.ehlo("pc.chaos.lan")
        msg = f"Subject: chaos\r\nX-Chaos-Token: {token}\r\n\r\nbody {token}\r\n"
        s.mail("app@chaos.lan")
        code, _ = s.rcpt("user@far.example")
        if code != 250:
            return False
        code, reply = s.data(msg.encode())
        if code != 250:
            return False
        QUEUED_AS[token] = reply.decode().rsplit(" ", 1)[-1]
        return True
    finally:
        try:
            s.quit()
        except Exception:
            pass


# ----------------------------------------------------------- phase 1: kill

def phase_kill(binary, cycles):
    data_dir = tempfile.mkdtemp(prefix="chaos-spool-")
    port, sink_port = free_port(LISTEN), free_port(SINK)
    sink = Sink(SINK, sink_port)
    server = Server(binary, data_dir, port, sink_port)
    server.start()
    sink.up()
    acked, lock, stop = [], threading.Lock(), threading.Event()

    def client(n):
        i = 0
        while not stop.is_set():
            token = f"c{n}-{i}"
            i += 1
            try:
                if send_one(port, token, timeout=5):
                    with lock:
                        acked.append(token)
            except Exception:
                time.sleep(0.05)   # the server is down: try again

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    for cycle in range(cycles):
        time.sleep(random.uniform(0.5, 2.0))
        if cycle % 3 == 1:
            sink.down()        # the next hop flaps
        elif cycle % 3 == 2:
            sink.up()
        server.kill9()
        time.sleep(random.uniform(0.0, 0.3))
        server.start()
    stop.set()
    for t in threads:
        t.join(15)
    sink.up()
    # Drain: as long as deliveries keep arriving (this Python sink takes
    # only a few hundred messages a second), give up after 60 s without any.
    last_count, last_progress = -1, time.time()
    while time.time() - last_progress < 60:
        got = sink.delivered()
        if set(acked) <= set(got):
            break
        if len(got) != last_count:
            last_count, last_progress = len(got), time.time()
        time.sleep(0.5)
    server.stop()
    delivered = sink.delivered()
    sink.down()
    lost = set(acked) - set(delivered)
    dups = len(delivered) - len(set(delivered))
    if sink.bad:
        print(f"kill -9: {len(sink.bad)} delivered messages carried no token, e.g. {sink.bad[0]!r}")
    if lost:
        for t in sorted(lost)[:3]:
            qid = QUEUED_AS.get(t)
            got = [tok for (i, tok) in sink.ids if i == qid]
            print(f"  lost {t}: acknowledged as {qid}; the sink got that id carrying {got}")
        left = {d: len(os.listdir(os.path.join(data_dir, d))) for d in ("queue", "slots", "tmp", "state")}
        print(f"kill -9: LOST, for example {sorted(lost)[:5]}; files left in {data_dir}: {left}; server log {server.log.name}")
    print(f"kill -9: {cycles} cycles, {len(acked)} acknowledged, {len(set(delivered))} delivered, "
          f"lost {len(lost)}, duplicates {dups}")
    return len(lost) == 0


# -------------------------------------------------------- phase 2: hostile

def hostile_attackers(port, stop, counts, only=None):
    """Starts every kind of hostile client; returns their threads."""
    def forever(name, fn):
        def run():
            while not stop.is_set():
                try:
                    fn()
                    counts[name] = counts.get(name, 0) + 1
                except OSError:
                    time.sleep(0.05)
        return threading.Thread(target=run, daemon=True)

    def connect(timeout=10):
        s = socket.create_connection((LISTEN, port), timeout=timeout,
                                     source_address=(OUTSIDER, 0))
        s.recv(512)
        return s

    def slow_loris():
        socks = []
        for _ in range(2000):
            if stop.is_set():
                break
            try:
                s = socket.create_connection((LISTEN, port), timeout=5,
                                             source_address=(OUTSIDER, 0))
                s.send(b"E")
                socks.append(s)
            except OSError:
                time.sleep(0.01)
        counts["slow-loris open"] = len(socks)
        while not stop.is_set():
            for s in socks:
                try:
                    s.send(b"H")
                except OSError:
                    pass
            time.sleep(5)
        for s in socks:
            s.close()

    def long_line():
        s = connect()
        s.sendall(b"EHLO " + b"a" * (1 << 20) + b"\r\n")
        s.recv(512)
        s.close()

    def nul_data():
        s = smtplib.SMTP(LISTEN, port, timeout=10, source_address=(CLIENT, 0))
        s.ehlo("pc.chaos.lan")
        try:
            s.sendmail("a@chaos.lan", ["b@far.example"], b"Subject: x\r\n\r\nA\x00.\r\nB\r\n")
        except smtplib.SMTPException:
            pass
        s.close()

    def many_rcpts():
        # From the trusted client, so the RCPTs are taken up to the limit.
        s = socket.create_connection((LISTEN, port), timeout=30, source_address=(CLIENT, 0))
        try:
            s.recv(512)
            s.sendall(b"EHLO pc.chaos.lan\r\nMAIL FROM:<x@chaos.lan>\r\n")
            for i in range(10000):
                s.sendall(b"RCPT TO:<v%d@far.example>\r\n" % i)
        except OSError:
            pass   # the server hung up on it: that is an answer too
        finally:
            s.close()

    def random_bytes():
        s = connect()
        s.sendall(os.urandom(64 * 1024))
        s.close()

    def tls_stall():
        s = connect()
        s.sendall(b"EHLO x.example\r\nSTARTTLS\r\n")
        s.recv(1024)
        s.sendall(b"\x16\x03\x01\x02\x00")   # a ClientHello that never comes
        time.sleep(2)
        s.close()

    def auth_flood():
        s = connect()
        s.sendall(b"EHLO x.example\r\nAUTH PLAIN AHVzZXIAd3Jvbmc=\r\n")
        s.close()

    threads = []
    if only in (None, "slow-loris"):
        threads.append(threading.Thread(target=slow_loris, daemon=True))
    for name, fn in [("1 MB lines", long_line), ("NUL data", nul_data),
                     ("10,000 RCPTs", many_rcpts), ("random bytes", random_bytes),
                     ("TLS stalls", tls_stall), ("AUTH floods", auth_flood),
                     ("AUTH floods", auth_flood)]:
        if only in (None, name):
            threads.append(forever(name, fn))
    return threads


def phase_hostile(binary, seconds, only=None):
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    data_dir = tempfile.mkdtemp(prefix="chaos-spool-")
    port, sink_port = free_port(LISTEN), free_port(SINK)
    sink = Sink(SINK, sink_port)
    sink.up()
    server = Server(binary, data_dir, port, sink_port)
    server.start()
    base_rss = server.rss_kib()
    stop = threading.Event()
    counts = {}
    attackers = hostile_attackers(port, stop, counts, only)
    for t in attackers:
        t.start()
    latencies, failures, peak = [], 0, base_rss
    started = time.time()
    i = 0
    while time.time() - started < seconds:
        t0 = time.time()
        try:
            send_one(port, f"normal-{i}", timeout=30)
            latencies.append(time.time() - t0)
        except Exception:
            failures += 1
        i += 1
        peak = max(peak, server.rss_kib())
        time.sleep(0.05)
    stop.set()
    time.sleep(1)
    peak = max(peak, server.rss_kib())
    alive = server.alive()
    server.stop()
    sink.down()
    lat = sorted(latencies) or [0]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    attacks = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"hostile: {seconds} s; attacks run: {attacks}")
    print(f"hostile: normal client {len(latencies)} sent, {failures} failed, latency median "
          f"{statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
          f"RSS {base_rss / 1024:.1f} MiB at start, peak {peak / 1024:.1f} MiB; "
          f"server {'alive' if alive else 'DEAD'}")
    return alive and failures <= len(latencies) // 20


# ------------------------------------------------ phase: taking the relay away

def takeover_attackers(ports, stop, counts):
    """The attacks of security round 3, each trying to take the relay away
    from the office: handshake floods on the implicit-TLS port, strangers
    filling the submission port, password guessing from rotating addresses,
    a transcript flood, slowloris on the admin page and NOOP holders."""
    smtp, smtps, submission, admin = ports

    def count(name, n=1):
        counts[name] = counts.get(name, 0) + n

    def hold_open(name, port, sources, per_source, keepalive=None, every=8):
        """Keeps `per_source` connections from each source open, reopening
        those the server closes; sends `keepalive` every `every` seconds."""
        socks = []
        while not stop.is_set():
            while len(socks) < len(sources) * per_source and not stop.is_set():
                src = sources[len(socks) % len(sources)]
                try:
                    socks.append(socket.create_connection((LISTEN, port), timeout=2,
                                                          source_address=(src, 0)))
                    count(name)
                except OSError:
                    time.sleep(0.05)
                    break
            alive = []
            for s in socks:
                try:
                    if keepalive is not None:
                        s.settimeout(0.01)
                        try:
                            if s.recv(4096) == b"":
                                raise OSError("closed")
                        except socket.timeout:
                            pass
                        s.sendall(keepalive)
                    alive.append(s)
                except OSError:
                    s.close()
            socks = alive
            stop.wait(every)
        for s in socks:
            s.close()

    def handshake_flood():
        hold_open("smtps bare connections", smtps, ["127.0.1.10"], 2000, every=1)

    def submission_flood():
        hold_open("submission idle connections", submission,
                  [f"127.0.1.{30 + i}" for i in range(10)], 20, b"NOOP\r\n")

    def noop_holders():
        hold_open("NOOP holders", smtp, [f"127.0.1.{60 + i}" for i in range(9)], 20, b"NOOP\r\n")

    def admin_slowloris():
        hold_open("admin dripping connections", admin,
                  [f"127.0.1.{90 + i}" for i in range(5)], 16, b"X", every=1)

    def rotating_guesses():
        n = 0
        while not stop.is_set():
            n += 1
            src = f"127.0.9.{1 + n % 250}"
            try:
                s = socket.create_connection((LISTEN, submission), timeout=10,
                                             source_address=(src, 0))
                s.recv(512)
                s.sendall(b"EHLO guess.example\r\n")
                s.recv(4096)
                token = __import__("base64").b64encode(f"\0alice\0guess{n}".encode())
                s.sendall(b"AUTH PLAIN " + token + b"\r\n")
                s.recv(512)
                s.close()
                count("rotating guesses")
            except OSError:
                time.sleep(0.05)

    def transcript_flood():
        junk = b"NOOP " + b"x" * 500 + b"\r\n"
        while not stop.is_set():
            try:
                s = socket.create_connection((LISTEN, smtp), timeout=10,
                                             source_address=("127.0.1.20", 0))
                s.recv(512)
                s.sendall(junk * 90)
                time.sleep(0.2)
                s.close()
                count("transcript flood sessions")
            except OSError:
                time.sleep(0.05)

    return [threading.Thread(target=f, daemon=True) for f in
            (handshake_flood, submission_flood, noop_holders, admin_slowloris,
             rotating_guesses, transcript_flood)]


def phase_takeover(binary, seconds):
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    data_dir = tempfile.mkdtemp(prefix="chaos-spool-")
    smtp, sink_port = free_port(LISTEN), free_port(SINK)
    smtps, submission, admin = free_port(LISTEN), free_port(LISTEN), free_port(LISTEN)
    users = os.path.join(data_dir, "users")
    subprocess.run([binary, "user", "add", "alice", "--password-stdin", "--users-file", users],
                   input=b"correct horse battery\n", check=True, capture_output=True)
    transcripts = tempfile.mkdtemp(prefix="chaos-transcripts-")
    sink = Sink(SINK, sink_port)
    sink.up()
    # The defaults for every limit: what an office runs.
    server = Server(binary, data_dir, smtp, sink_port, extra=f"""
[[listener]]
address = "{LISTEN}:{smtps}"
kind = "smtps"
[[listener]]
address = "{LISTEN}:{submission}"
kind = "submission"
[auth]
users_file = "{users}"
[admin]
address = "{LISTEN}:{admin}"
users = ["alice"]
[log]
transcript = "{transcripts}"
transcript_max_bytes_per_client = 1048576
""", default_limits=True)
    server.start()
    stop = threading.Event()
    counts = {}
    attackers = takeover_attackers((smtp, smtps, submission, admin), stop, counts)
    for t in attackers:
        t.start()
    time.sleep(3)   # let the attacks take hold first
    latencies, failures, admin_ok, admin_failed = [], 0, 0, 0
    started = time.time()
    i = 0
    while time.time() - started < seconds:
        t0 = time.time()
        try:
            if send_one(smtp, f"office-{i}", timeout=30):
                latencies.append(time.time() - t0)
            else:
                failures += 1
        except Exception:
            failures += 1
        try:
            with socket.create_connection((LISTEN, admin), timeout=10) as a:
                a.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if a.recv(64).startswith(b"HTTP/1.1 200"):
                    admin_ok += 1
                else:
                    admin_failed += 1
        except OSError:
            admin_failed += 1
        i += 1
        time.sleep(0.2)
    stop.set()
    fds = len(os.listdir(f"/proc/{server.proc.pid}/fd")) if server.alive() else -1
    alive = server.alive()
    server.stop()
    sink.down()
    transcript_bytes = sum(os.path.getsize(os.path.join(transcripts, f)) for f in os.listdir(transcripts))
    lat = sorted(latencies) or [0]
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    attacks = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    print(f"takeover: {seconds} s; attacks: {attacks}")
    print(f"takeover: office client {len(latencies)} sent, {failures} failed, latency median "
          f"{statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; admin /metrics "
          f"{admin_ok} answered, {admin_failed} not; server descriptors at the end {fds}; "
          f"transcripts {transcript_bytes / 1024:.0f} KiB; server {'alive' if alive else 'DEAD'}")
    return alive and failures == 0 and admin_failed == 0


# ----------------------------------------------------------- phase 3: disk

def phase_disk(binary):
    mnt = tempfile.mkdtemp(prefix="chaos-disk-")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", mnt]).returncode != 0:
        print("full disk: skipped (mounting a tmpfs needs root)")
        return True
    try:
        data_dir = os.path.join(mnt, "data")
        port, sink_port = free_port(LISTEN), free_port(SINK)
        sink = Sink(SINK, sink_port)   # down while filling: everything stays queued
        server = Server(binary, data_dir, port, sink_port)
        server.start()
        acked, refused_452, big = [], 0, ("x" * 76 + "\r\n") * 2600
        for i in range(200):
            s = smtplib.SMTP(LISTEN, port, timeout=30, source_address=(CLIENT, 0))
            try:
                s.ehlo("pc.chaos.lan")
                token = f"disk-{i}"
                s.sendmail("app@chaos.lan", ["user@far.example"],
                           f"Subject: big\r\nX-Chaos-Token: {token}\r\n\r\n{big}\r\n")
                acked.append(token)
            except smtplib.SMTPException as e:
                if "452" in str(e) or getattr(e, "smtp_code", 0) == 452:
                    refused_452 += 1
                if refused_452 >= 5:
                    break
            finally:
                try:
                    s.quit()
                except Exception:
                    pass
        alive = server.alive()
        server.stop()
        subprocess.run(["mount", "-o", "remount,size=200m", mnt], check=True)
        sink.up()
        server.start()
        deadline = time.time() + 120
        while time.time() < deadline and not set(acked) <= set(sink.delivered()):
            time.sleep(0.5)
        lost = set(acked) - set(sink.delivered())
        server.stop()
        sink.down()
        print(f"full disk: {len(acked)} acknowledged before the disk filled, {refused_452} answered 452, "
              f"server {'alive' if alive else 'DEAD'} when full; after space returned: lost {len(lost)}")
        return alive and refused_452 > 0 and not lost
    finally:
        subprocess.run(["umount", "-l", mnt])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/portcullis")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--hostile-seconds", type=int, default=30)
    ap.add_argument("--skip-disk", action="store_true")
    ap.add_argument("--only", help="one hostile attack (e.g. \"AUTH floods\"), for a closer look")
    ap.add_argument("--takeover-seconds", type=int, default=60)
    ap.add_argument("--phase", choices=["kill", "hostile", "takeover", "disk"], help="run one phase only")
    a = ap.parse_args()
    ok = True
    if a.phase in (None, "kill"):
        ok = phase_kill(a.binary, a.cycles) and ok
    if a.phase in (None, "hostile"):
        ok = phase_hostile(a.binary, a.hostile_seconds, a.only) and ok
    if a.phase in (None, "takeover"):
        ok = phase_takeover(a.binary, a.takeover_seconds) and ok
    if a.phase in (None, "disk") and not a.skip_disk:
        ok = phase_disk(a.binary) and ok
    print("chaos: PASS" if ok else "chaos: FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
