//! The public status page's data: each service's health and the posted notices, as
//! `/status.json` serves them and the page renders them.

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ServiceStatus {
    pub name: String,
    pub health: Health,
    pub passing: usize,
    pub instances: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Status {
    /// The node that rendered the page.
    pub node: String,
    pub nodes_up: usize,
    pub nodes: usize,
    pub services: Vec<ServiceStatus>,
    /// Open notices first (newest first), then the most recent resolved ones.
    pub notices: Vec<Notice>,
}
