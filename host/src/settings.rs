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
    pub(crate) fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// TOML's message for a number too large for any setting ("invalid type:
/// integer `N` as i128, expected …") says nothing a user can act on.
pub(crate) fn toml_message(e: &toml::de::Error) -> String {
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

pub(crate) fn check_range(
    setting: &str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            setting,
            format!("{value} is outside {min}..={max}"),
        ))
    }
}

/// A span written as a whole number and a unit, `30s`, `15m`, `12h` or
/// `7d`, checked to lie within `min..=max`.
pub(crate) fn parse_span(
    setting: &str,
    text: &str,
    min: std::time::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    let bad = || {
        ConfigError::invalid(
            setting,
            format!("{text:?} is not a span like \"30s\", \"15m\", \"12h\" or \"7d\""),
        )
    };
    let text = text.trim();
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let span = std::time::Duration::from_secs(number.saturating_mul(seconds));
    if span < min || span > max {
        return Err(ConfigError::invalid(
            setting,
            format!("{text} is outside {min:?}..={max:?}"),
        ));
    }
    Ok(span)
}

#[cfg(test)]
mod span_tests {
    use super::parse_span;
    use std::time::Duration;

    #[test]
    fn a_span_has_a_number_and_a_unit_within_range() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(86_400 * 30));
        let span = |text| parse_span("outbox_retention", text, min, max);
        assert_eq!(span("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(span("90m").unwrap(), Duration::from_secs(5400));
        for bad in ["7 days", "d", "", "7w", "-1h"] {
            let err = span(bad).unwrap_err().to_string();
            assert!(err.starts_with("outbox_retention: "), "{bad}: {err}");
        }
        let err = span("10s").unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
    }
}
