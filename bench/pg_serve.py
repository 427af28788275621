#!/usr/bin/env python3
"""End-to-end ingest and search through `salus serve`, side by side (scripts/bench-postgres
--serve, docs/benchmarks.md): the embedded SQLite store, PostgreSQL with one server
process, and PostgreSQL with two server processes sharing the database.

For each target, in turn:
  1. fresh store; start the server process(es);
  2. POST every transaction Bundle of FOLDER with 8 keep-alive clients (one process: all 8
     to it; two processes: 4 to each) and time it (resources/s);
  3. (PostgreSQL) ANALYZE, as autovacuum would within a minute of the load;
  4. run the search queries of bench/search.py with 32 connections from two `wrk`
     instances of 16 (one process: both against it; two: one against each) and sum
     their rates; p50/p99 are the worse of the two instances.
The client configuration is the same for every target, so only the server side differs.

Usage: bench/pg_serve.py SALUS_BIN BUNDLE_FOLDER POSTGRES_URL [seconds]"""

import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from postgres_ingest import drop_database, pg_database  # noqa: E402
from search import QUERIES  # noqa: E402

OUT = "bench-out"


def start(binary, port, data_dir, database, env):
    args = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir]
    if database:
        args += ["--database", database]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/metadata")
            if c.getresponse().status == 200:
                return proc, url
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server on port {port} did not come up")


def post_all(bodies, bases, workers_per_base=None):
    """POST every body to one of `bases` (workers split evenly); resources/s and errors."""
    total = sum(n for n, _ in bodies)
    queue = list(reversed(bodies))
    lock = threading.Lock()
    errors = []
    per = workers_per_base or 8 // len(bases)

    def worker(base):
        u = urllib.parse.urlparse(base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
        while True:
            with lock:
                if not queue:
                    return
                _, body = queue.pop()
            conn.request("POST", "/", body=body, headers={
                "Content-Type": "application/fhir+json", "Prefer": "return=minimal"})
            resp = conn.getresponse()
            text = resp.read()
            if resp.status >= 300:
                with lock:
                    errors.append((resp.status, text[:300]))

    threads = [threading.Thread(target=worker, args=(b,)) for b in bases for _ in range(per)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    return total / secs, secs, errors


def get(url):
    req = urllib.request.Request(url, headers={"Accept": "application/fhir+json"})
    return json.load(urllib.request.urlopen(req, timeout=120))


def patient_ids(base):
    ids, url = [], f"{base}/Patient?_count=1000&_elements=id"
    while url and len(ids) < 20000:
        b = get(url)
        ids += [e["resource"]["id"] for e in b.get("entry", [])
                if e.get("search", {}).get("mode", "match") == "match"]
        url = next((l["url"] for l in b.get("link", []) if l["relation"] == "next"), None)
    return ids


def ms(s):
    v, unit = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def search_round(bases, ids, seconds):
    """Every query: two wrk × 16 connections, spread over `bases` (one or two)."""
    rows = []
    for name, template in QUERIES.items():
        random.seed(7)
        pf = f"{OUT}/pg-serve-paths.txt"
        with open(pf, "w") as f:
            f.write("\n".join(template.format(id=random.choice(ids)) for _ in range(5000)) + "\n")
        targets = [bases[0], bases[-1]]
        procs = [subprocess.Popen(["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", "-s",
                                   "bench/read.lua", t], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "PATHS_FILE": pf}) for t in targets]
        outs = [p.communicate()[0] for p in procs]
        qps = sum(float(re.search(r"Requests/sec:\s+([\d.]+)", o).group(1)) for o in outs)
        lat = [dict(re.findall(r"^\s+(50|99)%\s+(\S+)", o, re.M)) for o in outs]
        bad = sum(int(m.group(1)) for o in outs
                  if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", o)))
        rows.append({"query": name, "qps": qps, "p50": max(ms(x["50"]) for x in lat),
                     "p99": max(ms(x["99"]) for x in lat), "bad": bad})
    return rows


def ratio(x, y):
    return f"{x / y:.2f}" if y else "n/a"


def main():
    binary, folder, pg = sys.argv[1], sys.argv[2], sys.argv[3]
    seconds = sys.argv[4] if len(sys.argv) > 4 else "10"
    os.makedirs(OUT, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    env["RUST_LOG"] = "warn"
    bodies = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            data = open(os.path.join(folder, name), "rb").read()
            bodies.append((len(json.loads(data).get("entry", [])), data))
    total = sum(n for n, _ in bodies)
    print(f"{len(bodies)} Bundles, {total} resources", flush=True)
    work = tempfile.mkdtemp(prefix="salus-bench-serve-")
    results = {}
    try:
        for target in ("sqlite", "pg x1", "pg x2"):
            database = None if target == "sqlite" else pg_database(pg, "salus_bench_serve")
            procs, bases = [], []
            for i in range(2 if target == "pg x2" else 1):
                d = os.path.join(work, f"{target.replace(' ', '-')}-{i}")
                shutil.rmtree(d, ignore_errors=True)
                p, u = start(binary, 18300 + i, d, database, env)
                procs.append(p)
                bases.append(u)
            try:
                rate, secs, errors = post_all(bodies, bases)
                print(f"{target}: ingest {rate:,.0f} resources/s ({secs:.1f} s, "
                      f"{len(errors)} errors{': ' + str(errors[0]) if errors else ''})", flush=True)
                if database:
                    # what autovacuum does within its next round (autovacuum_naptime,
                    # 1 min by default): planner statistics of the loaded tables
                    subprocess.run(["psql", database, "-q", "-c", "ANALYZE"], check=True)
                ids = patient_ids(bases[0])
                rows = search_round(bases, ids, seconds)
                for r in rows:
                    print(f"  {r['query']:58} {r['qps']:8,.0f} q/s  p50 {r['p50']:6.2f} ms  "
                          f"p99 {r['p99']:6.2f} ms  non-2xx {r['bad']}", flush=True)
                results[target] = {"ingest": rate, "search": rows}
            finally:
                for p in procs:
                    p.terminate()
                    p.wait(timeout=60)
        print("\n| workload | SQLite | PostgreSQL, 1 process | PostgreSQL, 2 processes | "
              "PG 1 / SQLite | PG 2 / PG 1 |")
        print("|---|---:|---:|---:|---:|---:|")
        s, p1, p2 = (results[t] for t in ("sqlite", "pg x1", "pg x2"))
        print(f"| HTTP transactions, resources/s | {s['ingest']:,.0f} | {p1['ingest']:,.0f} | "
              f"{p2['ingest']:,.0f} | {ratio(p1['ingest'], s['ingest'])} | "
              f"{ratio(p2['ingest'], p1['ingest'])} |")
        for a, b, c in zip(s["search"], p1["search"], p2["search"]):
            print(f"| `{a['query']}` q/s (p99 ms) | {a['qps']:,.0f} ({a['p99']:.1f}) | "
                  f"{b['qps']:,.0f} ({b['p99']:.1f}) | {c['qps']:,.0f} ({c['p99']:.1f}) | "
                  f"{ratio(b['qps'], a['qps'])} | {ratio(c['qps'], b['qps'])} |")
    finally:
        drop_database(pg, "salus_bench_serve")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
