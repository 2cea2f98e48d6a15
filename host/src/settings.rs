//! What every setting shares: the error that names the setting or file at
//! fault, the range check, and TOML's messages made readable.

use std::path::PathBuf;

/// A configuration problem, naming the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{setting}: {reason}")]
    Invalid { setting: String, reason: String },
}

impl ConfigError {
    pub fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// TOML's message for a number too large for any setting ("invalid type:
/// integer `N` as i128, expected …") says nothing a user can act on.
pub fn toml_message(e: &toml::de::Error) -> String {
    let text = e.to_string();
    let Some(start) = text.find("invalid type: integer `") else {
        return text;
    };
    let rest = &text[start + "invalid type: integer `".len()..];
    let Some((number, tail)) = rest.split_once("` as i128") else {
        return text;
    };
    let end = tail.find('\n').unwrap_or(tail.len());
    format!(
        "{}{number} is too large for this setting{}",
        &text[..start],
        &tail[end..]
    )
}

pub fn check_range(setting: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            setting,
            format!("{value} is outside {min}..={max}"),
        ))
    }
}
