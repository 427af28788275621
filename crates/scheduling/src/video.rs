//! Video-visit links: a [`VideoProvider`] turns an appointment into a room and signs a
//! join token per participant. Built in: [`JitsiProvider`], a Jitsi-style room URL
//! (`<base>/<room>`) with JWT-shaped HS256 tokens (RFC 7519 claims `iss`, `aud`, `sub`,
//! `room`, `exp`, `nbf`; signature RFC 7515 HMAC-SHA256 over `header.payload`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The room of one visit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoRoom {
    /// Provider name (`Appointment.virtualService.channelType` code).
    pub channel: String,
    /// Room name (`sessionKey`).
    pub room: String,
    /// Address everybody joins (`addressUrl`), without a token.
    pub url: String,
}

/// What a participant's token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The participant (`Patient/123`, `PractitionerRole/9`).
    pub sub: String,
    pub room: String,
    /// Not valid before (seconds since the epoch).
    pub nbf: i64,
    /// Expiry: the end of the visit plus the grace period (seconds since the epoch).
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
}

/// A video service that can host a visit.
pub trait VideoProvider: Send + Sync {
    /// The room for an appointment (stable for that appointment).
    fn room(&self, appointment_id: &str) -> VideoRoom;
    /// A join link for `participant`, valid from `not_before` until `visit_end` plus the
    /// provider's grace period.
    fn join_url(
        &self,
        room: &VideoRoom,
        participant: &str,
        not_before: Timestamp,
        visit_end: Timestamp,
    ) -> String;
}

/// Jitsi-style rooms under a base URL with signed per-participant tokens.
#[derive(Clone)]
pub struct JitsiProvider {
    base_url: String,
    secret: Vec<u8>,
    /// `iss` and `aud` of the tokens (a Jitsi deployment's app id).
    app_id: String,
    /// Minutes a token stays valid after the visit ends.
    grace_minutes: i64,
}

impl std::fmt::Debug for JitsiProvider {
    // the secret is never printed
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitsiProvider")
            .field("base_url", &self.base_url)
            .field("app_id", &self.app_id)
            .field("grace_minutes", &self.grace_minutes)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl JitsiProvider {
    pub fn new(base_url: &str, secret: &[u8], app_id: &str, grace_minutes: i64) -> Self {
        JitsiProvider {
            base_url: base_url.trim_end_matches('/').to_string(),
            secret: secret.to_vec(),
            app_id: app_id.to_string(),
            grace_minutes,
        }
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length")
    }

    /// Sign claims as `header.payload.signature` (base64url without padding).
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    /// Check a token's signature and validity at `now`.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        // constant-time comparison
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        let t = now.as_second();
        if t >= claims.exp {
            return Err(TokenError::Expired);
        }
        if t < claims.nbf {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

impl VideoProvider for JitsiProvider {
    fn room(&self, appointment_id: &str) -> VideoRoom {
        // Room names are not guessable from the appointment id: HMAC of the id.
        let mut mac = self.mac();
        mac.update(b"room:");
        mac.update(appointment_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        let room = format!("salus-{}", hex(&digest[..12]));
        VideoRoom {
            channel: "jitsi".into(),
            url: format!("{}/{room}", self.base_url),
            room,
        }
    }

    fn join_url(
        &self,
        room: &VideoRoom,
        participant: &str,
        not_before: Timestamp,
        visit_end: Timestamp,
    ) -> String {
        let claims = Claims {
            iss: self.app_id.clone(),
            aud: self.app_id.clone(),
            sub: participant.to_string(),
            room: room.room.clone(),
            nbf: not_before.as_second(),
            exp: visit_end.as_second() + self.grace_minutes * 60,
        };
        format!("{}?jwt={}", room.url, self.sign(&claims))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> JitsiProvider {
        JitsiProvider::new("https://meet.example.org/", b"s3cret", "salus", 30)
    }

    #[test]
    fn rooms_are_stable_and_under_the_base_url() {
        let p = provider();
        let a = p.room("appt-1");
        assert_eq!(a, p.room("appt-1"));
        assert_ne!(a.room, p.room("appt-2").room);
        assert!(
            a.url.starts_with("https://meet.example.org/salus-"),
            "{}",
            a.url
        );
        assert!(!a.room.contains("appt-1"));
    }

    #[test]
    fn tokens_verify_until_the_end_of_the_visit_plus_grace() {
        let p = provider();
        let room = p.room("appt-1");
        let start: Timestamp = "2026-03-30T07:00:00Z".parse().unwrap();
        let end: Timestamp = "2026-03-30T07:15:00Z".parse().unwrap();
        let url = p.join_url(&room, "Patient/p1", start, end);
        let token = url.split("?jwt=").nth(1).unwrap();
        let claims = p
            .verify(token, "2026-03-30T07:40:00Z".parse().unwrap())
            .unwrap();
        assert_eq!(claims.sub, "Patient/p1");
        assert_eq!(claims.room, room.room);
        assert_eq!(claims.exp, end.as_second() + 30 * 60);
        assert_eq!(
            p.verify(token, "2026-03-30T07:45:00Z".parse().unwrap()),
            Err(TokenError::Expired)
        );
        assert_eq!(
            p.verify(token, "2026-03-30T06:00:00Z".parse().unwrap()),
            Err(TokenError::NotYetValid)
        );
        let other = JitsiProvider::new("https://meet.example.org", b"other", "salus", 30);
        assert_eq!(
            other.verify(token, "2026-03-30T07:05:00Z".parse().unwrap()),
            Err(TokenError::BadSignature)
        );
        let mut tampered = token.to_string();
        tampered.insert(token.find('.').unwrap() + 2, 'x');
        assert!(p.verify(&tampered, start).is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        assert!(!format!("{:?}", provider()).contains("s3cret"));
    }
}
