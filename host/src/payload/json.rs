//! JSON arrays and objects, validated and compacted in one pass over the
//! bytes: the hot half of payload decoding. Validating first and compacting
//! after read each byte twice, through serde's visitor machinery once; here
//! a recursive descent looks at each byte once, strings up to sixteen bytes
//! at a time, and copies the runs between whitespace to the output.
//!
//! The grammar is RFC 8259's, as serde_json accepts it: no leading zeros,
//! no control characters in strings, only the escapes JSON defines (a lone
//! surrogate in `\u` is accepted, as serde_json does when it only skips a
//! value). The tests hold this scanner to serde_json on generated input.

/// The deepest nesting delivered as `json`: serde_json's own recursion limit,
/// so a guest parsing it with common defaults does not fail on it.
pub const MAX_JSON_DEPTH: usize = 128;

/// Why text that opens like an array or object is not delivered as `json`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NotCompacted {
    /// It is not JSON.
    Invalid,
    /// It nests deeper than [`MAX_JSON_DEPTH`] before its end, if any.
    TooDeep,
}

/// `json` without its insignificant whitespace, every other byte (number
/// digits, string escapes) kept as sent, if it is one valid JSON value no
/// deeper than [`MAX_JSON_DEPTH`]. Whitespace around it must be trimmed.
/// Written into `into`, in the allocation it holds, whatever its text; left
/// empty, with its allocation, if `json` is not compacted.
pub(super) fn compact(json: &str, into: &mut String) -> Result<(), NotCompacted> {
    let mut out = Output::for_input(json.len(), std::mem::take(into).into_bytes());
    let scanned = scan(json.as_bytes(), &mut out);
    if scanned.is_err() {
        out.clear();
    }
    *into = out.into_string();
    scanned
}

/// Validate `bytes` and write them to `out` without their whitespace.
fn scan(bytes: &[u8], out: &mut Output) -> Result<(), NotCompacted> {
    let mut scanner = Scanner {
        bytes,
        at: 0,
        run: 0,
        depth: 0,
        out,
    };
    scanner.whitespace();
    scanner.value()?;
    scanner.whitespace();
    if scanner.at != bytes.len() {
        return Err(NotCompacted::Invalid);
    }
    scanner.out.copy(bytes, scanner.run, bytes.len());
    Ok(())
}

/// A recursive descent over the bytes: where it is in the code says what
/// may come next, so each token costs a compare or two, and whitespace is
/// cut out of the output where the grammar allows it.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where the bytes not yet copied to `out` start.
    run: usize,
    depth: usize,
    out: &'a mut Output,
}

impl Scanner<'_> {
    /// The next byte; past the end, 0, which JSON never has outside a
    /// string, so the end fails every test the grammar makes of it.
    #[inline(always)]
    fn peek(&self) -> u8 {
        self.bytes.get(self.at).copied().unwrap_or(0)
    }

    /// Skip whitespace, if any, copying the run before it.
    #[inline(always)]
    fn whitespace(&mut self) {
        let byte = self.peek();
        // Most bytes are above the space: one compare rules them out.
        if byte > b' ' || !is_whitespace(byte) {
            return;
        }
        self.out.copy(self.bytes, self.run, self.at);
        self.at += 1;
        while is_whitespace(self.peek()) {
            self.at += 1;
        }
        self.run = self.at;
    }

    /// Step over `separator` and the whitespace around it, if it comes
    /// next; else skip the whitespace only. The spellings encoders write
    /// (`,` `, ` `: ` ` : `) are told apart with one look at four bytes.
    #[inline(always)]
    fn separator(&mut self, separator: u8) -> bool {
        let at = self.at;
        if let Some(&[first, second, third, fourth]) = self.bytes.get(at..at + 4) {
            if first == separator {
                if second > b' ' {
                    // Compact: nothing to cut.
                    self.at = at + 1;
                    return true;
                }
                if second == b' ' && third > b' ' {
                    self.out.copy(self.bytes, self.run, at + 1);
                    self.at = at + 2;
                    self.run = self.at;
                    return true;
                }
            } else if first == b' ' && second == separator && third == b' ' && fourth > b' ' {
                self.out.copy(self.bytes, self.run, at);
                self.out.push(separator);
                self.at = at + 3;
                self.run = self.at;
                return true;
            }
        }
        self.whitespace();
        if self.peek() != separator {
            return false;
        }
        self.at += 1;
        self.whitespace();
        true
    }

    /// Step over `byte`, which must come next.
    #[inline(always)]
    fn expect(&mut self, byte: u8) -> Result<(), NotCompacted> {
        if self.peek() != byte {
            return Err(NotCompacted::Invalid);
        }
        self.at += 1;
        Ok(())
    }

    /// A value. Inlined into the containers, so that a scalar or a string
    /// costs no call: only a nested container recurses.
    #[inline(always)]
    fn value(&mut self) -> Result<(), NotCompacted> {
        let bytes = self.bytes;
        self.at = match self.peek() {
            b'{' => return self.object(),
            b'[' => return self.array(),
            b'"' => after_string(bytes, self.at)?,
            b'-' | b'0'..=b'9' => after_number(bytes, self.at)?,
            b't' => after_literal(bytes, self.at, b"true")?,
            b'f' => after_literal(bytes, self.at, b"false")?,
            b'n' => after_literal(bytes, self.at, b"null")?,
            _ => return Err(NotCompacted::Invalid),
        };
        Ok(())
    }

    /// A container opens, at one more level of nesting.
    fn open(&mut self) -> Result<(), NotCompacted> {
        self.depth += 1;
        if self.depth > MAX_JSON_DEPTH {
            return Err(NotCompacted::TooDeep);
        }
        self.at += 1;
        self.whitespace();
        Ok(())
    }

    #[inline(never)]
    fn object(&mut self) -> Result<(), NotCompacted> {
        self.members(b'}', Self::member)
    }

    #[inline(never)]
    fn array(&mut self) -> Result<(), NotCompacted> {
        self.members(b']', Self::value)
    }

    /// An object's member: a key, `:` and a value.
    #[inline(always)]
    fn member(&mut self) -> Result<(), NotCompacted> {
        if self.peek() != b'"' {
            return Err(NotCompacted::Invalid);
        }
        self.at = after_string(self.bytes, self.at)?;
        if !self.separator(b':') {
            return Err(NotCompacted::Invalid);
        }
        self.value()
    }

    /// The members of the container that opens here, each read by
    /// `member`, separated by `,`, up to `close`.
    #[inline(always)]
    fn members(
        &mut self,
        close: u8,
        member: fn(&mut Self) -> Result<(), NotCompacted>,
    ) -> Result<(), NotCompacted> {
        self.open()?;
        if self.peek() != close {
            loop {
                member(self)?;
                if !self.separator(b',') {
                    break;
                }
            }
        }
        self.expect(close)?;
        self.depth -= 1;
        Ok(())
    }
}

/// JSON's whitespace: space, tab, line feed, carriage return.
fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// The compacted bytes, written in runs. Most runs are a few bytes (a key,
/// a number), so a short one is copied as one 16-byte move into a buffer
/// with room to spare, instead of a `memcpy` call sized to it; the bytes
/// past the run are overwritten by the next one.
struct Output {
    buffer: Vec<u8>,
}

impl Output {
    const SHORT: usize = 16;

    /// Room for the input and the slack of a short copy; not zeroed, as
    /// only what is written is ever read.
    fn for_input(len: usize, mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        buffer.reserve(len + Self::SHORT);
        Self { buffer }
    }

    /// Append `bytes[from..to]`. A short run is copied as 16 bytes: the
    /// extra ones land in the spare capacity, and the next run overwrites
    /// them. Inlined, and the short copy unchecked: this runs at every
    /// whitespace, and the call and the slice checks cost a fifth of the scan.
    #[inline(always)]
    fn copy(&mut self, bytes: &[u8], from: usize, to: usize) {
        let n = to.wrapping_sub(from);
        let (len, short) = (self.buffer.len(), Self::SHORT);
        if n <= short && from + short <= bytes.len() && len + short <= self.buffer.capacity() {
            // SAFETY: just checked: `short` bytes from `from` are within
            // `bytes`, and from `len` within the buffer's capacity; the
            // `n` of them that become its length are the run.
            unsafe {
                let src = bytes.as_ptr().add(from);
                std::ptr::copy_nonoverlapping(src, self.buffer.as_mut_ptr().add(len), short);
                self.buffer.set_len(len + n);
            }
        } else {
            self.buffer.extend_from_slice(&bytes[from..to]);
        }
    }

    /// Append one byte (always ASCII).
    #[inline(always)]
    fn push(&mut self, byte: u8) {
        self.buffer.push(byte);
    }

    /// Forget what was written, keeping the allocation.
    fn clear(&mut self) {
        self.buffer.clear();
    }

    fn into_string(self) -> String {
        // SAFETY: the buffer holds the input, a `str`, less some ASCII
        // whitespace bytes outside strings (a separator pushed is the
        // input's own byte); dropping whole ASCII bytes keeps UTF-8 valid.
        unsafe { String::from_utf8_unchecked(self.buffer) }
    }
}

/// Each byte of a word set to `b`.
const fn splat(b: u8) -> u64 {
    u64::from_ne_bytes([b; 8])
}

/// The high bit of each byte of `word` that is `"`, `\\` or below 0x20,
/// and maybe of bytes after the first such one (the borrow runs upwards;
/// the lowest set bit is exact). Eight bytes in a few instructions.
fn string_stops(word: u64) -> u64 {
    const ONES: u64 = splat(0x01);
    const HIGHS: u64 = splat(0x80);
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = word.wrapping_sub(splat(0x20)) & !word & HIGHS;
    below_space | zero_byte(word ^ splat(b'"')) | zero_byte(word ^ splat(b'\\'))
}

/// The index after the string that opens at `start` (a `"`). Inlined: most
/// strings are a few bytes, and the call cost as much as the scan.
#[inline(always)]
fn after_string(bytes: &[u8], start: usize) -> Result<usize, NotCompacted> {
    let mut i = start + 1;
    loop {
        i = next_stop(bytes, i);
        match bytes.get(i) {
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => i = after_escape(bytes, i)?,
            Some(b) if *b < 0x20 => return Err(NotCompacted::Invalid),
            // Not a stop: the last few bytes, read one at a time.
            Some(_) => i += 1,
            None => return Err(NotCompacted::Invalid),
        }
    }
}

/// The index of the first `"`, `\\` or control character from `i` on,
/// sixteen bytes at a time (a first eight-byte word cost more instructions
/// than the vector look it saved), then one word; or of the first of the
/// last few bytes, which the caller reads one at a time.
#[inline(always)]
fn next_stop(bytes: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = bytes
        .get(i..i + 16)
        .and_then(|c| <&[u8; 16]>::try_from(c).ok())
    {
        if let Some(stop) = first_stop(chunk) {
            return i + stop;
        }
        i += 16;
    }
    let word = bytes
        .get(i..i + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok());
    match word.map(|word| string_stops(u64::from_le_bytes(word))) {
        Some(0) => i + 8,
        Some(stops) => i + stops.trailing_zeros() as usize / 8,
        None => i,
    }
}

/// Where in `chunk` its first `"`, `\\` or control character is, with
/// SSE2, which every x86_64 processor has: a long string's bytes cost a
/// few instructions per sixteen.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn first_stop(chunk: &[u8; 16]) -> Option<usize> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 target; the load reads the 16
    // bytes of `chunk` and allows any alignment.
    let stops = unsafe {
        let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
    };
    (stops != 0).then(|| stops.trailing_zeros() as usize)
}

/// The same, two words at a time: the portable way, and the reference the
/// vector one is tested against.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn first_stop_by_words(chunk: &[u8; 16]) -> Option<usize> {
    let (low, high) = chunk.split_at(8);
    let word = |half: &[u8]| <[u8; 8]>::try_from(half).map_or(0, u64::from_le_bytes);
    match (string_stops(word(low)), string_stops(word(high))) {
        (0, 0) => None,
        (0, stops) => Some(8 + stops.trailing_zeros() as usize / 8),
        (stops, _) => Some(stops.trailing_zeros() as usize / 8),
    }
}

#[cfg(not(target_arch = "x86_64"))]
use first_stop_by_words as first_stop;

/// The index after the escape that starts at `start` (a `\`).
fn after_escape(bytes: &[u8], start: usize) -> Result<usize, NotCompacted> {
    match bytes.get(start + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(start + 2),
        Some(b'u') => {
            let hex = bytes
                .get(start + 2..start + 6)
                .ok_or(NotCompacted::Invalid)?;
            if hex.iter().all(u8::is_ascii_hexdigit) {
                Ok(start + 6)
            } else {
                Err(NotCompacted::Invalid)
            }
        }
        _ => Err(NotCompacted::Invalid),
    }
}

/// The index after the number that starts at `start`:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn after_number(bytes: &[u8], start: usize) -> Result<usize, NotCompacted> {
    // Past the end, 0: not a digit, nor anything a number may continue with.
    let at = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let digits_from = |mut i: usize| {
        if !at(i).is_ascii_digit() {
            return Err(NotCompacted::Invalid);
        }
        i += 1;
        while at(i).is_ascii_digit() {
            i += 1;
        }
        Ok(i)
    };
    let mut i = start + usize::from(at(start) == b'-');
    i = match at(i) {
        b'0' => i + 1,
        b'1'..=b'9' => digits_from(i)?,
        _ => return Err(NotCompacted::Invalid),
    };
    if at(i) == b'.' {
        i = digits_from(i + 1)?;
    }
    if matches!(at(i), b'e' | b'E') {
        i += 1;
        if matches!(at(i), b'+' | b'-') {
            i += 1;
        }
        i = digits_from(i)?;
    }
    // A digit right after a lone `0` (`01`) is not JSON; nor is a number
    // run into a letter or a second point.
    match at(i) {
        b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-' => Err(NotCompacted::Invalid),
        _ => Ok(i),
    }
}

/// The index after `literal`, which must start at `start`.
fn after_literal(bytes: &[u8], start: usize, literal: &[u8]) -> Result<usize, NotCompacted> {
    let end = start + literal.len();
    if bytes.get(start..end) == Some(literal) {
        Ok(end)
    } else {
        Err(NotCompacted::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    /// `json` compacted into a new string.
    fn compacted(json: &str) -> Result<String, NotCompacted> {
        let mut into = String::new();
        compact(json, &mut into).map(|()| into)
    }

    /// What serde_json says, and the compaction spelled out byte by byte.
    fn oracle(text: &str) -> Result<String, NotCompacted> {
        let trimmed = text.trim_matches([' ', '\t', '\n', '\r']);
        if serde_json::from_str::<IgnoredAny>(trimmed).is_err() {
            return Err(NotCompacted::Invalid);
        }
        let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
        for c in trimmed.chars() {
            match (in_string, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (true, false, '"') => in_string = false,
                (false, _, '"') => in_string = true,
                (false, _, ' ' | '\t' | '\n' | '\r') => continue,
                _ => {}
            }
            out.push(c);
        }
        Ok(out)
    }

    fn check(text: &str) {
        let trimmed = text.trim_matches([' ', '\t', '\n', '\r']);
        let got = compacted(trimmed);
        // serde_json stops at its own recursion limit, as deep as ours.
        let expected = match oracle(text) {
            Err(_) if got == Err(NotCompacted::TooDeep) => return,
            expected => expected,
        };
        assert_eq!(got, expected, "for {text:?}");
    }

    const SEEDS: &[&str] = &[
        r#"{"op" : "UPDATE", "new" : {"id" : 7, "total" : 123.45, "paid" : true, "notes" : null, "items" : [{"sku" : "SKU-1", "qty" : 2, "price" : 19.99}, {"sku" : "S\"K\\U", "qty" : -1e-3}], "tags" : ["web", "promo"], "empty" : {}, "none" : []}}"#,
        "[1, -0, 0.5, 1E+2, 2e-1, 1e5, -12.75e3, \"\\u00e9\\n\\t\\/\", \"é ✓\", false, null, [[[]]], {}]",
        "{\"a\":{\"b\":{\"c\":[\"\\ud83d\\ude00\", \"\\ud800\"]}}}",
        "[\"\\\\\", \"\\\"\", \"a\\\\\\\"b\"]",
        r#"{"long": "more than eight bytes, an \"escape\" late, é ✓ and \u00e9 here", "k": "0123456789abcdef"}"#,
        r#"["0123456789abcdef0123456789abcde\"", "0123456789abcdefg\\", "a\u00e9b0123456789abcdef\n0123"]"#,
        // Pretty-printed: runs of whitespace, and whitespace before `,`.
        "{\n  \"a\" : [\n    1 ,\n\t2\r\n  ],\n  \"b\" : { \"c\" : \"d\" } \n}",
        // Separators spelled every way, near the end too: the one-look
        // spellings and the ones that fall back to skipping whitespace.
        r#"{"a": 1,"b" :2 , "c":  3,  "d" : [4 , 5,6] ,"e" : {"f":7}, "g" : "h" }"#,
    ];

    #[test]
    fn agrees_with_serde_json_on_valid_json() {
        for seed in SEEDS {
            assert!(compacted(seed).is_ok(), "{seed}");
            check(seed);
        }
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for bad in [
            "{",
            "[",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\" 1}",
            "{1:2}",
            "{\"a\":1,}",
            "[01]",
            "[1.]",
            "[.5]",
            "[-]",
            "[1e]",
            "[1e+]",
            "[+1]",
            "[1.2.3]",
            "[0x1]",
            "[tru]",
            "[truex]",
            "[nul]",
            "[\"a]",
            "[\"\\x\"]",
            "[\"\\u12g4\"]",
            "[\"\\u12\"]",
            "[\"a\u{1}b\"]",
            "[\"tab\tin\"]",
            "[1] [2]",
            "[1]]",
            "{}}",
            "[}",
            "{]",
            "[\"a\":1]",
            "[NaN]",
            "[Infinity]",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "[\"\\",
            "[\"abc\\",
            "[-01]",
            "[1e5.5]",
        ] {
            assert_eq!(compacted(bad), Err(NotCompacted::Invalid), "{bad}");
            check(bad);
        }
    }

    #[test]
    fn the_vector_stop_finder_agrees_with_the_word_one() {
        for at in 0..16 {
            for byte in [
                b'"', b'\\', 0x00, 0x09, 0x1f, b' ', b'a', 0x7f, 0x80, 0xc3, 0xff,
            ] {
                let mut chunk = [b'x'; 16];
                chunk[at] = byte;
                let expected = (byte == b'"' || byte == b'\\' || byte < 0x20).then_some(at);
                assert_eq!(first_stop(&chunk), expected, "{byte:#x} at {at}");
                assert_eq!(first_stop_by_words(&chunk), expected, "{byte:#x} at {at}");
                // A second stop after the first must not move it.
                if at < 15 {
                    chunk[15] = b'"';
                    let expected = expected.or(Some(15));
                    assert_eq!(
                        first_stop(&chunk),
                        expected,
                        "{byte:#x} at {at}, then a quote"
                    );
                    assert_eq!(first_stop_by_words(&chunk), expected);
                }
            }
        }
    }

    #[test]
    fn depth_is_counted_to_the_limit() {
        let limit = "[".repeat(MAX_JSON_DEPTH) + &"]".repeat(MAX_JSON_DEPTH);
        assert_eq!(compacted(&limit).as_deref(), Ok(limit.as_str()));
        let deeper = "[".repeat(MAX_JSON_DEPTH + 1) + &"]".repeat(MAX_JSON_DEPTH + 1);
        assert_eq!(compacted(&deeper), Err(NotCompacted::TooDeep));
        let objects = "{\"k\":".repeat(MAX_JSON_DEPTH) + "1" + &"}".repeat(MAX_JSON_DEPTH);
        assert!(compacted(&objects).is_ok());
    }

    /// Every seed with each byte dropped, each of JSON's significant bytes
    /// put at each place, and cut at each place: serde_json and this
    /// scanner must agree on all of them.
    #[test]
    fn agrees_with_serde_json_on_mutations() {
        const INSERTS: &[u8] = b" \t\"\\{}[]:,-+.eE0159tfnu\x01";
        let mut checked = 0;
        for seed in SEEDS {
            let bytes = seed.as_bytes();
            for at in 0..=bytes.len() {
                let mut variants = vec![bytes[..at].to_vec()];
                if at < bytes.len() {
                    variants.push([&bytes[..at], &bytes[at + 1..]].concat());
                }
                for &insert in INSERTS {
                    variants.push([&bytes[..at], &[insert], &bytes[at..]].concat());
                }
                for variant in variants {
                    if let Ok(text) = String::from_utf8(variant) {
                        check(&text);
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000, "only {checked} variants");
    }
}
