#!/usr/bin/env python3
"""Idle connections: opens N connections to a running Portcullis, reads each
banner, then prints the server's RSS per connection and how fast a normal
client is answered meanwhile.   python3 bench/idle.py PORT PID N
(The server needs max_connections and max_connections_per_ip above N, and
both processes enough open files.)"""
import socket, sys, time
port, pid, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def rss():
    d = dict(l.split(':',1) for l in open(f'/proc/{pid}/status'))
    return int(d['VmRSS'].split()[0])
before = rss()
socks = []
for i in range(n):
    s = socket.create_connection(('127.0.0.1', port))
    socks.append(s)
for s in socks:
    s.recv(200)  # the banner
time.sleep(2)
after = rss()
print(f"{n} idle connections: RSS {before} kB -> {after} kB, {(after-before)*1024/n:.0f} bytes each")
t0 = time.time()
c = socket.create_connection(('127.0.0.1', port)); c.recv(200); c.sendall(b"NOOP\r\n"); r = c.recv(200)
print(f"a normal client meanwhile: banner and NOOP in {(time.time()-t0)*1000:.1f} ms: {r[:20]!r}")
