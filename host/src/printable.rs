//! Text from outside (channel names, file names, a plugin's error messages)
//! made safe to print: control characters are escaped, so a newline cannot
//! forge a log line and an escape sequence cannot drive a terminal.

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
}
