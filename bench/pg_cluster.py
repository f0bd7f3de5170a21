"""The cluster for bench/relay.py --cluster: a PostgreSQL primary with a
synchronous streaming standby on loopback (Debian's binaries, run as the
postgres user in the work directory), and Portcullis nodes on it: one node
alone, or three behind HAProxy (send-proxy-v2), as README's layout has them.

PostgreSQL runs for the whole invocation in a cgroup of its own; the CPU it
spends during a run is added to the cluster's (its memory is not: shared
buffers would say more about PostgreSQL's settings than about the relay).
"""
import glob, grp, os, pwd, shutil, signal, subprocess, time


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit("relay.py --cluster: PostgreSQL is not installed (relay.sh installs postgresql-15)")
    return os.path.dirname(found[-1])


def as_postgres():
    uid, gid = pwd.getpwnam("postgres").pw_uid, grp.getgrnam("postgres").gr_gid
    def enter():
        os.setgid(gid); os.setuid(uid)
    return enter, uid, gid


class Postgres:
    """Primary and synchronous standby, each on a free loopback port."""
    def __init__(self, workdir, free_port, cgroup):
        self.bin = pg_bin()
        self.dir = os.path.join(workdir, "postgres")
        os.makedirs(self.dir, exist_ok=True)
        enter, uid, gid = as_postgres()
        os.chown(self.dir, uid, gid)
        self.enter = enter
        self.cg = cgroup
        self.procs = []
        self.primary_port, self.standby_port = free_port(), free_port()
        primary = os.path.join(self.dir, "primary")
        self.run([f"{self.bin}/initdb", "--auth=trust", "--username=postgres", "-D", primary])
        self.start(primary, self.primary_port)
        standby = os.path.join(self.dir, "standby")
        self.run([f"{self.bin}/pg_basebackup", "-d",
                  f"host=127.0.0.1 port={self.primary_port} user=postgres application_name=standby1",
                  "-R", "-X", "stream", "-D", standby])
        self.start(standby, self.standby_port)
        self.sql("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
        self.sql("SELECT pg_reload_conf()")
        for _ in range(300):
            if self.sql("SELECT sync_state FROM pg_stat_replication") == "sync":
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the standby did not become synchronous")

    def run(self, argv):
        subprocess.run(argv, check=True, preexec_fn=self.enter, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, data, port):
        def enter():
            self.cg.enter(); self.enter()
        log = open(os.path.join(self.dir, f"log-{port}"), "w")
        self.procs.append(subprocess.Popen(
            [f"{self.bin}/postgres", "-D", data, "-p", str(port), "-k", self.dir,
             "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"],
            stdout=log, stderr=log, preexec_fn=enter))
        for _ in range(300):
            if subprocess.run([f"{self.bin}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not start on port {port}")

    def sql(self, statement):
        out = subprocess.run([f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.primary_port), "-U", "postgres",
                              "-d", "postgres", "-tAc", statement], capture_output=True, check=True)
        return out.stdout.decode().strip()

    def url(self):
        return (f"host=127.0.0.1,127.0.0.1 port={self.primary_port},{self.standby_port} user=postgres "
                "dbname=postgres target_session_attrs=read-write")

    def maintenance(self):
        """PostgreSQL's own work on the queue table so far: (autovacuums,
        autoanalyzes); a run that overlaps them pays for them."""
        out = self.sql("SELECT coalesce(sum(autovacuum_count), 0) || ' ' || coalesce(sum(autoanalyze_count), 0) "
                       "FROM pg_stat_user_tables WHERE relname LIKE 'portcullis_%'")
        vacuums, analyzes = (int(x) for x in out.split())
        return vacuums, analyzes

    def empty(self):
        """Between runs: the queue and the shared counters start empty."""
        self.sql("DO $$ BEGIN IF to_regclass('portcullis_message') IS NOT NULL THEN "
                 "TRUNCATE portcullis_message, portcullis_command, portcullis_shared; END IF; END $$")

    def close(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGINT)
            try: p.wait(timeout=30)
            except subprocess.TimeoutExpired: p.kill(); p.wait()


class PortcullisCluster:
    """`nodes` Portcullis nodes on one Postgres; with more than one, HAProxy
    on `port` spreads the sessions over them (send-proxy-v2)."""
    def __init__(self, env, port, kind, nodes, pg, free_port, wait_port, base_config):
        self.name = f"cluster-{nodes}"
        self.env, self.port, self.pg, self.nodes = env, port, pg, nodes
        self.wait_port = wait_port
        self.dir = os.path.join(env.workdir, f"{self.name}-{kind}")
        os.makedirs(self.dir, exist_ok=True)
        self.configs, self.backends = [], []
        for i in range(nodes):
            node_port = port if nodes == 1 else free_port()
            self.backends.append(node_port)
            listener = f'[[listener]]\naddress = "127.0.0.1:{node_port}"\nkind = "smtp"\n'
            if nodes > 1:
                listener += 'proxy_protocol = true\nproxy_from = ["127.0.0.1"]\n'
            text = base_config(os.path.join(self.dir, f"node{i + 1}"), listener)
            # Numbers of their own: a node of the other server may still
            # hold its number for a lease after a run that left work behind.
            text += f'[cluster]\nnode_id = {10 * nodes + i + 1}\ndatabase = "{pg.url()}"\npool_size = 16\n'
            path = os.path.join(self.dir, f"node{i + 1}.toml")
            with open(path, "w") as f: f.write(text)
            self.configs.append(path)
        if nodes > 1:
            self.haproxy_cfg = os.path.join(self.dir, "haproxy.cfg")
            servers = "".join(f"  server node{i + 1} 127.0.0.1:{p} check send-proxy-v2 check-send-proxy\n"
                              for i, p in enumerate(self.backends))
            with open(self.haproxy_cfg, "w") as f:
                f.write("global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 5m\n"
                        f"  timeout server 5m\nfrontend smtp\n  bind 127.0.0.1:{port}\n  default_backend relays\n"
                        "backend relays\n  balance leastconn\n  option smtpchk HELO bench.test\n" + servers)

    def cpu_elsewhere(self):
        """CPU seconds spent so far outside the run's cgroup (PostgreSQL)."""
        return self.pg.cg.cpu_seconds()

    def start(self, cg):
        wait_port = self.wait_port
        self.pg.empty()
        self.maintenance_before = self.pg.maintenance()
        self.logs, self.procs = [], []
        for i, config in enumerate(self.configs):
            log = open(os.path.join(self.dir, f"log{i + 1}"), "a")
            self.logs.append(log)
            self.procs.append(subprocess.Popen([self.env.binary, "serve", "--config", config],
                                               stdout=log, stderr=log, preexec_fn=cg.enter))
        for p in self.backends:
            wait_port(p)
        if self.nodes > 1:
            self.procs.append(subprocess.Popen(["haproxy", "-db", "-f", self.haproxy_cfg],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                               preexec_fn=cg.enter))
            wait_port(self.port)
            time.sleep(2.5)  # the first health checks mark the nodes up

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try: p.wait(timeout=20)
            except subprocess.TimeoutExpired: p.kill(); p.wait()
        for log in self.logs:
            log.close()
        vacuums, analyzes = (now - then for now, then in zip(self.pg.maintenance(), self.maintenance_before))
        print(f"       {self.name}: PostgreSQL ran {vacuums} autovacuum(s) and {analyzes} autoanalyze(s) "
              "on the queue tables during the run", flush=True)
        for i in range(self.nodes):
            data = os.path.join(self.dir, f"node{i + 1}", "data")
            if os.path.exists(data):
                shutil.rmtree(data, ignore_errors=True)
