//! Host implementations of the Spin interfaces the components import:
//! `spin:variables/variables@3.0.0` and `spin:key-value/key-value@3.0.0`, generated with
//! `bindgen!` from the WIT shipped in spin-sdk.
//!
//! Variables: a component sees only the variables its manifest entry declares, with
//! templates expanded (like Spin). Key-value: only the labels in its `key_value_stores`.
//! `get-keys` is not offered: it traps (no component uses it, and a key listing of a
//! shared edge cache is not something to hand out).

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
    open: HashMap<u32, String>,
    next: u32,
}

impl SpinState {
    pub fn new(grants: Arc<ComponentGrants>, kv: Arc<KvStores>) -> Self {
        SpinState { grants, kv, open: HashMap::new(), next: 1 }
    }
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
        Ok(acc.with(|mut a| {
            let st = a.get();
            if !st.grants.kv_labels.contains(&label) {
                return Err(kv::Error::AccessDenied);
            }
            if !st.kv.has(&label) {
                return Err(kv::Error::NoSuchStore);
            }
            if st.open.len() >= 16 {
                return Err(kv::Error::StoreTableFull);
            }
            let id = st.next;
            st.next += 1;
            st.open.insert(id, label);
            Ok(Resource::new_own(id))
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

/// Adds both interfaces to a linker whose store data holds a [`SpinState`].
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut SpinState,
) -> wasmtime::Result<()> {
    vars::add_to_linker::<_, SpinData>(linker, get)?;
    kv::add_to_linker::<_, SpinData>(linker, get)?;
    Ok(())
}
