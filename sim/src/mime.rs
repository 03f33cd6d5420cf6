//! The small writers behind generated mail: a MIME tree with CRLF line ends, the transfer
//! encodings (quoted-printable, base64 in 76-column lines, RFC 2047 encoded words), foreign
//! charsets through `encoding_rs`, Outlook `.msg` files (Compound File Binary, MS-OXMSG) and
//! stored (uncompressed) zip archives. Nothing here parses mail; `mail_gen.rs` decides content.

use std::io::{Cursor, Write as _};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// One MIME entity: its header fields and its body.
pub(crate) struct Part {
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

pub(crate) enum Body {
    /// Already transfer-encoded bytes (written as they are).
    Raw(Vec<u8>),
    /// `multipart/*` children under a boundary.
    Multi { boundary: String, parts: Vec<Part> },
}

impl Part {
    /// A leaf with `Content-Type` and (if given) `Content-Transfer-Encoding`.
    pub fn leaf(content_type: &str, cte: Option<&str>, body: Vec<u8>) -> Part {
        let mut headers = vec![("Content-Type".to_string(), content_type.to_string())];
        if let Some(c) = cte {
            headers.push(("Content-Transfer-Encoding".to_string(), c.to_string()));
        }
        Part {
            headers,
            body: Body::Raw(body),
        }
    }

    /// `multipart/{subtype}` with a boundary.
    pub fn multi(subtype: &str, boundary: &str, parts: Vec<Part>) -> Part {
        Part {
            headers: vec![(
                "Content-Type".to_string(),
                format!("multipart/{subtype};\r\n\tboundary=\"{boundary}\""),
            )],
            body: Body::Multi {
                boundary: boundary.to_string(),
                parts,
            },
        }
    }

    /// Adds a header field (after the existing ones).
    pub fn with(mut self, name: &str, value: &str) -> Part {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Puts header fields in front of the existing ones (the envelope of a top-level message).
    pub fn prepend(mut self, fields: Vec<(String, String)>) -> Part {
        let mut h = fields;
        h.append(&mut self.headers);
        self.headers = h;
        self
    }

    pub fn write(&self, out: &mut Vec<u8>) {
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        match &self.body {
            Body::Raw(b) => out.extend_from_slice(b),
            Body::Multi { boundary, parts } => {
                out.extend_from_slice(b"This is a multi-part message in MIME format.\r\n");
                for p in parts {
                    out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
                    p.write(out);
                }
                out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        self.write(&mut out);
        out
    }
}

/// Text in a charset (`utf-8`, `windows-1252`, `iso-8859-2`, `shift_jis`, `gb2312`, …);
/// unknown labels and unmappable characters fall back to what `encoding_rs` does.
pub(crate) fn encode_text(charset: &str, text: &str) -> Vec<u8> {
    match encoding_rs::Encoding::for_label(charset.as_bytes()) {
        Some(enc) if enc != encoding_rs::UTF_8 => enc.encode(text).0.into_owned(),
        _ => text.as_bytes().to_vec(),
    }
}

/// Normalises line ends to CRLF.
pub(crate) fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// Quoted-printable (RFC 2045): lines of at most 76 characters with soft breaks; line ends
/// in the input (LF or CRLF) stay hard line breaks.
pub(crate) fn qp(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 5 / 4 + 16);
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    for (n, line) in lines.iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let literal = matches!(b, 33..=60 | 62..=126) || (matches!(b, b' ' | b'\t') && !last);
            let piece: Vec<u8> = if literal {
                vec![b]
            } else {
                format!("={b:02X}").into_bytes()
            };
            if col + piece.len() > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            col += piece.len();
            out.extend_from_slice(&piece);
        }
        if n + 1 < lines.len() {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Base64 in lines of 76 characters, each ending in CRLF.
pub(crate) fn b64_lines(bytes: &[u8]) -> Vec<u8> {
    let text = STANDARD.encode(bytes);
    let mut out = Vec::with_capacity(text.len() + text.len() / 76 * 2 + 2);
    for chunk in text.as_bytes().chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// An RFC 2047 header value: `text` in `charset`, as `B` (base64) or `Q` encoded words of at
/// most ~75 characters each, folded onto continuation lines. Words are cut between characters,
/// never inside a multi-byte one.
pub(crate) fn encoded_words(charset: &str, text: &str, b: bool) -> String {
    let chars: Vec<char> = text.chars().collect();
    let per_word = if b { 12 } else { 18 };
    let words: Vec<String> = chars
        .chunks(per_word)
        .map(|c| {
            let s: String = c.iter().collect();
            let bytes = encode_text(charset, &s);
            if b {
                format!("=?{charset}?B?{}?=", STANDARD.encode(bytes))
            } else {
                let mut q = String::new();
                for byte in bytes {
                    match byte {
                        b' ' => q.push('_'),
                        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b',' | b'-' | b'!' => {
                            q.push(char::from(byte));
                        }
                        _ => q.push_str(&format!("={byte:02X}")),
                    }
                }
                format!("=?{charset}?Q?{q}?=")
            }
        })
        .collect();
    words.join("\r\n ")
}

/// Folds a long unstructured header value at spaces so no line passes 78 characters.
pub(crate) fn fold(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 16);
    let mut col = 0;
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 {
            if col + 1 + word.len() > 76 {
                out.push_str("\r\n ");
                col = 1;
            } else {
                out.push(' ');
                col += 1;
            }
        }
        out.push_str(word);
        col += word.len();
    }
    out
}

/// A stored (method 0) zip archive holding the given files.
pub(crate) fn stored_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    // 2024-03-14 10:20:00 in DOS form.
    let (dos_time, dos_date): (u16, u16) =
        ((10 << 11) | (20 << 5), ((2024 - 1980) << 9) | (3 << 5) | 14);
    for (name, data) in files {
        let crc = crc32fast::hash(data);
        let offset = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        let mut local = Vec::new();
        local.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        local.extend_from_slice(&20u16.to_le_bytes()); // version needed
        local.extend_from_slice(&0u16.to_le_bytes()); // flags
        local.extend_from_slice(&0u16.to_le_bytes()); // stored
        local.extend_from_slice(&dos_time.to_le_bytes());
        local.extend_from_slice(&dos_date.to_le_bytes());
        local.extend_from_slice(&crc.to_le_bytes());
        local.extend_from_slice(&size.to_le_bytes());
        local.extend_from_slice(&size.to_le_bytes());
        local.extend_from_slice(&name_len.to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&local);
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes()); // made by
        central.extend_from_slice(&local[4..30]);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment length
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = u32::try_from(out.len()).unwrap_or(u32::MAX);
    let cd_size = u32::try_from(central.len()).unwrap_or(u32::MAX);
    let n = u16::try_from(files.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&cd_size.to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// What an Outlook `.msg` file holds.
pub(crate) struct MsgContent<'a> {
    pub subject: &'a str,
    pub sender_name: &'a str,
    pub sender_email: &'a str,
    pub to_name: &'a str,
    pub to_email: &'a str,
    pub internet_message_id: &'a str,
    /// The transport headers (PR_TRANSPORT_MESSAGE_HEADERS), CRLF-separated.
    pub transport_headers: &'a str,
    pub text_body: &'a str,
    pub html_body: &'a [u8],
    /// (file name, MIME type, bytes)
    pub attachments: &'a [(String, String, Vec<u8>)],
}

fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// A property stream entry: tag, flags (readable|writable) and, for fixed types, the value;
/// for variable-length ones the size of their stream.
fn prop_entry(out: &mut Vec<u8>, tag: u32, value: [u8; 8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&6u32.to_le_bytes());
    out.extend_from_slice(&value);
}

fn size_value(len: usize, unicode: bool) -> [u8; 8] {
    let size = u32::try_from(len + if unicode { 2 } else { 0 }).unwrap_or(u32::MAX);
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&size.to_le_bytes());
    v
}

fn int_value(x: u32) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&x.to_le_bytes());
    v
}

/// Writes the streams of one storage (`prefix` is `""` or `"/__attach_version1.0_#…"`):
/// string properties as `__substg1.0_XXXX001F` (UTF-16LE), binary ones as `…0102`, and the
/// `__properties_version1.0` stream listing them after a header of `header_len` bytes.
fn write_props(
    cf: &mut cfb::CompoundFile<Cursor<Vec<u8>>>,
    prefix: &str,
    header: &[u8],
    strings: &[(u16, &str)],
    binaries: &[(u16, &[u8])],
    ints: &[(u16, u32)],
) -> std::io::Result<()> {
    let mut props = header.to_vec();
    for (id, s) in strings {
        let bytes = utf16(s);
        cf.create_stream(format!("{prefix}/__substg1.0_{id:04X}001F"))?
            .write_all(&bytes)?;
        prop_entry(
            &mut props,
            (u32::from(*id) << 16) | 0x001F,
            size_value(bytes.len(), true),
        );
    }
    for (id, b) in binaries {
        cf.create_stream(format!("{prefix}/__substg1.0_{id:04X}0102"))?
            .write_all(b)?;
        prop_entry(
            &mut props,
            (u32::from(*id) << 16) | 0x0102,
            size_value(b.len(), false),
        );
    }
    for (id, x) in ints {
        prop_entry(&mut props, (u32::from(*id) << 16) | 0x0003, int_value(*x));
    }
    cf.create_stream(format!("{prefix}/__properties_version1.0"))?
        .write_all(&props)?;
    Ok(())
}

/// An Outlook `.msg` (MS-OXMSG) for a received message, with fixed timestamps so the same
/// content gives the same bytes.
pub(crate) fn outlook_msg(m: &MsgContent<'_>) -> std::io::Result<Vec<u8>> {
    let fixed = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_710_000_000);
    let mut cf = cfb::CompoundFile::create(Cursor::new(Vec::new()))?;
    cf.set_created_time("/", fixed)?;
    cf.set_modified_time("/", fixed)?;
    // Top-level header: 8 reserved, next recipient id, next attachment id, recipient count,
    // attachment count, 8 reserved.
    let n_att = u32::try_from(m.attachments.len()).unwrap_or(0);
    let mut header = vec![0u8; 8];
    for v in [1u32, n_att, 1, n_att] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    header.extend_from_slice(&[0u8; 8]);
    write_props(
        &mut cf,
        "",
        &header,
        &[
            (0x001A, "IPM.Note"),
            (0x0037, m.subject),
            (0x0E1D, m.subject),
            (0x0C1A, m.sender_name),
            (0x0C1F, m.sender_email),
            (0x5D01, m.sender_email),
            (0x0042, m.sender_name),
            (0x0065, m.sender_email),
            (0x0E04, m.to_name),
            (0x1035, m.internet_message_id),
            (0x007D, m.transport_headers),
            (0x1000, m.text_body),
        ],
        &[(0x1013, m.html_body)],
        &[(0x0E07, 1), (0x0017, 1), (0x3FDE, 65001)],
    )?;
    // Named-property mapping: the three required (empty) streams.
    cf.create_storage("/__nameid_version1.0")?;
    cf.set_created_time("/__nameid_version1.0", fixed)?;
    cf.set_modified_time("/__nameid_version1.0", fixed)?;
    for s in ["00020102", "00030102", "00040102"] {
        cf.create_stream(format!("/__nameid_version1.0/__substg1.0_{s}"))?;
    }
    let recip = "/__recip_version1.0_#00000000";
    cf.create_storage(recip)?;
    cf.set_created_time(recip, fixed)?;
    cf.set_modified_time(recip, fixed)?;
    write_props(
        &mut cf,
        recip,
        &[0u8; 8],
        &[
            (0x3001, m.to_name),
            (0x3003, m.to_email),
            (0x39FE, m.to_email),
            (0x3002, "SMTP"),
        ],
        &[],
        &[(0x0C15, 1)],
    )?;
    for (i, (name, mime, data)) in m.attachments.iter().enumerate() {
        let path = format!("/__attach_version1.0_#{i:08X}");
        cf.create_storage(&path)?;
        cf.set_created_time(&path, fixed)?;
        cf.set_modified_time(&path, fixed)?;
        write_props(
            &mut cf,
            &path,
            &[0u8; 8],
            &[
                (0x3707, name),
                (0x3704, name),
                (0x370E, mime),
                (0x3001, name),
            ],
            &[(0x3701, data)],
            &[(0x3705, 1), (0x0E21, u32::try_from(i).unwrap_or(0))],
        )?;
    }
    cf.flush()?;
    Ok(cf.into_inner().into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn quoted_printable_keeps_lines_short_and_escapes() {
        let long = "é".repeat(60) + " end";
        let out = String::from_utf8(qp(long.as_bytes())).unwrap_or_default();
        assert!(out.lines().all(|l| l.len() <= 76), "{out}");
        assert!(out.starts_with("=C3=A9"));
        assert_eq!(qp(b"a=b \nc"), b"a=3Db=20\r\nc");
    }

    #[test]
    fn encoded_words_round_trip_in_foreign_charsets() {
        let w = encoded_words("shift_jis", "アカウントの確認", true);
        assert!(w.starts_with("=?shift_jis?B?"));
        let w = encoded_words("windows-1252", "Café – reçu", false);
        assert!(w.contains("=E9"), "{w}");
    }

    #[test]
    fn msg_files_open_as_compound_files() {
        let atts = vec![(
            "a.txt".to_string(),
            "text/plain".to_string(),
            b"hello".to_vec(),
        )];
        let bytes = outlook_msg(&MsgContent {
            subject: "Hi",
            sender_name: "A",
            sender_email: "a@b.c",
            to_name: "B",
            to_email: "b@c.d",
            internet_message_id: "<x@y>",
            transport_headers: "Received: x\r\n",
            text_body: "body",
            html_body: b"<p>body</p>",
            attachments: &atts,
        })
        .unwrap_or_default();
        let mut cf = cfb::CompoundFile::open(Cursor::new(bytes)).unwrap();
        let mut subject = Vec::new();
        cf.open_stream("/__substg1.0_0037001F")
            .unwrap()
            .read_to_end(&mut subject)
            .unwrap();
        assert_eq!(subject, utf16("Hi"));
        let mut data = Vec::new();
        cf.open_stream("/__attach_version1.0_#00000000/__substg1.0_37010102")
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(data, b"hello");
    }

    #[test]
    fn zips_list_their_files() {
        let z = stored_zip(&[("invoice.js", b"alert(1)")]);
        assert!(z.starts_with(b"PK\x03\x04"));
        assert!(z.windows(10).any(|w| w == b"invoice.js"));
    }
}
