//! A desired-state object together with the version of the write that last changed it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An object with the log index of the write that last changed it. Versions only grow, so
/// a compare-and-set on the version detects every intervening write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: T,
}
