"""Runs examples/pg_bodies (message content in PostgreSQL: bytea, chunk rows
or large objects) against a primary with a synchronous standby on loopback,
as the cluster runs (see bench/pg_cluster.py). Needs root (PostgreSQL runs
as the postgres user in a temporary directory)."""
import os, shutil, socket, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pg_cluster import Postgres


class NoCgroup:
    """pg_bodies counts time, not CPU: no accounting needed."""
    def enter(self):
        pass


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def main():
    if len(sys.argv) < 2:
        raise SystemExit("usage: pg_bodies.py PG_BODIES_BINARY [SIZES] [TOTAL_MB]")
    binary, rest = sys.argv[1], sys.argv[2:]
    workdir = tempfile.mkdtemp(prefix="portcullis-pg-bodies-")
    os.chmod(workdir, 0o755)
    pg = Postgres(workdir, free_port, NoCgroup())
    try:
        print(f"$ {os.path.basename(binary)} {' '.join(rest)}  (primary + synchronous standby, "
              f"PostgreSQL in {pg.bin})", flush=True)
        subprocess.run([binary, f"host=127.0.0.1 port={pg.primary_port} user=postgres dbname=postgres", *rest],
                       check=True)
    finally:
        pg.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
