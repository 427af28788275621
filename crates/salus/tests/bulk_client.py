"""An independent Bulk Data client (FHIR Bulk Data Access IG 2.0, export.html), written
against the IG with `requests` only, run by crates/salus/tests/bulk.rs against a real
`salus serve`.

    python bulk_client.py BASE_URL GROUP_ID EXPECTED_JSON

EXPECTED_JSON maps resource types to the number of resources a system-level export must
return. Prints one line per check; exits non-zero on the first failure.
"""

import json
import sys
import time

import requests

KICK_OFF = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        sys.exit(1)


def is_outcome(resp):
    try:
        body = resp.json()
    except ValueError:
        return False
    return body.get("resourceType") == "OperationOutcome" and len(body.get("issue", [])) > 0


def kick_off(url, **kw):
    r = requests.get(url, headers=KICK_OFF, **kw)
    check(r.status_code == 202, f"kick-off {url} answers 202 (got {r.status_code}: {r.text[:200]})")
    loc = r.headers.get("Content-Location")
    check(bool(loc), "kick-off gives Content-Location")
    return loc


def poll(status_url, limit_s=120):
    """Poll honouring Retry-After (export.html#bulk-data-status-request)."""
    deadline = time.time() + limit_s
    while True:
        r = requests.get(status_url)
        if r.status_code == 200:
            check(r.headers.get("Content-Type", "").startswith("application/json"),
                  "the complete status is application/json")
            return r.json()
        check(r.status_code == 202, f"in-progress status is 202 (got {r.status_code}: {r.text[:200]})")
        check("X-Progress" in r.headers or "x-progress" in r.headers, "in-progress status has X-Progress")
        retry = r.headers.get("Retry-After")
        check(retry is not None, "in-progress status has Retry-After")
        check(time.time() < deadline, "the export finishes")
        time.sleep(min(float(retry), 2.0))


def download(manifest):
    counts = {}
    for out in manifest["output"]:
        r = requests.get(out["url"], headers={"Accept": "application/fhir+ndjson"}, stream=True)
        check(r.status_code == 200, f"download {out['url']}")
        check(r.headers.get("Content-Type") == "application/fhir+ndjson", "NDJSON content type")
        n = 0
        for line in r.iter_lines():
            if not line:
                continue
            res = json.loads(line)
            check(res["resourceType"] == out["type"], f"a {out['type']} line is a {out['type']}")
            n += 1
        check(n == out["count"], f"{out['url']} holds count={out['count']} resources")
        counts[out["type"]] = counts.get(out["type"], 0) + n
    return counts


def main():
    base, group, expected = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

    # Complete cycle: kick-off, poll, manifest, download.
    status = kick_off(f"{base}/$export")
    manifest = poll(status)
    for key in ("transactionTime", "request", "requiresAccessToken", "output", "error"):
        check(key in manifest, f"manifest has {key}")
    check(manifest["request"] == f"{base}/$export", "manifest.request is the kick-off URL")
    counts = download(manifest)
    check(counts == expected, f"system export counts {counts} == {expected}")

    # Group export: only the member's compartment.
    manifest = poll(kick_off(f"{base}/Group/{group}/$export", params={"_type": "Patient"}))
    counts = download(manifest)
    check(counts == {"Patient": 1}, f"group export has the one member ({counts})")

    # Errors are OperationOutcomes.
    r = requests.get(f"{base}/$export", headers={"Accept": "application/fhir+json"})
    check(r.status_code == 400 and is_outcome(r), "kick-off without Prefer: respond-async is 400")
    r = requests.get(f"{base}/$export", headers=KICK_OFF, params={"_type": "NotAType"})
    check(r.status_code == 400 and is_outcome(r), "unknown _type is 400")
    r = requests.get(f"{base}/Group/no-such-group/$export", headers=KICK_OFF)
    check(r.status_code == 404 and is_outcome(r), "unknown Group is 404")

    # Cancel (export.html#bulk-data-delete-request): 202, then the status URL is 404.
    status = kick_off(f"{base}/$export")
    r = requests.delete(status)
    check(r.status_code == 202, f"DELETE cancels with 202 (got {r.status_code})")
    r = requests.get(status)
    check(r.status_code == 404 and is_outcome(r), "a cancelled job's status is 404")
    print("bulk client: all checks passed")


if __name__ == "__main__":
    main()
