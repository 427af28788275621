#!/usr/bin/env python3
"""A SMART on FHIR patient app against a real `salus serve --auth`, written with
independent client libraries: Authlib (OAuth 2.0 authorization code + PKCE, refresh,
revocation) and fhirpy (FHIR REST).

    app_flow.py BASE CLIENT_ID USERNAME PASSWORD OWN_PATIENT OTHER_PATIENT

Run by crates/salus/tests/smart.rs, which sets up the server, client and user. Every
check prints "ok ..."; the first failure exits non-zero with "FAIL ...".
"""
import re
import sys

import requests
from authlib.integrations.requests_client import OAuth2Session
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ForbiddenError


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)
    print("ok  ", what, flush=True)


def hidden(html, name):
    m = re.search(r'name="%s" value="([^"]*)"' % name, html)
    check(m is not None, "page holds the %s field" % name)
    return m.group(1)


def sign_in(base, auth_url, user, password):
    """What the user's browser does: open the login page, sign in, approve the scopes."""
    browser = requests.Session()
    r = browser.get(auth_url, allow_redirects=False)
    check(r.status_code == 200, "authorization endpoint shows the login page")
    form = {"request_id": hidden(r.text, "request_id"), "csrf": hidden(r.text, "csrf")}
    r = browser.post(base + "/auth/login", data=dict(form, username=user, password=password), allow_redirects=False)
    check(r.status_code == 200, "login accepted, consent page shown")
    scopes = re.findall(r'name="scope" value="([^"]*)"', r.text)
    r = browser.post(
        base + "/auth/consent",
        data=list(form.items()) + [("decision", "approve")] + [("scope", s) for s in scopes],
        allow_redirects=False,
    )
    check(r.status_code in (302, 303), "consent redirects back to the app")
    return r.headers["Location"]


def fhir(base, token):
    return SyncFHIRClient(base, authorization="Bearer " + token)


def main():
    base, client_id, user, password, own, other = sys.argv[1:7]
    # Discovery: SMART configuration and the CapabilityStatement's oauth-uris.
    conf = requests.get(base + "/.well-known/smart-configuration").json()
    check("S256" in conf["code_challenge_methods_supported"], "smart-configuration advertises PKCE S256")
    meta = requests.get(base + "/metadata").json()
    sec = meta["rest"][0]["security"]
    uris = {e["url"]: e["valueUri"] for e in sec["extension"][0]["extension"]}
    check(uris["authorize"] == conf["authorization_endpoint"] and uris["token"] == conf["token_endpoint"],
          "/metadata names the same authorize and token endpoints")
    # Without a token the FHIR API refuses.
    r = requests.get(base + "/Patient/" + own)
    check(r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome", "no token: 401 OperationOutcome")

    # Standalone launch with PKCE.
    redirect = "http://127.0.0.1:9/callback"
    scope = "launch/patient openid fhirUser patient/*.rs offline_access"
    app = OAuth2Session(client_id, redirect_uri=redirect, scope=scope, code_challenge_method="S256",
                        token_endpoint_auth_method="none")
    verifier = "pkce-" + "x" * 60
    url, _state = app.create_authorization_url(conf["authorization_endpoint"], code_verifier=verifier, aud=base)
    location = sign_in(base, url, user, password)
    token = app.fetch_token(conf["token_endpoint"], authorization_response=location, code_verifier=verifier)
    check(token["patient"] == own, "token response carries the patient in context")
    check("refresh_token" in token, "offline_access gives a refresh token")

    # The patient's own record, through fhirpy.
    client = fhir(base, token["access_token"])
    me = client.reference("Patient", own).to_resource()
    check(me["id"] == own, "reads its own Patient")
    obs = client.resources("Observation").fetch_all()
    check(len(obs) > 0 and all(o["subject"]["reference"] == "Patient/" + own for o in obs),
          "searches only its own Observations (%d)" % len(obs))
    try:
        client.reference("Patient", other).to_resource()
        check(False, "another patient's record must be refused")
    except ForbiddenError:
        check(True, "another patient's record is refused (403)")
    r = requests.get(base + "/Observation?subject=Patient/" + other, headers={"Authorization": "Bearer " + token["access_token"]})
    check(r.status_code == 200 and not r.json().get("entry"), "searching the other patient's Observations finds nothing")

    # Refresh: a new access token that works; the old refresh token is spent.
    old_refresh = token["refresh_token"]
    new = app.refresh_token(conf["token_endpoint"], refresh_token=old_refresh)
    check(new["access_token"] != token["access_token"] and new["refresh_token"] != old_refresh, "refresh rotates both tokens")
    check(fhir(base, new["access_token"]).reference("Patient", own).to_resource()["id"] == own, "the refreshed token reads FHIR")
    r = requests.post(conf["token_endpoint"], data={"grant_type": "refresh_token", "refresh_token": old_refresh, "client_id": client_id})
    check(r.status_code == 400, "the spent refresh token is refused")

    # Revocation ends the access token at the FHIR API too.
    app.revoke_token(conf["revocation_endpoint"], token=new["access_token"])
    r = requests.get(base + "/Patient/" + own, headers={"Authorization": "Bearer " + new["access_token"]})
    check(r.status_code == 401, "a revoked token gets 401")
    print("all checks passed")


if __name__ == "__main__":
    main()
