//! `[scheduling]` settings (docs/configuration.md, docs/scheduling.md) and the two
//! background loops `salus serve` runs for it: the reminder outbox worker and the
//! sweeper that rolls slot horizons forward and frees expired holds.

use anyhow::{bail, Result};
use salus_scheduling::channel::{PortalChannel, SmtpEmailChannel, WebhookSmsChannel};
use salus_scheduling::jiff::Timestamp;
use salus_scheduling::{Channel, JitsiProvider};
use salus_service::scheduling::{Scheduling, SchedulingConfig};
use salus_service::FhirService;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The `[scheduling]` table. Secrets are never serialized or printed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulingSection {
    /// Days ahead Slots are kept for (rules may set their own `horizonDays`).
    pub horizon_days: u32,
    /// Default `$hold` duration, minutes.
    pub hold_minutes: i64,
    /// Longest `$hold` a client may ask for, minutes.
    pub max_hold_minutes: i64,
    /// Reminders before each visit, minutes (1440 = 24 h).
    pub reminder_offsets_minutes: Vec<i64>,
    /// Channel for messages to patients: `portal` or `sms` (needs `sms_webhook_url`).
    pub patient_channel: String,
    /// How long an outbox worker owns a claimed message, seconds.
    pub lease_seconds: i64,
    /// Days until a follow-up Task is due.
    pub follow_up_days: i64,
    /// Rooms are `<video_base_url>/<room>`.
    pub video_base_url: String,
    /// `iss`/`aud` of the join tokens.
    pub video_app_id: String,
    /// HMAC key of the join tokens (or `SALUS_VIDEO_SECRET`); a random per-process key
    /// when unset, so tokens only verify while this process runs.
    #[serde(skip_serializing)]
    pub video_secret: Option<String>,
    /// Minutes a join token stays valid after the visit ends.
    pub video_grace_minutes: i64,
    /// SMS gateway URL (`POST` JSON `{to, text, key}`).
    pub sms_webhook_url: Option<String>,
    /// Bearer token for the SMS gateway (or `SALUS_SMS_WEBHOOK_TOKEN`).
    #[serde(skip_serializing)]
    pub sms_webhook_token: Option<String>,
    /// SMTP relay host for e-mail reminders (plain SMTP, no TLS: a local relay).
    pub smtp_host: Option<String>,
    pub smtp_port: u16,
    /// Sender, `Clinic <visits@clinic.example>`.
    pub smtp_from: Option<String>,
    pub smtp_username: Option<String>,
    /// SMTP password (or `SALUS_SMTP_PASSWORD`); never printed or serialized.
    #[serde(skip_serializing)]
    pub smtp_password: Option<String>,
    /// Seconds between outbox passes.
    pub outbox_interval_seconds: u64,
    /// Seconds between sweeps (slot horizon, expired holds).
    pub sweep_interval_seconds: u64,
}

impl std::fmt::Debug for SchedulingSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulingSection")
            .field("horizon_days", &self.horizon_days)
            .field("hold_minutes", &self.hold_minutes)
            .field("reminder_offsets_minutes", &self.reminder_offsets_minutes)
            .field("patient_channel", &self.patient_channel)
            .field("video_base_url", &self.video_base_url)
            .field("video_secret", &self.video_secret.as_ref().map(|_| "<set>"))
            .field("sms_webhook_url", &self.sms_webhook_url)
            .field("smtp_host", &self.smtp_host)
            .field(
                "smtp_password",
                &self.smtp_password.as_ref().map(|_| "<set>"),
            )
            .finish_non_exhaustive()
    }
}

impl Default for SchedulingSection {
    fn default() -> Self {
        let d = SchedulingConfig::default();
        SchedulingSection {
            horizon_days: d.horizon_days,
            hold_minutes: d.hold_minutes,
            max_hold_minutes: d.max_hold_minutes,
            reminder_offsets_minutes: d.reminder_offsets_minutes,
            patient_channel: d.patient_channel,
            lease_seconds: d.lease_seconds,
            follow_up_days: d.follow_up_days,
            video_base_url: "https://meet.example.org".into(),
            video_app_id: "salus".into(),
            video_secret: None,
            video_grace_minutes: 30,
            sms_webhook_url: None,
            sms_webhook_token: None,
            smtp_host: None,
            smtp_port: 25,
            smtp_from: None,
            smtp_username: None,
            smtp_password: None,
            outbox_interval_seconds: 30,
            sweep_interval_seconds: 3600,
        }
    }
}

impl SchedulingSection {
    /// Reject settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<()> {
        let max = salus_scheduling::availability::MAX_HORIZON_DAYS;
        if self.horizon_days == 0 || self.horizon_days > max {
            bail!("scheduling.horizon_days must be 1 to {max}");
        }
        if self.max_hold_minutes < 1
            || self.hold_minutes < 1
            || self.hold_minutes > self.max_hold_minutes
        {
            bail!("scheduling.hold_minutes must be at least 1 and at most scheduling.max_hold_minutes");
        }
        if let Some(m) = self.reminder_offsets_minutes.iter().find(|m| **m <= 0) {
            bail!("scheduling.reminder_offsets_minutes must be positive minutes, got {m}");
        }
        match self.patient_channel.as_str() {
            "portal" => {}
            "sms" if self.sms_webhook_url.is_some() => {}
            "sms" => bail!("scheduling.patient_channel = \"sms\" needs scheduling.sms_webhook_url"),
            "email" if self.smtp_host.is_some() && self.smtp_from.is_some() => {}
            "email" => bail!("scheduling.patient_channel = \"email\" needs scheduling.smtp_host and scheduling.smtp_from"),
            other => bail!("scheduling.patient_channel must be portal, sms or email, got '{other}'"),
        }
        for (name, url) in [
            ("video_base_url", Some(&self.video_base_url)),
            ("sms_webhook_url", self.sms_webhook_url.as_ref()),
        ] {
            if let Some(u) = url {
                if !(u.starts_with("https://") || u.starts_with("http://")) {
                    bail!("scheduling.{name} must start with http:// or https://, got '{u}'");
                }
            }
        }
        if let Some(from) = &self.smtp_from {
            if !from.contains('@') {
                bail!("scheduling.smtp_from must be an e-mail address, got '{from}'");
            }
        }
        if self.lease_seconds < 1
            || self.outbox_interval_seconds == 0
            || self.sweep_interval_seconds == 0
        {
            bail!("scheduling.lease_seconds, outbox_interval_seconds and sweep_interval_seconds must be at least 1");
        }
        Ok(())
    }

    /// The service settings and video provider.
    pub fn scheduling(&self) -> Scheduling {
        let secret = self
            .video_secret
            .clone()
            .or_else(|| std::env::var("SALUS_VIDEO_SECRET").ok())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Scheduling {
            config: SchedulingConfig {
                horizon_days: self.horizon_days,
                hold_minutes: self.hold_minutes,
                max_hold_minutes: self.max_hold_minutes,
                reminder_offsets_minutes: self.reminder_offsets_minutes.clone(),
                patient_channel: self.patient_channel.clone(),
                lease_seconds: self.lease_seconds,
                follow_up_days: self.follow_up_days,
            },
            video: Arc::new(JitsiProvider::new(
                &self.video_base_url,
                secret.as_bytes(),
                &self.video_app_id,
                self.video_grace_minutes,
            )),
        }
    }

    /// The channels the outbox delivers through.
    pub fn channels(&self) -> Result<Vec<Arc<dyn Channel>>> {
        let mut out: Vec<Arc<dyn Channel>> = vec![Arc::new(PortalChannel)];
        if let (Some(host), Some(from)) = (&self.smtp_host, &self.smtp_from) {
            let password = self
                .smtp_password
                .clone()
                .or_else(|| std::env::var("SALUS_SMTP_PASSWORD").ok());
            let creds = self.smtp_username.clone().zip(password);
            let ch = SmtpEmailChannel::new(host, self.smtp_port, from, creds)
                .map_err(|e| anyhow::anyhow!("scheduling.smtp_from: {e}"))?;
            out.push(Arc::new(ch));
        }
        if let Some(url) = &self.sms_webhook_url {
            let token = self
                .sms_webhook_token
                .clone()
                .or_else(|| std::env::var("SALUS_SMS_WEBHOOK_TOKEN").ok());
            out.push(Arc::new(WebhookSmsChannel::new(url, token)));
        }
        Ok(out)
    }
}

/// Run the outbox worker and the sweeper until `stop` completes.
pub async fn run_workers(
    svc: FhirService,
    section: SchedulingSection,
    scheduling: Arc<Scheduling>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let channels = match section.channels() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "scheduling channels not started");
            return;
        }
    };
    let worker = format!(
        "salus-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let mut outbox = tokio::time::interval(Duration::from_secs(section.outbox_interval_seconds));
    let mut sweep = tokio::time::interval(Duration::from_secs(section.sweep_interval_seconds));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = outbox.tick() => {
                match svc.process_outbox(&scheduling, &channels, &worker, Timestamp::now(), 100).await {
                    Ok(r) if r.sent + r.failed > 0 => tracing::info!(sent = r.sent, failed = r.failed, "outbox pass"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "outbox pass failed"),
                }
            }
            _ = sweep.tick() => {
                if let Err(e) = svc.refresh_schedules(&scheduling, Timestamp::now()).await {
                    tracing::warn!(error = %e, "slot sweep failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        let d = SchedulingSection::default();
        d.validate().unwrap();
        assert_eq!(d.reminder_offsets_minutes, [1440, 60]);
        let bad = SchedulingSection {
            patient_channel: "sms".into(),
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sms_webhook_url"));
        let bad = SchedulingSection {
            hold_minutes: 0,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("hold_minutes"));
        let s = SchedulingSection {
            video_secret: Some("topsecret".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("topsecret"));
        assert!(!toml::to_string(&s).unwrap().contains("topsecret"));
        let parsed: SchedulingSection =
            toml::from_str("hold_minutes = 5\nreminder_offsets_minutes = [120]\n").unwrap();
        assert_eq!(parsed.hold_minutes, 5);
        assert_eq!(parsed.horizon_days, 90);
    }
}
