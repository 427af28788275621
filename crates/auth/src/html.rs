//! The server-rendered login, consent and error pages. Everything echoed is escaped.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// HTML-escapes text for element content and double-quoted attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}\
label{display:block;margin:.6rem 0}input[type=text],input[type=password]{width:100%;padding:.4rem}\
button{padding:.5rem 1.2rem;margin-right:.5rem}.err{color:#a00}.muted{color:#666;font-size:.9rem}";

/// A complete page with the headers every auth page carries: no framing, a strict CSP
/// (`form_action` adds an origin the page's form may end up at, through a redirect), no caching.
pub(crate) fn page(
    status: StatusCode,
    title: &str,
    body: &str,
    form_action: Option<&str>,
) -> Response {
    let html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        esc(title)
    );
    let mut csp = String::from("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'");
    if let Some(origin) = form_action {
        csp.push(' ');
        csp.push_str(origin);
    }
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// An error page: shown instead of redirecting when the client or redirect URI is not
/// trustworthy (RFC 6749 §4.1.2.1).
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Authorization error",
        &format!(
            "<h1>Authorization error</h1><p class=\"err\">{}</p>",
            esc(message)
        ),
        None,
    )
}

/// The CSP source for the origin of `uri` (`https://app.example:8443`, or `myapp:` for a
/// custom scheme); None when it holds characters a CSP cannot carry.
pub(crate) fn csp_origin(uri: &str) -> Option<String> {
    let origin = match uri.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            format!("{scheme}://{host}")
        }
        None => format!("{}:", uri.split(':').next()?),
    };
    origin
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.+:/[]_".contains(&b))
        .then_some(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_origins() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#x27;"
        );
        assert_eq!(
            csp_origin("https://app.example:8443/cb?x=1").as_deref(),
            Some("https://app.example:8443")
        );
        assert_eq!(
            csp_origin("com.example.app:/cb").as_deref(),
            Some("com.example.app:")
        );
        assert_eq!(csp_origin("https://a;b/"), None);
    }
}
