//! The public status page's data: each service's health and 90 days of its uptime, and the
//! posted notices, as `/status.json` serves them and the page renders them.

use schemars::JsonSchema;
use serde::Serialize;

use crate::notice::Notice;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Every instance on an up node passes.
    Operational,
    /// Some pass, some do not.
    Degraded,
    /// None passes.
    Down,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ServiceStatus {
    pub name: String,
    pub health: Health,
    pub passing: usize,
    pub instances: usize,
    /// The last 90 days, oldest first, today last (UTC days).
    pub days: Vec<UptimeDay>,
    /// The share of the known time in those days the service was up, in percent; absent
    /// while nothing is known.
    pub uptime_percent: Option<f64>,
}

/// One day of a service's history: how much of it was sampled, and up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct UptimeDay {
    /// `YYYY-MM-DD`, UTC.
    pub date: String,
    pub known_ms: u64,
    pub up_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Status {
    /// The node that rendered the page.
    pub node: String,
    pub nodes_up: usize,
    pub nodes: usize,
    pub services: Vec<ServiceStatus>,
    /// Open notices first (newest first), then the most recent resolved ones.
    pub notices: Vec<Notice>,
    /// Every notice open during the last 90 days, oldest first: the incident timeline.
    pub timeline: Vec<Notice>,
    /// The first day of the 90 the bars and the timeline show (`YYYY-MM-DD`, UTC).
    pub since: String,
    /// The same day, as days since the epoch, for drawing.
    #[serde(skip)]
    #[schemars(skip)]
    pub since_day: u64,
}
