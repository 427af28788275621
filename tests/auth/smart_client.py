#!/usr/bin/env python3
"""End-to-end check of the built-in authorization server with an independent OAuth client
library (Authlib): authorization code + PKCE through the login and consent forms, refresh with
rotation, revocation, introspection, and SMART Backend Services with an RS384 client assertion.

    python3 -m venv .venv-auth && .venv-auth/bin/pip install authlib requests
    cargo build -p salus-auth --example auth_demo
    .venv-auth/bin/python tests/auth/smart_client.py target/debug/examples/auth_demo
"""
import json, re, subprocess, sys, tempfile, time, os, socket

import requests
from authlib.integrations.requests_client import OAuth2Session
import warnings
warnings.simplefilter("ignore")
from authlib.jose import JsonWebKey, jwt
from authlib.oauth2.rfc7523 import PrivateKeyJWT


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def hidden(html, name):
    m = re.search(r'name="%s" value="([^"]*)"' % name, html)
    assert m, "no %s in page" % name
    return m.group(1)


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)
    print("ok  ", what)


def main():
    binary = sys.argv[1]
    tmp = tempfile.mkdtemp()
    # Authlib 1.9's PrivateKeyJWT signs with RSA keys only: RS384, as SMART Backend Services allows.
    backend_key = JsonWebKey.generate_key("RSA", 2048, is_private=True)
    public_jwk = backend_key.as_dict(is_private=False)
    public_jwk["kid"] = "backend-1"
    with open(os.path.join(tmp, "jwks.json"), "w") as f:
        json.dump({"keys": [public_jwk]}, f)
    port = free_port()
    proc = subprocess.Popen([binary, os.path.join(tmp, "data"), str(port), os.path.join(tmp, "jwks.json")], stdout=subprocess.PIPE, text=True)
    try:
        env = json.loads(proc.stdout.readline())
        base = env["base"]
        for _ in range(100):
            try:
                conf = requests.get(base + "/.well-known/smart-configuration").json()
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        check("S256" in conf["code_challenge_methods_supported"], "smart-configuration advertises PKCE S256")
        run_user_flow(env, conf)
        run_backend(env, conf, backend_key)
        print("all checks passed")
    finally:
        proc.terminate()


def browser_login(env, auth_url, user, password):
    """What a user's browser does: the login form, then approve every scope."""
    browser = requests.Session()
    r = browser.get(auth_url, allow_redirects=False)
    check(r.status_code == 200 and r.headers.get("X-Frame-Options") == "DENY", "login page served, framing denied")
    form = {"request_id": hidden(r.text, "request_id"), "csrf": hidden(r.text, "csrf")}
    r = browser.post(env["base"] + "/auth/login", data=dict(form, username=user, password=password), allow_redirects=False)
    check(r.status_code == 200 and "Allow access" in r.text, "login accepted, consent page shown")
    scopes = re.findall(r'name="scope" value="([^"]*)"', r.text)
    r = browser.post(env["base"] + "/auth/consent", data=list(form.items()) + [("decision", "approve")] + [("scope", s) for s in scopes], allow_redirects=False)
    check(r.status_code in (302, 303), "consent redirects back to the app")
    return r.headers["Location"]


def run_user_flow(env, conf):
    scope = "openid fhirUser launch/patient patient/*.rs offline_access"
    app = OAuth2Session(env["public_client_id"], redirect_uri=env["redirect_uri"], scope=scope, code_challenge_method="S256", token_endpoint_auth_method="none")
    verifier = "v" * 20 + os.urandom(24).hex()
    url, state = app.create_authorization_url(conf["authorization_endpoint"], code_verifier=verifier, aud=env["base"])
    location = browser_login(env, url, "alice", env["users"]["alice"])
    token = app.fetch_token(conf["token_endpoint"], authorization_response=location, code_verifier=verifier)
    check(token["token_type"].lower() == "bearer" and token["patient"] == "p1", "code exchanged: Bearer token with patient context")
    jwks = JsonWebKey.import_key_set(requests.get(conf["jwks_uri"]).json())
    claims = jwt.decode(token["access_token"], jwks)
    claims.validate()
    check(claims["aud"] == env["base"] and claims["fhirUser"] == "Patient/p1", "access token verifies with the published JWKS")
    id_claims = jwt.decode(token["id_token"], jwks)
    check(id_claims["aud"] == env["public_client_id"] and id_claims["fhirUser"] == "Patient/p1", "id_token for the client with fhirUser")

    old_refresh = token["refresh_token"]
    new = app.refresh_token(conf["token_endpoint"], refresh_token=old_refresh)
    check(new["refresh_token"] != old_refresh, "refresh rotates the refresh token")
    r = requests.post(conf["token_endpoint"], data={"grant_type": "refresh_token", "refresh_token": old_refresh, "client_id": env["public_client_id"]})
    check(r.status_code == 400 and r.json()["error"] == "invalid_grant", "the spent refresh token is refused")

    rs = OAuth2Session(env["confidential_client_id"], env["confidential_client_secret"], token_endpoint_auth_method="client_secret_basic")
    info = rs.introspect_token(conf["introspection_endpoint"], token=new["access_token"]).json()
    check(info["active"] and info["patient"] == "p1", "introspection (client_secret_basic): active")
    app.revoke_token(conf["revocation_endpoint"], token=new["access_token"])
    info = rs.introspect_token(conf["introspection_endpoint"], token=new["access_token"]).json()
    check(info == {"active": False}, "after revocation: active=false")

    # A confidential client through the same flow, with client_secret_post.
    conf_app = OAuth2Session(env["confidential_client_id"], env["confidential_client_secret"], redirect_uri=env["redirect_uri"], scope="openid user/*.rs", token_endpoint_auth_method="client_secret_post")
    url, _ = conf_app.create_authorization_url(conf["authorization_endpoint"], aud=env["base"])
    location = browser_login(env, url, "drbob", env["users"]["drbob"])
    token = conf_app.fetch_token(conf["token_endpoint"], authorization_response=location)
    check(token["scope"] == "openid user/*.rs" and "refresh_token" not in token, "confidential client (client_secret_post) gets its token")


def run_backend(env, conf, key):
    def session():
        auth = PrivateKeyJWT(conf["token_endpoint"], alg="RS384", headers={"kid": "backend-1"}, claims={"exp": int(time.time()) + 240})
        s = OAuth2Session(env["backend_client_id"], key.as_dict(is_private=True), scope="system/Patient.rs system/Observation.rs", token_endpoint_auth_method=auth)
        return s
    s = session()
    token = s.fetch_token(conf["token_endpoint"], grant_type="client_credentials")
    check(token["scope"] == "system/Patient.rs system/Observation.rs", "backend services: client_credentials with an RS384 assertion")
    # The same assertion replayed (same jti) is refused.
    auth = PrivateKeyJWT(conf["token_endpoint"], alg="RS384", headers={"kid": "backend-1"}, claims={"exp": int(time.time()) + 240, "jti": "fixed-jti"})
    for expected in (200, 401):
        s2 = OAuth2Session(env["backend_client_id"], key.as_dict(is_private=True), scope="system/Patient.rs", token_endpoint_auth_method=auth)
        try:
            s2.fetch_token(conf["token_endpoint"], grant_type="client_credentials")
            got = 200
        except Exception as e:
            got = 401 if "invalid_client" in str(e) else str(e)
        check(got == expected, "assertion with a fixed jti: %d" % expected)


if __name__ == "__main__":
    main()
