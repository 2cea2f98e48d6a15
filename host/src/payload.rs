//! Payload decoding: a notification's text becomes a typed [`Payload`], once.
//!
//! The rules follow the WIT contract. JSON scalars become their own cases,
//! arrays and objects arrive as compact JSON text, and anything that is not
//! JSON (bare text, the empty payload) arrives as `text`. Numbers never lose
//! precision silently: one that an `s64` or `f64` cannot hold exactly arrives
//! as `json` with its original digits. Decoding never fails.

mod json;

pub use crate::bindings::Payload;
use json::NotCompacted;
pub use json::MAX_JSON_DEPTH;

/// How a subscriber wants its payloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadMode {
    /// Decode JSON into the typed cases.
    #[default]
    Typed,
    /// Deliver every payload unparsed as `text`.
    Raw,
}

/// A payload as `case value`: `integer 42`, `float 2.5`, `text "hi"`,
/// `json {"a":1}`, the way the example `logger` plugin writes it.
pub fn describe(payload: &Payload) -> String {
    match payload {
        Payload::Null => "null".into(),
        Payload::Boolean(b) => format!("boolean {b}"),
        Payload::Integer(i) => format!("integer {i}"),
        Payload::Float(f) => format!("float {f:?}"),
        Payload::Text(t) => format!("text {t:?}"),
        Payload::Json(j) => format!("json {j}"),
    }
}

/// Decode a payload for the given mode.
pub fn decode(raw: &str, mode: PayloadMode) -> Payload {
    decode_into(raw, mode, &mut String::new())
}

/// Decode a payload, writing its text (compacted JSON, or the payload as
/// sent) into `buffer`'s allocation, taken from it, instead of a new one. A
/// JSON string is unescaped into a new allocation, and `buffer` is left as
/// it was then, as it is when the payload holds no text (a number, a
/// boolean, null).
pub fn decode_into(raw: &str, mode: PayloadMode, buffer: &mut String) -> Payload {
    let trimmed = match mode {
        PayloadMode::Raw => return text_in(raw, buffer),
        PayloadMode::Typed => raw.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r')),
    };
    match trimmed.as_bytes().first() {
        None => text_in(raw, buffer),
        Some(b'{' | b'[') => match json::compact(trimmed, buffer) {
            Ok(()) => Payload::Json(std::mem::take(buffer)),
            Err(NotCompacted::Invalid) => text_in(raw, buffer),
            Err(NotCompacted::TooDeep) => {
                tracing::warn!(
                    bytes = raw.len(),
                    max_depth = MAX_JSON_DEPTH,
                    "payload nests JSON too deeply; delivering it as text"
                );
                text_in(raw, buffer)
            }
        },
        Some(b'"') => serde_json::from_str::<String>(trimmed)
            .map_or_else(|_| text_in(raw, buffer), Payload::Text),
        Some(b't') if trimmed == "true" => Payload::Boolean(true),
        Some(b'f') if trimmed == "false" => Payload::Boolean(false),
        Some(b'n') if trimmed == "null" => Payload::Null,
        Some(b'-' | b'0'..=b'9') => decode_number(trimmed).unwrap_or_else(|| text_in(raw, buffer)),
        Some(_) => text_in(raw, buffer),
    }
}

/// `raw` as `text`, in `buffer`'s allocation.
fn text_in(raw: &str, buffer: &mut String) -> Payload {
    let mut text = std::mem::take(buffer);
    text.clear();
    text.push_str(raw);
    Payload::Text(text)
}

/// A JSON number literal: `integer` when it fits `s64`, `float` when the
/// nearest `f64` gives its digits back (the shortest decimal that reads as
/// that `f64` has the literal's significant digits), otherwise `json` with
/// its digits. `None` if not a number.
fn decode_number(literal: &str) -> Option<Payload> {
    // The common case first: a plain integer, read in one pass.
    match plain_integer(literal) {
        PlainInteger::Fits(i) => return Some(Payload::Integer(i)),
        PlainInteger::TooBig => return Some(Payload::Json(literal.to_owned())),
        PlainInteger::No => {}
    }
    // Anything else valid has a fraction or an exponent.
    let number = DecimalDigits::of_json(literal)?;
    let float: f64 = literal.parse().ok()?;
    if float.is_finite() && number == DecimalDigits::of_f64(float) {
        Some(Payload::Float(float))
    } else {
        Some(Payload::Json(literal.to_owned()))
    }
}

/// What [`plain_integer`] read.
enum PlainInteger {
    Fits(i64),
    /// A plain integer beyond `s64`.
    TooBig,
    /// Not a plain integer: a fraction, an exponent, a leading zero or `+`, or not a number.
    No,
}

/// A JSON integer without fraction or exponent (`0`, `-12`), checked and
/// converted in the same pass over its digits.
fn plain_integer(literal: &str) -> PlainInteger {
    let (negative, digits) = match literal.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        all => (false, all),
    };
    if digits.is_empty() || (digits[0] == b'0' && digits.len() > 1) {
        return PlainInteger::No;
    }
    // Summed downwards, so that i64::MIN fits.
    let mut value: Option<i64> = Some(0);
    for &byte in digits {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return PlainInteger::No;
        }
        value = value.and_then(|v| v.checked_mul(10)?.checked_sub(i64::from(digit)));
    }
    match value {
        Some(v) if negative => PlainInteger::Fits(v),
        Some(v) => v
            .checked_neg()
            .map_or(PlainInteger::TooBig, PlainInteger::Fits),
        None => PlainInteger::TooBig,
    }
}

/// A number reduced to sign, significant digits and exponent, so that two
/// spellings of the same value compare equal.
#[derive(PartialEq, Debug)]
struct DecimalDigits {
    negative: bool,
    /// Significant digits without leading or trailing zeros; empty for zero.
    digits: String,
    /// The value is `0.digits × 10^exponent`.
    exponent: i64,
}

impl DecimalDigits {
    /// A JSON number literal, validated; `None` if it is not one.
    fn of_json(literal: &str) -> Option<Self> {
        let bytes = literal.as_bytes();
        let mut i = 0;
        let negative = bytes.first() == Some(&b'-');
        if negative {
            i += 1;
        }
        let int_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let int_digits = &literal[int_start..i];
        if int_digits.is_empty() || (int_digits.len() > 1 && int_digits.starts_with('0')) {
            return None;
        }
        let mut frac_digits = "";
        if bytes.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac_digits = &literal[start..i];
            if frac_digits.is_empty() {
                return None;
            }
        }
        let mut exp: i64 = 0;
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            let exp_negative = match bytes.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                return None;
            }
            // Saturate: an exponent this large is not exact in f64 anyway.
            exp = literal[start..i]
                .parse::<i64>()
                .unwrap_or(i64::MAX / 4)
                .min(i64::MAX / 4);
            if exp_negative {
                exp = -exp;
            }
        }
        if i != bytes.len() {
            return None;
        }
        let all_digits: String = [int_digits, frac_digits].concat();
        Some(Self::normalise(
            negative,
            &all_digits,
            int_digits.len() as i64 + exp,
        ))
    }

    /// `digits` with the decimal point after `point` digits.
    fn normalise(negative: bool, digits: &str, point: i64) -> Self {
        let leading = digits.len() - digits.trim_start_matches('0').len();
        let significant = digits.trim_matches('0');
        if significant.is_empty() {
            // Zero: the sign is kept, since -0.0 and 0.0 are different floats.
            return Self {
                negative,
                digits: String::new(),
                exponent: 0,
            };
        }
        Self {
            negative,
            digits: significant.to_owned(),
            exponent: point - leading as i64,
        }
    }

    /// The shortest decimal that reads back as `float` (Rust prints that).
    fn of_f64(float: f64) -> Self {
        let text = format!("{:e}", float.abs());
        let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
        let exp: i64 = exp.parse().unwrap_or(0);
        let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = [int_part, frac_part].concat();
        Self::normalise(
            float.is_sign_negative(),
            &digits,
            int_part.len() as i64 + exp,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(raw: &str) -> Payload {
        decode(raw, PayloadMode::Typed)
    }

    #[test]
    fn scalars_become_their_own_cases() {
        assert_eq!(typed("true"), Payload::Boolean(true));
        assert_eq!(typed(" false "), Payload::Boolean(false));
        assert_eq!(typed("null"), Payload::Null);
        assert_eq!(typed("42"), Payload::Integer(42));
        assert_eq!(typed("-9223372036854775808"), Payload::Integer(i64::MIN));
        assert_eq!(typed("3.25"), Payload::Float(3.25));
        assert_eq!(typed("0.1"), Payload::Float(0.1));
        assert_eq!(typed("1.5e3"), Payload::Float(1500.0));
        assert_eq!(typed("-0.0"), Payload::Float(-0.0));
        assert_eq!(typed("\"a \\\"b\\\"\""), Payload::Text("a \"b\"".into()));
    }

    #[test]
    fn numbers_that_do_not_fit_keep_their_digits() {
        let big = "123456789012345678901234567890";
        assert_eq!(typed(big), Payload::Json(big.into()));
        assert_eq!(
            typed("9223372036854775808"),
            Payload::Json("9223372036854775808".into())
        );
        assert_eq!(
            typed("0.1000000000000000000001"),
            Payload::Json("0.1000000000000000000001".into())
        );
        assert_eq!(typed("1e400"), Payload::Json("1e400".into()));
    }

    #[test]
    fn integers_at_their_edges() {
        assert_eq!(typed("0"), Payload::Integer(0));
        assert_eq!(typed("-0"), Payload::Integer(0));
        assert_eq!(typed("9223372036854775807"), Payload::Integer(i64::MAX));
        assert_eq!(
            typed("-9223372036854775809"),
            Payload::Json("-9223372036854775809".into())
        );
        assert_eq!(
            typed("1000000000000042"),
            Payload::Integer(1_000_000_000_000_042)
        );
        assert_eq!(typed("1e3"), Payload::Float(1000.0));
        assert_eq!(typed("-"), Payload::Text("-".into()));
        assert_eq!(typed("+1"), Payload::Text("+1".into()));
        assert_eq!(typed("-01"), Payload::Text("-01".into()));
        assert_eq!(typed("12a"), Payload::Text("12a".into()));
        assert_eq!(typed("1/2"), Payload::Text("1/2".into()));
    }

    #[test]
    fn non_json_is_text() {
        assert_eq!(typed(""), Payload::Text(String::new()));
        assert_eq!(typed("hello world"), Payload::Text("hello world".into()));
        assert_eq!(typed("01"), Payload::Text("01".into()));
        assert_eq!(typed("1."), Payload::Text("1.".into()));
        assert_eq!(typed("truest"), Payload::Text("truest".into()));
        assert_eq!(typed("{broken"), Payload::Text("{broken".into()));
        assert_eq!(typed("NaN"), Payload::Text("NaN".into()));
    }

    #[test]
    fn containers_are_compacted_without_touching_values() {
        assert_eq!(
            typed("{ \"a\" : [1, 2 ,3], \"s\": \"x y\\\" z\", \"n\": 123456789012345678901234567890 }"),
            Payload::Json("{\"a\":[1,2,3],\"s\":\"x y\\\" z\",\"n\":123456789012345678901234567890}".into())
        );
    }

    #[test]
    fn too_deep_json_falls_back_to_text() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(typed(&deep), Payload::Text(deep.clone()));
        let limit = "[".repeat(MAX_JSON_DEPTH) + &"]".repeat(MAX_JSON_DEPTH);
        assert_eq!(typed(&limit), Payload::Json(limit.clone()));
    }

    #[test]
    fn raw_mode_never_parses() {
        assert_eq!(decode("42", PayloadMode::Raw), Payload::Text("42".into()));
    }

    #[test]
    fn text_is_decoded_into_the_buffer_given() {
        // The buffer holds an older, longer payload: none of it may show.
        let old = r#"{"an": "older", "and": "longer payload"}"#;
        for (raw, mode, want) in [
            (
                r#"{ "a" : [1, 2] }"#,
                PayloadMode::Typed,
                Payload::Json(r#"{"a":[1,2]}"#.into()),
            ),
            ("plain", PayloadMode::Typed, Payload::Text("plain".into())),
            ("[1,", PayloadMode::Typed, Payload::Text("[1,".into())),
            ("42", PayloadMode::Raw, Payload::Text("42".into())),
        ] {
            let mut buffer = String::from(old);
            let at = buffer.as_ptr();
            let got = decode_into(raw, mode, &mut buffer);
            assert_eq!(got, want, "{raw}");
            if let Payload::Json(text) | Payload::Text(text) = &got {
                assert_eq!(text.as_ptr(), at, "{raw}: decoded into a new allocation");
            }
        }
        let mut buffer = String::from(old);
        assert_eq!(
            decode_into("7", PayloadMode::Typed, &mut buffer),
            Payload::Integer(7)
        );
        assert_eq!(buffer, old, "a payload without text leaves the buffer");
    }
}
