//! A minimal JSON writer for the normalized body and the envelope.
//!
//! Output is written by hand rather than through `serde::Serialize` for speed: serde_json
//! escapes strings one byte at a time, which made serialization a quarter of the cost of
//! preparing an alert. Here a string is checked eight bytes at a time and, as nearly all are,
//! copied whole when nothing in it needs escaping. The escaping itself is serde_json's (quote,
//! backslash and control characters; all other Unicode as is), and a test holds the two equal.

use serde_json::value::RawValue;

use super::lenient::Text;

/// A value that can write itself as JSON.
pub(crate) trait WriteJson {
    fn write_json(&self, out: &mut Vec<u8>);
}

impl WriteJson for str {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_str(out, self);
    }
}

impl WriteJson for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_str(out, self);
    }
}

impl WriteJson for Text<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_str(out, self);
    }
}

impl WriteJson for i64 {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_i64(out, *self);
    }
}

impl WriteJson for bool {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

/// `()` is JSON `null` (for `duplicate_of`, always null for now).
impl WriteJson for () {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"null");
    }
}

impl WriteJson for RawValue {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.get().as_bytes());
    }
}

impl<T: WriteJson + ?Sized> WriteJson for &T {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out);
    }
}

impl<T: WriteJson> WriteJson for Option<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl<T: WriteJson> WriteJson for [T] {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            v.write_json(out);
        }
        out.push(b']');
    }
}

impl<T: WriteJson> WriteJson for Vec<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_slice().write_json(out);
    }
}

/// Implements [`WriteJson`] for a struct as an object of the listed fields, in order, and a
/// `write_members` that writes them without braces (for flattening into an enclosing object).
macro_rules! json_object {
    ($ty:ident { $first:ident $(, $field:ident)* $(,)? }) => {
        impl $ty<'_> {
            #[allow(dead_code)] // not every struct is flattened somewhere
            pub(crate) fn write_members(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(concat!("\"", stringify!($first), "\":").as_bytes());
                $crate::normalize::json::WriteJson::write_json(&self.$first, out);
                $(
                    out.extend_from_slice(concat!(",\"", stringify!($field), "\":").as_bytes());
                    $crate::normalize::json::WriteJson::write_json(&self.$field, out);
                )*
            }
        }
        impl $crate::normalize::json::WriteJson for $ty<'_> {
            fn write_json(&self, out: &mut Vec<u8>) {
                out.push(b'{');
                self.write_members(out);
                out.push(b'}');
            }
        }
    };
}
pub(crate) use json_object;

/// Writes `s` as a JSON string.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Skip eight clean bytes at a time; stop at a word that holds something to escape.
        while let Some(chunk) = bytes.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            if word_needs_escape(u64::from_le_bytes(word)) {
                break;
            }
            i += 8;
        }
        let Some(&b) = bytes.get(i) else { break };
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\x08' => b"\\b",
            b'\x0c' => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether any of the eight bytes is a quote, a backslash or below 0x20 (the "has a byte less
/// than n" and "has a zero byte" bit tricks; exact for bytes below 0x80, and bytes at or above
/// 0x80 never match).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    (below_space | has_zero(w ^ (ONES * u64::from(b'"'))) | has_zero(w ^ (ONES * u64::from(b'\\'))))
        != 0
}

/// Length of `s` written by [`write_str`], quotes included.
pub(crate) fn str_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

pub(crate) fn write_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

/// Length of `v` written by [`write_i64`].
pub(crate) fn i64_len(v: i64) -> usize {
    let mut len = usize::from(v < 0) + 1;
    let mut n = v.unsigned_abs();
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn written(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        write_str(&mut out, s);
        out
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_does() {
        let all_ascii: String = (0u8..0x80).map(char::from).collect();
        let mut cases = vec![
            String::new(),
            "plain".into(),
            "exactly8".into(),
            "sixteen bytes!!!".into(),
            all_ascii.clone(),
            format!("{all_ascii}{all_ascii}"),
            "é☃😀\u{2028}\u{fffd}\u{7f}".into(),
            "C:\\Program Files\\temp".into(),
            "\"MsSense.exe\"".into(),
        ];
        // Every special byte at every offset of a 17-byte string, to cross word boundaries.
        for special in ['"', '\\', '\n', '\u{1f}', '\0', 'é'] {
            for at in 0..17 {
                let mut s: String = "abcdefghijklmnopq".into();
                s.insert(at, special);
                cases.push(s);
            }
        }
        for s in &cases {
            assert_eq!(written(s), serde_json::to_vec(s).unwrap(), "{s:?}");
            assert_eq!(str_len(s), written(s).len(), "{s:?}");
        }
    }

    #[test]
    fn integers() {
        for v in [0, 1, -1, 9, 10, 4780, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_i64(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
            assert_eq!(i64_len(v), out.len());
        }
    }
}
