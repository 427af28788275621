//! Registering clients and users: shared by the admin HTTP API (`/auth/clients`) and the
//! `salus auth …` commands.

use crate::jws;
use crate::secret;
use crate::store::{AuthStore, Client, ClientKind, StoreError, User};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(thiserror::Error, Debug)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A client to register.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ClientKind,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// Allowed scopes (patterns), space separated.
    pub scope: String,
    #[serde(default)]
    pub jwks: Option<Value>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
}

/// A registered client and, for a confidential one, its secret (shown only now).
pub struct Registered {
    pub client: Client,
    pub secret: Option<String>,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("client", &self.client)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A redirect URI we accept: absolute, no fragment, no whitespace or quotes; http(s) with
/// a host, or a private-use scheme (`com.example.app:/cb`, RFC 8252 §7.1).
pub fn check_redirect_uri(u: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "redirect URI '{u}' is not an absolute URI without fragment"
        ))
    };
    if u.is_empty() || u.len() > 2000 || u.contains('#') {
        return bad();
    }
    if u.bytes().any(|b| {
        b <= b' ' || b == b'"' || b == b'\'' || b == b'<' || b == b'>' || b == b'\\' || b >= 0x7f
    }) {
        return bad();
    }
    let Some((scheme, rest)) = u.split_once(':') else {
        return bad();
    };
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return bad();
    }
    if matches!(scheme, "http" | "https") {
        let host = rest
            .strip_prefix("//")
            .and_then(|r| r.split(['/', '?']).next());
        if host.is_none_or(str::is_empty) {
            return bad();
        }
    }
    Ok(())
}

pub async fn register_client(
    store: &dyn AuthStore,
    new: NewClient,
    now: i64,
) -> Result<Registered, AdminError> {
    let invalid = |m: String| Err(AdminError::Invalid(m));
    let name = new.name.trim().to_string();
    if name.is_empty() {
        return invalid("a client needs a name".into());
    }
    if new.scope.split_ascii_whitespace().next().is_none() {
        return invalid("a client needs at least one allowed scope".into());
    }
    for u in &new.redirect_uris {
        check_redirect_uri(u).map_err(AdminError::Invalid)?;
    }
    if new.kind != ClientKind::Asymmetric && new.redirect_uris.is_empty() {
        return invalid(format!(
            "a {} client needs at least one redirect URI",
            new.kind.as_str()
        ));
    }
    match new.kind {
        ClientKind::Asymmetric => match (&new.jwks, &new.jwks_uri) {
            (Some(j), None) => {
                jws::parse_jwks(j)
                    .map_err(|e| AdminError::Invalid(format!("the client's JWKS: {e}")))?;
            }
            (None, Some(u)) if u.starts_with("https://") || u.starts_with("http://") => {}
            (None, Some(u)) => return invalid(format!("jwks_uri '{u}' is not an http(s) URL")),
            _ => return invalid("an asymmetric client needs either a JWKS or a jwks_uri".into()),
        },
        _ if new.jwks.is_some() || new.jwks_uri.is_some() => {
            return invalid("only asymmetric (private_key_jwt) clients carry keys".into())
        }
        _ => {}
    }
    let secret = (new.kind == ClientKind::Confidential).then(|| secret::random_token(32));
    let secret_hash = match &secret {
        Some(s) => Some(secret::hash_password(s).map_err(AdminError::Invalid)?),
        None => None,
    };
    let client = Client {
        client_id: secret::random_token(16),
        name,
        kind: new.kind,
        secret_hash,
        redirect_uris: new.redirect_uris,
        scope: new
            .scope
            .split_ascii_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        jwks: new.jwks,
        jwks_uri: new.jwks_uri,
        created_at: now,
    };
    store.insert_client(&client).await?;
    Ok(Registered { client, secret })
}

/// A `Type/id` reference to the user's FHIR resource.
pub fn check_fhir_user(r: &str) -> Result<(), String> {
    let ok = r.split_once('/').is_some_and(|(t, id)| {
        matches!(
            t,
            "Patient" | "Practitioner" | "PractitionerRole" | "RelatedPerson" | "Person"
        ) && is_fhir_id(id)
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "fhirUser '{r}' must be Patient/<id>, Practitioner/<id>, PractitionerRole/<id>, RelatedPerson/<id> or Person/<id>"
        ))
    }
}

/// A FHIR id: 1–64 of `[A-Za-z0-9\-\.]`.
pub fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub async fn add_user(
    store: &dyn AuthStore,
    username: &str,
    password: &str,
    fhir_user: Option<&str>,
    roles: &[String],
    now: i64,
) -> Result<User, AdminError> {
    let username = username.trim();
    if username.is_empty() || username.len() > 128 || username.chars().any(char::is_control) {
        return Err(AdminError::Invalid(
            "a username is 1 to 128 printable characters".into(),
        ));
    }
    if password.chars().count() < 8 {
        return Err(AdminError::Invalid(
            "a password needs at least 8 characters".into(),
        ));
    }
    if let Some(f) = fhir_user {
        check_fhir_user(f).map_err(AdminError::Invalid)?;
    }
    for r in roles {
        if r.is_empty()
            || !r
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(AdminError::Invalid(format!(
                "role '{r}' is not a plain name"
            )));
        }
    }
    let user = User {
        username: username.to_string(),
        password_hash: secret::hash_password(password).map_err(AdminError::Invalid)?,
        fhir_user: fhir_user.map(str::to_string),
        roles: roles.to_vec(),
        created_at: now,
    };
    store.insert_user(&user).await?;
    Ok(user)
}

/// A client as shown by the admin API and CLI (never its secret hash).
pub fn client_json(c: &Client) -> Value {
    let mut v = json!({
        "client_id": c.client_id,
        "client_name": c.name,
        "type": c.kind.as_str(),
        "redirect_uris": c.redirect_uris,
        "scope": c.scope,
        "token_endpoint_auth_method": match c.kind {
            ClientKind::Public => "none",
            ClientKind::Confidential => "client_secret_basic",
            ClientKind::Asymmetric => "private_key_jwt",
        },
        "created_at": c.created_at,
    });
    if let Some(u) = &c.jwks_uri {
        v["jwks_uri"] = json!(u);
    }
    if let Some(j) = &c.jwks {
        v["jwks"] = j.clone();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_and_refs() {
        assert!(check_redirect_uri("https://app.example/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:9000/cb?x=1").is_ok());
        assert!(check_redirect_uri("com.example.app:/oauth").is_ok());
        assert!(check_redirect_uri("https://app/cb#frag").is_err());
        assert!(check_redirect_uri("/relative").is_err());
        assert!(check_redirect_uri("https:///nohost").is_err());
        assert!(check_redirect_uri("https://a/b c").is_err());
        assert!(check_fhir_user("Patient/p1").is_ok());
        assert!(check_fhir_user("Observation/1").is_err());
        assert!(check_fhir_user("Patient/").is_err());
    }

    #[tokio::test]
    async fn register_validates() {
        let store = crate::sqlite::SqliteAuthStore::in_memory().unwrap();
        let new = |kind| NewClient {
            name: "App".into(),
            kind,
            redirect_uris: vec!["https://app/cb".into()],
            scope: "openid  patient/*.rs".into(),
            jwks: None,
            jwks_uri: None,
        };
        let r = register_client(&store, new(ClientKind::Confidential), 1)
            .await
            .unwrap();
        let secret = r.secret.clone().unwrap();
        assert!(crate::secret::verify_password(
            &secret,
            r.client.secret_hash.as_deref().unwrap()
        ));
        assert_eq!(r.client.scope, "openid patient/*.rs");
        assert!(!format!("{r:?}").contains(&secret));
        assert!(register_client(&store, new(ClientKind::Public), 1)
            .await
            .unwrap()
            .secret
            .is_none());
        let e = register_client(&store, new(ClientKind::Asymmetric), 1)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("JWKS"), "{e}");
        assert!(add_user(&store, "bob", "short", None, &[], 1)
            .await
            .is_err());
        add_user(
            &store,
            "bob",
            "long enough",
            Some("Practitioner/1"),
            &["clinician".into()],
            1,
        )
        .await
        .unwrap();
        assert!(matches!(
            add_user(&store, "bob", "long enough", None, &[], 1).await,
            Err(AdminError::Store(StoreError::Exists(_)))
        ));
    }
}
