//! The agent's TOML config: one serde struct with a doc comment per key, named defaults,
//! and `validate()`, which reports every problem with the key it concerns.
//!
//! Loading (`Config::load`) is four steps: read the config file, parse its text
//! (`Config::parse`), read the files it names (`Config::read_files`: the secret, the TSIG key,
//! the SMTP password), and check the parsed data together with those files' text
//! (`Config::validate_with`, which reads nothing). `Config::validate` is the last two.
//!
//! - `keys`: `Config`, the top-level keys and a field per section.
//! - `sections`: `[dns]`, `[dns.push]`, `[gossip]`, `[compute]`, `[state]`, `[[service]]`,
//!   `[[handler]]`.
//! - `check`: `[service.check]` and the `http://` target of an HTTP check.
//! - `smtp`: `[smtp]` and the `MailSettings` it checks into.
//! - `defaults`: the named defaults and the duration deserializer.
//! - `files`: `ConfigFiles`, what the files the config names hold.
//! - `validate`: the checks, and `Resolved`, what they derive.
//! - `load`: the steps in turn, and `ConfigError`.
//!
//! Inside, imports run one way: `defaults` and `files` at the bottom, then `check`, `smtp`,
//! `sections`, `keys`, `validate`, and `load` on top; this file only re-exports.
//!
//! This module is the agent's lowest layer: it imports no other module of the crate, and
//! `checks`, `mail`, `services`, `handlers` and the agent itself import it.

mod check;
mod defaults;
mod files;
mod keys;
mod load;
mod sections;
mod smtp;
#[cfg(test)]
mod tests;
mod validate;

pub use check::{CheckConfig, HttpTarget};
pub use files::{ConfigFiles, secret_file_problem};
pub use keys::Config;
pub use load::ConfigError;
pub use sections::{
    BillingSection, CephSection, ComputeSection, DnsConfig, DnsPushConfig, GossipConfig,
    HandlerConfig, HandlerScope, ServiceConfig, StateSection,
};
pub use smtp::{MailSettings, SmtpConfig, SmtpTls};
pub use validate::{Resolved, Webhook};
