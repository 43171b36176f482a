//! Compare-and-set on versioned objects, shared by every command: what applying did
//! (`Outcome`), and `put`/`remove` on a map of versioned values under a writer's `Expect`
//! (defined with the API's request types in `hearth_types::api`).

use hearth_types::desired::Versioned;
use serde::{Deserialize, Serialize};

pub use hearth_types::api::Expect;

/// The result of applying one command. Every replica computes the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Written; the object's new version.
    Applied { version: u64 },
    /// Removed.
    Removed,
    /// The expectation did not hold; `current` is the object's version (None: absent).
    Conflict { current: Option<u64> },
    /// A removal of something that does not exist.
    NotFound,
    /// The command is invalid; the message names the field.
    Invalid { message: String },
    /// The command is valid, but the caller may not have it: over a member's quota, for
    /// one. The message says what is left.
    Refused { message: String },
    /// Entries without a command (membership changes, leader blanks).
    Nothing,
    /// The outcomes of a `Command::Batch`, in its order.
    Many { outcomes: Vec<Outcome> },
    /// A new object got this id.
    Created { id: String, version: u64 },
}

/// An invalid command's outcome; the message names the field.
pub(crate) fn invalid(message: impl Into<String>) -> Outcome {
    Outcome::Invalid {
        message: message.into(),
    }
}

/// A valid command the caller may not have now; the message says why.
pub(crate) fn refused(message: impl Into<String>) -> Outcome {
    Outcome::Refused {
        message: message.into(),
    }
}

impl Outcome {
    /// Whether the state changed.
    pub fn changed(&self) -> bool {
        match self {
            Outcome::Applied { .. } | Outcome::Removed | Outcome::Created { .. } => true,
            Outcome::Many { outcomes } => outcomes.iter().any(Outcome::changed),
            _ => false,
        }
    }
}

pub(crate) fn put<T: Clone>(
    map: &mut hearth_types::shared_map::OrdMap<String, Versioned<T>>,
    key: String,
    value: T,
    expect: Expect,
    index: u64,
) -> Outcome {
    let current = map.get(&key).map(|v| v.version);
    if !expect.holds(current) {
        return Outcome::Conflict { current };
    }
    map.insert(
        key,
        Versioned {
            version: index,
            value,
        },
    );
    Outcome::Applied { version: index }
}

pub(crate) fn remove<T: Clone>(
    map: &mut hearth_types::shared_map::OrdMap<String, Versioned<T>>,
    key: &str,
    expect: Expect,
) -> Outcome {
    let current = map.get(key).map(|v| v.version);
    match (current, expect.holds(current)) {
        (None, _) => Outcome::NotFound,
        (Some(_), false) => Outcome::Conflict { current },
        (Some(_), true) => {
            map.remove(key);
            Outcome::Removed
        }
    }
}
