//! Notification channels. A [`Channel`] delivers one [`OutboundMessage`] (a reminder or
//! a notice, already stored as a `Communication`); the outbox in `salus-service`
//! decides what to send and records that it was sent.
//!
//! Delivery is at-least-once: a worker that dies after delivering but before recording
//! leaves the message to be sent again once its lease ends. Every message carries its
//! idempotency key so a channel (or the service behind it) can drop the repeat; the
//! built-in webhook channel sends it as the `Idempotency-Key` header.

use async_trait::async_trait;
use std::sync::Mutex;

/// One message to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// `Communication/<id>` the message is stored as.
    pub communication: String,
    /// Unique per appointment and purpose (`Appointment/1|60m`).
    pub idempotency_key: String,
    /// `Patient/1`.
    pub recipient: String,
    /// Address on this channel (e-mail, phone number) when the recipient has one.
    pub address: Option<String>,
    pub subject: String,
    pub body: String,
}

/// Why delivery failed; the outbox retries later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The recipient has no address on this channel: retrying will not help.
    #[error("no address for {0} on this channel")]
    NoAddress(String),
    /// The transport failed (network, remote error): worth retrying.
    #[error("delivery failed: {0}")]
    Transport(String),
}

/// A way to reach a patient.
#[async_trait]
pub trait Channel: Send + Sync {
    /// The medium code stored in `Communication.medium` (`portal`, `sms`, `email`).
    fn name(&self) -> &str;
    async fn send(&self, message: &OutboundMessage) -> Result<(), ChannelError>;
}

/// In-portal messages: the stored `Communication` *is* the message; nothing to send.
#[derive(Debug, Default)]
pub struct PortalChannel;

#[async_trait]
impl Channel for PortalChannel {
    fn name(&self) -> &str {
        "portal"
    }
    async fn send(&self, _message: &OutboundMessage) -> Result<(), ChannelError> {
        Ok(())
    }
}

/// SMS through an HTTP gateway: `POST <url>` with JSON `{to, text, key}` and an
/// `Idempotency-Key` header; any 2xx answer counts as delivered.
pub struct WebhookSmsChannel {
    url: String,
    /// Sent as `Authorization: Bearer …` when set; never logged.
    token: Option<String>,
    client: reqwest::Client,
}

impl WebhookSmsChannel {
    pub fn new(url: &str, token: Option<String>) -> Self {
        WebhookSmsChannel {
            url: url.to_string(),
            token,
            client: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }
}

#[async_trait]
impl Channel for WebhookSmsChannel {
    fn name(&self) -> &str {
        "sms"
    }
    async fn send(&self, m: &OutboundMessage) -> Result<(), ChannelError> {
        let to = m
            .address
            .as_deref()
            .ok_or_else(|| ChannelError::NoAddress(m.recipient.clone()))?;
        let mut req = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", &m.idempotency_key)
            .json(&serde_json::json!({
                "to": to,
                "text": format!("{}: {}", m.subject, m.body),
                "key": m.idempotency_key,
            }));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ChannelError::Transport(e.without_url().to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(ChannelError::Transport(format!(
                "SMS gateway answered {}",
                resp.status()
            )))
        }
    }
}

/// Records what it is asked to send (tests, dry runs). With `fail_after`, delivery
/// fails once that many messages were sent (a gateway going down mid-way).
#[derive(Debug, Default)]
pub struct RecordingChannel {
    name: String,
    sent: Mutex<Vec<OutboundMessage>>,
    fail_after: Option<usize>,
}

impl RecordingChannel {
    pub fn new(name: &str) -> Self {
        RecordingChannel {
            name: name.to_string(),
            ..Default::default()
        }
    }

    pub fn failing_after(name: &str, n: usize) -> Self {
        RecordingChannel {
            name: name.to_string(),
            fail_after: Some(n),
            ..Default::default()
        }
    }

    /// Everything sent so far, in order.
    pub fn sent(&self) -> Vec<OutboundMessage> {
        self.sent.lock().expect("not poisoned").clone()
    }
}

#[async_trait]
impl Channel for RecordingChannel {
    fn name(&self) -> &str {
        &self.name
    }
    async fn send(&self, m: &OutboundMessage) -> Result<(), ChannelError> {
        let mut sent = self.sent.lock().expect("not poisoned");
        if self.fail_after.is_some_and(|n| sent.len() >= n) {
            return Err(ChannelError::Transport("recording channel stopped".into()));
        }
        sent.push(m.clone());
        Ok(())
    }
}
