//! FHIR Subscriptions for Salus (docs/subscriptions.md).
//!
//! Owns: topics (built-in and administrator-defined, R4B `SubscriptionTopic` JSON),
//! parsing and checking `Subscription` resources (R4 criteria subscriptions and the
//! Subscriptions R5 Backport IG 1.1.0 topic-based profile for R4), matching changes
//! against them ([`matcher`]: search criteria evaluated on the changed version's index
//! rows), the durable event outbox, delivery over rest-hook and websocket with retries,
//! backoff and the error state, handshakes and heartbeats, `$status`, `$events` and
//! `$get-ws-binding-token`, and the notification Bundles.
//!
//! The engine learns of changes from the store's change feed
//! ([`salus_store::Store::changes_after`]), so every write path — REST, transactions,
//! bulk import, HL7 v2, devices, another process on the same database — notifies; a
//! commit hook ([`NotifyingStore`]) wakes it at once for writes made in this process.
//!
//! Must not touch: HTTP routing and the websocket transport (the API crate runs those and
//! calls [`Engine`]), storage internals.

mod engine;
pub mod matcher;
mod notify;
mod spec;
mod state;
mod store_hook;
pub mod topic;
mod ws;

pub use engine::{Engine, EngineConfig, OperationError};
pub use spec::{Channel, Content, EndpointPolicy, Mode, Spec};
pub use store_hook::NotifyingStore;
pub use topic::{Topic, Topics};
pub use ws::WsSession;

/// Extensions and profiles of the Subscriptions R5 Backport IG 1.1.0.
pub mod backport {
    #[cfg(test)]
    const BASE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
    pub const FILTER_CRITERIA: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
    pub const PAYLOAD_CONTENT: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
    pub const HEARTBEAT_PERIOD: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period";
    pub const TIMEOUT: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-timeout";
    pub const MAX_COUNT: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-max-count";
    pub const CHANNEL_TYPE: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-channel-type";
    pub const SUBSCRIPTION_PROFILE: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";
    pub const STATUS_PROFILE: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
    pub const NOTIFICATION_PROFILE: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";
    pub const TOPIC_CANONICAL: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical";
    pub const STATUS_OPERATION: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status";
    pub const EVENTS_OPERATION: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events";
    pub const WS_TOKEN_OPERATION: &str =
        "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-get-ws-binding-token";

    #[cfg(test)]
    #[test]
    fn urls_share_the_ig_base() {
        for u in [
            FILTER_CRITERIA,
            PAYLOAD_CONTENT,
            HEARTBEAT_PERIOD,
            TIMEOUT,
            MAX_COUNT,
        ] {
            assert!(u.starts_with(BASE), "{u}");
        }
    }
}

/// Ids of the server's own bookkeeping resources (`Binary`): never matched, written by
/// the server only.
pub const BOOKKEEPING_PREFIX: &str = "salus-sub";

/// Whether a stored resource is the engine's own bookkeeping.
pub fn is_bookkeeping(rtype: &str, id: &str) -> bool {
    rtype == "Binary" && id.starts_with(BOOKKEEPING_PREFIX)
}
