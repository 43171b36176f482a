//! Incidents and maintenance notes that admins post for the public status page.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::check_name;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NoticeKind {
    Incident,
    Maintenance,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Incident => "incident",
            NoticeKind::Maintenance => "maintenance",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    /// A short name: lowercase letters, digits and inner hyphens.
    #[schemars(regex(pattern = crate::names::NAME_PATTERN))]
    pub id: String,
    pub kind: NoticeKind,
    /// 1 to 200 characters, not all blank.
    #[schemars(length(min = 1, max = 200), regex(pattern = "\\S"))]
    pub title: String,
    #[serde(default)]
    #[schemars(length(max = 4000))]
    pub body: String,
    /// Unix seconds, set by the API node that took the post.
    #[serde(default)]
    pub posted_at: u64,
    /// Unix seconds; an open notice has none.
    #[serde(default)]
    pub resolved_at: Option<u64>,
}

pub const MAX_TITLE: usize = 200;
pub const MAX_BODY: usize = 4000;

impl Notice {
    pub fn validate(&self) -> Result<(), String> {
        check_name("id", &self.id)?;
        if self.title.trim().is_empty() || self.title.chars().count() > MAX_TITLE {
            return Err(format!("title: give 1 to {MAX_TITLE} characters"));
        }
        if self.body.chars().count() > MAX_BODY {
            return Err(format!("body: at most {MAX_BODY} characters"));
        }
        if self.resolved_at.is_some_and(|at| at < self.posted_at) {
            return Err("resolved_at: before posted_at".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_notices_name_the_field() {
        let good = Notice {
            id: "db-outage".into(),
            kind: NoticeKind::Incident,
            title: "Database down".into(),
            body: String::new(),
            posted_at: 10,
            resolved_at: None,
        };
        assert_eq!(good.validate(), Ok(()));
        let mut bad = good.clone();
        bad.id = "Bad Id".into();
        assert!(bad.validate().unwrap_err().starts_with("id:"));
        let mut bad = good.clone();
        bad.title = " ".into();
        assert!(bad.validate().unwrap_err().starts_with("title:"));
        let mut bad = good;
        bad.resolved_at = Some(5);
        assert!(bad.validate().unwrap_err().starts_with("resolved_at:"));
    }
}
