//! kcld's configuration.
//!
//! Sources, later ones winning: built-in defaults, a TOML file (`--config FILE`
//! or `KCLD_CONFIG`), then environment variables prefixed `KCLD_` (nested keys
//! joined by `__`, so `aws.kinesis_endpoint` is `KCLD_AWS__KINESIS_ENDPOINT`).
//! `config/kcld.example.toml` documents every key with its default.
//!
//! [`load`] turns these into [`Settings`]: every value checked, every derived
//! value (lease table, worker id, region, endpoints) resolved, so the rest of
//! kcld never handles raw configuration. Every error names the key and the fix.

#![deny(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub mod arn;
mod keys;
pub mod multilang;
mod raw;
mod render;
mod settings;
mod validate;

pub use arn::{ArnError, ConsumerArn, StreamArn};
pub use settings::*;

use raw::RawSettings;
use validate::validate;

/// A configuration problem: the key, what is wrong, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// One key is unknown, missing or has a value kcld cannot use.
    #[error("config key `{key}`: {problem}; {fix}")]
    Key {
        /// The key at fault, e.g. `lease.failover_time_ms`.
        key: String,
        /// What is wrong with the value.
        problem: String,
        /// What to change to fix it.
        fix: String,
    },
    /// A configuration file is missing or cannot be read or parsed.
    #[error("config file {path}: {problem}")]
    File {
        /// The file that was named.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Any other problem, as the configuration loader describes it.
    #[error("configuration: {0}; every key and its default are in config/kcld.example.toml")]
    Other(String),
}

impl ConfigError {
    fn key(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.to_owned(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// Environment variables read directly by name, not as `KCLD_` keys.
const NOT_KEYS: &[&str] = &["KCLD_CONFIG", "KCLD_LOG"];

/// Loads the configuration from an optional file and the given environment
/// (pass `std::env::vars()`; tests pass their own).
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    let env: HashMap<String, String> = env.into_iter().collect();
    // Unknown KCLD_ variables are warnings: a wrapper script's own
    // variables must not stop kcld.
    let (known_vars, warnings) = keys::known_env(&env, NOT_KEYS);
    let mut origins = std::collections::BTreeMap::new();
    for var in known_vars.keys() {
        if let Some(key) = keys::env_key(var) {
            origins.insert(key, format!("variable {var}"));
        }
    }
    let kcld_vars: config::Map<String, String> = known_vars.into_iter().collect();

    let mut builder = config::Config::builder();
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.to_owned(),
                problem: "no such file; pass an existing TOML file with --config or KCLD_CONFIG (see config/kcld.example.toml)".into(),
            });
        }
        for key in keys::check_file(path)? {
            // A variable wins over the file.
            origins
                .entry(key)
                .or_insert_with(|| format!("file {}", path.display()));
        }
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("KCLD")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .source(Some(kcld_vars)),
    );
    let raw: RawSettings = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| translate(e, file))?;
    let mut settings = validate(raw, &env)?;
    settings.warnings = warnings;
    // Values resolved from the SDK's own variables.
    for (key, value, var) in [
        (
            "aws.kinesis_endpoint",
            &settings.aws.kinesis_endpoint,
            "AWS_ENDPOINT_URL_KINESIS",
        ),
        (
            "aws.dynamodb_endpoint",
            &settings.aws.dynamodb_endpoint,
            "AWS_ENDPOINT_URL_DYNAMODB",
        ),
        (
            "aws.dynamodb_streams_endpoint",
            &settings.aws.dynamodb_streams_endpoint,
            "AWS_ENDPOINT_URL_DYNAMODB_STREAMS",
        ),
        (
            "aws.s3_endpoint",
            &settings.aws.s3_endpoint,
            "AWS_ENDPOINT_URL_S3",
        ),
        (
            "aws.sts_endpoint",
            &settings.aws.sts_endpoint,
            "AWS_ENDPOINT_URL_STS",
        ),
    ] {
        if value.is_some() && !origins.contains_key(key) {
            origins.insert(key.to_owned(), format!("{var} or AWS_ENDPOINT_URL"));
        }
    }
    if !origins.contains_key("aws.dynamodb_region") {
        origins.insert(
            "aws.dynamodb_region".to_owned(),
            settings.aws.dynamodb_region_from.clone(),
        );
    }
    settings.origins = origins;
    Ok(settings)
}

/// Whether `key` (dotted, as in the file: `polling.max_records`) is a kcld
/// setting; if not, the error names the closest one and its variable.
pub fn check_key(key: &str) -> Result<(), ConfigError> {
    if keys::known().contains(key) {
        Ok(())
    } else {
        Err(keys::unknown_key(key))
    }
}

/// Turns the config crate's errors into ones that name the key and the fix.
fn translate(e: config::ConfigError, file: Option<&Path>) -> ConfigError {
    let text = e.to_string();
    if let Some(rest) = text.split("unknown field `").nth(1) {
        let field = rest.split('`').next().unwrap_or_default();
        return keys::unknown_key(field);
    }
    // A value of the wrong type: "invalid type: ..., expected ... for key
    // `polling.max_records` ...".
    if let Some((problem, rest)) = text.split_once(" for key `") {
        let key = rest.split('`').next().unwrap_or_default();
        return ConfigError::key(
            key,
            problem.trim(),
            format!(
                "give it a value of its type ({}, or {} in the file; see config/kcld.example.toml)",
                keys::env_name(key),
                key
            ),
        );
    }
    match (file, &e) {
        (Some(path), config::ConfigError::FileParse { .. }) => ConfigError::File {
            path: path.to_owned(),
            problem: format!("not valid TOML: {text}"),
        },
        _ => ConfigError::Other(text),
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests;
