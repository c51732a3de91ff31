//! YAML documents as `serde_json` values (easier to walk than YAML's own).

use serde::Deserialize as _;
use serde_json::Value;

/// Every document of a (multi-document) YAML text.
pub(crate) fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v = serde_norway::Value::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(v)?);
    }
    Ok(docs)
}

/// `v` at a dotted path of object keys (`spec.template.spec`).
pub(crate) fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

pub(crate) fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

/// `kind/name` of a Kubernetes object.
pub(crate) fn id(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj.get("kind").and_then(Value::as_str).unwrap_or("?"),
        str_at(obj, "metadata.name").unwrap_or("?")
    )
}
