#!/usr/bin/env python3
"""Benchmark driver behind scripts/bench. The server runs pinned to CPU 1 and every load
client to CPU 0 (taskset), so client and server do not compete for a core."""
import json, os, re, shutil, signal, subprocess, sys, time, urllib.request

OUT = "bench-out"
BIN = os.environ.get("SALUS_BIN", "target/release/salus")
N = int(os.environ.get("BENCH_PATIENTS", "500"))
SEED = 2026
SHARED = os.environ.get("SALUS_SHARED_DIR", "../shared")
HFS = os.environ.get("HFS_BIN")
DURATION = os.environ.get("BENCH_SECONDS", "15")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def generate():
    cb = f"{OUT}/venv/bin/carebundle"
    if not os.path.isdir(f"{OUT}/bundles-{N}"):
        sh([cb, "generate", "--profile", "mixed", "--count", str(N), "--seed", str(SEED), "--out", f"{OUT}/bundles-{N}"])
    if not os.path.isdir(f"{OUT}/ndjson-{N}"):
        sh([cb, "generate", "--profile", "mixed", "--count", str(N), "--seed", str(SEED), "--out", f"{OUT}/ndjson-{N}", "--format", "ndjson"])


def import_rate(path):
    db = f"{OUT}/db-import"
    shutil.rmtree(db, ignore_errors=True)
    # Both cores, as on the 2-core target machine: files are parsed and validated on one
    # thread while SQLite inserts on another (no peer has an import command to pin alike).
    r = sh([BIN, "import", "--quiet", "--data-dir", db, path], env={**os.environ, "RUST_LOG": "warn"})
    m = re.search(r"imported (\d+) resources .* in ([\d.]+)s \((\d+) resources/s\); (\d+) files failed", r.stdout)
    return {"resources": int(m.group(1)), "seconds": float(m.group(2)), "rate": int(m.group(3)), "failed_files": int(m.group(4))}


def wait_up(url, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early: {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/metadata", timeout=2).read()
            return
        except Exception:
            time.sleep(0.3)
    raise SystemExit(f"server at {url} did not start")


def ids(url, rtype, count=1000):
    req = urllib.request.Request(f"{url}/{rtype}?_count={count}", headers={"Accept": "application/fhir+json"})
    b = json.load(urllib.request.urlopen(req, timeout=60))
    return [f"/{rtype}/{e['resource']['id']}" for e in b.get("entry", [])]


def wrk(url, paths):
    pf = f"{OUT}/paths.txt"
    with open(pf, "w") as f:
        f.write("\n".join(paths) + "\n")
    r = sh(["taskset", "-c", "0", "wrk", "-t2", "-c32", f"-d{DURATION}s", "--latency", "-s", "bench/read.lua", url],
           env={**os.environ, "PATHS_FILE": pf})
    def ms(s):
        v, unit = re.match(r"([\d.]+)(us|ms|s)", s).groups()
        return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", r.stdout, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    return {"rps": round(rps), "p50_ms": ms(lat["50"]), "p99_ms": ms(lat["99"]), "non_2xx": int(errs.group(1)) if errs else 0}


def http_round(name, cmd, url, env=None):
    proc = subprocess.Popen(["taskset", "-c", "1"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    try:
        wait_up(url, proc)
        post = json.loads(sh(["taskset", "-c", "0", "python3", "bench/post_bundles.py", url, f"{OUT}/bundles-{N}", "4"]).stdout)
        paths = ids(url, "Patient") + ids(url, "Observation")
        reads = wrk(url, paths)
        return {"server": name, "transactions": post, "reads": reads, "read_paths": len(paths)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    generate()
    results = {"patients": N, "seed": SEED, "import": {}}
    results["import"]["carebundle transaction bundles"] = import_rate(f"{OUT}/bundles-{N}")
    results["import"]["carebundle NDJSON"] = import_rate(f"{OUT}/ndjson-{N}")
    synthea = os.path.join(SHARED, "data/bulk-10-patients")
    if os.path.isdir(synthea):
        results["import"]["Synthea bulk-10-patients NDJSON"] = import_rate(synthea)
    shutil.rmtree(f"{OUT}/db-http", ignore_errors=True)
    results["salus"] = http_round("salus", [BIN, "serve", "--listen", "127.0.0.1:18090", "--data-dir", f"{OUT}/db-http"],
                                  "http://127.0.0.1:18090", {"RUST_LOG": "warn"})
    if HFS:
        d = f"{OUT}/hfs"
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(f"{d}/data")
        sp = os.environ.get("HFS_SEARCH_PARAMS")
        if sp:
            shutil.copy(sp, f"{d}/data/search-parameters-r4.json")
        results["peer"] = http_round("hfs", [HFS, "--host", "127.0.0.1", "--port", "18091", "--database-url", f"{d}/hfs.db", "--data-dir", f"{d}/data"],
                                     "http://127.0.0.1:18091", {"HFS_BASE_URL": "http://127.0.0.1:18091"})
    with open(f"{OUT}/results.json", "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"Patients generated: {N} (carebundle --profile mixed --seed {SEED})", "",
             "| import | resources | seconds | resources/s |", "|---|---:|---:|---:|"]
    for k, v in results["import"].items():
        lines.append(f"| {k} | {v['resources']} | {v['seconds']:.2f} | {v['rate']} |")
    lines += ["", "| server | HTTP transactions resources/s | reads/s (32 clients) | read p50 ms | read p99 ms |", "|---|---:|---:|---:|---:|"]
    for key in ("salus", "peer"):
        if key in results:
            r = results[key]
            lines.append(f"| {r['server']} | {r['transactions']['resources_per_s']} | {r['reads']['rps']} | {r['reads']['p50_ms']:.2f} | {r['reads']['p99_ms']:.2f} |")
    if "peer" in results:
        s, p = results["salus"], results["peer"]
        lines += ["", "Ratios salus / peer: transactions "
                  f"{s['transactions']['resources_per_s'] / max(p['transactions']['resources_per_s'], 1):.2f}x, reads/s "
                  f"{s['reads']['rps'] / max(p['reads']['rps'], 1):.2f}x, p99 latency "
                  f"{p['reads']['p99_ms'] / max(s['reads']['p99_ms'], 1e-9):.2f}x lower"]
    text = "\n".join(lines) + "\n"
    with open(f"{OUT}/results.md", "w") as f:
        f.write(text)
    print(text)
    for key in ("salus", "peer"):
        if key in results and results[key]["transactions"]["errors"]:
            print(f"WARNING: {key} rejected {results[key]['transactions']['errors']} bundles: {results[key]['transactions']['first_error']}")


if __name__ == "__main__":
    main()
