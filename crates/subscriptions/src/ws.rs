//! The websocket channel, independent of the transport: binding tokens (signed with a
//! key kept in the store, so any process sharing it accepts them) and the session that
//! turns stored events into the text messages a bound client receives. The API crate
//! runs the socket: the client sends `bind-with-token <token>` and gets a handshake per
//! subscription, then event notifications and heartbeats.

use crate::engine::Engine;
use crate::notify::Kind;
use crate::spec::{Mode, Spec};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;
use tokio::sync::watch;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], payload: &str) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(secret).expect("any key length");
    m.update(payload.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// A token naming `ids`, valid until `expires` (micros).
pub fn sign(secret: &[u8], ids: &[String], expires: i64) -> String {
    let payload = format!("{expires}:{}", ids.join(","));
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}",
        b64.encode(&payload),
        b64.encode(mac(secret, &payload))
    )
}

/// The subscription ids a token names, if it is genuine and unexpired.
pub fn verify(secret: &[u8], token: &str, now: i64) -> Result<Vec<String>, String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bad = || "the binding token is not valid".to_string();
    let (p, s) = token.trim().split_once('.').ok_or_else(bad)?;
    let payload = String::from_utf8(b64.decode(p).map_err(|_| bad())?).map_err(|_| bad())?;
    let sig = b64.decode(s).map_err(|_| bad())?;
    let mut m = HmacSha256::new_from_slice(secret).expect("any key length");
    m.update(payload.as_bytes());
    m.verify_slice(&sig).map_err(|_| bad())?;
    let (exp, ids) = payload.split_once(':').ok_or_else(bad)?;
    let exp: i64 = exp.parse().map_err(|_| bad())?;
    if exp < now {
        return Err(
            "the binding token has expired; ask for a new one with $get-ws-binding-token".into(),
        );
    }
    Ok(ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

/// A subscription bound to a connection.
pub(crate) struct Bound {
    pub spec: Spec,
    pub status: String,
    /// Highest event number sent on this connection.
    pub sent: u64,
    /// Last message sent (micros), for heartbeats.
    pub last_sent: i64,
}

/// A bound websocket connection's source of messages.
pub struct WsSession {
    engine: Engine,
    subs: Vec<Bound>,
    recorded: watch::Receiver<u64>,
    handshakes_sent: bool,
}

impl WsSession {
    pub(crate) fn new(engine: Engine, subs: Vec<Bound>, recorded: watch::Receiver<u64>) -> Self {
        WsSession {
            engine,
            subs,
            recorded,
            handshakes_sent: false,
        }
    }

    /// The subscription ids bound.
    pub fn ids(&self) -> Vec<String> {
        self.subs.iter().map(|b| b.spec.id.clone()).collect()
    }

    /// The next messages to send: the handshakes first, then whatever the engine records
    /// (waiting for it), heartbeats when idle. An error ends the connection.
    pub async fn next(&mut self) -> Result<Vec<String>, String> {
        if !self.handshakes_sent {
            self.handshakes_sent = true;
            let mut out = vec![];
            for b in &self.subs {
                out.push(if matches!(b.spec.mode, Mode::Criteria) {
                    format!("bound {}", b.spec.id)
                } else {
                    self.engine
                        .ws_text(b, Kind::Handshake, &[], b.sent)
                        .await
                        .map_err(|e| e.to_string())?
                });
            }
            return Ok(out);
        }
        loop {
            let heartbeat = self
                .subs
                .iter()
                .filter_map(|b| b.spec.heartbeat)
                .min()
                .map(Duration::from_secs);
            let wait = heartbeat
                .unwrap_or(Duration::from_secs(3600))
                .min(self.engine.poll_interval());
            tokio::select! {
                r = self.recorded.changed() => { if r.is_err() { return Err("the server is stopping".into()); } }
                _ = tokio::time::sleep(wait) => {}
            }
            let now = salus_fhir::instant::now_micros();
            let mut out = vec![];
            for i in 0..self.subs.len() {
                let (st, events) = self
                    .engine
                    .ws_poll(&self.subs[i])
                    .await
                    .map_err(|e| e.to_string())?;
                let b = &self.subs[i];
                if !events.is_empty() {
                    for chunk in events.chunks(b.spec.max_count) {
                        out.push(
                            self.engine
                                .ws_text(b, Kind::EventNotification, chunk, st.count)
                                .await
                                .map_err(|e| e.to_string())?,
                        );
                    }
                    let b = &mut self.subs[i];
                    b.sent = st.count;
                    b.last_sent = now;
                } else if st.count > b.sent {
                    // Events no longer retained: skip to the present.
                    self.subs[i].sent = st.count;
                } else if let Some(h) = b.spec.heartbeat {
                    if now - b.last_sent >= h as i64 * 1_000_000
                        && !matches!(b.spec.mode, Mode::Criteria)
                    {
                        out.push(
                            self.engine
                                .ws_text(b, Kind::Heartbeat, &[], st.count)
                                .await
                                .map_err(|e| e.to_string())?,
                        );
                        self.subs[i].last_sent = now;
                    }
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_signed_and_expire() {
        let key = b"k1";
        let t = sign(key, &["a".into(), "b".into()], 1000);
        assert_eq!(verify(key, &t, 999).unwrap(), ["a", "b"]);
        assert!(verify(key, &t, 1001).unwrap_err().contains("expired"));
        assert!(verify(b"k2", &t, 0).is_err(), "another key");
        let (p, s) = t.split_once('.').unwrap();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("99999999:a,b,c");
        assert!(verify(key, &format!("{forged}.{s}"), 0).is_err());
        assert!(verify(key, p, 0).is_err());
        assert!(verify(key, "", 0).is_err());
    }
}
