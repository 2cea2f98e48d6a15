//! Channel names: validation and quoting for `LISTEN`/`UNLISTEN`.
//!
//! A channel is a PostgreSQL identifier. The host always sends it quoted, so
//! names are case-sensitive and match what `pg_notify('Name', …)` sends.

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer ones
/// would be truncated silently, so they are refused instead.
pub const MAX_CHANNEL_BYTES: usize = 63;

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name {name:?} is {len} bytes; PostgreSQL allows at most {MAX_CHANNEL_BYTES}")]
    TooLong { name: String, len: usize },
    #[error("channel name {0:?} contains a NUL byte")]
    Nul(String),
}

/// Check that `name` can be LISTENed exactly as given.
pub fn validate(name: &str) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > MAX_CHANNEL_BYTES {
        return Err(ChannelNameError::TooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    if name.contains('\0') {
        return Err(ChannelNameError::Nul(name.to_owned()));
    }
    Ok(())
}

/// Quote `name` as an SQL identifier, doubling embedded quotes.
pub fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(
            quote_ident(r#"a"; DROP TABLE x; --"#),
            r#""a""; DROP TABLE x; --""#
        );
        assert_eq!(quote_ident("Mixed Case"), "\"Mixed Case\"");
    }

    #[test]
    fn long_and_empty_names_are_refused() {
        assert_eq!(validate(""), Err(ChannelNameError::Empty));
        assert!(validate(&"x".repeat(63)).is_ok());
        assert!(matches!(
            validate(&"x".repeat(64)),
            Err(ChannelNameError::TooLong { len: 64, .. })
        ));
        // 21 three-byte characters are 63 bytes; one more is too many.
        assert!(validate(&"€".repeat(21)).is_ok());
        assert!(validate(&"€".repeat(22)).is_err());
    }
}
