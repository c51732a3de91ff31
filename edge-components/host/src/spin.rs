//! Host implementations of the Spin interfaces the components import:
//! `spin:variables/variables@3.0.0`, `spin:key-value/key-value@3.0.0` and, over the same
//! stores as Spin does, `wasi:keyvalue/store` and `wasi:keyvalue/atomics`
//! (`@0.2.0-draft2`), generated with `bindgen!` from the WIT shipped in spin-sdk.
//!
//! Variables: a component sees only the variables its manifest entry declares, with
//! templates expanded (like Spin). Key-value: only the labels in its `key_value_stores`.
//! Key listings (`get-keys`, `list-keys`) are not offered: they trap (no component uses
//! them, and a key listing of a shared edge cache is not something to hand out).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use wasmtime::component::{Accessor, HasData, Linker, Resource};

use crate::kv::KvStores;

wasmtime::component::bindgen!({
    path: "wit",
    world: "spin-imports",
    imports: { default: trappable },
});

use spin::key_value::key_value as kv;
use spin::variables::variables as vars;
use wasi::keyvalue::atomics as wkv_atomics;
use wasi::keyvalue::store as wkv;

/// What a component may use, shared by all its instances.
#[derive(Debug)]
pub struct ComponentGrants {
    pub variables: BTreeMap<String, String>,
    pub kv_labels: Vec<String>,
}

/// Per-instance state of the Spin interfaces.
pub struct SpinState {
    grants: Arc<ComponentGrants>,
    kv: Arc<KvStores>,
    /// Open stores and buckets by resource id: their labels.
    open: HashMap<u32, String>,
    /// Open compare-and-swap handles: label, key and the value read.
    cas: HashMap<u32, (String, String, Option<Vec<u8>>)>,
    next: u32,
}

impl SpinState {
    pub fn new(grants: Arc<ComponentGrants>, kv: Arc<KvStores>) -> Self {
        SpinState { grants, kv, open: HashMap::new(), cas: HashMap::new(), next: 1 }
    }

    /// Opens store `label` if this component may; returns its resource id.
    fn open_label(&mut self, label: &str) -> Result<u32, OpenError> {
        if !self.grants.kv_labels.iter().any(|l| l == label) {
            return Err(OpenError::AccessDenied);
        }
        if !self.kv.has(label) {
            return Err(OpenError::NoSuchStore);
        }
        if self.open.len() + self.cas.len() >= 16 {
            return Err(OpenError::TableFull);
        }
        let id = self.next;
        self.next += 1;
        self.open.insert(id, label.to_owned());
        Ok(id)
    }
}

enum OpenError {
    AccessDenied,
    NoSuchStore,
    TableFull,
}

/// Marker for `HasData`-based linking.
pub struct SpinData;
impl HasData for SpinData {
    type Data<'a> = &'a mut SpinState;
}

impl vars::Host for SpinState {}
impl<T> vars::HostWithStore<T> for SpinData {
    async fn get(
        acc: &Accessor<T, Self>,
        name: String,
    ) -> wasmtime::Result<Result<String, vars::Error>> {
        let grants = acc.with(|mut a| a.get().grants.clone());
        Ok(grants.variables.get(&name).cloned().ok_or(vars::Error::Undefined(name)))
    }
}

impl kv::Host for SpinState {}
impl kv::HostStore for SpinState {
    fn drop(&mut self, rep: Resource<kv::Store>) -> wasmtime::Result<()> {
        self.open.remove(&rep.rep());
        Ok(())
    }
}

fn store_of<T>(
    acc: &Accessor<T, SpinData>,
    s: &Resource<kv::Store>,
) -> Result<(Arc<KvStores>, String), kv::Error> {
    acc.with(|mut a| {
        let st = a.get();
        let label = st.open.get(&s.rep()).cloned().ok_or(kv::Error::NoSuchStore)?;
        Ok((st.kv.clone(), label))
    })
}

impl<T> kv::HostStoreWithStore<T> for SpinData {
    async fn open(
        acc: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<kv::Store>, kv::Error>> {
        Ok(acc.with(|mut a| match a.get().open_label(&label) {
            Ok(id) => Ok(Resource::new_own(id)),
            Err(OpenError::AccessDenied) => Err(kv::Error::AccessDenied),
            Err(OpenError::NoSuchStore) => Err(kv::Error::NoSuchStore),
            Err(OpenError::TableFull) => Err(kv::Error::StoreTableFull),
        }))
    }

    async fn get(
        acc: &Accessor<T, Self>,
        s: Resource<kv::Store>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::Error>> {
        Ok(store_of(acc, &s).map(|(kv, label)| kv.get(&label, &key)))
    }

    async fn set(
        acc: &Accessor<T, Self>,
        s: Resource<kv::Store>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        Ok(store_of(acc, &s).and_then(|(kv, label)| {
            kv.set(&label, &key, value).map_err(|_| kv::Error::Other("store is full".into()))
        }))
    }

    async fn delete(
        acc: &Accessor<T, Self>,
        s: Resource<kv::Store>,
        key: String,
    ) -> wasmtime::Result<Result<(), kv::Error>> {
        Ok(store_of(acc, &s).map(|(kv, label)| kv.delete(&label, &key)))
    }

    async fn exists(
        acc: &Accessor<T, Self>,
        s: Resource<kv::Store>,
        key: String,
    ) -> wasmtime::Result<Result<bool, kv::Error>> {
        Ok(store_of(acc, &s).map(|(kv, label)| kv.exists(&label, &key)))
    }

    async fn get_keys(
        _acc: &Accessor<T, Self>,
        _s: Resource<kv::Store>,
    ) -> wasmtime::Result<(
        wasmtime::component::StreamReader<String>,
        wasmtime::component::FutureReader<Result<(), kv::Error>>,
    )> {
        Err(wasmtime::format_err!(
            "spin:key-value get-keys is not offered by the Tessera edge host"
        ))
    }
}

impl SpinState {
    fn bucket_label(&self, b: &Resource<wkv::Bucket>) -> Result<String, wkv::Error> {
        self.open.get(&b.rep()).cloned().ok_or(wkv::Error::NoSuchStore)
    }
}

impl wkv::Host for SpinState {
    fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<wkv::Bucket>, wkv::Error>> {
        Ok(match self.open_label(&identifier) {
            Ok(id) => Ok(Resource::new_own(id)),
            Err(OpenError::AccessDenied) => Err(wkv::Error::AccessDenied),
            Err(OpenError::NoSuchStore) => Err(wkv::Error::NoSuchStore),
            Err(OpenError::TableFull) => Err(wkv::Error::Other("too many open stores".into())),
        })
    }
}

impl wkv::HostBucket for SpinState {
    fn get(
        &mut self,
        b: Resource<wkv::Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wkv::Error>> {
        Ok(self.bucket_label(&b).map(|label| self.kv.get(&label, &key)))
    }

    fn set(
        &mut self,
        b: Resource<wkv::Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wkv::Error>> {
        Ok(self.bucket_label(&b).and_then(|label| {
            self.kv.set(&label, &key, value).map_err(|_| wkv::Error::Other("store is full".into()))
        }))
    }

    fn delete(
        &mut self,
        b: Resource<wkv::Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), wkv::Error>> {
        Ok(self.bucket_label(&b).map(|label| self.kv.delete(&label, &key)))
    }

    fn exists(
        &mut self,
        b: Resource<wkv::Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, wkv::Error>> {
        Ok(self.bucket_label(&b).map(|label| self.kv.exists(&label, &key)))
    }

    fn list_keys(
        &mut self,
        _b: Resource<wkv::Bucket>,
        _cursor: Option<String>,
    ) -> wasmtime::Result<Result<wkv::KeyResponse, wkv::Error>> {
        Err(wasmtime::format_err!(
            "wasi:keyvalue list-keys is not offered by the Tessera edge host"
        ))
    }

    fn drop(&mut self, rep: Resource<wkv::Bucket>) -> wasmtime::Result<()> {
        self.open.remove(&rep.rep());
        Ok(())
    }
}

impl wkv_atomics::Host for SpinState {
    fn increment(
        &mut self,
        b: Resource<wkv::Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, wkv::Error>> {
        Ok(self.bucket_label(&b).and_then(|label| {
            self.kv.increment(&label, &key, delta).map_err(|e| match e {
                crate::kv::IncrementError::NoSuchStore => wkv::Error::NoSuchStore,
                crate::kv::IncrementError::NotACounter => {
                    wkv::Error::Other(format!("`{key}` does not hold a number"))
                }
            })
        }))
    }

    fn swap(
        &mut self,
        cas: Resource<wkv_atomics::Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), wkv_atomics::CasError>> {
        let Some((label, key, expected)) = self.cas.remove(&cas.rep()) else {
            return Ok(Err(wkv_atomics::CasError::StoreError(wkv::Error::NoSuchStore)));
        };
        Ok(match self.kv.swap(&label, &key, expected.as_deref(), value) {
            crate::kv::Swap::Swapped => Ok(()),
            crate::kv::Swap::Changed(now) => {
                let id = self.next;
                self.next += 1;
                self.cas.insert(id, (label, key, now));
                Err(wkv_atomics::CasError::CasFailed(Resource::new_own(id)))
            }
        })
    }
}

impl wkv_atomics::HostCas for SpinState {
    fn new(
        &mut self,
        b: Resource<wkv::Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<wkv_atomics::Cas>, wkv::Error>> {
        let label = match self.bucket_label(&b) {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        if self.open.len() + self.cas.len() >= 16 {
            return Ok(Err(wkv::Error::Other("too many open handles".into())));
        }
        let current = self.kv.get(&label, &key);
        let id = self.next;
        self.next += 1;
        self.cas.insert(id, (label, key, current));
        Ok(Ok(Resource::new_own(id)))
    }

    fn current(
        &mut self,
        cas: Resource<wkv_atomics::Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, wkv::Error>> {
        Ok(self.cas.get(&cas.rep()).map(|(_, _, v)| v.clone()).ok_or(wkv::Error::NoSuchStore))
    }

    fn drop(&mut self, rep: Resource<wkv_atomics::Cas>) -> wasmtime::Result<()> {
        self.cas.remove(&rep.rep());
        Ok(())
    }
}

/// Adds the interfaces to a linker whose store data holds a [`SpinState`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut SpinState,
) -> wasmtime::Result<()> {
    vars::add_to_linker::<_, SpinData>(linker, get)?;
    kv::add_to_linker::<_, SpinData>(linker, get)?;
    wkv::add_to_linker::<_, SpinData>(linker, get)?;
    wkv_atomics::add_to_linker::<_, SpinData>(linker, get)?;
    Ok(())
}
