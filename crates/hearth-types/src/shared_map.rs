//! The desired state's large collections: `imbl` maps and vectors, which share structure
//! between copies (the state machine applies each batch to a copy, so a copy must cost the
//! changed paths, not the whole state), and the `BTreeMap` habits they lack.

pub use imbl::{OrdMap, Vector};

/// `retain` and in-place changes of every value, which `imbl::OrdMap` does not have. Each
/// changed value copies only its own path of shared nodes.
pub trait OrdMapExt<K, V> {
    /// Keeps only the entries for which `keep` is true.
    fn retain(&mut self, keep: impl FnMut(&K, &V) -> bool);
    /// Calls `change` with every value, in key order, mutably.
    fn change_each(&mut self, change: impl FnMut(&K, &mut V)) {
        self.change_where(|_, _| true, change);
    }
    /// Calls `change` with every value `pick` chooses, in key order, mutably; the values not
    /// picked stay shared with the map's copies.
    fn change_where(&mut self, pick: impl FnMut(&K, &V) -> bool, change: impl FnMut(&K, &mut V));
}

impl<K: Ord + Clone, V: Clone> OrdMapExt<K, V> for OrdMap<K, V> {
    fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let gone: Vec<K> = self
            .iter()
            .filter(|(k, v)| !keep(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            self.remove(&key);
        }
    }

    fn change_where(
        &mut self,
        mut pick: impl FnMut(&K, &V) -> bool,
        mut change: impl FnMut(&K, &mut V),
    ) {
        let keys: Vec<K> = self
            .iter()
            .filter(|(k, v)| pick(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(value) = self.get_mut(&key) {
                change(&key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retain_and_change_where_act_like_btreemaps_and_leave_copies_alone() {
        let mut map: OrdMap<u32, u32> = (0u32..100).map(|n| (n, n)).collect();
        let copy = map.clone();
        map.retain(|k, _| k % 3 == 0);
        map.change_where(|_, _| true, |k, v| *v = k * 2);
        let expected: OrdMap<u32, u32> = (0u32..100)
            .filter(|k| k % 3 == 0)
            .map(|k| (k, k * 2))
            .collect();
        assert_eq!(map, expected);
        assert_eq!(copy.len(), 100);
        assert!(copy.iter().all(|(k, v)| k == v));
    }
}
