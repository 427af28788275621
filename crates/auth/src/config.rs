//! `[auth]`: how Salus authenticates callers. See docs/security.md "Authorization server".

use serde::{Deserialize, Serialize};

/// Which tokens Salus accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Tokens issued by the built-in authorization server (this crate).
    #[default]
    Builtin,
    /// Tokens issued by an external OpenID Connect provider (`[auth.external]`).
    External,
}

/// The `[auth]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The built-in server's issuer: the public base URL the server is reached at
    /// (`https://fhir.example.org`); the auth endpoints live under it (`/auth/...`).
    /// Defaults to the server's `base_url`.
    pub issuer: Option<String>,
    /// The FHIR base URL, checked as the `aud` of every token and of `/auth/authorize`
    /// requests (SMART App Launch: `aud`). Defaults to the issuer.
    pub audience: Option<String>,
    /// Access token lifetime, seconds.
    pub access_token_secs: i64,
    /// Refresh token lifetime, seconds.
    pub refresh_token_secs: i64,
    /// Authorization code lifetime, seconds (short: the code is exchanged at once).
    pub code_secs: i64,
    /// Tolerance for clock skew on `exp`/`nbf`, seconds.
    pub leeway_secs: i64,
    /// Failed logins allowed per username (and, four times as many, per client address)
    /// within `login_window_secs` before logins are refused for the rest of the window.
    pub login_attempts: u32,
    pub login_window_secs: i64,
    /// A stylesheet URL handed to apps as `smart_style_url`.
    pub smart_style_url: Option<String>,
    /// The external provider, when `mode = "external"`.
    pub external: Option<ExternalIdpConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Builtin,
            issuer: None,
            audience: None,
            access_token_secs: 3600,
            refresh_token_secs: 90 * 24 * 3600,
            code_secs: 60,
            leeway_secs: 30,
            login_attempts: 5,
            login_window_secs: 300,
            smart_style_url: None,
            external: None,
        }
    }
}

/// `[auth.external]`: an OpenID Connect provider whose access tokens Salus accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalIdpConfig {
    /// Expected `iss`.
    pub issuer: String,
    /// Where the provider publishes its signing keys.
    pub jwks_uri: String,
    /// Expected `aud`: the FHIR base URL as registered at the provider.
    pub audience: String,
    /// The claim holding granted scopes: a space-separated string (`scope`) or an array (`scp`).
    pub scope_claim: String,
    /// The claim holding the patient in context (a Patient id).
    pub patient_claim: String,
    /// The claim holding the user's FHIR resource (`Practitioner/123`).
    pub fhir_user_claim: String,
    /// The claim holding the user's roles; a dotted path reaches into objects
    /// (`realm_access.roles`).
    pub roles_claim: String,
    /// Seconds a fetched key set is trusted before it is fetched again.
    pub jwks_cache_secs: u64,
    /// Least seconds between two fetches caused by an unknown `kid` (bounds the load a
    /// stream of forged tokens can put on the provider).
    pub jwks_min_refetch_secs: u64,
    pub leeway_secs: i64,
}

impl Default for ExternalIdpConfig {
    fn default() -> Self {
        ExternalIdpConfig {
            issuer: String::new(),
            jwks_uri: String::new(),
            audience: String::new(),
            scope_claim: "scope".into(),
            patient_claim: "patient".into(),
            fhir_user_claim: "fhirUser".into(),
            roles_claim: "roles".into(),
            jwks_cache_secs: 3600,
            jwks_min_refetch_secs: 30,
            leeway_secs: 30,
        }
    }
}

impl AuthConfig {
    /// The issuer, falling back to the server's base URL; without a trailing `/`.
    pub fn issuer_or(&self, base_url: &str) -> String {
        self.issuer
            .as_deref()
            .unwrap_or(base_url)
            .trim_end_matches('/')
            .to_string()
    }

    /// Readable problems with this configuration (checked at start-up).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("access_token_secs", self.access_token_secs),
            ("refresh_token_secs", self.refresh_token_secs),
            ("code_secs", self.code_secs),
        ] {
            if v <= 0 {
                return Err(format!("auth.{name} must be positive, not {v}"));
            }
        }
        if self.leeway_secs < 0 {
            return Err("auth.leeway_secs must not be negative".into());
        }
        for (name, url) in [("issuer", &self.issuer), ("audience", &self.audience)] {
            if let Some(u) = url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(format!("auth.{name} '{u}' is not an http(s) URL"));
                }
            }
        }
        if self.mode == AuthMode::External {
            let Some(e) = &self.external else {
                return Err("auth.mode = \"external\" needs an [auth.external] table".into());
            };
            for (name, v) in [
                ("issuer", &e.issuer),
                ("jwks_uri", &e.jwks_uri),
                ("audience", &e.audience),
            ] {
                if v.trim().is_empty() {
                    return Err(format!("auth.external.{name} is required"));
                }
            }
            if !(e.jwks_uri.starts_with("https://") || e.jwks_uri.starts_with("http://")) {
                return Err(format!(
                    "auth.external.jwks_uri '{}' is not an http(s) URL",
                    e.jwks_uri
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_toml() {
        let c = AuthConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.code_secs, 60);
        let c: AuthConfig = toml_like(
            r#"{"mode":"external","external":{"issuer":"https://idp","jwks_uri":"https://idp/jwks","audience":"https://fhir","scope_claim":"scp"}}"#,
        );
        assert!(c.validate().is_ok());
        assert_eq!(c.external.as_ref().unwrap().patient_claim, "patient");
        let bad: AuthConfig = toml_like(r#"{"mode":"external"}"#);
        assert!(bad.validate().unwrap_err().contains("[auth.external]"));
        assert!(serde_json::from_str::<AuthConfig>(r#"{"nope":1}"#).is_err());
    }

    fn toml_like(s: &str) -> AuthConfig {
        serde_json::from_str(s).unwrap()
    }
}
