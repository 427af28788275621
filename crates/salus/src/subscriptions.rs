//! `[subscriptions]`: the FHIR Subscriptions engine (docs/subscriptions.md).

use anyhow::{bail, Context, Result};
use salus_service::FhirService;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `[subscriptions]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionsSection {
    /// Run the engine (match changes, deliver notifications, serve the operations).
    pub enabled: bool,
    /// How often the change feed is read for writes made by other processes.
    pub poll_interval_ms: u64,
    /// Consecutive failed deliveries before a subscription goes to `error`.
    pub max_failures: u32,
    /// First retry delay; doubled per failure up to `retry_max_seconds`.
    pub retry_base_ms: u64,
    pub retry_max_seconds: u64,
    /// Delivered events kept per subscription for `$events`.
    pub retained_events: u64,
    /// Undelivered events kept per subscription (older ones are dropped and counted).
    pub max_backlog: u64,
    /// URL prefixes rest-hook endpoints must start with; empty: any https URL (http
    /// only to loopback).
    pub allowed_endpoints: Vec<String>,
    /// Administrator topics: R4B `SubscriptionTopic` JSON files.
    pub topics: Vec<PathBuf>,
    /// Lifetime of websocket binding tokens.
    pub ws_token_seconds: u64,
}

impl Default for SubscriptionsSection {
    fn default() -> Self {
        SubscriptionsSection {
            enabled: true,
            poll_interval_ms: 1000,
            max_failures: 5,
            retry_base_ms: 1000,
            retry_max_seconds: 300,
            retained_events: 1000,
            max_backlog: 10_000,
            allowed_endpoints: vec![],
            topics: vec![],
            ws_token_seconds: 3600,
        }
    }
}

impl SubscriptionsSection {
    pub fn validate(&self) -> Result<()> {
        if self.poll_interval_ms < 10 {
            bail!("subscriptions.poll_interval_ms must be at least 10");
        }
        if self.max_failures == 0 {
            bail!("subscriptions.max_failures must be at least 1");
        }
        if self.retry_base_ms == 0 || self.retry_max_seconds == 0 {
            bail!("subscriptions.retry_base_ms and retry_max_seconds must be positive");
        }
        if self.max_backlog == 0 || self.ws_token_seconds == 0 {
            bail!("subscriptions.max_backlog and ws_token_seconds must be positive");
        }
        for e in &self.allowed_endpoints {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                bail!("subscriptions.allowed_endpoints: '{e}' is not an http(s) URL prefix");
            }
        }
        Ok(())
    }

    /// The topics: built-in ones plus the configured files (every problem named).
    pub fn topics(&self) -> Result<salus_subscriptions::Topics> {
        let mut topics = salus_subscriptions::Topics::builtin();
        for f in &self.topics {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the topic file {}", f.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("topic file {} is not JSON", f.display()))?;
            let t = salus_subscriptions::topic::parse_topic(&v)
                .map_err(|e| anyhow::anyhow!("topic file {}: {e}", f.display()))?;
            tracing::info!(topic = %t.url, "subscription topic loaded");
            topics.add(t);
        }
        Ok(topics)
    }

    /// The engine over `svc` (whose store signals `changed` on commit).
    pub fn engine(
        &self,
        base_url: String,
        require_grants: bool,
        svc: FhirService,
        changed: Arc<tokio::sync::Notify>,
    ) -> Result<salus_subscriptions::Engine> {
        let config = salus_subscriptions::EngineConfig {
            base_url,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            max_failures: self.max_failures,
            retry_base: Duration::from_millis(self.retry_base_ms),
            retry_max: Duration::from_secs(self.retry_max_seconds),
            retained_events: self.retained_events,
            max_backlog: self.max_backlog,
            endpoints: salus_subscriptions::EndpointPolicy {
                allowed: self.allowed_endpoints.clone(),
            },
            require_grants,
            ws_token_ttl: Duration::from_secs(self.ws_token_seconds),
            ..Default::default()
        };
        Ok(salus_subscriptions::Engine::new(
            svc,
            self.topics()?,
            config,
            changed,
        ))
    }
}
