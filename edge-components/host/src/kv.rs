//! The host side of `spin:key-value`: an in-memory store per label, bounded in entries.
//! Values carry their own timestamps; expiry is the components' business, as in Spin.

use std::collections::HashMap;

use parking_lot::RwLock;

/// All stores of this edge, by label.
#[derive(Debug)]
pub struct KvStores {
    stores: HashMap<String, RwLock<HashMap<String, Vec<u8>>>>,
    entries_max: usize,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl KvStores {
    pub fn new(labels: impl IntoIterator<Item = String>, entries_max: usize) -> Self {
        KvStores {
            stores: labels.into_iter().map(|l| (l, RwLock::new(HashMap::new()))).collect(),
            entries_max,
        }
    }

    pub fn has(&self, label: &str) -> bool {
        self.stores.contains_key(label)
    }

    pub fn get(&self, label: &str, key: &str) -> Option<Vec<u8>> {
        self.stores.get(label)?.read().get(key).cloned()
    }

    pub fn set(&self, label: &str, key: &str, value: Vec<u8>) -> Result<(), Full> {
        let Some(store) = self.stores.get(label) else { return Err(Full) };
        let mut map = store.write();
        if map.len() >= self.entries_max && !map.contains_key(key) {
            // Make room by dropping an arbitrary entry: everything stored here is a cache
            // or a counter that can be rebuilt.
            let victim = map.keys().next().cloned();
            if let Some(v) = victim {
                map.remove(&v);
            }
        }
        map.insert(key.to_owned(), value);
        Ok(())
    }

    pub fn delete(&self, label: &str, key: &str) {
        if let Some(s) = self.stores.get(label) {
            s.write().remove(key);
        }
    }

    pub fn exists(&self, label: &str, key: &str) -> bool {
        self.stores.get(label).is_some_and(|s| s.read().contains_key(key))
    }

    pub fn len(&self, label: &str) -> usize {
        self.stores.get(label).map_or(0, |s| s.read().len())
    }

    /// Sets `key` only if `keep` says the new value should replace the current one.
    pub fn set_if(
        &self,
        label: &str,
        key: &str,
        value: Vec<u8>,
        keep: impl FnOnce(Option<&[u8]>) -> bool,
    ) -> bool {
        let Some(store) = self.stores.get(label) else { return false };
        let mut map = store.write();
        if !keep(map.get(key).map(Vec::as_slice)) {
            return false;
        }
        map.insert(key.to_owned(), value);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_are_bounded_and_separated_by_label() {
        let kv = KvStores::new(["default".to_owned()], 2);
        kv.set("default", "a", b"1".to_vec()).unwrap();
        kv.set("default", "b", b"2".to_vec()).unwrap();
        kv.set("default", "c", b"3".to_vec()).unwrap();
        assert_eq!(kv.len("default"), 2);
        assert_eq!(kv.get("default", "c"), Some(b"3".to_vec()));
        assert!(kv.set("other", "a", vec![]).is_err());
        assert!(!kv.set_if("default", "c", b"4".to_vec(), |old| old.is_none()));
    }
}
