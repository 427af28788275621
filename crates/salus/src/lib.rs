//! The `salus` binary's library: configuration, wiring, server start-up and shutdown,
//! the import tool, bulk data (`salus export`), `salus view run`, `salus deid`, HL7 v2 intake over MLLP
//! (`salus convert`, `salus hl7 send`), `salus auth` (clients, users and keys of the built-in
//! authorization server), `salus keys` (encryption at rest), `salus migrate` (moving a store between SQLite and
//! PostgreSQL), analytics (`salus sql`, `salus analytics refresh`, the `$sql`,
//! `Measure/$evaluate-measure` and `$insights` provider) and demo data. `main.rs` only parses
//! the command line.

pub mod analytics;
pub mod audit;
pub mod auth;
pub mod bulk;
pub mod config;
pub mod deid;
pub mod demo;
pub mod devices;
pub mod encryption;
pub mod hl7;
pub mod import;
pub mod insights;
pub mod migrate;
pub mod scheduling;
pub mod serve;
pub mod subscriptions;
pub mod tls;
pub mod views;
