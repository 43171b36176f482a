//! Members' own DNS zones, as kept in the desired state: a domain a member claimed, the TXT
//! challenge that proves it is theirs, and once proven (or approved by an admin) the record
//! sets every server answers for it, with names that follow one of the member's VMs. The
//! pure checks here (`check_apex`, `overlaps`, `MemberZone::validate_set`) are what the
//! state's `apply` and the API use.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::desired::{RecordSet, record_key};

/// The label under a claimed domain whose TXT record proves the claim.
pub const CHALLENGE_LABEL: &str = "_hearth-challenge";
/// The most record sets (and followed names) one zone holds.
pub const MAX_SETS: usize = 500;
/// The longest domain a member may claim: `_hearth-challenge.` before it still fits in a
/// name's 253 characters.
pub const MAX_APEX: usize = 253 - CHALLENGE_LABEL.len() - 1;
/// How many zones a member may hold when their plan says nothing.
pub const DEFAULT_ZONES: u64 = 3;

/// What [`check_apex`] takes: two labels or more of letters, digits and inner hyphens, and
/// maybe a final dot.
pub const APEX_PATTERN: &str = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$";

/// A member's zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MemberZone {
    /// The domain, lowercase, without the final dot: `example.org`.
    pub apex: String,
    pub owner: String,
    /// The value the TXT record at `_hearth-challenge.<apex>` must hold.
    pub challenge: String,
    /// Proven by the TXT record, or approved by an admin: every server answers for it.
    #[serde(default)]
    pub verified: bool,
    /// By `name/TYPE`, names relative to the apex (`@` for the apex itself).
    #[serde(default)]
    pub records: BTreeMap<String, RecordSet>,
    /// Names whose A and AAAA are the addresses of one of the owner's VMs, by its name:
    /// they follow the VM when its addresses change.
    #[serde(default)]
    pub follows: BTreeMap<String, String>,
    pub created_at: u64,
}

/// The domain `text` names, lowercase and without a final dot, if it could be a member's
/// zone: at least two labels of letters, digits and inner hyphens.
pub fn check_apex(text: &str) -> Result<String, String> {
    let apex = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = apex.split('.').collect();
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    // The challenge's name, under the domain, must fit in a name too.
    if labels.len() < 2 || apex.len() > MAX_APEX || !labels.iter().all(label_ok) {
        return Err(format!(
            "apex: `{text}` is not a domain (letters, digits and hyphens, at least two labels: example.org)"
        ));
    }
    Ok(apex)
}

/// Whether two domains are the same, or one lies inside the other.
pub fn overlaps(a: &str, b: &str) -> bool {
    let inside =
        |child: &str, parent: &str| child == parent || child.ends_with(&format!(".{parent}"));
    inside(a, b) || inside(b, a)
}

/// A relative name inside a zone: `@`, or labels of letters, digits, `-` and `_`.
fn check_relative(name: &str) -> Result<(), String> {
    let ok = name == "@"
        || (!name.is_empty()
            && name.len() <= 200
            && !name.ends_with('.')
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "name: `{name}` is not a name inside the zone (relative, like `www` or `@`)"
        )),
    }
}

impl MemberZone {
    /// Whether `set` may go into this zone: a valid set at a relative name, not the
    /// challenge's own name, no CNAME at the apex nor beside other data or a followed name,
    /// within [`MAX_SETS`].
    pub fn validate_set(&self, set: &RecordSet) -> Result<String, String> {
        check_relative(&set.name)?;
        set.validate()?;
        let key = set.key().ok_or("values: give at least one value")?;
        let name = set.name.to_ascii_lowercase();
        let is_cname = key.ends_with("/CNAME");
        if is_cname && name == "@" {
            return Err("values: the apex cannot be a CNAME (it holds the SOA and NS)".into());
        }
        let others = self
            .records
            .iter()
            .filter(|(k, s)| **k != key && s.name.eq_ignore_ascii_case(&name));
        let followed = self.follows.contains_key(&name);
        let beside_cname = others.clone().any(|(k, _)| k.ends_with("/CNAME"));
        if (is_cname && (others.count() > 0 || followed)) || beside_cname {
            return Err(format!(
                "values: `{name}` would hold a CNAME beside other data (RFC 1034); remove one first"
            ));
        }
        if followed && (key.ends_with("/A") || key.ends_with("/AAAA")) {
            return Err(format!(
                "values: `{name}` follows a VM's addresses; stop following it first"
            ));
        }
        if !self.records.contains_key(&key) && self.records.len() + self.follows.len() >= MAX_SETS {
            return Err(format!("records: at most {MAX_SETS} sets in one zone"));
        }
        Ok(key)
    }

    /// Whether `name` may follow a VM: a relative name with no addresses or CNAME of its own.
    pub fn validate_follow(&self, name: &str) -> Result<String, String> {
        check_relative(name)?;
        let name = name.to_ascii_lowercase();
        let taken = ["A", "AAAA", "CNAME"]
            .iter()
            .any(|t| self.records.contains_key(&record_key(&name, t)));
        if taken {
            return Err(format!(
                "name: `{name}` has addresses or a CNAME of its own; remove them first"
            ));
        }
        if !self.follows.contains_key(&name) && self.records.len() + self.follows.len() >= MAX_SETS
        {
            return Err(format!("records: at most {MAX_SETS} sets in one zone"));
        }
        Ok(name)
    }

    /// The full name of the challenge record.
    pub fn challenge_name(&self) -> String {
        format!("{CHALLENGE_LABEL}.{}", self.apex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::RecordData;

    fn set(name: &str, values: Vec<RecordData>) -> RecordSet {
        RecordSet {
            name: name.into(),
            ttl: None,
            values,
        }
    }

    fn zone() -> MemberZone {
        MemberZone {
            apex: "example.org".into(),
            owner: "mia".into(),
            challenge: "c".into(),
            verified: true,
            records: BTreeMap::new(),
            follows: BTreeMap::new(),
            created_at: 0,
        }
    }

    #[test]
    fn domains_are_checked_and_overlaps_found() {
        assert_eq!(check_apex("Example.ORG."), Ok("example.org".into()));
        for bad in ["org", "-a.org", "a..org", "a_b.org", "", "a.org/x"] {
            assert!(check_apex(bad).is_err(), "{bad}");
        }
        assert!(overlaps("example.org", "example.org"));
        assert!(overlaps("www.example.org", "example.org"));
        assert!(overlaps("example.org", "a.b.example.org"));
        assert!(!overlaps("myexample.org", "example.org"));
    }

    #[test]
    fn a_cname_stands_alone_and_a_followed_name_has_no_addresses_of_its_own() {
        let mut zone = zone();
        let txt = set("www", vec![RecordData::Txt { text: "hi".into() }]);
        let key = zone.validate_set(&txt).unwrap();
        zone.records.insert(key, txt);
        let cname = set(
            "www",
            vec![RecordData::Cname {
                target: "x.example.net.".into(),
            }],
        );
        assert!(zone.validate_set(&cname).is_err());
        let apex_cname = set(
            "@",
            vec![RecordData::Cname {
                target: "x.net.".into(),
            }],
        );
        assert!(zone.validate_set(&apex_cname).is_err());
        assert!(
            zone.validate_set(&set("a.b.", vec![RecordData::Txt { text: "x".into() }]))
                .is_err()
        );
        zone.follows.insert("web".into(), "web1".into());
        let a = set(
            "web",
            vec![RecordData::A {
                address: "192.0.2.1".parse().unwrap(),
            }],
        );
        assert!(zone.validate_set(&a).is_err());
        let a = set(
            "mail",
            vec![RecordData::A {
                address: "192.0.2.1".parse().unwrap(),
            }],
        );
        let key = zone.validate_set(&a).unwrap();
        zone.records.insert(key, a);
        assert!(zone.validate_follow("mail").is_err());
        assert_eq!(zone.validate_follow("Shop"), Ok("shop".into()));
    }
}
