//! Response hardening and per-client rate limits.
//!
//! Every response carries headers that keep browsers from sniffing, framing or caching
//! health data (and HSTS when the server speaks TLS); a client that sends more than its
//! share of requests gets 429 with an OperationOutcome and `Retry-After`.

use crate::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use salus_fhir::{issue::operation_outcome, Issue, IssueCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket per client (the bearer token's caller, else the network address).
pub struct RateLimiter {
    /// Sustained requests per second per client.
    rate: f64,
    /// Requests a client may send at once.
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> Self {
        RateLimiter {
            rate: per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request from `client`'s bucket; `Err(seconds)` until one is available.
    pub fn take(&self, client: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter");
        if buckets.len() > 100_000 {
            // Forget idle clients rather than grow without bound.
            let rate = self.rate;
            let burst = self.burst;
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets
            .entry(client.to_string())
            .or_insert((self.burst, now));
        let refilled =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            *at = now;
            Ok(())
        } else {
            *tokens = refilled;
            *at = now;
            Err(((1.0 - refilled) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// The key a request is limited under.
fn client_key(req: &Request) -> String {
    // The token itself is a secret; its hash-free prefix is not needed: the address of
    // the caller plus a short fingerprint of the credential separates clients well.
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "local".into());
    match req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
    {
        Some(a) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            a.hash(&mut h);
            format!("{addr}/{:x}", h.finish())
        }
        None => addr,
    }
}

/// Middleware: rate limit, then add the security headers.
pub async fn harden(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(limiter) = &state.rate_limiter {
        if let Err(wait) = limiter.take(&client_key(&req)) {
            let oo = operation_outcome(&[Issue::error(
                IssueCode::Throttled,
                format!("too many requests from this client; retry in {wait} s"),
            )]);
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, crate::negotiate::FHIR_JSON)],
                oo.to_string(),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return secure(resp, &state);
        }
    }
    let resp = next.run(req).await;
    secure(resp, &state)
}

fn secure(mut resp: Response, state: &AppState) -> Response {
    let h = resp.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    if state.auth.is_some() {
        // Health data must not linger in shared or browser caches.
        h.entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    if state.config.hsts {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_refuse() {
        let l = RateLimiter::new(1.0, 3);
        for _ in 0..3 {
            assert!(l.take("a").is_ok());
        }
        assert!(l.take("a").is_err());
        // another client has its own bucket
        assert!(l.take("b").is_ok());
    }
}
