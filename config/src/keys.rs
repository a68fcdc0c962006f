//! The keys kcld knows, to tell a typo from a setting: an unknown key in the
//! file is an error naming its section, the closest known key and its
//! variable; an unknown `KCLD_` variable (one set for a wrapper script, say)
//! is a warning, not a reason to stop.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::raw::RawSettings;
use crate::ConfigError;

/// Every key of the configuration, dotted (`polling.max_records`), from
/// the raw settings' own shape, so the list never drifts from the code.
pub(crate) fn known() -> BTreeSet<String> {
    // Every leaf, sections within sections included (`sink.s3.prefix`).
    fn leaves(prefix: &str, value: serde_json::Value, keys: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(section) => {
                for (name, value) in section {
                    let key = if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}.{name}")
                    };
                    leaves(&key, value, keys);
                }
            }
            _ => {
                keys.insert(prefix.to_owned());
            }
        }
    }
    let mut keys = BTreeSet::new();
    if let Ok(value) = serde_json::to_value(RawSettings::default()) {
        leaves("", value, &mut keys);
    }
    keys
}

/// The environment variable of a key: `KCLD_POLLING__MAX_RECORDS`.
pub(crate) fn env_name(key: &str) -> String {
    format!("KCLD_{}", key.replace('.', "__").to_ascii_uppercase())
}

/// The key of a `KCLD_` variable, as the loader reads it.
fn key_of_env(var: &str) -> Option<String> {
    var.strip_prefix("KCLD_")
        .map(|rest| rest.to_ascii_lowercase().replace("__", "."))
}

/// The known key nearest to `key`, if one is close enough to be a typo.
fn closest<'a>(key: &str, known: &'a BTreeSet<String>) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(key, k), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// The error for an unknown key: its section, a suggestion, the variable.
pub(crate) fn unknown_key(key: &str) -> ConfigError {
    let known = known();
    let section = match key.split_once('.') {
        Some((section, _)) => format!(" in section [{section}]"),
        None => String::new(),
    };
    let fix = match closest(key, &known) {
        Some(near) => format!(
            "did you mean `{near}` (as a variable, {})? Every key is in config/kcld.example.toml",
            env_name(near)
        ),
        None => "check its spelling and section against config/kcld.example.toml".to_owned(),
    };
    ConfigError::Key {
        key: key.to_owned(),
        problem: format!("is not a kcld setting{section}"),
        fix,
    }
}

/// Checks a configuration file before loading it: a syntax error is one
/// line with the line and column, and a key kcld does not know is an error
/// naming it (see [`unknown_key`]).
pub(crate) fn check_file(path: &Path) -> Result<BTreeSet<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_owned(),
        problem: format!("cannot read it ({e})"),
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_and_column(&text, span.start))
            .unwrap_or((1, 1));
        ConfigError::File {
            path: path.to_owned(),
            problem: format!(
                "not valid TOML at line {line}, column {column}: {}",
                e.message().trim().replace('\n', " ")
            ),
        }
    })?;
    // Every leaf key, tables within tables included (`[sink.s3]`).
    fn leaves(prefix: &str, table: &toml::Table, keys: &mut Vec<String>) {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                toml::Value::Table(section) => leaves(&key, section, keys),
                _ => keys.push(key),
            }
        }
    }
    let known = known();
    let mut keys = Vec::new();
    leaves("", &table, &mut keys);
    let mut found = BTreeSet::new();
    for key in keys {
        if !known.contains(&key) {
            return Err(unknown_key(&key));
        }
        found.insert(key);
    }
    Ok(found)
}

/// The key a kept `KCLD_` variable sets.
pub(crate) fn env_key(var: &str) -> Option<String> {
    key_of_env(var)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Splits the environment's `KCLD_` variables into those naming a known key
/// (returned) and the others, each one warning.
pub(crate) fn known_env(
    env: &HashMap<String, String>,
    not_keys: &[&str],
) -> (HashMap<String, String>, Vec<String>) {
    let known = known();
    let mut kept = HashMap::new();
    let mut warnings = Vec::new();
    let mut names: Vec<&String> = env.keys().collect();
    names.sort();
    for name in names {
        if !name.starts_with("KCLD_") || not_keys.contains(&name.as_str()) {
            continue;
        }
        match key_of_env(name) {
            Some(key) if known.contains(&key) => {
                kept.insert(name.clone(), env[name].clone());
            }
            Some(key) => {
                let hint = closest(&key, &known)
                    .map(|near| format!("; did you mean {}?", env_name(near)))
                    .unwrap_or_default();
                warnings.push(format!(
                    "environment variable {name} is not a kcld setting and is ignored{hint}"
                ));
            }
            None => {}
        }
    }
    (kept, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_the_example_file_is_known_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kcld.toml");
        std::fs::write(&path, include_str!("../kcld.example.toml")).unwrap();
        let in_example = check_file(&path).unwrap();
        let known = known();
        // `[[streams]]` is shown commented out: it and `stream_arn` exclude
        // each other.
        let undocumented: Vec<&String> = known
            .difference(&in_example)
            .filter(|k| *k != "streams")
            .collect();
        assert!(
            undocumented.is_empty(),
            "keys the example file does not show: {undocumented:?}"
        );
        assert!(known.contains("polling.max_records"));
        assert!(known.contains("sink.type"));
    }

    #[test]
    fn typos_get_the_nearest_key_and_its_variable() {
        let e = unknown_key("polling.max_record").to_string();
        assert!(e.contains("section [polling]"), "{e}");
        assert!(e.contains("did you mean `polling.max_records`"), "{e}");
        assert!(e.contains("KCLD_POLLING__MAX_RECORDS"), "{e}");
        let e = unknown_key("completely_different_thing").to_string();
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn unknown_variables_are_warnings_and_known_ones_kept() {
        let env: HashMap<String, String> = [
            ("KCLD_POLLING__MAX_RECORDS", "5"),
            ("KCLD_WRAPPER_MODE", "1"),
            ("KCLD_POLING__MAX_RECORDS", "6"),
            ("KCLD_CONFIG", "/etc/kcld.toml"),
            ("PATH", "/bin"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (kept, warnings) = known_env(&env, &["KCLD_CONFIG"]);
        assert_eq!(kept.len(), 1);
        assert!(kept.contains_key("KCLD_POLLING__MAX_RECORDS"));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("KCLD_POLING__MAX_RECORDS")
                && warnings[0].contains("KCLD_POLLING__MAX_RECORDS")
        );
        assert!(warnings[1].contains("KCLD_WRAPPER_MODE"));
    }

    #[test]
    fn a_syntax_error_is_one_line_with_its_place() {
        let dir = std::env::temp_dir().join(format!("kcld-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "application_name = \"a\"\n[polling]\nmax_records = = 5\n",
        )
        .unwrap();
        let e = check_file(&path).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("line 3, column"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
