//! Configuration from where operators put it: environment variables ([`Config::from_env`])
//! and, with the `serde` feature, configuration files (`Deserialize` for [`Config`]).
//!
//! Both read the same settings, named as in [`ConfigBuilder`]: the environment variable of a
//! setting is `USAGEFLOW_` followed by its name in capitals, and a configuration file uses
//! the name itself. Durations are whole milliseconds and say so in their name
//! (`request_timeout_ms`, `USAGEFLOW_REQUEST_TIMEOUT_MS`), sizes are bytes, fractions are
//! decimals, switches are `true` or `false` (also `1` / `0`), and `delivery` is
//! `at-most-once` or `at-least-once`. Only `api_key` is required; `url` defaults to the
//! production endpoint ([`PRODUCTION_URL`]) and every other setting to its builder default.

use std::time::Duration;

use thiserror::Error;

use super::{Config, ConfigBuilder, ConfigError, PRODUCTION_URL};
use crate::delivery::Delivery;

/// The prefix of every environment variable [`Config::from_env`] reads.
pub const ENV_PREFIX: &str = "USAGEFLOW_";

/// Why [`Config::from_env`] could not build a configuration. Each error names the variable
/// (a configuration file's error names the setting instead) and never shows the API key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EnvError {
    /// A required variable is not set.
    #[error("{variable} is not set")]
    Missing {
        /// The variable, such as `USAGEFLOW_API_KEY`.
        variable: String,
    },
    /// A variable's value cannot be read as its setting's type.
    #[error("{variable} must be {expected}, got {value:?}")]
    Unparsable {
        /// The variable.
        variable: String,
        /// What it must hold, for humans.
        expected: &'static str,
        /// The value as given (never the API key's: that one is never parsed).
        value: String,
    },
    /// A variable's value was read but the setting rejects it (out of range, not a
    /// `ws://`/`wss://` URL, a key that cannot travel in a header).
    #[error("{variable}: {source}")]
    Invalid {
        /// The variable.
        variable: String,
        /// What [`ConfigBuilder::build`] said.
        #[source]
        source: ConfigError,
    },
    /// The settings contradict each other (such as `backoff_cap` below `backoff_base`).
    #[error(transparent)]
    Inconsistent(ConfigError),
}

impl Config {
    /// Builds a configuration from the process environment: `USAGEFLOW_API_KEY` (required),
    /// `USAGEFLOW_URL` (default [`PRODUCTION_URL`]) and one variable per setting of
    /// [`ConfigBuilder`], `USAGEFLOW_` + the setting's name in capitals, with `_MS` for
    /// durations in milliseconds: `USAGEFLOW_POOL_SIZE=4`,
    /// `USAGEFLOW_REQUEST_TIMEOUT_MS=1500`, `USAGEFLOW_DELIVERY=at-least-once`. Unset
    /// variables keep their defaults. A value that is not valid Unicode counts as unreadable.
    ///
    /// [`Config::from_lookup`] is the same over any lookup function (for tests and for
    /// configuration stores other than the environment).
    pub fn from_env() -> Result<Config, EnvError> {
        Self::from_lookup(|name| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned()))
    }

    /// [`Config::from_env`] over `lookup`, which returns the value of a variable (by its full
    /// name, such as `USAGEFLOW_URL`) or `None` when it is not set.
    ///
    /// ```
    /// use std::time::Duration;
    /// use usageflow_socket_core::Config;
    ///
    /// let vars = [("USAGEFLOW_API_KEY", "my-api-key"), ("USAGEFLOW_REQUEST_TIMEOUT_MS", "1500")];
    /// let lookup = |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
    /// let config = Config::from_lookup(lookup)?;
    /// assert_eq!(config.request_timeout(), Duration::from_millis(1500));
    /// assert_eq!(config.url(), "wss://api.usageflow.io/ws");
    /// # Ok::<(), usageflow_socket_core::config::EnvError>(())
    /// ```
    pub fn from_lookup(mut lookup: impl FnMut(&str) -> Option<String>) -> Result<Config, EnvError> {
        let variable = |key: &str| format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
        let url = lookup(&variable("url")).unwrap_or_else(|| PRODUCTION_URL.to_owned());
        let Some(api_key) = lookup(&variable("api_key")) else {
            return Err(EnvError::Missing {
                variable: variable("api_key"),
            });
        };
        let mut builder = Config::builder(url, api_key);
        for setting in SETTINGS {
            if let Some(value) = lookup(&variable(setting.key)) {
                builder =
                    (setting.apply)(builder, value.trim()).map_err(|expected| EnvError::Unparsable {
                        variable: variable(setting.key),
                        expected,
                        value,
                    })?;
            }
        }
        builder.build().map_err(|error| match setting_of(&error) {
            Some(key) => EnvError::Invalid {
                variable: variable(key),
                source: error,
            },
            None => EnvError::Inconsistent(error),
        })
    }
}

/// One setting that [`Config::from_env`] and the `serde` support read by name.
struct Setting {
    /// Its name in a configuration file (lower case; `_ms` for milliseconds).
    key: &'static str,
    /// Sets it on a builder from its text, or says what the text must be.
    apply: fn(ConfigBuilder, &str) -> Result<ConfigBuilder, &'static str>,
}

const MILLISECONDS: &str = "a whole number of milliseconds";
const INTEGER: &str = "a whole number";
const FRACTION: &str = "a decimal number";
const SWITCH: &str = "true or false";

fn millis(text: &str) -> Result<Duration, &'static str> {
    text.parse().map(Duration::from_millis).map_err(|_| MILLISECONDS)
}

fn integer<T: std::str::FromStr>(text: &str) -> Result<T, &'static str> {
    text.parse().map_err(|_| INTEGER)
}

fn fraction(text: &str) -> Result<f64, &'static str> {
    text.parse().map_err(|_| FRACTION)
}

fn switch(text: &str) -> Result<bool, &'static str> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(SWITCH),
    }
}

fn delivery(text: &str) -> Result<Delivery, &'static str> {
    match text.to_ascii_lowercase().replace('_', "-").as_str() {
        "at-most-once" => Ok(Delivery::AtMostOnce),
        "at-least-once" => Ok(Delivery::AtLeastOnce),
        _ => Err("at-most-once or at-least-once"),
    }
}

/// `setting!(key, parser, setter)`: a [`Setting`] whose text goes through `parser` into the
/// builder's `setter`.
macro_rules! setting {
    ($key:literal, $parse:expr, $set:ident) => {
        Setting {
            key: $key,
            apply: |builder, text| Ok(builder.$set($parse(text)?)),
        }
    };
    ($key:literal, $parse:expr, $set:ident, Some) => {
        Setting {
            key: $key,
            apply: |builder, text| Ok(builder.$set(Some($parse(text)?))),
        }
    };
}

/// Every setting but `url` and `api_key`, which are read first.
const SETTINGS: &[Setting] = &[
    setting!("pool_size", integer, pool_size),
    setting!("request_timeout_ms", millis, request_timeout),
    setting!("ping_period_ms", millis, ping_period),
    setting!("pong_wait_ms", millis, pong_wait),
    setting!("write_wait_ms", millis, write_wait),
    setting!("handshake_timeout_ms", millis, handshake_timeout),
    setting!("backoff_base_ms", millis, backoff_base),
    setting!("backoff_cap_ms", millis, backoff_cap),
    setting!("backoff_attempts", integer, backoff_attempts),
    setting!("backoff_jitter", fraction, backoff_jitter),
    setting!("initial_dial_spread_ms", millis, initial_dial_spread),
    setting!("max_in_flight", integer, max_in_flight),
    setting!("max_unflushed_writes", integer, max_unflushed_writes),
    setting!("outbox_capacity", integer, outbox_capacity),
    setting!("max_outbox_bytes", integer, max_outbox_bytes),
    setting!("outbox_ttl_ms", millis, outbox_ttl),
    setting!("max_frame_size", integer, max_frame_size),
    setting!("close_drain_ms", millis, close_drain),
    setting!("max_connection_age_ms", millis, max_connection_age, Some),
    setting!("resend_idempotent", switch, resend_idempotent),
    setting!(
        "server_deduplicates_allocation_ids",
        switch,
        server_deduplicates_allocation_ids
    ),
    setting!("degraded_timeout_ratio", fraction, degraded_timeout_ratio),
    setting!("delivery", delivery, delivery),
    setting!("confirm_delivery", switch, confirm_delivery),
    setting!("confirm_every", integer, confirm_every),
    setting!("confirm_after_ms", millis, confirm_after),
    setting!("max_unconfirmed", integer, max_unconfirmed),
    setting!("max_unconfirmed_bytes", integer, max_unconfirmed_bytes),
    setting!("max_rewrites", integer, max_rewrites),
];

/// The key of the one setting `error` is about, or `None` when it is about several.
fn setting_of(error: &ConfigError) -> Option<&'static str> {
    match error {
        ConfigError::EmptyApiKey | ConfigError::InvalidApiKey => Some("api_key"),
        ConfigError::InvalidUrl(_) => Some("url"),
        ConfigError::OutOfRange { name, .. } => SETTINGS
            .iter()
            .map(|s| s.key)
            .find(|key| key.strip_suffix("_ms").unwrap_or(key) == *name),
        _ => None,
    }
}

#[cfg(feature = "serde")]
mod file {
    //! `Deserialize` for [`Config`]: a map of the settings by name, read through the same
    //! table as the environment.

    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{self, Deserializer, MapAccess, Visitor};
    use serde::Deserialize;

    use super::{Config, SETTINGS};

    /// A setting's value in a file: text, a number or a switch, read as its text.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Switch(bool),
    }

    impl Value {
        fn into_text(self) -> String {
            match self {
                Value::Text(text) => text,
                Value::Unsigned(n) => n.to_string(),
                Value::Signed(n) => n.to_string(),
                Value::Float(x) => x.to_string(),
                Value::Switch(b) => b.to_string(),
            }
        }
    }

    /// Deserializes a map of settings, named as for [`Config::from_env`]: `url` (default
    /// [`PRODUCTION_URL`](crate::config::PRODUCTION_URL)), `api_key` (required) and the
    /// builder's settings by name, durations as `<name>_ms`. An unknown name is an error, so a
    /// misspelt setting does not pass silently; every value is checked as
    /// [`ConfigBuilder::build`](crate::ConfigBuilder::build) checks it.
    #[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
    impl<'de> Deserialize<'de> for Config {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_map(ConfigVisitor)
        }
    }

    struct ConfigVisitor;

    impl<'de> Visitor<'de> for ConfigVisitor {
        type Value = Config;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of UsageFlow client settings")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Config, A::Error> {
            let mut values = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let known = key == "url" || key == "api_key" || SETTINGS.iter().any(|s| s.key == key);
                if !known {
                    return Err(de::Error::custom(format_args!("unknown setting {key:?}")));
                }
                let value: Value = map.next_value()?;
                if values.insert(key.clone(), value.into_text()).is_some() {
                    return Err(de::Error::custom(format_args!("setting {key:?} given twice")));
                }
            }
            Config::from_lookup(|name| {
                let key = name.strip_prefix(super::ENV_PREFIX)?.to_ascii_lowercase();
                values.remove(&key)
            })
            .map_err(|error| de::Error::custom(file_error(error)))
        }
    }

    /// An [`EnvError`](super::EnvError) told with the file's setting names.
    fn file_error(error: super::EnvError) -> String {
        use super::EnvError;
        let key = |variable: &str| {
            variable
                .strip_prefix(super::ENV_PREFIX)
                .unwrap_or(variable)
                .to_ascii_lowercase()
        };
        match error {
            EnvError::Missing { variable } => format!("missing setting {}", key(&variable)),
            EnvError::Unparsable {
                variable,
                expected,
                value,
            } => {
                format!("{} must be {expected}, got {value:?}", key(&variable))
            }
            EnvError::Invalid { variable, source } => format!("{}: {source}", key(&variable)),
            EnvError::Inconsistent(source) => source.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn from_vars(vars: &[(&str, &str)]) -> Result<Config, EnvError> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn only_the_key_gives_the_defaults_and_the_production_url() {
        let config = from_vars(&[("USAGEFLOW_API_KEY", "k-1")]).unwrap();
        let defaults = Config::builder(PRODUCTION_URL, "k-1").build().unwrap();
        assert_eq!(config, defaults);
    }

    #[test]
    fn a_missing_key_names_its_variable() {
        let err = from_vars(&[("USAGEFLOW_URL", "ws://h/ws")]).unwrap_err();
        assert_eq!(
            err,
            EnvError::Missing {
                variable: "USAGEFLOW_API_KEY".into()
            }
        );
        assert_eq!(err.to_string(), "USAGEFLOW_API_KEY is not set");
    }

    #[test]
    fn every_variable_sets_its_setting() {
        let config = from_vars(&[
            ("USAGEFLOW_URL", "ws://127.0.0.1:9000/ws"),
            ("USAGEFLOW_API_KEY", "k-1"),
            ("USAGEFLOW_POOL_SIZE", "3"),
            ("USAGEFLOW_REQUEST_TIMEOUT_MS", "1500"),
            ("USAGEFLOW_PING_PERIOD_MS", "20000"),
            ("USAGEFLOW_PONG_WAIT_MS", "45000"),
            ("USAGEFLOW_WRITE_WAIT_MS", "7000"),
            ("USAGEFLOW_HANDSHAKE_TIMEOUT_MS", "8000"),
            ("USAGEFLOW_BACKOFF_BASE_MS", "100"),
            ("USAGEFLOW_BACKOFF_CAP_MS", "900"),
            ("USAGEFLOW_BACKOFF_ATTEMPTS", "9"),
            ("USAGEFLOW_BACKOFF_JITTER", "0.5"),
            ("USAGEFLOW_INITIAL_DIAL_SPREAD_MS", "250"),
            ("USAGEFLOW_MAX_IN_FLIGHT", "77"),
            ("USAGEFLOW_MAX_UNFLUSHED_WRITES", "78"),
            ("USAGEFLOW_OUTBOX_CAPACITY", "0"),
            ("USAGEFLOW_OUTBOX_TTL_MS", "5000"),
            ("USAGEFLOW_MAX_FRAME_SIZE", "4096"),
            ("USAGEFLOW_CLOSE_DRAIN_MS", "0"),
            ("USAGEFLOW_MAX_CONNECTION_AGE_MS", "600000"),
            ("USAGEFLOW_RESEND_IDEMPOTENT", "false"),
            ("USAGEFLOW_SERVER_DEDUPLICATES_ALLOCATION_IDS", "1"),
            ("USAGEFLOW_DEGRADED_TIMEOUT_RATIO", "0.75"),
            ("USAGEFLOW_DELIVERY", "at-least-once"),
            ("USAGEFLOW_CONFIRM_DELIVERY", "FALSE"),
            ("USAGEFLOW_CONFIRM_EVERY", "16"),
            ("USAGEFLOW_CONFIRM_AFTER_MS", "30"),
            ("USAGEFLOW_MAX_UNCONFIRMED", "64"),
            ("USAGEFLOW_MAX_UNCONFIRMED_BYTES", " 2048 "),
            ("USAGEFLOW_MAX_REWRITES", "0"),
        ])
        .unwrap();
        let ms = Duration::from_millis;
        assert_eq!(config.url(), "ws://127.0.0.1:9000/ws");
        assert_eq!(config.api_key().expose(), "k-1");
        assert_eq!(config.pool_size(), 3);
        assert_eq!(config.request_timeout(), ms(1500));
        assert_eq!(config.ping_period(), ms(20_000));
        assert_eq!(config.pong_wait(), ms(45_000));
        assert_eq!(config.write_wait(), ms(7000));
        assert_eq!(config.handshake_timeout(), ms(8000));
        assert_eq!(config.backoff_base(), ms(100));
        assert_eq!(config.backoff_cap(), ms(900));
        assert_eq!(config.backoff_attempts(), 9);
        assert_eq!(config.backoff_jitter(), 0.5);
        assert_eq!(config.initial_dial_spread(), ms(250));
        assert_eq!(config.max_in_flight(), 77);
        assert_eq!(config.max_unflushed_writes(), 78);
        assert_eq!(config.outbox_capacity(), 0);
        assert_eq!(config.outbox_ttl(), ms(5000));
        assert_eq!(config.max_frame_size(), 4096);
        assert_eq!(config.close_drain(), Duration::ZERO);
        assert_eq!(config.max_connection_age(), Some(ms(600_000)));
        assert!(!config.resend_idempotent());
        assert!(config.server_deduplicates_allocation_ids());
        assert_eq!(config.degraded_timeout_ratio(), 0.75);
        assert_eq!(config.delivery(), Delivery::AtLeastOnce);
        assert!(!config.confirm_delivery());
        assert_eq!(config.confirm_every(), 16);
        assert_eq!(config.confirm_after(), ms(30));
        assert_eq!(config.max_unconfirmed(), 64);
        assert_eq!(config.max_unconfirmed_bytes(), 2048);
        assert_eq!(config.max_rewrites(), 0);
    }

    /// Every field of the builder but the URL and the key has a variable, so a setting added
    /// later cannot be forgotten here.
    #[test]
    fn every_builder_setting_has_a_variable() {
        let debug = format!("{:?}", Config::builder(PRODUCTION_URL, "k"));
        let fields: Vec<&str> = debug
            .split([',', '{'])
            .filter_map(|part| part.split_once(':').map(|(name, _)| name.trim()))
            .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        assert!(
            fields.len() > 20,
            "could not read the builder's fields from {debug}"
        );
        for field in fields.iter().filter(|f| !matches!(**f, "url" | "api_key")) {
            assert!(
                SETTINGS
                    .iter()
                    .any(|s| s.key.strip_suffix("_ms").unwrap_or(s.key) == *field),
                "builder setting {field} has no USAGEFLOW_ variable"
            );
        }
        assert_eq!(SETTINGS.len(), fields.len() - 2, "{fields:?}");
    }

    #[test]
    fn an_unreadable_value_names_its_variable() {
        let err =
            from_vars(&[("USAGEFLOW_API_KEY", "k"), ("USAGEFLOW_REQUEST_TIMEOUT_MS", "2s")]).unwrap_err();
        assert_eq!(
            err,
            EnvError::Unparsable {
                variable: "USAGEFLOW_REQUEST_TIMEOUT_MS".into(),
                expected: "a whole number of milliseconds",
                value: "2s".into(),
            }
        );
        let err = from_vars(&[("USAGEFLOW_API_KEY", "k"), ("USAGEFLOW_DELIVERY", "twice")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("USAGEFLOW_DELIVERY must be at-most-once or at-least-once"),
            "{err}"
        );
        let err =
            from_vars(&[("USAGEFLOW_API_KEY", "k"), ("USAGEFLOW_CONFIRM_DELIVERY", "yes")]).unwrap_err();
        assert!(
            matches!(err, EnvError::Unparsable { ref variable, .. } if variable == "USAGEFLOW_CONFIRM_DELIVERY")
        );
    }

    #[test]
    fn an_out_of_range_value_names_its_variable() {
        let err = from_vars(&[("USAGEFLOW_API_KEY", "k"), ("USAGEFLOW_POOL_SIZE", "0")]).unwrap_err();
        assert!(
            matches!(&err, EnvError::Invalid { variable, source: ConfigError::OutOfRange { name: "pool_size", .. } }
                if variable == "USAGEFLOW_POOL_SIZE"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "USAGEFLOW_POOL_SIZE: pool_size must be in 1..=64, got 0"
        );
        let err = from_vars(&[("USAGEFLOW_API_KEY", "k"), ("USAGEFLOW_OUTBOX_TTL_MS", "0")]).unwrap_err();
        assert!(err.to_string().starts_with("USAGEFLOW_OUTBOX_TTL_MS: "), "{err}");
        let err = from_vars(&[("USAGEFLOW_API_KEY", "k"), ("USAGEFLOW_URL", "http://h/ws")]).unwrap_err();
        assert!(
            matches!(&err, EnvError::Invalid { variable, .. } if variable == "USAGEFLOW_URL"),
            "{err:?}"
        );
        let err =
            from_vars(&[("USAGEFLOW_API_KEY", "k"), ("USAGEFLOW_BACKOFF_BASE_MS", "90000")]).unwrap_err();
        assert!(
            matches!(err, EnvError::Inconsistent(ConfigError::Inconsistent(_))),
            "{err:?}"
        );
    }

    #[test]
    fn an_invalid_key_is_named_but_never_shown() {
        let err = from_vars(&[("USAGEFLOW_API_KEY", "secret key")]).unwrap_err();
        assert!(
            matches!(&err, EnvError::Invalid { variable, source: ConfigError::InvalidApiKey } if variable == "USAGEFLOW_API_KEY")
        );
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!format!("{err:?}").contains("secret"), "{err:?}");
        let err = from_vars(&[("USAGEFLOW_API_KEY", "")]).unwrap_err();
        assert!(
            matches!(&err, EnvError::Invalid { variable, source: ConfigError::EmptyApiKey } if variable == "USAGEFLOW_API_KEY")
        );
    }

    #[cfg(feature = "serde")]
    #[test]
    fn a_configuration_file_uses_the_same_settings() {
        let config: Config = serde_json::from_str(
            r#"{"url": "ws://127.0.0.1:9000/ws", "api_key": "k-1", "pool_size": 4,
                "request_timeout_ms": 1500, "backoff_jitter": 0, "delivery": "at-least-once",
                "confirm_delivery": false, "max_connection_age_ms": 60000}"#,
        )
        .unwrap();
        assert_eq!(config.url(), "ws://127.0.0.1:9000/ws");
        assert_eq!(config.pool_size(), 4);
        assert_eq!(config.request_timeout(), Duration::from_millis(1500));
        assert_eq!(config.backoff_jitter(), 0.0);
        assert_eq!(config.delivery(), Delivery::AtLeastOnce);
        assert!(!config.confirm_delivery());
        assert_eq!(config.max_connection_age(), Some(Duration::from_secs(60)));

        let err = |json: &str| serde_json::from_str::<Config>(json).unwrap_err().to_string();
        assert!(err(r#"{"api_key": "k", "pool_sise": 4}"#).contains("unknown setting \"pool_sise\""));
        assert!(err(r#"{"url": "ws://h/ws"}"#).contains("missing setting api_key"));
        assert!(err(r#"{"api_key": "k", "pool_size": 0}"#).contains("pool_size: pool_size must be in 1..=64"));
        assert!(err(r#"{"api_key": "k", "request_timeout_ms": "2s"}"#)
            .contains("request_timeout_ms must be a whole number of milliseconds"));
        assert!(err(r#"{"api_key": "k", "pool_size": 2, "pool_size": 3}"#).contains("given twice"));
        assert!(!err(r#"{"api_key": "secret key"}"#).contains("secret"));
    }
}
