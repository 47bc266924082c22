//! A worker's memory of final flags and gathered windows, kept for two checkpoint cuts.
//!
//! A worker needs to know a batch's flag, or that a window was gathered, only for what can
//! still reach it afterwards: a bucket's state in transit between workers (its pending
//! partials, its windows). A checkpoint is cut only while no bucket is in transit, so by the
//! time a worker reaches the checkpoint request every handover begun before has been installed
//! there, and one begun after carries only what the old owner had not yet applied — news the
//! worker hears after that cut. What the worker learnt before the previous cut can therefore
//! be forgotten at this one: the memory holds two generations and drops the older at each
//! cut, so it stays as large as a few seconds of decisions instead of growing for as long as
//! the worker runs. (Without checkpoints it is never aged.)

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

pub struct Recent<K, V, S = RandomState> {
    current: HashMap<K, V, S>,
    older: HashMap<K, V, S>,
}

impl<K, V, S: Default> Default for Recent<K, V, S> {
    fn default() -> Self {
        Recent {
            current: HashMap::default(),
            older: HashMap::default(),
        }
    }
}

impl<K: Hash + Eq, V, S: BuildHasher + Default> Recent<K, V, S> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.current.get(key).or_else(|| self.older.get(key))
    }

    pub fn contains(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.current.insert(key, value);
    }

    /// A checkpoint cut: what was learnt before the previous cut is dropped.
    pub fn age(&mut self) {
        self.older = std::mem::take(&mut self.current);
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.older.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_learnt_before_the_previous_cut_is_forgotten() {
        let mut r: Recent<u32, bool> = Recent::default();
        r.insert(1, true);
        r.age();
        r.insert(2, false);
        assert_eq!((r.get(&1), r.get(&2)), (Some(&true), Some(&false)));
        r.age();
        assert_eq!((r.get(&1), r.get(&2)), (None, Some(&false)));
        r.age();
        assert_eq!(r.len(), 0);
    }
}
