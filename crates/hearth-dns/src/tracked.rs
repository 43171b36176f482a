//! The co-op zone's index kept with what it was built from, so that the next snapshot's index
//! follows only what changed: a write of one record set costs that set's name, not the zone.
//!
//! Each name's data is a function of its own sources (its static sets, its nodes and
//! services, its VM's addresses) and of whether a name with data lies below it (then it
//! exists, as an empty non-terminal). `Tracked` keeps those sources per name and a count of
//! names with data below each name, finds the names a change touches (a diff of the record
//! maps, which skips their shared subtrees; a comparison of the small per-name maps the view
//! and the VMs give), and recomputes only those. A whole build is the same walk from nothing,
//! so both ways share every rule, and the tests check they agree.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hearth_types::View;
use hearth_types::desired::DesiredState;
use imbl::ordmap::DiffItem;

use crate::index::{
    NameData, NameIndex, Pending, RrSet, add_nodes, add_services, address_sets, proper_ancestors,
    record_key_in_zone, static_set, vm_names,
};
use crate::settings::Zone;

/// Keys of names, as `NameIndex` keys them.
type Key = Box<[u8]>;

#[derive(Debug, Clone, Default)]
pub(crate) struct Tracked {
    pub(crate) index: NameIndex,
    /// The static sets written at each name, by record key: the order the full build used to
    /// merge them in, kept so that answers list the data in the same order.
    statics: imbl::HashMap<Key, imbl::OrdMap<String, RrSet>>,
    /// The nodes and services of each name, as the view and the drain flags give them.
    members: Arc<HashMap<Key, Pending>>,
    /// The VM addresses of each name.
    vms: Arc<HashMap<Key, Vec<IpAddr>>>,
    /// How many names with data of their own lie strictly below each name.
    below: imbl::HashMap<Key, u32>,
}

impl Tracked {
    /// The index of `zone` for `view` and `desired`, built whole.
    pub(crate) fn build(zone: &Zone, view: &View, desired: &DesiredState) -> Self {
        Self::default().follow(None, zone, view, desired)
    }

    /// The index for `view` and `desired`, from this one, which was built for `before` (None:
    /// this one is empty) and the same `zone`.
    pub(crate) fn follow(
        &self,
        before: Option<(&View, &DesiredState)>,
        zone: &Zone,
        view: &View,
        desired: &DesiredState,
    ) -> Self {
        let mut next = self.clone();
        // The apex always exists.
        let mut touched: HashSet<Key> = HashSet::from([Key::default()]);
        next.follow_records(before.map(|(_, d)| d), zone, desired, &mut touched);
        let members_same = before.is_some_and(|(v, d)| v == view && d.drained == desired.drained);
        if !members_same {
            let mut members = HashMap::new();
            add_nodes(&mut members, zone, view);
            add_services(&mut members, zone, view, desired);
            changed_keys(&self.members, &members, &mut touched);
            next.members = Arc::new(members);
        }
        let vms_same = before.is_some_and(|(_, d)| d.compute.vms.ptr_eq(&desired.compute.vms));
        if !vms_same {
            let vms = vm_names(zone, desired);
            changed_keys(&self.vms, &vms, &mut touched);
            next.vms = Arc::new(vms);
        }
        // A name that gains or loses data of its own makes its ancestors exist or not.
        let mut ancestors = Vec::new();
        for key in &touched {
            let (had, has) = (self.has_own(key), next.has_own(key));
            if had == has {
                continue;
            }
            for ancestor in proper_ancestors(key) {
                let count = next.below.get(ancestor).copied().unwrap_or(0);
                let count = if has {
                    count + 1
                } else {
                    count.saturating_sub(1)
                };
                if count == 0 {
                    next.below.remove(ancestor);
                } else {
                    next.below.insert(Key::from(ancestor), count);
                }
                ancestors.push(Key::from(ancestor));
            }
        }
        touched.extend(ancestors);
        for key in touched {
            let data = next.name_data(&key, zone);
            next.index.set(key, data);
        }
        next
    }

    /// Follows the static record sets from `before`'s to `desired`'s, adding the names whose
    /// sets changed to `touched`.
    fn follow_records(
        &mut self,
        before: Option<&DesiredState>,
        zone: &Zone,
        desired: &DesiredState,
        touched: &mut HashSet<Key>,
    ) {
        let nothing = imbl::OrdMap::new();
        let old_records = before.map_or(&nothing, |d| &d.records);
        for item in old_records.diff(&desired.records) {
            let (old, new) = match item {
                DiffItem::Add(key, set) => (None, Some((key, set))),
                DiffItem::Update { old, new } => (Some(old), Some(new)),
                DiffItem::Remove(key, set) => (Some((key, set)), None),
            };
            if let Some((record, set)) = old
                && let Some(name) = record_key_in_zone(zone, &set.value)
            {
                if let Some(sets) = self.statics.get_mut(&name) {
                    sets.remove(record);
                    if sets.is_empty() {
                        self.statics.remove(&name);
                    }
                }
                touched.insert(name);
            }
            if let Some((record, set)) = new
                && let Some(name) = record_key_in_zone(zone, &set.value)
            {
                if let Some(rrset) = static_set(&zone.origin, &set.value, zone.ttl) {
                    let sets = self.statics.entry(name.clone()).or_default();
                    sets.insert(record.clone(), rrset);
                }
                touched.insert(name);
            }
        }
    }

    /// Whether `key` has data of its own (static sets, a node, a service, a VM).
    fn has_own(&self, key: &[u8]) -> bool {
        self.statics.contains_key(key)
            || self.members.contains_key(key)
            || self.vms.contains_key(key)
    }

    /// What `key` holds, from its sources: None when the name does not exist.
    fn name_data(&self, key: &[u8], zone: &Zone) -> Option<NameData> {
        let is_apex = key.is_empty();
        let below = self.below.get(key).copied().unwrap_or(0);
        if !is_apex && below == 0 && !self.has_own(key) {
            return None;
        }
        let mut pending = self.members.get(key).cloned().unwrap_or_default();
        for set in self
            .statics
            .get(key)
            .into_iter()
            .flat_map(|sets| sets.values())
        {
            pending.add_static(set.clone());
        }
        if let Some(ips) = self.vms.get(key)
            && !pending.statics.iter().any(RrSet::is_address)
        {
            for set in address_sets(ips.clone(), zone.ttl) {
                pending.add_static(set);
            }
        }
        Some(pending.finish(zone.ttl, is_apex))
    }
}

/// Adds to `touched` every key whose value differs between `old` and `new`.
fn changed_keys<V: PartialEq>(
    old: &HashMap<Key, V>,
    new: &HashMap<Key, V>,
    touched: &mut HashSet<Key>,
) {
    for (key, value) in old {
        if new.get(key) != Some(value) {
            touched.insert(key.clone());
        }
    }
    for (key, value) in new {
        if old.get(key) != Some(value) {
            touched.insert(key.clone());
        }
    }
}
