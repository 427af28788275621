//! JSON Web Signatures, compact form (RFC 7515), for the algorithms SMART needs:
//! ES256 (our own tokens), ES384 and RS384 (SMART Backend Services client assertions),
//! RS256 (common at external identity providers). `none` and HMAC are never accepted.
//! Public keys come from JWKs (RFC 7517/7518 §6).

use crate::AuthError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

/// A JWS algorithm this crate verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Es256,
    Es384,
    Rs256,
    Rs384,
}

impl Alg {
    pub fn parse(s: &str) -> Result<Alg, AuthError> {
        match s {
            "ES256" => Ok(Alg::Es256),
            "ES384" => Ok(Alg::Es384),
            "RS256" => Ok(Alg::Rs256),
            "RS384" => Ok(Alg::Rs384),
            other => Err(AuthError::UnsupportedAlgorithm(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
        }
    }
}

/// A public key that verifies signatures.
#[derive(Clone)]
pub enum PublicKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Rsa(Box<rsa::RsaPublicKey>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublicKey::P256(_) => "PublicKey(P-256)",
            PublicKey::P384(_) => "PublicKey(P-384)",
            PublicKey::Rsa(_) => "PublicKey(RSA)",
        })
    }
}

/// A key from a JWKS: its `kid` (if any) and the key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub kid: Option<String>,
    /// `alg` pinned by the JWK, if it names one.
    pub alg: Option<String>,
    pub key: PublicKey,
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| format!("{what} is not base64url"))
}

fn member<'a>(jwk: &'a Value, name: &str) -> Result<&'a str, String> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the JWK has no '{name}'"))
}

/// One JWK → a verifying key. Keys with `use` other than `sig` are refused.
pub fn parse_jwk(jwk: &Value) -> Result<KeyEntry, String> {
    if let Some(u) = jwk.get("use").and_then(Value::as_str) {
        if u != "sig" {
            return Err(format!("the JWK is for use '{u}', not 'sig'"));
        }
    }
    let key = match member(jwk, "kty")? {
        "EC" => {
            let x = b64(member(jwk, "x")?, "x")?;
            let y = b64(member(jwk, "y")?, "y")?;
            match member(jwk, "crv")? {
                "P-256" if x.len() == 32 && y.len() == 32 => {
                    let pt = p256::EncodedPoint::from_affine_coordinates(
                        p256::FieldBytes::from_slice(&x),
                        p256::FieldBytes::from_slice(&y),
                        false,
                    );
                    PublicKey::P256(
                        p256::ecdsa::VerifyingKey::from_encoded_point(&pt)
                            .map_err(|_| "the P-256 point is not on the curve".to_string())?,
                    )
                }
                "P-384" if x.len() == 48 && y.len() == 48 => {
                    let pt = p384::EncodedPoint::from_affine_coordinates(
                        p384::FieldBytes::from_slice(&x),
                        p384::FieldBytes::from_slice(&y),
                        false,
                    );
                    PublicKey::P384(
                        p384::ecdsa::VerifyingKey::from_encoded_point(&pt)
                            .map_err(|_| "the P-384 point is not on the curve".to_string())?,
                    )
                }
                crv @ ("P-256" | "P-384") => {
                    return Err(format!("the {crv} coordinates have the wrong length"))
                }
                crv => return Err(format!("curve '{crv}' is not supported (P-256, P-384)")),
            }
        }
        "RSA" => {
            let n = rsa::BigUint::from_bytes_be(&b64(member(jwk, "n")?, "n")?);
            let e = rsa::BigUint::from_bytes_be(&b64(member(jwk, "e")?, "e")?);
            let k = rsa::RsaPublicKey::new(n, e).map_err(|e| format!("bad RSA key: {e}"))?;
            use rsa::traits::PublicKeyParts;
            if k.size() < 256 {
                return Err("RSA keys shorter than 2048 bits are not accepted".into());
            }
            PublicKey::Rsa(Box::new(k))
        }
        kty => return Err(format!("key type '{kty}' is not supported (EC, RSA)")),
    };
    Ok(KeyEntry {
        kid: jwk.get("kid").and_then(Value::as_str).map(str::to_string),
        alg: jwk.get("alg").and_then(Value::as_str).map(str::to_string),
        key,
    })
}

/// A JWKS document (`{"keys":[…]}`) → its usable keys. Keys of unsupported types are skipped
/// (an IdP may publish encryption keys beside signing ones); none usable is an error.
pub fn parse_jwks(doc: &Value) -> Result<Vec<KeyEntry>, String> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no 'keys' array")?;
    let mut out = Vec::new();
    let mut last_err = None;
    for k in keys {
        match parse_jwk(k) {
            Ok(e) => out.push(e),
            Err(e) => last_err = Some(e),
        }
    }
    if out.is_empty() {
        return Err(last_err.unwrap_or_else(|| "the JWKS holds no keys".into()));
    }
    Ok(out)
}

impl PublicKey {
    /// Verifies `sig` over `input` with `alg`; the algorithm must fit the key type.
    pub fn verify(&self, alg: Alg, input: &[u8], sig: &[u8]) -> Result<(), AuthError> {
        use rsa::signature::Verifier;
        let ok = match (self, alg) {
            (PublicKey::P256(k), Alg::Es256) => p256::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verify(input, &s).is_ok())
                .unwrap_or(false),
            (PublicKey::P384(k), Alg::Es384) => p384::ecdsa::Signature::from_slice(sig)
                .map(|s| k.verify(input, &s).is_ok())
                .unwrap_or(false),
            (PublicKey::Rsa(k), Alg::Rs256) => {
                let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new((**k).clone());
                rsa::pkcs1v15::Signature::try_from(sig)
                    .map(|s| vk.verify(input, &s).is_ok())
                    .unwrap_or(false)
            }
            (PublicKey::Rsa(k), Alg::Rs384) => {
                let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha384>::new((**k).clone());
                rsa::pkcs1v15::Signature::try_from(sig)
                    .map(|s| vk.verify(input, &s).is_ok())
                    .unwrap_or(false)
            }
            _ => return Err(AuthError::BadSignature),
        };
        if ok {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }
}

/// A compact JWS split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

/// Splits and decodes a compact JWS whose payload is a JSON object (a JWT).
pub fn decode(token: &str) -> Result<Decoded, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "not a JWT (three dot-separated parts)".into(),
        ));
    };
    let header: Value =
        serde_json::from_slice(&b64(h, "the header").map_err(AuthError::Malformed)?)
            .map_err(|_| AuthError::Malformed("the header is not JSON".into()))?;
    let alg = Alg::parse(
        header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Malformed("the header has no 'alg'".into()))?,
    )?;
    if header.get("crit").is_some() {
        return Err(AuthError::Malformed(
            "critical header extensions are not supported".into(),
        ));
    }
    let claims = match serde_json::from_slice(&b64(p, "the payload").map_err(AuthError::Malformed)?)
    {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(AuthError::Malformed(
                "the payload is not a JSON object".into(),
            ))
        }
    };
    Ok(Decoded {
        alg,
        kid: header
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_string),
        claims,
        signing_input: format!("{h}.{p}"),
        signature: b64(s, "the signature").map_err(AuthError::Malformed)?,
    })
}

impl Decoded {
    /// Verifies the signature with the key named by `kid` among `keys` (the only key when
    /// the token names none and there is exactly one). `UnknownKey` when none fits.
    pub fn verify_with(&self, keys: &[KeyEntry]) -> Result<(), AuthError> {
        let key = match &self.kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }
        .ok_or(AuthError::UnknownKey)?;
        if let Some(a) = &key.alg {
            if a != self.alg.name() {
                return Err(AuthError::BadSignature);
            }
        }
        key.key
            .verify(self.alg, self.signing_input.as_bytes(), &self.signature)
    }

    pub fn str_claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    pub fn int_claim(&self, name: &str) -> Option<i64> {
        self.claims
            .get(name)
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
    }

    /// Checks `exp` (required), `nbf`, `iss` and `aud` (a string or an array) at `now`.
    pub fn check_claims(
        &self,
        issuer: &str,
        audience: &str,
        now: i64,
        leeway: i64,
    ) -> Result<i64, AuthError> {
        let exp = self
            .int_claim("exp")
            .ok_or_else(|| AuthError::Malformed("the token has no 'exp'".into()))?;
        if now > exp + leeway {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = self.int_claim("nbf") {
            if now + leeway < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        if self.str_claim("iss").map(trim_slash) != Some(trim_slash(issuer)) {
            return Err(AuthError::WrongIssuer);
        }
        if !self.audience_contains(audience) {
            return Err(AuthError::WrongAudience);
        }
        Ok(exp)
    }

    pub fn audience_contains(&self, audience: &str) -> bool {
        let want = trim_slash(audience);
        match self.claims.get("aud") {
            Some(Value::String(a)) => trim_slash(a) == want,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str().map(trim_slash) == Some(want)),
            _ => false,
        }
    }
}

fn trim_slash(s: &str) -> &str {
    s.trim_end_matches('/')
}

/// Signs `claims` as a compact JWS with an ES256 key.
pub fn sign_es256(key: &p256::ecdsa::SigningKey, kid: &str, claims: &Value) -> String {
    use p256::ecdsa::signature::Signer;
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// The public JWK of a P-256 key (without `kid`).
pub fn p256_jwk(key: &p256::ecdsa::VerifyingKey) -> Value {
    let pt = key.to_encoded_point(false);
    json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(pt.x().map(|x| x.as_slice()).unwrap_or_default()),
        "y": URL_SAFE_NO_PAD.encode(pt.y().map(|y| y.as_slice()).unwrap_or_default()),
    })
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url) of an EC key: our `kid`s.
pub fn ec_thumbprint(jwk: &Value) -> String {
    use sha2::Digest;
    let canonical = format!(
        r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["crv"].as_str().unwrap_or_default(),
        jwk["x"].as_str().unwrap_or_default(),
        jwk["y"].as_str().unwrap_or_default()
    );
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn es256_round_trip_and_tamper() {
        let sk = p256::ecdsa::SigningKey::random(&mut OsRng);
        let mut jwk = p256_jwk(sk.verifying_key());
        jwk["kid"] = json!("k1");
        let keys = parse_jwks(&json!({"keys": [jwk]})).unwrap();
        let t = sign_es256(&sk, "k1", &json!({"iss":"i","aud":["a","b"],"exp": 100}));
        let d = decode(&t).unwrap();
        d.verify_with(&keys).unwrap();
        assert_eq!(d.check_claims("i", "b", 50, 0), Ok(100));
        assert_eq!(
            d.check_claims("i", "c", 50, 0),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(d.check_claims("x", "b", 50, 0), Err(AuthError::WrongIssuer));
        assert_eq!(d.check_claims("i", "b", 131, 30), Err(AuthError::Expired));
        let mut tampered = t.clone();
        tampered.insert(t.find('.').unwrap() + 2, 'A');
        assert!(decode(&tampered)
            .and_then(|d| d.verify_with(&keys))
            .is_err());
        let other = p256::ecdsa::SigningKey::random(&mut OsRng);
        let forged = sign_es256(&other, "k1", &json!({"exp": 1}));
        assert_eq!(
            decode(&forged).unwrap().verify_with(&keys),
            Err(AuthError::BadSignature)
        );
        let unknown = sign_es256(&other, "k2", &json!({"exp": 1}));
        assert_eq!(
            decode(&unknown).unwrap().verify_with(&keys),
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn refuses_none_and_hmac() {
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"exp":1}"#)
        );
        assert!(matches!(
            decode(&none),
            Err(AuthError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(decode("a.b"), Err(AuthError::Malformed(_))));
        assert!(parse_jwk(&json!({"kty":"oct","k":"AA"})).is_err());
    }
}
