#!/usr/bin/env python3
"""Memory after a burst: N concurrent clients each send M messages of S KB to a
running Portcullis (mail for an inbound domain routed to a dead next hop, so it
stays queued), then the server idles 10 s. Prints the server's RSS and peak
(VmRSS, VmHWM) before, right after, and after the idle time.

    python3 bench/memory.py PORT PID [CLIENTS] [MESSAGES] [KB]
"""
import smtplib
import sys
import threading
import time

port, pid = int(sys.argv[1]), int(sys.argv[2])
clients = int(sys.argv[3]) if len(sys.argv) > 3 else 200
messages = int(sys.argv[4]) if len(sys.argv) > 4 else 5
kb = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
body = "Subject: burst\r\n\r\n" + ("x" * 998 + "\r\n") * kb


def rss():
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return fields["VmRSS"].strip(), fields["VmHWM"].strip()


def client():
    s = smtplib.SMTP("127.0.0.1", port, timeout=120)
    s.ehlo("burst.lan")
    for _ in range(messages):
        s.sendmail("a@lan.test", ["b@example.lan"], body)
    s.quit()


print("before", rss())
threads = [threading.Thread(target=client) for _ in range(clients)]
start = time.time()
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"burst of {clients * messages} x {kb} KB done in {time.time() - start:.1f}s", rss())
time.sleep(10)
print("after 10 s idle", rss())
