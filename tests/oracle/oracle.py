#!/usr/bin/env python3
"""Independent search oracle for Salus.

Usage: python oracle.py BASE_URL DATA_DIR [SEARCHPARAMS_TXT]

For a few hundred generated queries, the ids a running server returns must equal
the ids found here, independently of the server: each SearchParameter's FHIRPath
expression is evaluated with `fhirpathpy` (PyPI) over every resource of the type,
and the R4 matching rules of https://hl7.org/fhir/R4/search.html are applied:

  token     (#token)     code alone matches Coding.code, Identifier.value,
                         ContactPoint.value and code/string/boolean primitives;
                         system|code and system| match Coding and Identifier.
  string    (#string)    prefix match after case and accent normalisation over
                         strings, HumanName and Address parts; :exact, :contains.
  reference (#reference) Type/id and bare id against Reference.reference.
  date      (#date, #prefix) ranges: each value covers its whole precision, a
                         Period covers [start, end]; the prefixes compare ranges.
  number, quantity (#number, #quantity) eq uses the implicit precision of the
                         search value; gt/lt/ge/le compare exactly; |system|code.
  combining (#combining, #escaping) a,b is an OR, a repeated parameter an AND;
                         commas, $, | and backslashes in values are escaped.

The data is the NDJSON in DATA_DIR (already loaded into the server by the caller)
plus a few hundred seeded resources this script generates and PUTs itself
(Observations with quantities and components, RiskAssessments with
probabilities, Patients with accented names), so quantity/number search and
accent folding are covered. Queries whose expected result depends on a reading
of the spec that is not clear-cut are not generated (a matcher answers None).
Exit status 1 when any query disagrees.
"""
import json
import os
import random
import re
import sys
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from fhirpathpy import compile as fp_compile
from fhirpathpy.models import models

SEED = int(os.environ.get("ORACLE_SEED", "20240806"))  # another seed explores other queries
QUERIES = {"token": 3, "string": 3, "reference": 3, "date": 6, "quantity": 25, "number": 25}
PARAM_TYPES = set(QUERIES)
UTC = timezone.utc
NEVER, FOREVER = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)
UCUM = "http://unitsofmeasure.org"


# ---------------------------------------------------------------- data -------
def load_data(data_dir):
    """{type: {id: resource}} from every NDJSON file (log.ndjson has no resourceType)."""
    data = defaultdict(dict)
    for f in sorted(Path(data_dir).glob("*.ndjson")):
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line) if line.strip() else {}
            if "resourceType" in r and "id" in r:
                data[r["resourceType"]][r["id"]] = r
    return data


def generate(rng, data):
    """Seeded resources for what the sample lacks: quantities, numbers, accents."""
    ref = lambda t: f"{t}/{rng.choice(sorted(data[t]))}"  # noqa: E731
    names = [("Müller", "Renée", "Zürich"), ("Núñez", "José", "São Paulo"),
             ("Ångström", "Zoë", "Besançon"), ("Dvořák", "Antonín", "Brno"),
             ("Çelik", "Ayşe", "İzmir"), ("Mueller", "Rene", "Zurich")]
    out = [{"resourceType": "Patient", "id": f"oracle-pat-{i}", "gender": "other",
            "name": [{"family": family, "given": [given, "Élodie"]}], "birthDate": ["1980", "1975-06", "1990-02-03"][i % 3],
            "address": [{"line": [f"{i + 1} Rue Émile Zola"], "city": city}]} for i, (family, given, city) in enumerate(names)]
    patients = sorted(data["Patient"]) + [p["id"] for p in out]
    vitals = [("8867-4", "Heart rate", "/min", 50, 120), ("29463-7", "Body weight", "kg", 3, 120),
              ("8310-5", "Body temperature", "Cel", 35, 41), ("2708-6", "Oxygen saturation", "%", 85, 100),
              ("2339-0", "Glucose", "mg/dL", 60, 250)]
    words = ["Élevé", "Négatif", "normal", "Positive", "Über normal", "trace amounts", "Çok yüksek"]
    concepts = [("260385009", "Negative"), ("10828004", "Positive"), ("260415000", "Not detected")]

    def num(lo, hi, places=(0, 1, 2)):
        n = rng.choice(places)
        x = round(Decimal(rng.uniform(lo, hi)), n)
        return int(x) if n == 0 else float(x)

    def when():
        t = datetime(2010, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(12 * 365 * 86400))
        tz = timezone(timedelta(minutes=rng.choice([0, 120, -300, 330])))
        k = rng.randrange(6)
        if k == 5:
            return {"effectivePeriod": {"start": stamp(t, tz),
                                        "end": stamp(t + timedelta(hours=rng.randrange(1, 40)), tz)}}
        return {"effectiveDateTime": [stamp(t, tz), stamp(t, tz), t.strftime("%Y-%m-%d"),
                                      t.strftime("%Y-%m-%d"), t.strftime("%Y-%m")][k]}

    for i in range(240):
        o = {"resourceType": "Observation", "id": f"oracle-obs-{i}", "subject": {"reference": f"Patient/{rng.choice(patients)}"},
             "status": rng.choice(["final", "amended", "preliminary"]), **when(),
             "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                       "code": rng.choice(["vital-signs", "laboratory"])}]}],
             "identifier": [{"system": "urn:oracle:obs", "value": f"OBS-{i}"}]}
        if rng.random() < 0.5:
            o["encounter"] = {"reference": ref("Encounter")}
            o["performer"] = [{"reference": ref("Practitioner")}]
        k = rng.random()
        if k < 0.15:  # blood pressure: components only
            o["code"] = coding("http://loinc.org", "85354-9", "Blood pressure panel")
            o["component"] = [{"code": coding("http://loinc.org", c, t),
                               "valueQuantity": {"value": num(lo, hi), "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}
                              for c, t, lo, hi in [("8480-6", "Systolic", 90, 180), ("8462-4", "Diastolic", 50, 110)]]
        elif k < 0.75:
            c, text, unit, lo, hi = rng.choice(vitals)
            o["code"] = coding("http://loinc.org", c, text)
            o["valueQuantity"] = {"value": num(lo, hi), "unit": unit, "system": UCUM, "code": unit}
        elif k < 0.87:
            o["code"] = coding("http://loinc.org", "72514-3", "Pain severity")
            o["valueString"] = rng.choice(words)
        else:
            o["code"] = coding("http://loinc.org", "94500-6", "SARS-CoV-2 RNA")
            c, text = rng.choice(concepts)
            o["valueCodeableConcept"] = coding("http://snomed.info/sct", c, text)
        out.append(o)
    for i in range(80):
        out.append({"resourceType": "RiskAssessment", "id": f"oracle-risk-{i}", "status": "final",
                    "subject": {"reference": f"Patient/{rng.choice(patients)}"},
                    "occurrenceDateTime": stamp(datetime(2015, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(3000)), UTC),
                    "prediction": [{"outcome": {"text": "Heart attack"}, "probabilityDecimal": num(0, 1, (1, 2, 3)),
                                    "qualitativeRisk": coding("http://terminology.hl7.org/CodeSystem/risk-probability",
                                                              rng.choice(["low", "moderate", "high"]), None)}
                                   for _ in range(rng.randrange(1, 4))]})
    return json.loads(json.dumps(out))  # exactly what the server will be sent


def coding(system, code, text):
    c = {"coding": [{"system": system, "code": code}]}
    if text:
        c["coding"][0]["display"] = c["text"] = text
    return c


def stamp(t, tz):
    return t.astimezone(tz).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------- search parameters ---
def load_params(path, types):
    """[(type, code, kind, [(compiled part, required target type or None)])]; the expression
    is cut at its top-level unions and only the parts for the type are kept. fhirpathpy has
    no resolve(): `X.where(resolve() is T)` becomes X, keeping references to T only."""
    out, skipped = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith(("#", "+\t")):
            continue
        code, kind, bases, _url, expr, _targets = line.split("\t")
        if kind not in PARAM_TYPES or not expr or code.startswith("_") or code == "phonetic":
            continue  # phonetic matching is server-defined
        for base in bases.split(","):
            if base not in types:
                continue
            parts = [p for p in split_union(expr) if re.match(rf"\(?{base}\.", p)]
            try:
                fns = []
                for p in parts:
                    m = re.search(r"\.where\(resolve\(\) is (\w+)\)", p)
                    p = p.replace(m.group(0), "") if m else p
                    fns.append((fp_compile(p, models["r4"], {"returnRawData": True}), m and m.group(1)))
                out.append((base, code, kind, fns))
            except Exception as e:  # noqa: BLE001 - any failure of fhirpathpy skips the parameter
                skipped.append(f"{base}.{code}: {brief(e)}")
    return out, skipped


def brief(e):
    return re.sub(r"<[^>]* at 0x[0-9a-f]+>", "<node>", str(e))[:160]


def split_union(expr):
    parts, depth, cur, quoted = [], 0, "", False
    for ch in expr:
        quoted ^= ch == "'"
        if not quoted:
            depth += (ch == "(") - (ch == ")")
            if ch == "|" and depth == 0:
                parts, cur = parts + [cur.strip()], ""
                continue
        cur += ch
    return parts + [cur.strip()]


def extract(fns, resource):
    """Values of one parameter in one resource, as (value, FHIR type name or None)."""
    vals = []
    for fn, only in fns:
        for node in fn(resource):
            data, path = getattr(node, "data", node), getattr(node, "path", None)
            if data is None:
                continue
            if only and not (isinstance(data, dict) and str(data.get("reference", "")).startswith(f"{only}/")):
                continue
            vals.append((data, path))
    return vals


# ------------------------------------------------------------ matching -------
# Each matcher returns True, False, or None when the spec's answer is not clear-cut for
# that value; a query meeting None for a resource that matches no other way is dropped.
def norm(s):
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c)).lower()


def tokens(v, path):
    """(kind, system, code) atoms of a token value (#token: the table of data types)."""
    if isinstance(v, bool):
        return [("prim", None, str(v).lower())]
    if isinstance(v, str):
        return [("prim", None, v)]
    if not isinstance(v, dict):
        return []
    if "coding" in v or path == "CodeableConcept":
        return [("coding", c.get("system"), c.get("code")) for c in v.get("coding", [])]
    if path == "ContactPoint" or v.get("system") in ("phone", "fax", "email", "pager", "url", "sms", "other"):
        return [("contact", None, v.get("value"))]
    if "value" in v:
        return [("ident", v.get("system"), v.get("value"))]
    return [("coding", v.get("system"), v.get("code"))]


def match_token(q, v, path):
    system, code = q.split("|", 1) if "|" in q else (None, q)
    res = False
    for kind, s, c in tokens(v, path):
        if system is not None and kind in ("prim", "contact"):
            return None  # the implicit system of a primitive code is not clear-cut
        if (system is None or s == system) and (code == "" or c == code):
            return True
        if c and code and c.lower() == code.lower() and c != code:
            res = None  # case-insensitive code systems may fold case
    return res


def strings(v):
    """String values: the string itself, or HumanName / Address parts (#string)."""
    if isinstance(v, str):
        return [v]
    out = []
    for k in ("family", "given", "prefix", "suffix", "text", "line", "city", "district", "state", "postalCode", "country"):
        x = v.get(k) if isinstance(v, dict) else None
        out += x if isinstance(x, list) else [x] if isinstance(x, str) else []
    return out


def match_string(q, mod, v):
    for s in strings(v):
        if mod == "exact" and s == q or mod == "contains" and norm(q) in norm(s) or not mod and norm(s).startswith(norm(q)):
            return True
    return False


LITERAL = re.compile(r"^(?:https?://\S+/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/\S+)?$")


def match_reference(q, v):
    ref = v.get("reference") if isinstance(v, dict) else None
    m = LITERAL.match(ref or "")
    if not m:
        return False  # conditional (Type?identifier=..) and logical references match nothing
    rtype, rid = m.groups()
    hit = f"{rtype}/{rid}" == q if "/" in q else rid == q
    return None if hit and ref.startswith("http") else hit  # absolute URLs: base-dependent


def date_range(s):
    """[start, end) of a date/dateTime/instant at its own precision, in UTC (#date)."""
    m = re.match(r"^(\d{4})(?:-(\d\d)(?:-(\d\d)(?:T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?)?)?)?$", s)
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    if mo is None:
        return datetime(int(y), 1, 1, tzinfo=UTC), datetime(int(y) + 1, 1, 1, tzinfo=UTC)
    if d is None:
        start = datetime(int(y), int(mo), 1, tzinfo=UTC)
        return start, (start + timedelta(days=32)).replace(day=1)
    if hh is None:
        start = datetime(int(y), int(mo), int(d), tzinfo=UTC)
        return start, start + timedelta(days=1)
    start = datetime.fromisoformat(f"{y}-{mo}-{d}T{hh}:{mi}:{ss}{(frac or '')[:7]}{(tz or 'Z').replace('Z', '+00:00')}")
    digits = min(len(frac) - 1, 6) if frac else 0
    return start.astimezone(UTC), start.astimezone(UTC) + timedelta(microseconds=10 ** (6 - digits))


def value_range(v):
    if isinstance(v, str):
        return date_range(v)
    if isinstance(v, dict) and ("start" in v or "end" in v):  # Period (#date: missing = open)
        start, end = date_range(v.get("start", "")), date_range(v.get("end", ""))
        return start[0] if start else NEVER, end[1] if end else FOREVER
    return None


def match_date(prefix, search, v):
    """#prefix, with ranges: S = search range, T = target range, both half-open."""
    (s1, s2), t = search, value_range(v)
    if t is None:
        return False
    t1, t2 = t
    inside = s1 <= t1 and t2 <= s2
    if prefix in ("ge", "le"):
        # R4: "the range above (below) the search value intersects the target, or the
        # search range fully contains it". A target that straddles the search range's
        # lower (upper) edge fails that literal reading but matches the common one
        # (overlap with [S1, inf)): not clear-cut.
        strict = t2 > s2 or inside if prefix == "ge" else t1 < s1 or inside
        common = t2 > s1 if prefix == "ge" else t1 < s2
        return strict if strict == common else None
    return {"eq": inside, "gt": t2 > s2, "lt": t1 < s1, "sa": t1 >= s2, "eb": t2 <= s1}[prefix]


def dec(x):
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


def match_number(prefix, q, unit, v):
    """#number / #quantity: eq means [q - h, q + h) with h half the last digit of q; the other
    prefixes compare exactly. A target whose own precision straddles an edge is not clear-cut."""
    if isinstance(v, dict):
        if "value" not in v or unit and (v.get("system"), v.get("code")) != unit:
            return False
        v = v["value"]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    x, qd = dec(v), Decimal(q)
    if prefix != "eq":
        return {"gt": x > qd, "lt": x < qd, "ge": x >= qd, "le": x <= qd}[prefix]
    h = Decimal(5).scaleb(qd.as_tuple().exponent - 1)
    own = Decimal(5).scaleb(x.as_tuple().exponent - 1)
    if any(abs(x - edge) <= own for edge in (qd - h, qd + h)):
        return None
    return qd - h <= x < qd + h


# ----------------------------------------------------------- generation ------
def esc(s):
    """#escaping: a comma separates alternatives, $ and | are separators too."""
    return re.sub(r"([\\,$|])", r"\\\1", s)


def gen_query(rng, kind, values, data, targets_seen):
    """One (modifier, value text, matcher) for a parameter from its values in the data."""
    v, path = rng.choice(values)
    miss = rng.random() < 0.1  # some queries that should match nothing
    if kind == "token":
        atoms = [a for a in tokens(v, path) if a[2]]
        if not atoms:
            return None
        k, s, c = rng.choice(atoms)
        if miss:
            s, c, k = "urn:oracle:none", rng.choice(["no-such-code", c]), "coding"
        q = rng.choice([f"{s}|{c}", f"{s}|{c}", c, f"{s}|"]) if k in ("coding", "ident") and s else c
        text = f"{esc(q.split('|')[0])}|{esc(q.split('|', 1)[1])}" if "|" in q else esc(q)
        return None, text, lambda x, p: match_token(q, x, p)
    if kind == "string":
        parts = [s for s in strings(v) if s.strip()]
        if not parts:
            return None
        s = rng.choice(parts)
        mod = rng.choice([None, None, None, None, "exact", "contains"])
        if miss:
            mod, q = None, "Qzxv"
        elif mod == "exact":
            q = s
        else:
            a = rng.randrange(len(s)) if mod == "contains" else 0
            q = s[a:a + rng.randrange(1, len(s) - a + 1)]
            q = rng.choice([q, q.upper(), q.lower(), norm(q)]).strip()
        if not q:
            return None
        return mod, esc(q), lambda x, p: match_string(q, mod, x)
    if kind == "reference":
        m = LITERAL.match(str(v.get("reference", "")) if isinstance(v, dict) else "")
        if miss or not m:
            t = rng.choice(sorted(targets_seen) or ["Patient"])
            q = f"{t}/{rng.choice(sorted(data[t]))}" if data[t] else "Patient/no-such-id"
        else:
            q = rng.choice([f"{m[1]}/{m[2]}", f"{m[1]}/{m[2]}", m[2]])
        return None, q, lambda x, p: match_reference(q, x)
    if kind == "date":
        r = value_range(v)
        if r is None:
            return None
        edges = [x for x in r if NEVER < x < FOREVER]
        if not edges:
            return None
        t = rng.choice(edges) + timedelta(days=rng.choice([0, 0, 0, -1, 1]))
        fmt = rng.choice(["%Y-%m-%d", "%Y-%m-%d", "%Y-%m", "%Y", "%Y-%m-%dT%H:%M:%SZ", "offset"])
        if miss:
            text = "1850-01-01"
        elif fmt == "offset":
            text = stamp(t.replace(microsecond=0), timezone(timedelta(minutes=rng.choice([120, -300, 330]))))
        else:
            text = t.strftime(fmt)
        prefix = rng.choice(["eq", "eq", "ge", "le", "gt", "lt", "sa", "eb"])
        search = date_range(text)
        shown = "" if prefix == "eq" and rng.random() < 0.5 else prefix  # eq is the default
        return None, shown + text, lambda x, p: match_date(prefix, search, x)
    # number and quantity
    qty = v if isinstance(v, dict) else {"value": v}
    if not isinstance(qty.get("value"), (int, float)) or isinstance(qty.get("value"), bool):
        return None
    x = dec(qty["value"])
    q = str(rng.choice([x, x, round(x, 0), round(x, 1), x + Decimal("0.01"), x - Decimal(1)]))
    q = "-12345" if miss else q
    prefix = rng.choice(["eq", "eq", "gt", "lt", "ge", "le"])
    unit = (qty.get("system"), qty.get("code")) if kind == "quantity" and qty.get("code") and rng.random() < 0.5 else None
    shown = "" if prefix == "eq" and rng.random() < 0.5 else prefix  # eq is the default
    text = shown + q + (f"|{unit[0]}|{unit[1]}" if unit else "")
    return None, text, lambda y, p: match_number(prefix, q, unit, y)


def expected(matcher, table):
    """Ids whose values match, or None when some resource's answer is not clear-cut."""
    ids = set()
    for rid, vals in table.items():
        answers = [matcher(v, p) for v, p in vals]
        if True in answers:
            ids.add(rid)
        elif None in answers:
            return None
    return ids


# --------------------------------------------------------------- server ------
def search(base, rtype, qs):
    """Ids of the matches, following `next` links; (None, error) when the server refuses."""
    url = f"{base}/{rtype}?{qs}&_count=1000&_elements=id"
    ids = set()
    try:
        while url:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/fhir+json"}), timeout=120) as r:
                bundle = json.load(r)
            ids |= {e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"}
            url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    except urllib.error.HTTPError as e:
        return None, f"HTTP {e.code}: {e.read()[:300].decode('utf-8', 'replace')}"
    return ids, None


def upload(base, resources):
    body = {"resourceType": "Bundle", "type": "transaction",
            "entry": [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}} for r in resources]}
    req = urllib.request.Request(base, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/fhir+json"})
    try:
        urllib.request.urlopen(req, timeout=120).read()
    except urllib.error.HTTPError as e:
        sys.exit(f"oracle: uploading the generated resources failed: HTTP {e.code} {e.read()[:2000].decode()}")


# ----------------------------------------------------------------- main ------
def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__.split("\n\n")[1])
    base, data_dir = sys.argv[1].rstrip("/"), sys.argv[2]
    params_txt = sys.argv[3] if len(sys.argv) == 4 else Path(__file__).resolve().parents[2] / "crates/fhir/data/searchparams.txt"
    rng = random.Random(SEED)
    data = load_data(data_dir)
    generated = generate(rng, data)
    upload(base, generated)
    for r in generated:
        data[r["resourceType"]][r["id"]] = r
    params, skipped = load_params(params_txt, data)

    # Evaluate every expression once per resource; queries are answered from these tables.
    tables, targets = {}, defaultdict(set)
    for rtype, code, kind, fns in params:
        try:
            table = {rid: extract(fns, r) for rid, r in data[rtype].items()}
        except Exception as e:  # noqa: BLE001 - fhirpathpy cannot evaluate it: skip the parameter
            skipped.append(f"{rtype}.{code}: {brief(e)}")
            continue
        if any(table.values()):
            tables[(rtype, code, kind)] = table
        for vals in table.values():
            for v, _ in vals:
                m = LITERAL.match(v.get("reference", "")) if isinstance(v, dict) and isinstance(v.get("reference"), str) else None
                if m and m[1] in data:
                    targets[(rtype, code)].add(m[1])

    queries, seen, dropped = [], set(), 0
    for (rtype, code, kind), table in sorted(tables.items()):
        values = sorted((v for vals in table.values() for v in vals), key=lambda vp: json.dumps(vp[0], sort_keys=True, default=str))
        made = 0
        for _ in range(QUERIES[kind] * 6):
            if made == QUERIES[kind]:
                break
            pair = [gen_query(rng, kind, values, data, targets[(rtype, code)]) for _ in range(2)]
            exps = [expected(g[2], table) if g else None for g in pair]
            if exps[0] is None:
                dropped += pair[0] is not None
                continue  # not clear-cut under the spec: do not ask
            name = lambda g: code + (f":{g[0]}" if g[0] else "")  # noqa: E731
            roll = rng.random()
            if roll < 0.15 and exps[1] is not None and pair[0][0] == pair[1][0]:
                # #combining: a comma-separated list is an OR of the values
                clauses, exp = [(name(pair[0]), f"{pair[0][1]},{pair[1][1]}")], exps[0] | exps[1]
            elif roll < 0.25 and exps[1] is not None:
                # the same parameter repeated is an AND
                clauses, exp = [(name(g), g[1]) for g in pair], exps[0] & exps[1]
            else:
                clauses, exp = [(name(pair[0]), pair[0][1])], exps[0]
            shown = "&".join(f"{k}={v}" for k, v in clauses)
            if (rtype, shown) in seen:
                continue
            seen.add((rtype, shown))
            qs = "&".join(f"{k}={urllib.parse.quote(v, safe='')}" for k, v in clauses)
            queries.append((rtype, kind, shown, qs, exp))
            made += 1

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda q: search(base, q[0], q[3]), queries))
    by_kind = Counter((q[1], bool(q[4])) for q in queries)
    bad = [(rtype, shown, exp, *r) for (rtype, _, shown, _, exp), r in zip(queries, results) if r[0] != exp]
    for kind in sorted(QUERIES):
        print(f"oracle: {kind}: {by_kind[kind, True]} queries with matches, {by_kind[kind, False]} with none")
    print(f"oracle: {dropped} generated queries dropped as not clear-cut under the spec")
    for s in skipped:
        print(f"oracle: skipped parameter {s}")
    for rtype, shown, exp, got, err in bad:
        print(f"DISAGREE {rtype}?{shown}")
        if err:
            print(f"    server refused: {err}")
            continue
        print(f"    expected {len(exp)}, server {len(got)}")
        print(f"    expected only: {sorted(exp - got)[:5]}")
        print(f"    server only:   {sorted(got - exp)[:5]}")
    print(f"oracle: {len(queries)} queries, {len(queries) - len(bad)} agree, {len(bad)} disagree, {len(skipped)} skipped-params")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
