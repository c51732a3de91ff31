//! The host side of the components' key-value stores (`spin:key-value` and
//! `wasi:keyvalue`, which see the same data): in memory, one store per label.
//!
//! Each store keeps two kinds of entries apart:
//! - **pinned** entries, which are never evicted: what the host's NATS subscriber pushes
//!   (admission watermarks `wm:*`, invalidation marks `inv:*`, `bus:alive`). Losing one
//!   would let a stale catalog entry pass for fresh, or hide an admission. There are a
//!   few per event.
//! - **cache** entries, everything components write for themselves (catalog entries,
//!   verified tokens, rate counters), bounded in number. When full, a write evicts an
//!   entry: an expired rate window if it finds one, else any entry (all of them can be
//!   rebuilt: a cache miss or a counter that starts again).
//!
//! Counters (`wasi:keyvalue/atomics.increment`) are decimal text, so `get` reads them like
//! any value, and they are updated under the store's lock, so concurrent instances never
//! lose a count. Keys under `metric:` are not stored: they are the components' Prometheus
//! counters (see [`metric_name`]).
//!
//! Values carry their own timestamps; expiry is the components' business, as in Spin.

use std::collections::HashMap;

use parking_lot::RwLock;

/// Key prefixes of entries that are never evicted.
const PINNED_PREFIXES: &[&str] = &["wm:", "inv:", "bus:"];

fn is_pinned(key: &str) -> bool {
    PINNED_PREFIXES.iter().any(|p| key.starts_with(p))
}

#[derive(Debug, Default)]
struct Maps {
    pinned: HashMap<String, Vec<u8>>,
    cache: HashMap<String, Vec<u8>>,
}

impl Maps {
    fn get(&self, key: &str) -> Option<&Vec<u8>> {
        if is_pinned(key) { self.pinned.get(key) } else { self.cache.get(key) }
    }
}

/// All stores of this edge, by label.
#[derive(Debug)]
pub struct KvStores {
    stores: HashMap<String, RwLock<Maps>>,
    entries_max: usize,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// A counter update that is not a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncrementError {
    NoSuchStore,
    NotACounter,
}

/// What [`KvStores::swap`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    Swapped,
    /// The value changed since it was read; here is the current one.
    Changed(Option<Vec<u8>>),
}

impl KvStores {
    pub fn new(labels: impl IntoIterator<Item = String>, entries_max: usize) -> Self {
        KvStores {
            stores: labels.into_iter().map(|l| (l, RwLock::new(Maps::default()))).collect(),
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
        let mut maps = store.write();
        Self::insert(&mut maps, self.entries_max, key, value);
        Ok(())
    }

    fn insert(maps: &mut Maps, entries_max: usize, key: &str, value: Vec<u8>) {
        if is_pinned(key) {
            maps.pinned.insert(key.to_owned(), value);
            return;
        }
        if maps.cache.len() >= entries_max && !maps.cache.contains_key(key) {
            // Prefer a rate window that is over (`rl:<scope>:<key>:<window>` with a
            // smaller window than the newest one seen among a few samples), else anything.
            let victim = maps
                .cache
                .keys()
                .take(8)
                .min_by_key(|k| {
                    k.starts_with("rl:").then(|| rate_window(k)).flatten().unwrap_or(u64::MAX)
                })
                .cloned();
            if let Some(v) = victim {
                maps.cache.remove(&v);
            }
        }
        maps.cache.insert(key.to_owned(), value);
    }

    pub fn delete(&self, label: &str, key: &str) {
        if let Some(s) = self.stores.get(label) {
            let mut maps = s.write();
            maps.pinned.remove(key);
            maps.cache.remove(key);
        }
    }

    pub fn exists(&self, label: &str, key: &str) -> bool {
        self.stores.get(label).is_some_and(|s| s.read().get(key).is_some())
    }

    /// Entries in a store (pinned and cache).
    pub fn len(&self, label: &str) -> usize {
        self.stores.get(label).map_or(0, |s| {
            let m = s.read();
            m.pinned.len() + m.cache.len()
        })
    }

    /// Adds `delta` to the decimal counter at `key` (absent counts as 0) and returns the
    /// new value.
    pub fn increment(&self, label: &str, key: &str, delta: i64) -> Result<i64, IncrementError> {
        if let Some((name, outcome)) = metric_name(key) {
            metrics::counter!(name, "outcome" => outcome.to_owned()).increment(delta.max(0) as u64);
            return Ok(0);
        }
        let store = self.stores.get(label).ok_or(IncrementError::NoSuchStore)?;
        let mut maps = store.write();
        let current = match maps.get(key) {
            None => 0,
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or(IncrementError::NotACounter)?,
        };
        let next = current.saturating_add(delta);
        Self::insert(&mut maps, self.entries_max, key, next.to_string().into_bytes());
        Ok(next)
    }

    /// Sets `key` to `value` if it still holds `expected` (compare-and-swap).
    pub fn swap(&self, label: &str, key: &str, expected: Option<&[u8]>, value: Vec<u8>) -> Swap {
        let Some(store) = self.stores.get(label) else { return Swap::Changed(None) };
        let mut maps = store.write();
        let current = maps.get(key).cloned();
        if current.as_deref() != expected {
            return Swap::Changed(current);
        }
        Self::insert(&mut maps, self.entries_max, key, value);
        Swap::Swapped
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
        let mut maps = store.write();
        if !keep(maps.get(key).map(Vec::as_slice)) {
            return false;
        }
        Self::insert(&mut maps, self.entries_max, key, value);
        true
    }
}

fn rate_window(key: &str) -> Option<u64> {
    key.rsplit(':').next()?.parse().ok()
}

/// The Prometheus counters components may increment, as `metric:<family>:<outcome>` keys:
/// the family must be one of these and the outcome a short `[a-z_]` label, so a component
/// cannot blow up the series count.
const METRIC_FAMILIES: &[(&str, &str)] = &[
    ("bot_verdicts", "tessera_edge_bot_verdicts_total"),
    ("catalog_cache", "tessera_edge_catalog_cache_total"),
    ("queue_outcomes", "tessera_edge_queue_outcomes_total"),
    ("refusals", "tessera_edge_refusals_total"),
    ("watermarks", "tessera_edge_watermarks_total"),
];

/// `metric:<family>:<outcome>` as a Prometheus counter name and its `outcome` label.
pub fn metric_name(key: &str) -> Option<(&'static str, &str)> {
    let rest = key.strip_prefix("metric:")?;
    let (family, outcome) = rest.split_once(':')?;
    let name = METRIC_FAMILIES.iter().find(|(f, _)| *f == family)?.1;
    let ok = !outcome.is_empty()
        && outcome.len() <= 32
        && outcome.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    ok.then_some((name, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_pushed_entries_survive_a_full_cache() {
        let kv = KvStores::new(["default".to_owned()], 4);
        kv.set("default", "wm:show-1", b"w".to_vec()).unwrap();
        kv.set("default", "inv:counts:show-1", b"1".to_vec()).unwrap();
        for i in 0..100 {
            kv.set("default", &format!("cat:/v1/events/{i}"), b"x".to_vec()).unwrap();
        }
        assert_eq!(kv.get("default", "wm:show-1").as_deref(), Some(&b"w"[..]));
        assert_eq!(kv.get("default", "inv:counts:show-1").as_deref(), Some(&b"1"[..]));
        assert_eq!(kv.len("default"), 2 + 4);
    }

    #[test]
    fn concurrent_increments_are_never_lost() {
        let kv = std::sync::Arc::new(KvStores::new(["default".to_owned()], 1000));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        kv.increment("default", "rl:n:abc:7", 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(kv.get("default", "rl:n:abc:7").as_deref(), Some(&b"8000"[..]));
        kv.set("default", "text", b"hello".to_vec()).unwrap();
        assert_eq!(kv.increment("default", "text", 1), Err(IncrementError::NotACounter));
    }

    #[test]
    fn swap_replaces_only_what_was_read() {
        let kv = KvStores::new(["default".to_owned()], 10);
        assert_eq!(kv.swap("default", "k", None, b"1".to_vec()), Swap::Swapped);
        assert_eq!(
            kv.swap("default", "k", None, b"2".to_vec()),
            Swap::Changed(Some(b"1".to_vec()))
        );
        assert_eq!(kv.swap("default", "k", Some(b"1"), b"2".to_vec()), Swap::Swapped);
    }

    #[test]
    fn only_known_metric_families_with_short_labels_are_counters() {
        assert_eq!(
            metric_name("metric:bot_verdicts:allow"),
            Some(("tessera_edge_bot_verdicts_total", "allow"))
        );
        assert_eq!(metric_name("metric:anything:allow"), None);
        assert_eq!(metric_name("metric:bot_verdicts:Robert'); DROP"), None);
        assert_eq!(metric_name("rl:n:x:1"), None);
    }

    /// A family the edge component counts but the host does not know would be stored as a
    /// plain key-value counter that no operator ever sees (watermark refusals were).
    #[test]
    fn every_family_the_edge_component_counts_is_a_counter() {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../components/edge/src");
        let mut families = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(src).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            // `ctx.count("family", ...)` and keys written out (`"metric:family:..."`).
            for call in text.split(".count(\"").skip(1) {
                families.insert(call.split('"').next().unwrap().to_owned());
            }
            for key in text.split("\"metric:").skip(1) {
                let family = key.split([':', '"']).next().unwrap();
                if !family.is_empty() && !family.contains('{') {
                    families.insert(family.to_owned());
                }
            }
        }
        assert!(families.len() >= 5, "found too few counted families: {families:?}");
        for family in &families {
            assert!(
                metric_name(&format!("metric:{family}:x")).is_some(),
                "the edge counts `{family}`, which is no metric family of the host"
            );
        }
    }
}
