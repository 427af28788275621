"""PostgreSQL ingest side by side (scripts/bench-postgres, docs/benchmarks.md): `salus
import` of one folder into a fresh SQLite data dir, into a fresh PostgreSQL database with
binary COPY for batches of puts (`storage.bulk_copy = true`, the default) and without it
(row-by-row batched inserts), alternating, RUNS times each; then `salus migrate` of the
SQLite store into a fresh database, and back into a fresh data dir. Prints every run, the
medians and the ratios."""

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
                n += sum(1 for line in f if line.strip() and b'"resourceType"' in line)
    return n


def pg_database(url, name):
    for sql in (f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"'):
        subprocess.run(["psql", url, "-q", "-c", sql], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return url.rsplit("/", 1)[0] + "/" + name


def drop_database(url, name):
    subprocess.run(["psql", url, "-q", "-c", f'DROP DATABASE IF EXISTS "{name}"'],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def timed(args, env):
    start = time.monotonic()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main():
    binary, data, runs, pg = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    work = tempfile.mkdtemp(prefix="salus-bench-pg-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SALUS_")}
    env["RUST_LOG"] = "warn"
    total = resources(data)
    configs = {}
    for name, copy in (("copy", "true"), ("rows", "false")):
        configs[name] = os.path.join(work, f"{name}.toml")
        with open(configs[name], "w") as f:
            f.write(f"[storage]\nbulk_copy = {copy}\n")
    times = {"sqlite": [], "pg copy": [], "pg rows": []}
    try:
        for i in range(runs):
            for mode in times:
                d = os.path.join(work, "data")
                shutil.rmtree(d, ignore_errors=True)
                args = [binary, "import", "--quiet", "--data-dir", d]
                if mode != "sqlite":
                    kind = mode.split()[1]
                    args += ["--config", configs[kind],
                             "--database", pg_database(pg, "salus_bench_pg_" + kind)]
                secs = timed(args + [data], env)
                times[mode].append(secs)
                print(f"run {i + 1} {mode:8}: {secs:6.2f} s  {total / secs:8.0f} resources/s",
                      flush=True)
        # migrate: the last SQLite import (every version) → PostgreSQL → a new data dir
        src = os.path.join(work, "src")
        shutil.rmtree(src, ignore_errors=True)
        timed([binary, "import", "--quiet", "--data-dir", src, data], env)
        to_pg = pg_database(pg, "salus_bench_pg_migrate")
        m1 = timed([binary, "migrate", "--quiet", "--data-dir", os.path.join(work, "m1"),
                    "--from", f"sqlite:{src}", "--to", to_pg], env)
        m2 = timed([binary, "migrate", "--quiet", "--data-dir", os.path.join(work, "m2"),
                    "--from", to_pg, "--to", f"sqlite:{os.path.join(work, 'back')}"], env)
        med = {m: statistics.median(t) for m, t in times.items()}
        print(f"\n{total} resources, {runs} runs each, medians:")
        for m, t in med.items():
            print(f"  {m:8} {t:6.2f} s  {total / t:8.0f} resources/s")
        print(f"  PostgreSQL (COPY) / SQLite time: {med['pg copy'] / med['sqlite']:.3f}")
        print(f"  PostgreSQL row inserts / COPY time: {med['pg rows'] / med['pg copy']:.3f}")
        print(f"  migrate SQLite → PostgreSQL: {m1:.2f} s  {total / m1:.0f} versions/s (incl. verify)")
        print(f"  migrate PostgreSQL → SQLite: {m2:.2f} s  {total / m2:.0f} versions/s (incl. verify)")
    finally:
        for n in ("copy", "rows", "migrate"):
            drop_database(pg, "salus_bench_pg_" + n)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
