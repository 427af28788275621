"""Encryption at rest, side by side: `salus import` into a fresh data dir without and
with [encryption], alternating, then the medians and their ratio (see
scripts/bench-encryption and docs/benchmarks.md)."""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def resources(folder):
    n = 0
    for name in sorted(os.listdir(folder)):
        if name.endswith(".ndjson"):
            with open(os.path.join(folder, name), "rb") as f:
                n += sum(1 for line in f if line.strip())
    return n


def family_names(folder):
    names = set()
    for name in sorted(os.listdir(folder)):
        if name.startswith("Patient") and name.endswith(".ndjson"):
            with open(os.path.join(folder, name)) as f:
                for line in f:
                    if line.strip():
                        for n in json.loads(line).get("name", []):
                            if len(n.get("family", "")) >= 5:
                                names.add(n["family"])
    return names


def files_holding(folder, needles):
    found = set()
    for name in os.listdir(folder):
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                data = f.read()
            found |= {n for n in needles if n.encode() in data}
    return found


def pg_database(url, name):
    """A fresh database `name` beside the one `url` names; its URL."""
    for sql in (f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"'):
        subprocess.run(["psql", url, "-q", "-c", sql], check=True, stdout=subprocess.DEVNULL)
    return url.rsplit("/", 1)[0] + "/" + name


def drop_database(url, name):
    subprocess.run(["psql", url, "-q", "-c", f'DROP DATABASE IF EXISTS "{name}"'],
                   stdout=subprocess.DEVNULL)


def main():
    binary, data, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pg = os.environ.get("SALUS_BENCH_POSTGRES")
    work = tempfile.mkdtemp(prefix="salus-bench-enc-")
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") and os.cpu_count() > 1 else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    try:
        kek = os.path.join(work, "kek")
        subprocess.run([binary, "keys", "init", "--out", kek], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        total = resources(data)
        times = {"plain": [], "encrypted": []}
        for i in range(runs):
            for mode in ("plain", "encrypted"):
                d = os.path.join(work, f"data-{mode}")
                shutil.rmtree(d, ignore_errors=True)
                args = [binary, "import", "--quiet", "--data-dir", d, data]
                if mode == "encrypted":
                    args += ["--encryption-key-file", kek]
                start = time.monotonic()
                subprocess.run(pin + args, check=True, env=env, stdout=subprocess.DEVNULL)
                secs = time.monotonic() - start
                times[mode].append(secs)
                print(f"run {i + 1} {mode:9}: {secs:6.2f} s  {total / secs:8.0f} resources/s")
        if pg:
            # PostgreSQL: the same `salus import` (transactions; batches of puts go in
            # by binary COPY), bodies sealed in the application
            times["pg plain"], times["pg encrypted"] = [], []
            for i in range(runs):
                for mode in ("pg plain", "pg encrypted"):
                    name = "salus_bench_enc_" + mode.split()[1]
                    url = pg_database(pg, name)
                    d = os.path.join(work, "data-pg")
                    shutil.rmtree(d, ignore_errors=True)
                    args = [binary, "import", "--quiet", "--data-dir", d,
                            "--database", url, data]
                    if mode == "pg encrypted":
                        args += ["--encryption-key-file", kek]
                    start = time.monotonic()
                    subprocess.run(pin + args, check=True, env=env, stdout=subprocess.DEVNULL)
                    secs = time.monotonic() - start
                    times[mode].append(secs)
                    print(f"run {i + 1} {mode:12}: {secs:6.2f} s  {total / secs:8.0f} resources/s")
            for mode in ("plain", "encrypted"):
                drop_database(pg, "salus_bench_enc_" + mode)
        names = family_names(data)
        leaked = files_holding(os.path.join(work, "data-encrypted"), names)
        in_plain = files_holding(os.path.join(work, "data-plain"), names)
        plain = statistics.median(times["plain"])
        enc = statistics.median(times["encrypted"])
        print(f"\n{total} resources, {runs} runs each, medians:")
        print(f"  plain     {plain:6.2f} s  {total / plain:8.0f} resources/s")
        print(f"  encrypted {enc:6.2f} s  {total / enc:8.0f} resources/s")
        print(f"  encrypted / plain time: {enc / plain:.3f}")
        if pg:
            pp = statistics.median(times["pg plain"])
            pe = statistics.median(times["pg encrypted"])
            print(f"  PostgreSQL plain     {pp:6.2f} s  {total / pp:8.0f} resources/s")
            print(f"  PostgreSQL encrypted {pe:6.2f} s  {total / pe:8.0f} resources/s")
            print(f"  PostgreSQL encrypted / plain time: {pe / pp:.3f}")
        print(f"  family names found in the files: plain {len(in_plain)}/{len(names)}, "
              f"encrypted {len(leaked)}/{len(names)}")
        if leaked:
            sys.exit(f"names found in the encrypted data dir: {sorted(leaked)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
