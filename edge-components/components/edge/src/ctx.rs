//! What every stage of one request shares: the key-value store, the clock, the variables
//! (read once each, on first use) and where requests to the region go.

use std::collections::HashMap;

use spin_sdk::experimental::wasi::keyvalue::{atomics, store as wkv};
use spin_sdk::key_value::Store;
use spin_sdk::variables;
use tessera_api::ErrorCode;
use tessera_edge_guest as guest;

pub(crate) struct Ctx {
    pub store: Store,
    pub now_ms: u64,
    pub upstream: guest::Upstream,
    /// The client's address as the edge sees it (`ip:port` or `ip`).
    pub client_addr: String,
    vars: std::cell::RefCell<HashMap<&'static str, std::rc::Rc<str>>>,
    /// The same store through `wasi:keyvalue`, for atomic counters (opened on first use).
    bucket: std::cell::OnceCell<Option<wkv::Bucket>>,
}

impl Ctx {
    pub async fn open(parts: &http::request::Parts) -> Result<Ctx, guest::Reply> {
        let store = Store::open_default()
            .await
            .map_err(|e| guest::error(ErrorCode::Internal, format!("key-value: {e}")))?;
        let router_url = variables::get("router_url").await.unwrap_or_default();
        if router_url.is_empty() {
            return Err(guest::error(
                ErrorCode::Internal,
                "edge misconfigured: router_url is not set",
            ));
        }
        let pop = variables::get("pop").await.unwrap_or_default();
        let incoming = guest::header(&parts.headers, "traceparent");
        let traceparent = guest::traceparent(incoming, &guest::random_bytes(24));
        let peer = guest::header(&parts.headers, guest::SPIN_CLIENT_ADDR).unwrap_or("");
        let trusted = variables::get("trusted_proxies").await.unwrap_or_default();
        let client_addr = tessera_edge_logic::client::address(
            peer,
            &trusted,
            guest::header(&parts.headers, "fly-client-ip"),
            guest::header(&parts.headers, "x-forwarded-for"),
        );
        Ok(Ctx {
            store,
            now_ms: guest::now_ms(),
            upstream: guest::Upstream { base: router_url, pop, traceparent },
            client_addr,
            vars: Default::default(),
            bucket: Default::default(),
        })
    }

    /// A variable (empty when unset), fetched from the host once per request.
    pub async fn var(&self, name: &'static str) -> std::rc::Rc<str> {
        if let Some(v) = self.vars.borrow().get(name) {
            return v.clone();
        }
        let v: std::rc::Rc<str> = variables::get(name).await.unwrap_or_default().into();
        self.vars.borrow_mut().insert(name, v.clone());
        v
    }

    /// A numeric variable, or `default` when unset or not a number.
    pub async fn var_u64(&self, name: &'static str, default: u64) -> u64 {
        self.var(name).await.trim().parse().unwrap_or(default)
    }

    /// Adds `delta` to the counter at `key` atomically (concurrent requests never lose a
    /// count) and returns the new value; `None` when the store refuses.
    pub fn increment(&self, key: &str, delta: i64) -> Option<i64> {
        let bucket = self.bucket.get_or_init(|| wkv::open("default").ok()).as_ref()?;
        atomics::increment(bucket, key, delta).ok()
    }

    /// Counts an outcome for the edge's metrics (`metric:<family>:<outcome>`; the
    /// project's host exports these as Prometheus counters, Spin keeps them as counters).
    pub fn count(&self, family: &str, outcome: &str) {
        let _ = self.increment(&format!("metric:{family}:{outcome}"), 1);
    }

    /// Reads a decimal counter or timestamp.
    pub async fn get_u64(&self, key: &str) -> Option<u64> {
        let v = self.store.get(key).await.ok()??;
        std::str::from_utf8(&v).ok()?.parse().ok()
    }
}

/// Counts a refusal the edge made (`refusals` by code), opening the key-value store itself:
/// a request may be refused before any [`Ctx`] exists.
pub fn count_refusal(label: &str) {
    if let Ok(bucket) = wkv::open("default") {
        let _ = atomics::increment(&bucket, &format!("metric:refusals:{label}"), 1);
    }
}
