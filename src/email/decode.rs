//! Byte-level decoding shared by the MIME and .msg readers: transfer encodings, charsets,
//! header unfolding and truncation.
//!
//! mail-parser decodes well-formed parts itself; these are for the bytes it hands back
//! undecoded (a part cut short by a missing boundary), for hashing attachments exactly, and
//! for .msg properties. All of them are lenient: bad input gives lossy output, never an error.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use mail_parser::decoders::charsets::map::charset_decoder;
use sha2::{Digest, Sha256};

/// Mail bodies are often cut, badly padded or end in stray bits; decode what is there.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Applies a Content-Transfer-Encoding (`base64`, `quoted-printable`, anything else as is).
pub(super) fn transfer_decode(raw: &[u8], encoding: Option<&str>) -> Vec<u8> {
    match encoding.map(str::trim) {
        Some(e) if e.eq_ignore_ascii_case("base64") => base64_lenient(raw),
        Some(e) if e.eq_ignore_ascii_case("quoted-printable") => quoted_printable(raw),
        _ => raw.to_vec(),
    }
}

/// Base64 ignoring line breaks, junk characters and padding. Padding ends a run; what
/// follows it is decoded as a further run (some senders concatenate encoded blocks).
pub(super) fn base64_lenient(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() / 4 * 3);
    for run in raw.split(|b| *b == b'=') {
        let mut clean: Vec<u8> = run
            .iter()
            .copied()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
            .collect();
        // A lone trailing sextet cannot form a byte.
        if clean.len() % 4 == 1 {
            clean.pop();
        }
        if let Ok(bytes) = LENIENT.decode(&clean) {
            out.extend_from_slice(&bytes);
        }
    }
    out
}

/// Quoted-printable (RFC 2045 §6.7); a malformed `=XY` is kept literally.
pub(super) fn quoted_printable(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b != b'=' {
            out.push(b);
            i += 1;
            continue;
        }
        let next = raw.get(i + 1).copied();
        let after = raw.get(i + 2).copied();
        match (next, after) {
            (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                out.push(hex_value(h) << 4 | hex_value(l));
                i += 3;
            }
            (Some(b'\r'), Some(b'\n')) => i += 3,
            (Some(b'\n'), _) => i += 2,
            _ => {
                // Soft line break with trailing blanks before the newline.
                let mut j = i + 1;
                while matches!(raw.get(j), Some(b' ' | b'\t')) {
                    j += 1;
                }
                match raw.get(j) {
                    Some(b'\r') if raw.get(j + 1) == Some(&b'\n') => i = j + 2,
                    Some(b'\n') => i = j + 1,
                    None if j > i + 1 => i = j,
                    _ => {
                        out.push(b'=');
                        i += 1;
                    }
                }
            }
        }
    }
    out
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// Whether mail-parser has no decoder for `charset` only because it is UTF-8 (it decodes
/// those itself, lossily).
fn is_utf8_name(charset: &str) -> bool {
    let lower = charset.trim().to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "utf-8"
            | "utf8"
            | "unicode-1-1-utf-8"
            | "unicode11utf8"
            | "unicode20utf8"
            | "x-unicode20utf8"
    )
}

/// Whether a declared charset can be decoded (UTF-8 and every charset mail-parser knows).
pub(super) fn charset_known(charset: &str) -> bool {
    is_utf8_name(charset) || charset_decoder(charset.trim().as_bytes()).is_some()
}

/// The note left when a charset is unknown.
pub(super) fn unknown_charset_note(charset: &str) -> String {
    format!(
        "charset {} is not known: text decoded as UTF-8 with replacement characters",
        printable(charset, 60)
    )
}

/// Decodes text in a declared charset; unknown or absent charsets fall back to lossy UTF-8.
pub(super) fn charset_decode(bytes: &[u8], charset: Option<&str>) -> String {
    match charset.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) if !is_utf8_name(c) => match charset_decoder(c.as_bytes()) {
            Some(decode) => decode(bytes),
            None => String::from_utf8_lossy(bytes).into_owned(),
        },
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The charset name of a Windows code page, for .msg `PR_INTERNET_CPID`/`PR_MESSAGE_CODEPAGE`.
pub(super) fn codepage_charset(codepage: u32) -> Option<&'static str> {
    Some(match codepage {
        65001 => "utf-8",
        1200 => "utf-16le",
        1201 => "utf-16be",
        20127 => "us-ascii",
        28591 => "iso-8859-1",
        28592 => "iso-8859-2",
        28593 => "iso-8859-3",
        28594 => "iso-8859-4",
        28595 => "iso-8859-5",
        28596 => "iso-8859-6",
        28597 => "iso-8859-7",
        28598 => "iso-8859-8",
        28599 => "iso-8859-9",
        28605 => "iso-8859-15",
        874 => "windows-874",
        932 => "shift_jis",
        936 => "gbk",
        949 => "euc-kr",
        950 => "big5",
        1250 => "windows-1250",
        1251 => "windows-1251",
        1252 => "windows-1252",
        1253 => "windows-1253",
        1254 => "windows-1254",
        1255 => "windows-1255",
        1256 => "windows-1256",
        1257 => "windows-1257",
        1258 => "windows-1258",
        20866 => "koi8-r",
        21866 => "koi8-u",
        50220..=50222 => "iso-2022-jp",
        51932 => "euc-jp",
        51949 => "euc-kr",
        54936 => "gb18030",
        _ => return None,
    })
}

/// Decodes RFC 2047 encoded-words in an unfolded header value.
///
/// Adjacent words in the same charset are joined as bytes before the charset is applied,
/// since senders split a multi-byte character across two words (mail-parser decodes each
/// word alone and loses it). Blanks between encoded-words are dropped (RFC 2047 §6.2).
/// An unknown charset gives lossy UTF-8 and a note in `notes`.
pub(super) fn decode_words(value: &str, notes: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(value.len());
    // Bytes of the current run of encoded-words, and their charset.
    let mut pending: Option<(String, Vec<u8>)> = None;
    // Blanks seen after an encoded-word, kept only if literal text follows.
    let mut gap = String::new();
    let mut rest = value;
    while !rest.is_empty() {
        if let Some((charset, bytes, len)) = encoded_word(rest) {
            gap.clear();
            match &mut pending {
                Some((current, run)) if current.eq_ignore_ascii_case(&charset) => {
                    run.extend_from_slice(&bytes)
                }
                _ => {
                    flush_words(&mut pending, &mut out, notes);
                    pending = Some((charset, bytes));
                }
            }
            rest = rest.get(len..).unwrap_or_default();
            continue;
        }
        let Some(c) = rest.chars().next() else { break };
        if pending.is_some() && (c == ' ' || c == '\t') {
            gap.push(c);
        } else {
            flush_words(&mut pending, &mut out, notes);
            out.push_str(&gap);
            gap.clear();
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    flush_words(&mut pending, &mut out, notes);
    out.push_str(&gap);
    out
}

fn flush_words(pending: &mut Option<(String, Vec<u8>)>, out: &mut String, notes: &mut Vec<String>) {
    if let Some((charset, bytes)) = pending.take() {
        if !charset_known(&charset) {
            let note = unknown_charset_note(&charset);
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        out.push_str(&charset_decode(&bytes, Some(&charset)));
    }
}

/// `=?charset[*lang]?B|Q?text?=` at the start of `s`: charset, decoded bytes, length.
fn encoded_word(s: &str) -> Option<(String, Vec<u8>, usize)> {
    let body = s.strip_prefix("=?")?;
    let charset_end = body.find('?')?;
    let charset = &body[..charset_end];
    if charset.is_empty() || charset.contains(|c: char| c.is_whitespace() || c == '=') {
        return None;
    }
    let after = &body[charset_end + 1..];
    let mut chars = after.chars();
    let encoding = chars.next()?.to_ascii_uppercase();
    if chars.next()? != '?' || !matches!(encoding, 'B' | 'Q') {
        return None;
    }
    let text_start = &after[2..];
    let text_end = text_start.find("?=")?;
    let text = &text_start[..text_end];
    if text.contains(|c: char| c.is_whitespace()) {
        return None;
    }
    let bytes = if encoding == 'B' {
        base64_lenient(text.as_bytes())
    } else {
        quoted_printable(text.replace('_', " ").as_bytes())
    };
    // RFC 2231 language suffix: `utf-8*en`.
    let charset = charset.split('*').next().unwrap_or_default().to_string();
    let len = 2 + charset_end + 1 + 2 + text_end + 2;
    Some((charset, bytes, len))
}

/// Joins folded header lines (RFC 5322 §2.2.3) and trims the ends.
pub(super) fn unfold(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c != '\r' && c != '\n' {
            out.push(c);
        }
    }
    out.trim().to_string()
}

/// Cuts `text` to at most `max` bytes on a char boundary; true when something was cut.
pub(super) fn truncate(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    true
}

/// At most `max` chars of an untrusted string, control characters replaced, for notes.
pub(super) fn printable(value: &str, max: usize) -> String {
    let mut out: String = value
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_printable_soft_breaks_and_bad_escapes() {
        assert_eq!(quoted_printable(b"a=3Db=\r\nc=\nd"), b"a=bcd");
        assert_eq!(quoted_printable(b"caf=E9 =ZZ ="), b"caf\xe9 =ZZ =");
        assert_eq!(quoted_printable(b"x=  \r\ny"), b"xy");
    }

    #[test]
    fn base64_ignores_junk_and_padding() {
        assert_eq!(base64_lenient(b"aGVs\r\nbG8=\r\n"), b"hello");
        assert_eq!(base64_lenient(b"aGVsbG8"), b"hello");
        assert_eq!(base64_lenient(b"aGVsbG8=A"), b"hello");
        assert!(base64_lenient(b"!!!").is_empty());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "aé€".to_string();
        assert!(truncate(&mut s, 4));
        assert_eq!(s, "aé");
        let mut s = "abc".to_string();
        assert!(!truncate(&mut s, 3));
    }

    #[test]
    fn encoded_words() {
        let mut notes = Vec::new();
        let mut decode = |s: &str| decode_words(s, &mut notes);
        // A character split across words, in B and in Q.
        assert_eq!(decode("=?UTF-8?B?ww==?= =?UTF-8?B?iXTDqQ==?="), "Été");
        assert_eq!(decode("=?UTF-8?Q?=C3?=  =?utf-8?Q?=89t=C3=A9?="), "Été");
        assert_eq!(decode("=?shift_jis?B?g24=?=\t=?SHIFT_JIS?B?g40=?="), "ハロ");
        assert_eq!(decode("=?UTF-8?B?w4k?==?UTF-8?B?dA==?="), "Ét");
        assert_eq!(decode("a =?utf-8?q?b_c?= d =?x?q?e?="), "a b c d e");
        assert_eq!(decode("=?iso-8859-1*fr?Q?=E9?= =?utf-8?B?w6k=?="), "éé");
        assert_eq!(
            decode("=? not a word ?= =?utf-8?Q?a b?= =?"),
            "=? not a word ?= =?utf-8?Q?a b?= =?"
        );
        assert_eq!(decode("é =?utf-8?Z?x?="), "é =?utf-8?Z?x?=");
        assert_eq!(notes, vec![unknown_charset_note("x")]);
    }

    #[test]
    fn charsets() {
        assert_eq!(charset_decode(b"caf\xe9", Some("windows-1252")), "café");
        assert_eq!(charset_decode(b"caf\xe9", Some("x-unknown")), "caf\u{fffd}");
        assert!(charset_known("UTF-8") && charset_known("iso-8859-2"));
        assert!(!charset_known("x-unknown"));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
