//! Typed configuration, read once in `main`, and the two modes every binary runs in.
//!
//! Layers, later wins: the type's `Default`, then the TOML file given with `--config`
//! (the files under `deploy/<env>/`), then environment variables
//! `TESSERA_<SERVICE>__<KEY>` where `__` separates nested keys
//! (`TESSERA_CORE__HTTP__LISTEN=127.0.0.1:9000`).
//!
//! Loading is strict: a key the type does not know, in the file or in the environment,
//! stops the process at once with one line naming the key and where it came from. A
//! misspelt secret name must not start a service without its secret, and rollbacks are
//! handled by shipping the config with the release, not by ignoring keys.
//!
//! Every service's config carries a [`Mode`]: `local` (a developer's machine, the test
//! stacks) or `production` (the default). A service checks its settings with [`Checks`]:
//! problems that are always wrong (a missing secret, a region not in the region list)
//! stop it in both modes; development conveniences (the development issuer, well-known
//! development keys, default secrets, plaintext links) stop it only in production. Each
//! problem is one line naming the setting and its origin.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where a binary runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A developer's machine or a test stack: development issuers and keys are allowed.
    Local,
    /// Everything else. Refuses development keys and issuers, default or missing
    /// secrets, and plaintext links.
    #[default]
    Production,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Production => "production",
        }
    }
    pub fn is_production(self) -> bool {
        self == Mode::Production
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, dotted (`payments.secret_key`).
    pub key: String,
    /// Where its value came from (a file, an environment variable, the default).
    pub origin: String,
    /// What is wrong, in a few words.
    pub why: String,
    /// Refused only because the mode is `production`.
    pub production_only: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.production_only {
            write!(f, "production mode refuses `{}` ({}): {}", self.key, self.origin, self.why)
        } else {
            write!(f, "`{}` ({}): {}", self.key, self.origin, self.why)
        }
    }
}

/// Why a configuration was not accepted. `Display` gives one line per problem.
#[derive(Debug)]
pub enum ConfigError {
    /// The `--config` file does not exist or cannot be read.
    File { path: PathBuf, message: String },
    /// A key the configuration type does not have.
    UnknownKey { key: String, origin: String },
    /// A value of the wrong type or shape.
    Invalid { message: String },
    /// Settings that are wrong or, in production, unsafe.
    Settings(Vec<Problem>),
}

impl ConfigError {
    /// The problems, one per line.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::File { path, message } => {
                vec![format!("config file {}: {message}", path.display())]
            }
            ConfigError::UnknownKey { key, origin } => {
                vec![format!("unknown configuration key `{key}` in {origin}")]
            }
            ConfigError::Invalid { message } => vec![message.clone()],
            ConfigError::Settings(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for ConfigError {}

/// Where the configuration came from, to name the origin of a key in messages.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    figment: Figment,
    env_prefix: String,
    file: Option<PathBuf>,
}

impl ConfigSource {
    /// A source for a config built in code (tests, in-process services): every key is
    /// "the default".
    pub fn in_code() -> Self {
        ConfigSource { figment: Figment::new(), env_prefix: String::new(), file: None }
    }

    /// The file given with `--config`, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The environment variable that sets `key`.
    pub fn env_var(&self, key: &str) -> String {
        let mut name = self.env_prefix.clone();
        name.push_str(&key.split('.').map(str::to_ascii_uppercase).collect::<Vec<_>>().join("__"));
        name
    }

    /// Where the value of `key` (dotted) came from: `the file <path>`, `environment variable
    /// <NAME>`, or `not set` when the default applies.
    pub fn origin(&self, key: &str) -> String {
        if self.env_prefix.is_empty() {
            return "set in code".to_owned();
        }
        let Some(md) = self.figment.find_metadata(key) else {
            return self.unset(key);
        };
        if let Some(path) = md.source.as_ref().and_then(|s| s.file_path()) {
            return path.display().to_string();
        }
        if md.name.contains("environment") {
            return format!("environment variable {}", self.env_var(key));
        }
        self.unset(key)
    }

    fn unset(&self, key: &str) -> String {
        match &self.file {
            Some(f) => format!("not set in {} nor in {}", f.display(), self.env_var(key)),
            None => format!("not set; no config file, nor {}", self.env_var(key)),
        }
    }
}

/// A configuration and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub config: T,
    pub source: ConfigSource,
}

/// Reads the configuration of `service` (e.g. `"core"`) strictly: an unknown key in the
/// file or the environment is an error naming the key and its origin.
pub fn read<T>(service: &str, file: Option<&Path>) -> Result<Loaded<T>, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::File {
            path: file.to_owned(),
            message: if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist".to_owned()
            } else {
                e.to_string()
            },
        })?;
        // Parse once here so a syntax error names the file and line, in one line.
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(ConfigError::Invalid {
                message: format!(
                    "config file {} is not valid TOML: {}",
                    file.display(),
                    e.to_string().lines().next().unwrap_or("syntax error")
                ),
            });
        }
        figment = figment.merge(Toml::file(file));
    }
    let env_prefix = format!("TESSERA_{}__", service.to_ascii_uppercase().replace('-', "_"));
    figment = figment.merge(Env::prefixed(&env_prefix).split("__").lowercase(true));
    let source = ConfigSource { figment: figment.clone(), env_prefix, file: file.map(Into::into) };
    let value: figment::value::Value = figment.extract().map_err(|e| ConfigError::Invalid {
        message: one_line(&format!("read the {service} configuration: {e}")),
    })?;
    let mut unknown = Vec::new();
    let config = serde_ignored::deserialize(&value, |path| unknown.push(path.to_string()))
        .map_err(|e: figment::Error| ConfigError::Invalid {
            message: one_line(&describe(&source, &e)),
        })?;
    if let Some(key) = unknown.into_iter().next() {
        let origin = source.origin(&key);
        return Err(ConfigError::UnknownKey { key, origin });
    }
    Ok(Loaded { config, source })
}

fn describe(source: &ConfigSource, e: &figment::Error) -> String {
    if e.path.is_empty() {
        return format!("invalid configuration: {}", e.kind);
    }
    let key = e.path.join(".");
    format!("invalid value for `{key}` ({}): {}", source.origin(&key), e.kind)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The old entry point: [`read`] without the source. Unknown keys are errors now, so the
/// list of ignored keys is always empty.
pub fn load<T>(service: &str, file: Option<&Path>) -> anyhow::Result<(T, Vec<String>)>
where
    T: DeserializeOwned + Serialize + Default,
{
    let loaded = read::<T>(service, file)?;
    Ok((loaded.config, Vec::new()))
}

/// Collects the problems of a configuration for one mode.
#[derive(Debug)]
pub struct Checks<'a> {
    mode: Mode,
    source: &'a ConfigSource,
    problems: Vec<Problem>,
}

impl<'a> Checks<'a> {
    pub fn new(mode: Mode, source: &'a ConfigSource) -> Self {
        Checks { mode, source, problems: Vec::new() }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Records a problem; a second one with the same key joins the first's line.
    fn push(&mut self, key: &str, why: String, production_only: bool) {
        if let Some(p) = self.problems.iter_mut().find(|p| p.key == key) {
            p.why.push_str("; ");
            p.why.push_str(&why);
            p.production_only &= production_only;
            return;
        }
        let origin = self.source.origin(key);
        self.problems.push(Problem { key: key.to_owned(), origin, why, production_only });
    }

    /// A problem in every mode.
    pub fn error(&mut self, key: &str, why: impl Into<String>) {
        self.push(key, why.into(), false);
    }

    /// A problem only in production mode (a development convenience).
    pub fn production(&mut self, key: &str, why: impl Into<String>) {
        if self.mode.is_production() {
            self.push(key, why.into(), true);
        }
    }

    /// A secret that must be set (in every mode), and in production must not be one of
    /// the well-known development values.
    pub fn secret(&mut self, key: &str, value: &Secret, development_values: &[&str]) {
        if value.is_empty() {
            self.error(key, "missing: this secret must be supplied");
        } else if development_values.iter().any(|d| constant_time_eq(d, value.expose())) {
            self.production(key, "is a well-known development value");
        } else if is_placeholder(value.expose()) {
            self.production(key, "is the example files' placeholder (`CHANGE_ME`)");
        }
    }

    /// A URL that must not be plaintext in production (`http://`, `nats://`).
    pub fn encrypted_url(&mut self, key: &str, url: &str) {
        let scheme = url.split_once("://").map_or("", |(s, _)| s).to_ascii_lowercase();
        if matches!(scheme.as_str(), "http" | "nats" | "ws") {
            self.production(key, format!("plaintext `{scheme}://`; use TLS"));
        }
    }

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() { Ok(()) } else { Err(ConfigError::Settings(self.problems)) }
    }
}

/// Whether a value still holds the `CHANGE_ME` marker of the example secret files in
/// `deploy/`: never a real secret.
pub fn is_placeholder(value: &str) -> bool {
    value.contains("CHANGE_ME")
}

/// Compares two strings in time that depends only on their lengths, never on where they
/// first differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Runs `main` and turns a configuration error into one line per problem on stderr and
/// exit status 2; other errors print their chain on one line and exit with 1.
pub fn exit_on_error(program: &str, result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ConfigError>() {
                for line in c.lines() {
                    eprintln!("{program}: {line}");
                }
                std::process::ExitCode::from(2)
            } else {
                eprintln!("{program}: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Http {
        listen: String,
        body_limit_bytes: u64,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Cfg {
        mode: Mode,
        region: String,
        secret: Secret,
        http: Http,
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let file = dir.join("svc.toml");
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn layers_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "region = \"eu-west\"\n[http]\nlisten = \"127.0.0.1:1\"\n");
        let loaded: Loaded<Cfg> = read("cfgtest-layers", Some(&file)).unwrap();
        assert_eq!(loaded.config.region, "eu-west");
        assert_eq!(loaded.config.http.listen, "127.0.0.1:1");
        assert_eq!(loaded.config.http.body_limit_bytes, 0);
        assert_eq!(loaded.config.mode, Mode::Production, "production is the default");
        assert_eq!(loaded.source.origin("region"), file.display().to_string());
        assert!(loaded.source.origin("secret").starts_with("not set in "));
        assert!(loaded.source.origin("secret").ends_with("TESSERA_CFGTEST_LAYERS__SECRET"));
    }

    #[test]
    fn refuses_an_unknown_key_naming_it_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "region = \"eu-west\"\n[http]\nlisten = \"x\"\nlistne = 1\n");
        let err = read::<Cfg>("cfgtest-unknown", Some(&file)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("unknown configuration key `http.listne` in {}", file.display())
        );
        assert_eq!(err.lines().len(), 1);
    }

    #[test]
    fn names_the_file_that_does_not_exist_or_does_not_parse() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = read::<Cfg>("cfgtest-missing", Some(&missing)).unwrap_err();
        assert_eq!(err.to_string(), format!("config file {}: does not exist", missing.display()));
        let bad = write(dir.path(), "region = \n");
        let err = read::<Cfg>("cfgtest-bad", Some(&bad)).unwrap_err().to_string();
        assert!(err.starts_with(&format!("config file {} is not valid TOML", bad.display())));
        assert!(!err.contains('\n'), "{err}");
        let wrong_type = write(dir.path(), "[http]\nbody_limit_bytes = \"lots\"\n");
        let err = read::<Cfg>("cfgtest-type", Some(&wrong_type)).unwrap_err().to_string();
        assert!(err.starts_with("invalid value for `http.body_limit_bytes`"), "{err}");
        assert!(err.contains(&wrong_type.display().to_string()), "{err}");
    }

    #[test]
    fn checks_report_secrets_and_plaintext_per_mode() {
        let source = ConfigSource::in_code();
        let mut local = Checks::new(Mode::Local, &source);
        local.secret("payments.secret_key", &Secret::new("sk_test_tessera"), &["sk_test_tessera"]);
        local.encrypted_url("nats.url", "nats://127.0.0.1:4222");
        local.secret("payments.webhook_secret", &Secret::default(), &[]);
        let lines = local.finish().unwrap_err().lines();
        assert_eq!(lines.len(), 1, "only the missing secret is wrong locally: {lines:?}");
        assert_eq!(
            lines[0],
            "`payments.webhook_secret` (set in code): missing: this secret must be supplied"
        );

        let mut prod = Checks::new(Mode::Production, &source);
        prod.secret("payments.secret_key", &Secret::new("sk_test_tessera"), &["sk_test_tessera"]);
        prod.encrypted_url("nats.url", "nats://127.0.0.1:4222");
        prod.encrypted_url("payments.base_url", "https://api.stripe.com");
        let lines = prod.finish().unwrap_err().lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("production mode refuses `payments.secret_key`"));
        assert!(lines[1].contains("plaintext `nats://`"));

        let mut prod = Checks::new(Mode::Production, &source);
        prod.secret("tickets.signing_seed", &Secret::new("CHANGE_ME_base64url_32_byte_seed"), &[]);
        let lines = prod.finish().unwrap_err().lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("placeholder"), "{lines:?}");
    }

    #[test]
    fn compares_secrets_by_content() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
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
        self.0.trim().is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}
