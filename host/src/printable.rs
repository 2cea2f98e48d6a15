//! Text made fit to print. Text from outside (channel names, file names, a
//! plugin's error messages) has its control characters escaped, so a newline
//! cannot forge a log line and an escape sequence cannot drive a terminal;
//! an error is printed with its causes.

use std::borrow::Cow;

/// `text` with every control character written as a Rust escape (`\n`, `\u{1b}`).
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().collect()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// An error and its causes on one line: tokio-postgres keeps the useful
/// part (a refused certificate, a reset connection) in the source.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_kept() {
        assert_eq!(printable("orders"), "orders");
        assert_eq!(printable("ünïcødé ✓"), "ünïcødé ✓");
        assert_eq!(
            printable("a\nFAKE\u{1b}[31m\r\tz"),
            "a\\nFAKE\\u{1b}[31m\\r\\tz"
        );
    }

    #[test]
    fn an_error_is_told_with_its_causes() {
        let cause = std::io::Error::other("failed to reserve 8 GiB of address space");
        let e = crate::error::Error::Sandbox(cause.into());
        assert_eq!(
            with_causes(&e),
            "cannot create the wasm engine: failed to reserve 8 GiB of address space"
        );
    }
}
