//! The `salus` binary's library: configuration, wiring, server start-up and shutdown,
//! the import tool, `salus view run`, `salus deid` and demo data. `main.rs` only parses the command line.

pub mod config;
pub mod deid;
pub mod demo;
pub mod import;
pub mod serve;
pub mod views;
