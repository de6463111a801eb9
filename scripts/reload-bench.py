#!/usr/bin/env python3
"""Registry-file reload figures of the real `serve` binary: memory across edits, edit -> snapshot
latency, idle CPU with an unchanged file.

usage: reload-bench.py [--json] BINARY [SERVICES] [INSTANCES] [EDITS] [-- extra serve flags]

--json: the same registry written as JSON.

Writes a registry (scripts/gen-registry.py), starts `BINARY serve --registry-file ...` with the
default poll interval, waits until /readyz answers 200, then edits the file atomically EDITS times
(each edit moves one address: one ServiceEntry changes). After each edit it waits for the server's
"serving new ServiceEntry snapshot" log line and records the time from the rename to that line,
and VmRSS/VmHWM from /proc. Finally it measures the CPU the server uses over 20 s with the file
unchanged. Prints one summary line per figure.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def mem(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024.0
    return out["VmRSS"], out["VmHWM"]


def wait_ready(proc, port, timeout=300):
    """Waits until the admin port's /readyz answers 200 (exits if the server dies or never does)."""
    t0 = time.time()
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                return
        except Exception:
            pass
        if proc.poll() is not None or time.time() - t0 > timeout:
            sys.exit("server did not become ready")
        time.sleep(0.1)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    argv = sys.argv[1:]
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    binary = argv[0]
    services = int(argv[1]) if len(argv) > 1 else 10000
    per = int(argv[2]) if len(argv) > 2 else 10
    edits = int(argv[3]) if len(argv) > 3 else 50
    gen = os.path.join(HERE, "gen-registry.py")
    d = tempfile.mkdtemp(prefix="reload-bench-")
    path = os.path.join(d, "registry.json" if as_json else "registry.yaml")
    subprocess.run([sys.executable, gen, str(services), str(per), path, "0"], check=True)
    size = os.path.getsize(path)
    port = 20000 + os.getpid() % 20000
    proc = subprocess.Popen(
        [binary, "--log-format", "json", "serve", "--registry-file", path, "--grpc-addr", "127.0.0.1:0",
         "--admin-addr", f"127.0.0.1:{port}"] + extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    snapshots = []  # arrival times of "serving new ServiceEntry snapshot"
    cond = threading.Condition()

    def reader():
        for line in proc.stderr:
            if "serving new ServiceEntry snapshot" in line:
                with cond:
                    snapshots.append(time.time())
                    cond.notify_all()
            elif '"level":"ERROR"' in line or "panicked" in line:
                sys.stderr.write(line)

    threading.Thread(target=reader, daemon=True).start()
    t0 = time.time()
    wait_ready(proc, port)
    ready_s = time.time() - t0
    time.sleep(2)
    rss_ready, hwm_ready = mem(proc.pid)
    print(f"file {size / 1e6:.1f} MB ({services} services x {per} instances); ready after {ready_s:.1f} s: "
          f"rss {rss_ready:.0f} MB, peak {hwm_ready:.0f} MB", flush=True)
    latencies, rss_after = [], {}
    for i in range(1, edits + 1):
        nxt = os.path.join(d, "next-" + os.path.basename(path))
        subprocess.run([sys.executable, gen, str(services), str(per), nxt, str(i)], check=True)
        time.sleep(0.3)
        with cond:
            seen = len(snapshots)
            t = time.time()
            os.rename(nxt, path)
            if not cond.wait_for(lambda: len(snapshots) > seen, timeout=60):
                sys.exit(f"edit {i}: no new snapshot within 60 s")
            latencies.append((snapshots[seen] - t) * 1000)
        rss, hwm = mem(proc.pid)
        rss_after[i] = (rss, hwm)
        if i in (1, 10, 25, 50) or i == edits:
            print(f"after {i} edits: rss {rss:.0f} MB, peak {hwm:.0f} MB", flush=True)
    lat = sorted(latencies)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(f"edit -> new snapshot (server log) over {len(lat)} edits: p50 {p(0.5):.0f} ms, p90 {p(0.9):.0f} ms, "
          f"max {lat[-1]:.0f} ms", flush=True)
    peak = mem(proc.pid)[1]
    print(f"peak over {edits} edits: {peak:.0f} MB = {peak / rss_ready:.2f} x rss when ready", flush=True)
    time.sleep(3)
    c0, w0 = cpu_seconds(proc.pid), time.time()
    time.sleep(20)
    c1, w1 = cpu_seconds(proc.pid), time.time()
    print(f"idle cpu with the file unchanged: {100 * (c1 - c0) / (w1 - w0):.2f} % of a core over {w1 - w0:.0f} s",
          flush=True)
    proc.terminate()
    proc.wait(timeout=10)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    os.rmdir(d)


if __name__ == "__main__":
    main()
