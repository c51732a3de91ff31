//! Typed configuration, read once in `main`.
//!
//! Layers, later wins: the type's `Default`, then the TOML file given with `--config`
//! (the files under `deploy/<env>/`), then environment variables
//! `TESSERA_<SERVICE>__<KEY>` where `__` separates nested keys
//! (`TESSERA_CORE__HTTP__LISTEN=127.0.0.1:9000`). Keys the type does not know are
//! reported as warnings, not errors, so a config written for a newer release still loads
//! after a rollback.

use std::path::Path;

use anyhow::Context as _;
use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Loads the configuration of `service` (e.g. `"core"`). Returns the config and the keys
/// that were ignored (so `main` can log them once telemetry is up).
pub fn load<T>(service: &str, file: Option<&Path>) -> anyhow::Result<(T, Vec<String>)>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        anyhow::ensure!(file.exists(), "config file {} does not exist", file.display());
        figment = figment.merge(Toml::file(file));
    }
    let prefix = format!("TESSERA_{}__", service.to_ascii_uppercase().replace('-', "_"));
    figment = figment.merge(Env::prefixed(&prefix).split("__").lowercase(true));
    let value: figment::value::Value =
        figment.extract().with_context(|| format!("read {service} configuration"))?;
    let mut ignored = Vec::new();
    let config = serde_ignored::deserialize(&value, |path| ignored.push(path.to_string()))
        .with_context(|| format!("parse {service} configuration"))?;
    Ok((config, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Http {
        listen: String,
        body_limit_bytes: u64,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Cfg {
        region: String,
        http: Http,
    }

    #[test]
    fn layers_file_over_defaults_and_reports_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("tessera-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("svc.toml");
        std::fs::write(
            &file,
            "region = \"eu-west\"\nfuture_knob = 3\n[http]\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let (cfg, ignored): (Cfg, _) = load("cfgtest", Some(&file)).unwrap();
        assert_eq!(cfg.region, "eu-west");
        assert_eq!(cfg.http.listen, "127.0.0.1:1");
        assert_eq!(cfg.http.body_limit_bytes, 0);
        assert_eq!(ignored, vec!["future_knob".to_owned()]);
        assert!(load::<Cfg>("cfgtest", Some(&dir.join("missing.toml"))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A secret configuration value (a key, a password). `Debug` never shows it; reading it
/// takes an explicit [`Secret::expose`]. It serializes to its value only so that defaults
/// can be layered under files and environment variables; never log a serialized config.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}
