#!/usr/bin/env python3
"""The cycles between the top-level modules of src/, counting every
`crate::` path outside test code: `python3 scripts/module_cycles.py [src]`.
Prints each strongly connected group with its edges inside the group, then
how many groups there are ("no cycles" is the aim: modules readable in
dependency order)."""
import os, re, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under `| head`
root = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = set()
for n in os.listdir(root):
    if n.endswith(".rs") and n not in ("main.rs", "lib.rs"): mods.add(n[:-3])
    elif os.path.isdir(os.path.join(root, n)): mods.add(n)
edges = {}
def strip_tests(text):
    # drop `#[cfg(test)] mod tests { ... }` blocks (to the end of file, as written here)
    i = text.find("#[cfg(test)]\nmod tests")
    return text if i < 0 else text[:i]
for m in mods:
    paths = [os.path.join(root, m + ".rs")] if os.path.exists(os.path.join(root, m + ".rs")) else []
    d = os.path.join(root, m)
    if os.path.isdir(d):
        for dp, _, fs in os.walk(d):
            paths += [os.path.join(dp, f) for f in fs if f.endswith(".rs") and f != "tests.rs"]
    for p in paths:
        t = strip_tests(open(p).read())
        for dep in re.findall(r"crate::([a-z_]+)", t):
            if dep in mods and dep != m:
                edges.setdefault(m, set()).add(dep)
        for block in re.findall(r"use crate::\{([^;]*)\};", t, re.S):
            for dep in re.findall(r"(?:^|[,{\s])([a-z_]+)(?=::|\s*[,}]|$)", block):
                if dep in mods and dep != m:
                    edges.setdefault(m, set()).add(dep)
# strongly connected components (Tarjan)
index, low, stack, on, sccs, i = {}, {}, [], set(), [], [0]
def sc(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        sccs.append(comp)
sys.setrecursionlimit(10000)
for v in sorted(mods):
    if v not in index: sc(v)
cycles = [c for c in sccs if len(c) > 1]
for c in cycles:
    print("cycle:", sorted(c))
    for a in sorted(c):
        print("   ", a, "->", sorted(edges.get(a, set()) & set(c)))
print("no cycles" if not cycles else f"{len(cycles)} cycle(s)")
