#!/usr/bin/env python3
"""Resident memory of the real `serve` binary while slow clients read `/debug/serviceentries`.

usage: debug-view-memory.py BINARY [SERVICES] [INSTANCES] [READERS] [RATE_KB_S] [--json-view]

Writes a registry (scripts/gen-registry.py, as JSON: the quickest to load), starts
`BINARY serve --registry-file ...` (default flags otherwise; no ADS client), waits until /readyz
answers 200 and the RSS settles, then opens READERS connections at once, each asking for
/debug/serviceentries (YAML; `--json-view`: ?format=json) with a 64 KiB receive buffer and reading
at most RATE_KB_S KiB per second. VmRSS is sampled every 20 ms from /proc while they read. When
all are done it waits 5 s and 30 s and reads VmRSS again. Prints a table: idle RSS, peak while
reading, RSS after, the ratios, the body size each reader got (all must be equal) and how long the
reads took. Defaults: 10,000 services x 10 instances, 20 readers, 2048 KiB/s.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import importlib.util

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("reload_bench", os.path.join(HERE, "reload-bench.py"))
reload_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reload_bench)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def slow_read(port, path, rate, out, i):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    got = bytearray()
    t0 = time.time()
    while True:
        chunk = s.recv(16 * 1024)
        if not chunk:
            break
        got += chunk
        # Never ahead of the rate: sleep until this many bytes are due.
        due = t0 + len(got) / rate
        now = time.time()
        if due > now:
            time.sleep(due - now)
    s.close()
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    out[i] = (head.split(b"\r\n", 1)[0].decode(errors="replace"), len(body), time.time() - t0)


def main():
    argv = [a for a in sys.argv[1:] if a != "--json-view"]
    view = "/debug/serviceentries?format=json" if "--json-view" in sys.argv else "/debug/serviceentries"
    binary = argv[0]
    services = int(argv[1]) if len(argv) > 1 else 10000
    per = int(argv[2]) if len(argv) > 2 else 10
    readers = int(argv[3]) if len(argv) > 3 else 20
    rate = (int(argv[4]) if len(argv) > 4 else 2048) * 1024
    d = tempfile.mkdtemp(prefix="debug-view-memory-")
    path = os.path.join(d, "registry.json")
    subprocess.run([sys.executable, os.path.join(HERE, "gen-registry.py"), str(services), str(per), path, "0"],
                   check=True)
    port = 20000 + os.getpid() % 20000
    proc = subprocess.Popen(
        [binary, "--log-format", "json", "serve", "--registry-file", path, "--grpc-addr", "127.0.0.1:0",
         "--admin-addr", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    threading.Thread(target=lambda: [sys.stderr.write(l) for l in proc.stderr
                                     if '"level":"ERROR"' in l or "panicked" in l], daemon=True).start()
    try:
        reload_bench.wait_ready(proc, port)
        # Settled: the first build's memory returned (the resource cache trims after a large build).
        time.sleep(5)
        idle = rss_mb(proc.pid)
        results = {}
        threads = [threading.Thread(target=slow_read, args=(port, view, rate, results, i)) for i in range(readers)]
        peak = idle
        t0 = time.time()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mb(proc.pid))
            time.sleep(0.02)
        took = time.time() - t0
        time.sleep(5)
        after5 = rss_mb(proc.pid)
        time.sleep(25)
        after30 = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(d, ignore_errors=True)
    statuses = sorted({r[0] for r in results.values()})
    sizes = sorted({r[1] for r in results.values()})
    rows = [
        ("registry", f"{services} services x {per} instances"),
        ("view", view),
        ("readers, rate each", f"{readers}, {rate // 1024} KiB/s (64 KiB receive buffer)"),
        ("answers", ", ".join(statuses)),
        ("body bytes per reader", ", ".join(str(s) for s in sizes)),
        ("all readers done after (s)", f"{took:.1f}"),
        ("server RSS idle, ready (MB)", f"{idle:.1f}"),
        ("server RSS peak while reading (MB)", f"{peak:.1f}"),
        ("peak / idle", f"{peak / idle:.2f}"),
        ("server RSS 5 s after the last reader (MB)", f"{after5:.1f}"),
        ("server RSS 30 s after the last reader (MB)", f"{after30:.1f}"),
        ("after 30 s / idle", f"{after30 / idle:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"| {'figure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|---:|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")
    if len(sizes) != 1 or statuses != ["HTTP/1.0 200 OK"]:
        sys.exit("readers did not all get the same complete answer")


if __name__ == "__main__":
    main()
