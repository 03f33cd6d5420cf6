//! An Outlook .msg (MS-OXMSG): a compound file whose storages hold the message's MAPI
//! properties, read with the cfb crate.
//!
//! Header-derived fields come from the transport headers property (the SMTP headers as
//! received), parsed like a MIME header block, so a .msg and its .eml give the same alert;
//! the properties fill what the headers lack (drafts and sent items have none).

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use cfb::CompoundFile;
use mail_parser::{DateTime, MessageParser};

use super::body::{assemble, Piece};
use super::decode::{charset_decode, codepage_charset, printable, sha256_hex};
use super::headers::{self, utc};
use super::model::{Attachment, Mailbox, ReportedEmail};
use super::Limits;

type Cfb<'a> = CompoundFile<Cursor<&'a [u8]>>;

// MAPI property ids (MS-OXPROPS).
const SUBJECT: u16 = 0x0037;
const CLIENT_SUBMIT_TIME: u16 = 0x0039;
const SENT_REPRESENTING_NAME: u16 = 0x0042;
const SENT_REPRESENTING_EMAIL: u16 = 0x0065;
const TRANSPORT_HEADERS: u16 = 0x007D;
const SENDER_NAME: u16 = 0x0C1A;
const SENDER_EMAIL: u16 = 0x0C1F;
const RECIPIENT_TYPE: u16 = 0x0C15;
const MESSAGE_DELIVERY_TIME: u16 = 0x0E06;
const ATTACH_SIZE: u16 = 0x0E20;
const BODY: u16 = 0x1000;
const RTF_COMPRESSED: u16 = 0x1009;
const HTML: u16 = 0x1013;
const INTERNET_MESSAGE_ID: u16 = 0x1035;
const DISPLAY_NAME: u16 = 0x3001;
const EMAIL_ADDRESS: u16 = 0x3003;
const ATTACH_DATA: u16 = 0x3701;
const ATTACH_FILENAME: u16 = 0x3704;
const ATTACH_LONG_FILENAME: u16 = 0x3707;
const ATTACH_MIME_TAG: u16 = 0x370E;
const ATTACH_CONTENT_ID: u16 = 0x3712;
const SMTP_ADDRESS: u16 = 0x39FE;
const INTERNET_CPID: u16 = 0x3FDE;
const MESSAGE_CODEPAGE: u16 = 0x3FFD;
const SENDER_SMTP_ADDRESS: u16 = 0x5D01;
const SENT_REPRESENTING_SMTP_ADDRESS: u16 = 0x5D02;

// Property types.
const PT_LONG: u16 = 0x0003;
const PT_SYSTIME: u16 = 0x0040;
const PT_STRING8: u16 = 0x001E;
const PT_UNICODE: u16 = 0x001F;
const PT_BINARY: u16 = 0x0102;
const PT_OBJECT: u16 = 0x000D;

const PROPERTIES: &str = "__properties_version1.0";
const ATTACH_PREFIX: &str = "__attach_version1.0_#";
const RECIP_PREFIX: &str = "__recip_version1.0_#";

/// FILETIME (100 ns since 1601) of the Unix epoch.
const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;

pub(super) fn parse(bytes: &[u8], limits: &Limits, depth: usize) -> ReportedEmail {
    let mut out = ReportedEmail::default();
    if !super::is_msg(bytes) {
        out.errors
            .push("not an Outlook .msg file (the compound file signature is missing)".to_string());
        return out;
    }
    let mut file = match CompoundFile::open(Cursor::new(bytes)) {
        Ok(file) => file,
        Err(e) => {
            out.errors.push(format!(
                "not an Outlook .msg file ({})",
                printable(&e.to_string(), 120)
            ));
            return out;
        }
    };
    read_message(&mut file, Path::new("/"), true, limits, depth, &mut out);
    out
}

/// The property streams and fixed-size properties of one storage (message, attachment or
/// recipient).
struct Storage {
    path: PathBuf,
    /// `__substg1.0_IIIITTTT` streams by (id, type).
    streams: HashMap<(u16, u16), String>,
    /// Sub-storages by name.
    storages: Vec<String>,
    /// PT_LONG values of the properties stream.
    longs: HashMap<u16, u32>,
    /// PT_SYSTIME values of the properties stream.
    times: HashMap<u16, u64>,
    /// Code page of 8-bit strings.
    codepage: Option<u32>,
}

impl Storage {
    /// Lists a storage; `header_len` is the size of its properties stream's header (32 for
    /// the top-level message, 24 for an embedded one, 8 for attachments and recipients).
    fn open(file: &mut Cfb<'_>, path: &Path, header_len: usize) -> Option<Storage> {
        let entries: Vec<(String, bool)> = file
            .read_storage(path)
            .ok()?
            .map(|e| (e.name().to_string(), e.is_stream()))
            .collect();
        let mut storage = Storage {
            path: path.to_path_buf(),
            streams: HashMap::new(),
            storages: Vec::new(),
            longs: HashMap::new(),
            times: HashMap::new(),
            codepage: None,
        };
        for (name, is_stream) in entries {
            if !is_stream {
                storage.storages.push(name);
            } else if let Some(tag) = name
                .strip_prefix("__substg1.0_")
                .filter(|t| t.len() == 8)
                .and_then(|t| u32::from_str_radix(t, 16).ok())
            {
                storage
                    .streams
                    .insert(((tag >> 16) as u16, (tag & 0xffff) as u16), name);
            }
        }
        storage.storages.sort();
        if let Some(props) = read_stream(file, &path.join(PROPERTIES)) {
            for entry in props.get(header_len..).unwrap_or_default().chunks_exact(16) {
                let kind = u16::from_le_bytes([entry[0], entry[1]]);
                let id = u16::from_le_bytes([entry[2], entry[3]]);
                let value = [
                    entry[8], entry[9], entry[10], entry[11], entry[12], entry[13], entry[14],
                    entry[15],
                ];
                match kind {
                    PT_LONG => {
                        storage.longs.insert(
                            id,
                            u32::from_le_bytes([value[0], value[1], value[2], value[3]]),
                        );
                    }
                    PT_SYSTIME => {
                        storage.times.insert(id, u64::from_le_bytes(value));
                    }
                    _ => {}
                }
            }
        }
        storage.codepage = storage
            .longs
            .get(&MESSAGE_CODEPAGE)
            .or_else(|| storage.longs.get(&INTERNET_CPID))
            .copied();
        Some(storage)
    }

    fn stream_path(&self, id: u16, kind: u16) -> Option<PathBuf> {
        self.streams
            .get(&(id, kind))
            .map(|name| self.path.join(name))
    }

    /// A sub-storage property (`PT_OBJECT`: an embedded message).
    fn storage_path(&self, id: u16, kind: u16) -> Option<PathBuf> {
        let name = format!("__substg1.0_{id:04X}{kind:04X}");
        self.storages
            .iter()
            .find(|s| s.eq_ignore_ascii_case(&name))
            .map(|s| self.path.join(s))
    }

    fn has(&self, id: u16, kind: u16) -> bool {
        self.streams.contains_key(&(id, kind))
    }

    fn binary(&self, file: &mut Cfb<'_>, id: u16) -> Option<Vec<u8>> {
        read_stream(file, &self.stream_path(id, PT_BINARY)?)
    }

    /// A string property, Unicode (`001F`) or 8-bit (`001E`) in the storage's code page.
    fn string(&self, file: &mut Cfb<'_>, id: u16) -> Option<String> {
        let text = if let Some(bytes) = self
            .stream_path(id, PT_UNICODE)
            .and_then(|p| read_stream(file, &p))
        {
            utf16le(&bytes)
        } else {
            let bytes = read_stream(file, &self.stream_path(id, PT_STRING8)?)?;
            let bytes = bytes.strip_suffix(&[0]).unwrap_or(&bytes);
            match std::str::from_utf8(bytes) {
                Ok(text) => text.to_string(),
                Err(_) => charset_decode(
                    bytes,
                    Some(
                        self.codepage
                            .and_then(codepage_charset)
                            .unwrap_or("windows-1252"),
                    ),
                ),
            }
        };
        let text = text.trim_end_matches('\0').to_string();
        (!text.trim().is_empty()).then_some(text)
    }
}

fn read_stream(file: &mut Cfb<'_>, path: &Path) -> Option<Vec<u8>> {
    let mut stream = file.open_stream(path).ok()?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn utf16le(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

fn filetime(value: u64) -> Option<String> {
    let seconds = value.checked_sub(FILETIME_UNIX_EPOCH)? / 10_000_000;
    let dt = DateTime::from_timestamp(i64::try_from(seconds).ok()?);
    dt.is_valid().then(|| utc(&dt))
}

fn mailbox(name: Option<String>, addresses: [Option<String>; 2]) -> Option<Mailbox> {
    // Exchange-internal senders have an X.500 DN as their email address; the SMTP one wins.
    let [smtp, other] = addresses;
    let address = smtp
        .filter(|a| a.contains('@'))
        .or(other)
        .map(|a| a.trim().to_string());
    let name = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
    (name.is_some() || address.is_some()).then_some(Mailbox { name, address })
}

/// Reads the message stored at `path` (the root, or an embedded message's storage).
fn read_message(
    file: &mut Cfb<'_>,
    path: &Path,
    top_level: bool,
    limits: &Limits,
    depth: usize,
    out: &mut ReportedEmail,
) {
    let Some(storage) = Storage::open(file, path, if top_level { 32 } else { 24 }) else {
        out.errors
            .push("the .msg storage of the message cannot be read".to_string());
        return;
    };
    if top_level && storage.streams.is_empty() && storage.longs.is_empty() {
        // A Word or Excel file is a compound file too.
        out.errors.push(
            "not an Outlook .msg file (a compound file without message properties)".to_string(),
        );
        return;
    }

    match storage.string(file, TRANSPORT_HEADERS) {
        Some(text) => {
            let block = format!("{}\r\n\r\n", text.trim());
            match MessageParser::default().parse_headers(block.as_bytes()) {
                Some(parsed) => headers::fill(&parsed, out),
                None => out
                    .errors
                    .push("the transport headers of the .msg cannot be parsed".to_string()),
            }
        }
        None => out
            .errors
            .push("the .msg has no transport headers: only its properties were read".to_string()),
    }

    if let Some(subject) = storage.string(file, SUBJECT) {
        out.subject = Some(subject.trim().to_string());
    }
    if out.message_id.is_none() {
        out.message_id = storage
            .string(file, INTERNET_MESSAGE_ID)
            .map(|id| id.trim().to_string());
    }
    let sender = mailbox(
        storage.string(file, SENDER_NAME),
        [
            storage.string(file, SENDER_SMTP_ADDRESS),
            storage.string(file, SENDER_EMAIL),
        ],
    );
    if out.from.is_none() {
        out.from = mailbox(
            storage.string(file, SENT_REPRESENTING_NAME),
            [
                storage.string(file, SENT_REPRESENTING_SMTP_ADDRESS),
                storage.string(file, SENT_REPRESENTING_EMAIL),
            ],
        )
        .or_else(|| sender.clone());
    }
    if out.sender.is_none() {
        out.sender = sender;
    }
    if out.date.is_none() {
        out.date = storage
            .times
            .get(&CLIENT_SUBMIT_TIME)
            .or_else(|| storage.times.get(&MESSAGE_DELIVERY_TIME))
            .and_then(|t| filetime(*t));
    }
    if out.to.is_empty() && out.cc.is_empty() {
        read_recipients(file, &storage, out);
    }

    let mut pieces = Vec::new();
    if let Some(text) = storage.string(file, BODY) {
        pieces.push(Piece::Text(text));
    }
    let html = match storage.binary(file, HTML) {
        Some(bytes) => {
            let charset = storage
                .longs
                .get(&INTERNET_CPID)
                .and_then(|cp| codepage_charset(*cp))
                .unwrap_or("utf-8");
            Some(charset_decode(&bytes, Some(charset)))
        }
        None => storage.string(file, HTML),
    };
    if let Some(html) = html {
        pieces.push(Piece::Html(html));
    }
    if pieces.is_empty() && storage.has(RTF_COMPRESSED, PT_BINARY) {
        out.errors.push(
            "the .msg body is only in compressed RTF, which is not read: no body text".to_string(),
        );
    }
    assemble(pieces, limits, out);
    read_attachments(file, &storage, limits, depth, out);
}

fn read_recipients(file: &mut Cfb<'_>, message: &Storage, out: &mut ReportedEmail) {
    for name in message
        .storages
        .iter()
        .filter(|n| n.starts_with(RECIP_PREFIX))
    {
        let Some(recipient) = Storage::open(file, &message.path.join(name), 8) else {
            continue;
        };
        let Some(mailbox) = mailbox(
            recipient.string(file, DISPLAY_NAME),
            [
                recipient.string(file, SMTP_ADDRESS),
                recipient.string(file, EMAIL_ADDRESS),
            ],
        ) else {
            continue;
        };
        match recipient.longs.get(&RECIPIENT_TYPE) {
            Some(2) => out.cc.push(mailbox),
            Some(3) => {}
            _ => out.to.push(mailbox),
        }
    }
}

fn read_attachments(
    file: &mut Cfb<'_>,
    message: &Storage,
    limits: &Limits,
    depth: usize,
    out: &mut ReportedEmail,
) {
    let names: Vec<&String> = message
        .storages
        .iter()
        .filter(|n| n.starts_with(ATTACH_PREFIX))
        .collect();
    let skipped = names.len().saturating_sub(limits.max_attachments);
    for name in names.into_iter().take(limits.max_attachments) {
        let Some(storage) = Storage::open(file, &message.path.join(name), 8) else {
            out.errors
                .push("an attachment of the .msg cannot be read".to_string());
            continue;
        };
        let file_name = storage
            .string(file, ATTACH_LONG_FILENAME)
            .or_else(|| storage.string(file, ATTACH_FILENAME))
            .or_else(|| storage.string(file, DISPLAY_NAME))
            .map(|n| n.trim().to_string());
        let mime_tag = storage
            .string(file, ATTACH_MIME_TAG)
            .map(|m| m.trim().to_ascii_lowercase());
        let disposition = if storage.string(file, ATTACH_CONTENT_ID).is_some() {
            "inline"
        } else {
            "attachment"
        };
        let mut attachment = Attachment {
            name: file_name.clone(),
            content_type: mime_tag.clone(),
            disposition: Some(disposition.to_string()),
            ..Attachment::default()
        };
        if let Some(embedded) = storage.storage_path(ATTACH_DATA, PT_OBJECT) {
            // An attached Outlook item: a message storage, not a file, so it has no hash.
            attachment.size = storage.longs.get(&ATTACH_SIZE).map_or(0, |s| u64::from(*s));
            if attachment.content_type.is_none() {
                attachment.content_type = Some("application/vnd.ms-outlook".to_string());
            }
            attachment.nested =
                embedded_message(file, &embedded, limits, depth, file_name.as_deref(), out);
        } else if let Some(data) = storage.binary(file, ATTACH_DATA) {
            attachment.size = data.len() as u64;
            attachment.sha256 = Some(sha256_hex(&data));
            let lower = file_name.as_deref().map(str::to_ascii_lowercase);
            let is_message = lower
                .as_deref()
                .is_some_and(|n| n.ends_with(".eml") || n.ends_with(".msg"))
                || matches!(
                    mime_tag.as_deref(),
                    Some("message/rfc822" | "application/vnd.ms-outlook")
                );
            if is_message {
                attachment.nested = super::nested(&data, limits, depth, file_name.as_deref(), out);
            }
        } else {
            attachment.sha256 = Some(sha256_hex(&[]));
        }
        out.attachments.push(attachment);
    }
    if skipped > 0 {
        out.errors.push(format!(
            "{skipped} more attachments were not listed: the limit is {}",
            limits.max_attachments
        ));
    }
}

/// An embedded message (`__substg1.0_3701000D` storage) summarized like an attached .msg.
fn embedded_message(
    file: &mut Cfb<'_>,
    path: &Path,
    limits: &Limits,
    depth: usize,
    name: Option<&str>,
    out: &mut ReportedEmail,
) -> Option<Box<super::NestedMessage>> {
    let level = depth + 1;
    let max = limits.max_depth.min(super::HARD_MAX_DEPTH);
    if level > max {
        out.errors.push(format!(
            "an attached message at nesting level {level} was not parsed: the limit is {max}"
        ));
        return None;
    }
    let mut inner = ReportedEmail::default();
    read_message(file, path, false, limits, level, &mut inner);
    Some(Box::new(super::summarize(inner, name, out)))
}
