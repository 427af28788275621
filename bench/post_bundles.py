#!/usr/bin/env python3
"""POST every transaction Bundle in a folder to a FHIR server's base URL with N
concurrent keep-alive clients; print resources/s as JSON. Part of scripts/bench."""
import http.client, json, os, sys, threading, time, urllib.parse

def main():
    base, folder, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    url = urllib.parse.urlparse(base)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".json"))
    bodies = []
    total = 0
    for f in files:
        data = open(f, "rb").read()
        total += len(json.loads(data).get("entry", []))
        bodies.append(data)
    lock = threading.Lock()
    queue = list(reversed(bodies))
    errors = []

    def worker():
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        while True:
            with lock:
                if not queue:
                    return
                body = queue.pop()
            conn.request("POST", url.path.rstrip("/") + "/", body=body,
                         headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"})
            resp = conn.getresponse()
            text = resp.read()
            if resp.status >= 300:
                with lock:
                    errors.append((resp.status, text[:300]))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    print(json.dumps({"bundles": len(bodies), "resources": total, "seconds": round(elapsed, 3),
                      "resources_per_s": round(total / elapsed), "errors": len(errors),
                      "first_error": errors[0][1].decode("utf-8", "replace") if errors else None}))

if __name__ == "__main__":
    main()
