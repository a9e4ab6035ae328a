//! Shared helpers of validation: the problem list and the checks every section uses. A
//! leaf: it imports no section, so sections never import each other through it.

use crate::raw::DurationText;
use std::fmt;
use std::time::Duration;

/// One thing wrong with a config, at a YAML path such as `routes[2].upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config, in file order where it has one. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems as validation walks the file.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }
}

/// A duration such as `5s`, `250ms` or `1m 30s`.
pub(crate) fn duration(
    value: &Option<DurationText>,
    path: &str,
    default: Duration,
    problems: &mut Problems,
) -> Duration {
    let Some(DurationText(text)) = value else {
        return default;
    };
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            problems.add(path, "must be greater than zero");
            default
        }
        Ok(d) => d,
        Err(e) => {
            problems.add(
                path,
                format!("invalid duration {text:?} ({e}); write e.g. \"5s\" or \"250ms\""),
            );
            default
        }
    }
}

/// A header name as RFC 9110 allows it (a token), lower-cased.
pub(crate) fn header_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| name.to_ascii_lowercase())
}
