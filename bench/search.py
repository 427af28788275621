#!/usr/bin/env python3
"""Search benchmark (issue: search, performance): patient-scoped queries at 32 concurrent
clients over a server already loaded with generated patients. Usage:
    python3 bench/search.py http://127.0.0.1:18090 [seconds]
Each query template gets a fresh random patient per request (bench/query.lua)."""
import json, os, random, re, subprocess, sys, urllib.request

BASE = sys.argv[1]
SECONDS = sys.argv[2] if len(sys.argv) > 2 else "10"
OUT = "bench-out"

QUERIES = {
    "Observation?patient&code&date&_sort=-date":
        "/Observation?patient={id}&code=http://loinc.org|2160-0&date=ge2025-01-01&_sort=-date",
    "Condition?patient": "/Condition?patient={id}",
    "Encounter?date&_include=Encounter:patient":
        "/Encounter?date=2026-01-01&_include=Encounter:patient&subject={id}",
    "2-level chain Observation?encounter.subject:Patient._id":
        "/Observation?encounter.subject:Patient._id={id}&_count=20",
    "_has Patient?_has:Observation:patient:code":
        "/Patient?_id={id}&_has:Observation:patient:code=2160-0",
}


def get(url):
    req = urllib.request.Request(url, headers={"Accept": "application/fhir+json"})
    return json.load(urllib.request.urlopen(req, timeout=120))


def patient_ids():
    ids, url = [], f"{BASE}/Patient?_count=1000&_elements=id"
    while url and len(ids) < 20000:
        b = get(url)
        ids += [e["resource"]["id"] for e in b.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
        url = next((l["url"] for l in b.get("link", []) if l["relation"] == "next"), None)
    return ids


def run(name, template, ids):
    random.seed(7)
    paths = [template.format(id=random.choice(ids)) for _ in range(5000)]
    pf = f"{OUT}/search-paths.txt"
    with open(pf, "w") as f:
        f.write("\n".join(paths) + "\n")
    sample = get(BASE + paths[0])
    r = subprocess.run(["taskset", "-c", "0", "wrk", "-t2", "-c32", f"-d{SECONDS}s", "--latency",
                        "-s", "bench/read.lua", BASE], check=True, capture_output=True, text=True,
                       env={**os.environ, "PATHS_FILE": pf})
    def ms(s):
        v, unit = re.match(r"([\d.]+)(us|ms|s)", s).groups()
        return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", r.stdout, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    return {"query": name, "qps": round(rps), "p50_ms": ms(lat["50"]), "p99_ms": ms(lat["99"]),
            "non_2xx": int(errs.group(1)) if errs else 0, "sample_entries": len(sample.get("entry", []))}


def main():
    ids = patient_ids()
    print(f"{len(ids)} patients")
    rows = [run(n, t, ids) for n, t in QUERIES.items()]
    lines = ["| query | queries/s | p50 ms | p99 ms | entries (sample) | non-2xx |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['query']} | {r['qps']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['sample_entries']} | {r['non_2xx']} |")
    text = "\n".join(lines) + "\n"
    with open(f"{OUT}/search-results.md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
