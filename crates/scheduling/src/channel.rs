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

/// E-mail through an SMTP relay (RFC 5321) without TLS: meant for a relay on the same
/// host or private network (a local Postfix, a submission relay behind a VPN). The
/// Message-ID is derived from the idempotency key (RFC 5322 3.6.4), so a repeat of the
/// same reminder carries the same Message-ID and receiving systems can drop it.
pub struct SmtpEmailChannel {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl SmtpEmailChannel {
    /// `host:port` of the relay, the sender address, optional credentials (never logged).
    pub fn new(
        host: &str,
        port: u16,
        from: &str,
        credentials: Option<(String, String)>,
    ) -> Result<Self, ChannelError> {
        let from = from
            .parse()
            .map_err(|e| ChannelError::Transport(format!("sender '{from}': {e}")))?;
        let mut b = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(std::time::Duration::from_secs(10)));
        if let Some((user, pass)) = credentials {
            b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
                user, pass,
            ));
        }
        Ok(SmtpEmailChannel {
            transport: b.build(),
            from,
        })
    }
}

#[async_trait]
impl Channel for SmtpEmailChannel {
    fn name(&self) -> &str {
        "email"
    }
    async fn send(&self, m: &OutboundMessage) -> Result<(), ChannelError> {
        use lettre::AsyncTransport;
        let to: lettre::message::Mailbox = m
            .address
            .as_deref()
            .ok_or_else(|| ChannelError::NoAddress(m.recipient.clone()))?
            .parse()
            .map_err(|_| ChannelError::NoAddress(m.recipient.clone()))?;
        let id = crate::stable_id("reminder", &[&m.idempotency_key]);
        let email = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject.clone())
            .message_id(Some(format!("<{id}@salus>")))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(m.body.clone())
            .map_err(|e| ChannelError::Transport(e.to_string()))?;
        self.transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| ChannelError::Transport(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A minimal SMTP server (RFC 5321 happy path) that records the DATA it receives.
    async fn fake_smtp() -> (u16, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
            let mut data = String::new();
            let mut in_data = false;
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap() == 0 {
                    break;
                }
                if in_data {
                    if line == ".\r\n" {
                        in_data = false;
                        w.write_all(b"250 queued\r\n").await.unwrap();
                    } else {
                        data.push_str(&line);
                    }
                    continue;
                }
                let cmd = line.to_ascii_uppercase();
                let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                    b"250 fake\r\n"
                } else if cmd.starts_with("DATA") {
                    in_data = true;
                    b"354 go ahead\r\n"
                } else if cmd.starts_with("QUIT") {
                    w.write_all(b"221 bye\r\n").await.unwrap();
                    break;
                } else {
                    b"250 ok\r\n"
                };
                w.write_all(reply).await.unwrap();
            }
            data
        });
        (port, task)
    }

    #[tokio::test]
    async fn smtp_channel_sends_with_a_stable_message_id() {
        let (port, server) = fake_smtp().await;
        let ch =
            SmtpEmailChannel::new("127.0.0.1", port, "Clinic <clinic@example.org>", None).unwrap();
        let m = OutboundMessage {
            communication: "Communication/c1".into(),
            idempotency_key: "Appointment/a1@1|60m".into(),
            recipient: "Patient/p1".into(),
            address: Some("pat@example.org".into()),
            subject: "Visit reminder".into(),
            body: "Your video visit starts in 1 hour.".into(),
        };
        ch.send(&m).await.unwrap();
        drop(ch);
        let data = server.await.unwrap();
        assert!(data.contains("Subject: Visit reminder"), "{data}");
        assert!(data.contains("To: pat@example.org"), "{data}");
        let id = crate::stable_id("reminder", &["Appointment/a1@1|60m"]);
        assert!(
            data.contains(&format!("Message-ID: <{id}@salus>")),
            "{data}"
        );
        assert!(data.contains("starts in 1 hour"));
        let no_address = OutboundMessage { address: None, ..m };
        let ch = SmtpEmailChannel::new("127.0.0.1", 9, "clinic@example.org", None).unwrap();
        assert_eq!(
            ch.send(&no_address).await,
            Err(ChannelError::NoAddress("Patient/p1".into()))
        );
    }
}
