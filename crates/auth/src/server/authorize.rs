//! `/auth/authorize` and the login and consent pages (RFC 6749 §4.1; SMART App Launch 2.x
//! app-launch.html#obtain-authorization-code).
//!
//! A valid request is kept server-side as a [`Pending`] sign-in, bound to a cookie set on
//! this browser and to a CSRF token carried by the forms; the login and consent posts must
//! show both.

use super::{AuthServer, Params, MAX_PENDING, PENDING_SECS};
use crate::html::{csp_origin, error_page, esc, page};
use crate::store::{ClientKind, CodeRecord, Grant, LaunchContext, User};
use crate::{admin, scope, secret};
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::Arc;

const COOKIE: &str = "salus_auth_session";

/// A sign-in in progress: a checked authorization request waiting for login and consent.
pub(crate) struct Pending {
    session: String,
    csrf: String,
    client_id: String,
    client_name: String,
    redirect_uri: String,
    state: String,
    scopes: Vec<String>,
    code_challenge: Option<String>,
    nonce: Option<String>,
    launch: Option<LaunchContext>,
    user: Option<User>,
    auth_time: i64,
    pub(crate) expires_at: i64,
}

fn redirect(status: StatusCode, location: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `uri` with `pairs` added to its query.
fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{}", q.finish())
}

/// An error sent back to a known-good redirect URI (RFC 6749 §4.1.2.1).
fn redirect_error(
    redirect_uri: &str,
    state: Option<&str>,
    error: &str,
    description: &str,
    status: StatusCode,
) -> Response {
    let mut pairs = vec![("error", error), ("error_description", description)];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    redirect(status, &with_query(redirect_uri, &pairs))
}

pub(crate) async fn authorize_get(
    State(s): State<Arc<AuthServer>>,
    RawQuery(q): RawQuery,
) -> Response {
    authorize(
        &s,
        Params::parse(q.unwrap_or_default().as_bytes()),
        StatusCode::FOUND,
    )
    .await
}

// SMART capability authorize-post: the same parameters, form-encoded.
pub(crate) async fn authorize_post(State(s): State<Arc<AuthServer>>, body: Bytes) -> Response {
    authorize(&s, Params::parse(&body), StatusCode::SEE_OTHER).await
}

async fn authorize(s: &AuthServer, p: Params, status: StatusCode) -> Response {
    s.purge_now_and_then().await;
    if let Some(n) = p.repeated(&["client_id", "redirect_uri"]) {
        return error_page(
            StatusCode::BAD_REQUEST,
            &format!("The parameter '{n}' is given more than once."),
        );
    }
    let Some(client_id) = p.get("client_id") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "The request does not name a client (client_id).",
        );
    };
    let client = match s.store.client(client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The client is not registered with this server.",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "auth store failure");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The authorization server is unavailable; try again later.",
            );
        }
    };
    let redirect_uri = match p.get("redirect_uri") {
        Some(u) if client.redirect_uris.iter().any(|r| r == u) => u.to_string(),
        Some(_) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "The redirect_uri is not registered for this client.",
            )
        }
        // SMART App Launch requires it (and then the token request must repeat it).
        None => return error_page(StatusCode::BAD_REQUEST, "The request has no redirect_uri."),
    };
    // From here on the redirect URI is known-good: errors go back to the app.
    let state = p.get("state");
    let fail = |error: &str, description: &str| {
        redirect_error(&redirect_uri, state, error, description, status)
    };
    if let Some(n) = p.repeated(&[
        "response_type",
        "scope",
        "state",
        "aud",
        "code_challenge",
        "code_challenge_method",
        "launch",
        "nonce",
    ]) {
        return fail(
            "invalid_request",
            &format!("the parameter '{n}' is given more than once"),
        );
    }
    if p.get("response_type") != Some("code") {
        return fail(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    let Some(state) = state else {
        return fail("invalid_request", "state is required");
    };
    // Bounds keep what a pending sign-in holds small (anyone can start one).
    if state.len() > 2048 {
        return fail("invalid_request", "state is too long");
    }
    if p.get("nonce").is_some_and(|n| n.len() > 512) {
        return fail("invalid_request", "nonce is too long");
    }
    if p.get("scope").is_some_and(|sc| sc.len() > 4096) {
        return fail("invalid_scope", "scope is too long");
    }
    // SMART App Launch 2.x: aud is the FHIR base URL the app wants to talk to.
    match p.get("aud") {
        None => return fail("invalid_request", "aud (the FHIR base URL) is required"),
        Some(a) if a.trim_end_matches('/') != s.audience => {
            return fail("invalid_request", "aud is not this server's FHIR base URL")
        }
        Some(_) => {}
    }
    let code_challenge = match (p.get("code_challenge"), p.get("code_challenge_method")) {
        (Some(c), Some("S256")) if secret::is_valid_pkce_verifier(c) => Some(c.to_string()),
        (Some(_), Some("S256")) => {
            return fail(
                "invalid_request",
                "code_challenge is not a valid S256 challenge",
            )
        }
        (Some(_), _) => return fail("invalid_request", "code_challenge_method must be S256"),
        (None, Some(_)) => {
            return fail(
                "invalid_request",
                "code_challenge_method without code_challenge",
            )
        }
        (None, None) => None,
    };
    if client.kind == ClientKind::Public && code_challenge.is_none() {
        return fail(
            "invalid_request",
            "PKCE (code_challenge with S256) is required for public clients",
        );
    }
    let launch = match p.get("launch") {
        None => None,
        Some(id) => match s.store.launch(id).await {
            Ok(Some(l)) if l.expires_at > s.now() => Some(l),
            Ok(_) => return fail("invalid_request", "the launch is unknown or has expired"),
            Err(e) => {
                tracing::error!(error = %e, "auth store failure");
                return fail(
                    "temporarily_unavailable",
                    "the authorization server is unavailable",
                );
            }
        },
    };
    let Some(requested) = p.get("scope") else {
        return fail("invalid_scope", "scope is required");
    };
    let mut scopes = scope::intersect(requested, &client.scope);
    if launch.is_none() {
        // `launch` asks for the EHR context; without a launch there is none to give.
        scopes.retain(|sc| sc.as_str() != "launch");
    }
    if scopes.is_empty() {
        return fail(
            "invalid_scope",
            "none of the requested scopes is allowed for this client",
        );
    }
    let now = s.now();
    let id = secret::random_token(24);
    let pending = Pending {
        session: secret::random_token(24),
        csrf: secret::random_token(24),
        client_id: client.client_id.clone(),
        client_name: client.name.clone(),
        redirect_uri,
        state: state.to_string(),
        scopes,
        code_challenge,
        nonce: p.get("nonce").map(str::to_string),
        launch,
        user: None,
        auth_time: 0,
        expires_at: now + PENDING_SECS,
    };
    let mut resp = login_page(&id, &pending, None, StatusCode::OK, s);
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={PENDING_SECS}{}",
        pending.session,
        if s.issuer.starts_with("https://") {
            "; Secure"
        } else {
            ""
        }
    );
    {
        let mut map = s.pending.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_PENDING {
            map.retain(|_, p| p.expires_at > now);
            if map.len() >= MAX_PENDING {
                return error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Too many sign-ins are in progress; try again later.",
                );
            }
        }
        map.insert(id, pending);
    }
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn hidden(request_id: &str, p: &Pending) -> String {
    format!(
        "<input type=\"hidden\" name=\"request_id\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(request_id),
        esc(&p.csrf)
    )
}

fn login_page(
    request_id: &str,
    p: &Pending,
    error: Option<&str>,
    status: StatusCode,
    s: &AuthServer,
) -> Response {
    let err = error
        .map(|e| format!("<p class=\"err\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1><p><strong>{}</strong> asks to connect to your health record.</p>{err}\
         <form method=\"post\" action=\"{}\">{}\
         <label>Username <input type=\"text\" name=\"username\" autocomplete=\"username\" required autofocus></label>\
         <label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Sign in</button></form>",
        esc(&p.client_name),
        esc(&s.url("/auth/login")),
        hidden(request_id, p),
    );
    page(status, "Sign in", &body, None)
}

/// What a scope lets the app do, for the consent page.
fn describe(scope: &str) -> String {
    match scope {
        "openid" => "Know who you are (sign-in)".into(),
        "fhirUser" => "Know your user record".into(),
        "profile" => "See your profile".into(),
        "launch" => "Use the context the EHR launched it in".into(),
        "launch/patient" => "Work with one patient's record".into(),
        "launch/encounter" => "Work with one encounter".into(),
        "offline_access" => "Stay connected when you are not using it".into(),
        "online_access" => "Stay connected while you are signed in".into(),
        s => match s.split_once('/') {
            Some((ctx, rest)) => {
                let whose = match ctx {
                    "patient" => "the patient's",
                    "user" => "your",
                    _ => "all",
                };
                let (res, perm) = rest.split_once('.').unwrap_or((rest, ""));
                let res = if res == "*" { "all data" } else { res };
                format!("Access {whose} {res} ({perm})")
            }
            None => s.to_string(),
        },
    }
}

fn needs_patient_pick(p: &Pending, user: &User) -> bool {
    p.scopes.iter().any(|s| s == "launch/patient")
        && p.launch.as_ref().and_then(|l| l.patient.as_ref()).is_none()
        && user.patient_id().is_none()
}

fn consent_page(
    request_id: &str,
    p: &Pending,
    user: &User,
    error: Option<&str>,
    s: &AuthServer,
) -> Response {
    let err = error
        .map(|e| format!("<p class=\"err\">{}</p>", esc(e)))
        .unwrap_or_default();
    let mut items = String::new();
    for sc in &p.scopes {
        items.push_str(&format!(
            "<label><input type=\"checkbox\" name=\"scope\" value=\"{}\" checked> {} <span class=\"muted\">{}</span></label>",
            esc(sc),
            esc(&describe(sc)),
            esc(sc)
        ));
    }
    let patient = if needs_patient_pick(p, user) {
        "<label>Patient id <input type=\"text\" name=\"patient\" required pattern=\"[A-Za-z0-9\\-\\.]{1,64}\"></label>"
    } else {
        ""
    };
    let body = format!(
        "<h1>Allow access?</h1><p>Signed in as <strong>{}</strong>.</p>\
         <p><strong>{}</strong> asks to:</p>{err}<form method=\"post\" action=\"{}\">{}{items}{patient}\
         <p><button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></p></form>",
        esc(&user.username),
        esc(&p.client_name),
        esc(&s.url("/auth/consent")),
        hidden(request_id, p),
    );
    page(
        StatusCode::OK,
        "Allow access",
        &body,
        csp_origin(&p.redirect_uri).as_deref(),
    )
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().find_map(|v| {
        v.to_str().ok()?.split(';').find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
    })
}

const EXPIRED: &str =
    "This sign-in page has expired or was opened in another browser. Return to the app and start again.";

/// The id of the pending sign-in a form post belongs to, if its cookie and CSRF token match.
fn check_pending(s: &AuthServer, p: &Params, headers: &HeaderMap) -> Option<String> {
    let (Some(id), Some(csrf)) = (p.get("request_id"), p.get("csrf")) else {
        return None;
    };
    let cookie = cookie_value(headers).unwrap_or_default();
    let map = s.pending.lock().unwrap_or_else(|p| p.into_inner());
    match map.get(id) {
        Some(pending)
            if pending.expires_at > s.now()
                && secret::ct_eq(&pending.csrf, csrf)
                && secret::ct_eq(&pending.session, &cookie) =>
        {
            Some(id.to_string())
        }
        _ => None,
    }
}

async fn read_form(req: Request) -> Result<(HeaderMap, Option<SocketAddr>, Params), Response> {
    let (parts, body) = req.into_parts();
    let addr = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|_| error_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."))?;
    Ok((parts.headers, addr, Params::parse(&bytes)))
}

/// `POST /auth/login`: the login form.
pub(crate) async fn login(State(s): State<Arc<AuthServer>>, req: Request) -> Response {
    let (headers, addr, p) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(id) = check_pending(&s, &p, &headers) else {
        return error_page(StatusCode::BAD_REQUEST, EXPIRED);
    };
    let rerender = |error: &str, status: StatusCode| {
        let map = s.pending.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&id) {
            Some(pending) => login_page(&id, pending, Some(error), status, &s),
            None => error_page(StatusCode::BAD_REQUEST, EXPIRED),
        }
    };
    let username = p.get("username").unwrap_or("").trim().to_string();
    let password = p.get("password").unwrap_or("").to_string();
    let now = s.now();
    let user_key = format!("user:{username}");
    // Without the peer address (a server not started with connect info) only the
    // per-username limit applies: one shared "unknown" key would let anyone lock out everyone.
    let ip_key = addr.map(|a| format!("ip:{}", a.ip()));
    let max = s.config.login_attempts.max(1);
    let ip_ok = ip_key
        .as_deref()
        .is_none_or(|k| s.limiter.allowed(k, max.saturating_mul(4), now));
    if !s.limiter.allowed(&user_key, max, now) || !ip_ok {
        return rerender(
            "Too many failed sign-ins. Try again later.",
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let user = match s.store.user(&username).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "auth store failure");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The authorization server is unavailable; try again later.",
            );
        }
    };
    // argon2 is deliberately slow: off the async workers. An unknown user costs the same.
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| secret::dummy_hash().to_string());
    let ok = tokio::task::spawn_blocking(move || secret::verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let user = match (ok, user) {
        (true, Some(u)) => u,
        _ => {
            s.limiter.fail(&user_key, now);
            if let Some(k) = &ip_key {
                s.limiter.fail(k, now);
            }
            tracing::info!("failed sign-in");
            return rerender("Invalid username or password.", StatusCode::UNAUTHORIZED);
        }
    };
    s.limiter.reset(&user_key);
    tracing::info!(user = %user.username, "signed in");
    let mut map = s.pending.lock().unwrap_or_else(|p| p.into_inner());
    let Some(pending) = map.get_mut(&id) else {
        return error_page(StatusCode::BAD_REQUEST, EXPIRED);
    };
    if let (Some(own), Some(ctx)) = (
        user.patient_id(),
        pending.launch.as_ref().and_then(|l| l.patient.as_deref()),
    ) {
        if own != ctx {
            let (uri, state) = (pending.redirect_uri.clone(), pending.state.clone());
            map.remove(&id);
            return redirect_error(
                &uri,
                Some(&state),
                "access_denied",
                "this user may not open the launched patient's record",
                StatusCode::SEE_OTHER,
            );
        }
    }
    pending.auth_time = now;
    let resp = consent_page(&id, pending, &user, None, &s);
    pending.user = Some(user);
    resp
}

/// `POST /auth/consent`: the user's decision; on approval, the code goes to the app.
pub(crate) async fn consent(State(s): State<Arc<AuthServer>>, req: Request) -> Response {
    let (headers, _, p) = match read_form(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(id) = check_pending(&s, &p, &headers) else {
        return error_page(StatusCode::BAD_REQUEST, EXPIRED);
    };
    // A patient id a staff user typed: checked against the directory, when there is one,
    // before the pending sign-in is locked.
    let typed = p
        .get("patient")
        .map(str::trim)
        .filter(|pid| admin::is_fhir_id(pid))
        .map(str::to_string);
    let typed_known = match (&typed, s.patients.get()) {
        (Some(pid), Some(dir)) => dir.exists(pid).await,
        _ => true,
    };
    let (record, redirect_uri, state) = {
        let mut map = s.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pending) = map.get(&id) else {
            return error_page(StatusCode::BAD_REQUEST, EXPIRED);
        };
        let Some(user) = pending.user.clone() else {
            return error_page(StatusCode::BAD_REQUEST, "Sign in first.");
        };
        let (uri, state) = (pending.redirect_uri.clone(), pending.state.clone());
        if p.get("decision") != Some("approve") {
            map.remove(&id);
            return redirect_error(
                &uri,
                Some(&state),
                "access_denied",
                "the user denied the request",
                StatusCode::SEE_OTHER,
            );
        }
        // Only what was asked for and allowed, minus what the user unticked.
        let chosen: Vec<String> = pending
            .scopes
            .iter()
            .filter(|sc| p.all("scope").any(|c| c == sc.as_str()))
            .cloned()
            .collect();
        if chosen.is_empty() {
            map.remove(&id);
            return redirect_error(
                &uri,
                Some(&state),
                "access_denied",
                "the user approved no scope",
                StatusCode::SEE_OTHER,
            );
        }
        let launch = pending.launch.clone();
        let mut patient = launch.as_ref().and_then(|l| l.patient.clone());
        let encounter = launch.as_ref().and_then(|l| l.encounter.clone());
        if patient.is_none() {
            if let Some(own) = user.patient_id() {
                patient = Some(own.to_string());
            } else if chosen.iter().any(|c| c == "launch/patient") {
                match typed.as_deref() {
                    Some(pid) if typed_known => patient = Some(pid.to_string()),
                    Some(_) => {
                        let msg = "There is no patient with that id.";
                        return consent_page(&id, pending, &user, Some(msg), &s);
                    }
                    None => {
                        let msg =
                            "Enter the id of the patient to open (letters, digits, '-' and '.').";
                        return consent_page(&id, pending, &user, Some(msg), &s);
                    }
                }
            }
        }
        let record = CodeRecord {
            grant: Grant {
                client_id: pending.client_id.clone(),
                subject: user.username.clone(),
                scope: chosen.join(" "),
                patient,
                encounter,
                fhir_user: user.fhir_user.clone(),
                roles: user.roles.clone(),
                auth_time: pending.auth_time,
                ehr_launch: launch.is_some(),
            },
            redirect_uri: uri.clone(),
            code_challenge: pending.code_challenge.clone(),
            nonce: pending.nonce.clone(),
            expires_at: s.now() + s.config.code_secs,
        };
        map.remove(&id);
        (record, uri, state)
    };
    let code = secret::random_token(32);
    if let Err(e) = s.store.put_code(&secret::token_hash(&code), &record).await {
        tracing::error!(error = %e, "auth store failure");
        return redirect_error(
            &redirect_uri,
            Some(&state),
            "server_error",
            "the authorization server could not store the code",
            StatusCode::SEE_OTHER,
        );
    }
    redirect(
        StatusCode::SEE_OTHER,
        &with_query(&redirect_uri, &[("code", &code), ("state", &state)]),
    )
}
