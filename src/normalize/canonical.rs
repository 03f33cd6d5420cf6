//! RFC 8785 (JSON Canonicalization Scheme) and the state hash built on it (design §4).
//!
//! Submissions and Cloud Apps alerts have no update time, so their version is a state number
//! that moves when the SHA-256 of their mutable fields changes. Hashing the canonical form makes
//! that hash independent of member order, whitespace and number spelling (`1.0` vs `1`), so a
//! re-read of an unchanged item is never mistaken for a change.

use sha2::{Digest, Sha256};

use super::json::write_str;

/// SHA-256 of the canonical JSON of the object `{name: value, ...}` built from `members`, each
/// value given as JSON text. An absent member and a `null` one are the same (Microsoft omits
/// nulls inconsistently).
pub(crate) fn state_hash(members: &[(&str, Option<&str>)]) -> [u8; 32] {
    let mut sorted: Vec<&(&str, Option<&str>)> = members.iter().collect();
    sorted.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    let mut out = Vec::new();
    out.push(b'{');
    for (i, (name, raw)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, name);
        out.push(b':');
        match raw {
            Some(text) => write_canonical(text, &mut out),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
    Sha256::digest(&out).into()
}

/// Writes the JSON `text` in RFC 8785 form: no whitespace, object members sorted by the UTF-16
/// code units of their names, numbers as ECMAScript writes doubles, strings minimally escaped.
///
/// It walks the text itself rather than a `serde_json::Value`: serde_json (without its
/// `float_roundtrip` feature) parses some decimals to a neighbouring double, which RFC 8785
/// would then print differently. `text` comes from a `RawValue`, so it is valid JSON; should
/// anything still be unreadable (a lone surrogate escape), the text is written as it is, which
/// keeps the hash deterministic.
pub(crate) fn write_canonical(text: &str, out: &mut Vec<u8>) {
    let start = out.len();
    let mut p = Walker { text, at: 0 };
    if p.value(out, 0).is_none() {
        out.truncate(start);
        out.extend_from_slice(text.trim().as_bytes());
    }
}

/// A cursor over valid JSON text.
struct Walker<'a> {
    text: &'a str,
    at: usize,
}

/// serde_json refuses input nested deeper than 128, so no `RawValue` is deeper than this.
const MAX_DEPTH: usize = 200;

impl Walker<'_> {
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(self.at) {
            self.at += 1;
        }
        bytes.get(self.at).copied()
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => {
                self.at += 1;
                let mut members: Vec<(String, Vec<u8>)> = Vec::new();
                loop {
                    match self.peek()? {
                        b'}' => break,
                        b',' => self.at += 1,
                        _ => {
                            let name = self.string()?;
                            if self.peek()? != b':' {
                                return None;
                            }
                            self.at += 1;
                            let mut v = Vec::new();
                            self.value(&mut v, depth + 1)?;
                            members.push((name, v));
                        }
                    }
                }
                self.at += 1;
                members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
                out.push(b'{');
                for (i, (name, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(out, name);
                    out.push(b':');
                    out.extend_from_slice(v);
                }
                out.push(b'}');
            }
            b'[' => {
                self.at += 1;
                out.push(b'[');
                let mut first = true;
                loop {
                    match self.peek()? {
                        b']' => break,
                        b',' => self.at += 1,
                        _ => {
                            if !first {
                                out.push(b',');
                            }
                            first = false;
                            self.value(out, depth + 1)?;
                        }
                    }
                }
                self.at += 1;
                out.push(b']');
            }
            b'"' => {
                let s = self.string()?;
                write_str(out, &s);
            }
            b't' | b'f' | b'n' => {
                let rest = &self.text[self.at..];
                let word = ["true", "false", "null"]
                    .into_iter()
                    .find(|w| rest.starts_with(w))?;
                self.at += word.len();
                out.extend_from_slice(word.as_bytes());
            }
            _ => {
                let rest = &self.text.as_bytes()[self.at..];
                let len = rest
                    .iter()
                    .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .count();
                // Rust's parse is correctly rounded, as RFC 8785 requires.
                let v: f64 = self.text.get(self.at..self.at + len)?.parse().ok()?;
                self.at += len;
                write_number(v, out);
            }
        }
        Some(())
    }

    /// Reads a string token and unescapes it (with serde_json, which knows every escape).
    fn string(&mut self) -> Option<String> {
        if self.peek()? != b'"' {
            return None;
        }
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut i = start + 1;
        loop {
            match bytes.get(i)? {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        self.at = i + 1;
        serde_json::from_str(self.text.get(start..self.at)?).ok()
    }
}

/// ECMAScript `Number.prototype.toString` for a finite double (RFC 8785 §3.2.2.3), from the
/// shortest round-trip digits that Rust's `{:e}` produces.
fn write_number(v: f64, out: &mut Vec<u8>) {
    if v == 0.0 || !v.is_finite() {
        // -0 is written 0; JSON has no NaN or infinity, so the second case cannot occur.
        out.push(b'0');
        return;
    }
    if v < 0.0 {
        out.push(b'-');
    }
    let sci = format!("{:e}", v.abs()); // e.g. "1.2345e-7", "5e0"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    let k = digits.len() as i64;
    // n: the position of the decimal point relative to the digits (value = 0.digits × 10^n).
    let n = exp.parse::<i64>().unwrap_or(0) + 1;
    if k <= n && n <= 21 {
        out.extend_from_slice(&digits);
        out.extend(std::iter::repeat_n(b'0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(n as usize);
        out.extend_from_slice(int);
        out.push(b'.');
        out.extend_from_slice(frac);
    } else if -6 < n && n <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', (-n) as usize));
        out.extend_from_slice(&digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.extend_from_slice(first);
        if !rest.is_empty() {
            out.push(b'.');
            out.extend_from_slice(rest);
        }
        out.push(b'e');
        out.push(if n - 1 < 0 { b'-' } else { b'+' });
        out.extend_from_slice((n - 1).abs().to_string().as_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn canonical(json: &str) -> String {
        let mut out = Vec::new();
        write_canonical(json, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_follow_ecmascript() {
        // Values from RFC 8785 Appendix B and §3.2.2.3.
        for (input, expected) in [
            ("0", "0"),
            ("-0", "0"),
            ("1", "1"),
            ("-1", "-1"),
            ("4.50", "4.5"),
            ("2e-3", "0.002"),
            ("1e21", "1e+21"),
            ("1E30", "1e+30"),
            ("1e-7", "1e-7"),
            ("0.000001", "0.000001"),
            ("333333333.33333329", "333333333.3333333"),
            ("0.000000000000000000000000001", "1e-27"),
            ("9007199254740992", "9007199254740992"),
            ("100000000000000000000", "100000000000000000000"),
            ("123456789012345678901", "123456789012345680000"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
            ("-1.5e-9", "-1.5e-9"),
            ("295147905179352830000", "295147905179352830000"),
            ("1e23", "1e+23"),
            ("0.1", "0.1"),
        ] {
            assert_eq!(canonical(input), expected, "{input}");
        }
    }

    #[test]
    fn objects_sort_by_utf16_and_strings_escape_minimally() {
        // RFC 8785 §3.2.3's example: sorting by UTF-16 code units, not UTF-8 bytes or chars.
        let input = r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
        let expected = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
            \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
            \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canonical(input), expected);
        assert_eq!(
            canonical(
                r#" { "b" : [ 1 , { "z" : null , "a" : true } , [ ] , { } ] , "a" : "x\u000f\"\u00e9" } "#
            ),
            "{\"a\":\"x\\u000f\\\"é\",\"b\":[1,{\"a\":true,\"z\":null},[],{}]}"
        );
        // Unreadable (a lone surrogate): written as it is, deterministically.
        assert_eq!(canonical(r#""\ud800""#), r#""\ud800""#);
    }

    #[test]
    fn state_hash_ignores_order_spacing_and_absent_versus_null() {
        let a = r#"{"detail": "x", "category": "spam"}"#;
        let b = r#"{"category":"spam","detail":"x"}"#;
        let h1 = state_hash(&[("result", Some(a)), ("n", Some("1.0")), ("x", None)]);
        let h2 = state_hash(&[("n", Some("1")), ("result", Some(b)), ("x", Some("null"))]);
        assert_eq!(h1, h2);
        let h3 = state_hash(&[("result", Some(a)), ("n", Some("2")), ("x", None)]);
        assert_ne!(h1, h3);
        // Pinned: stored state hashes must not change between builds.
        let mut out = Vec::new();
        out.extend_from_slice(
            b"{\"n\":1,\"result\":{\"category\":\"spam\",\"detail\":\"x\"},\"x\":null}",
        );
        let expected: [u8; 32] = Sha256::digest(&out).into();
        assert_eq!(h1, expected);
    }
}
