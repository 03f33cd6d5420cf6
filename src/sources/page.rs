//! Reads one listing page (a Graph `value` page or a Cloud Apps `data` page) as its body
//! arrives, in a single pass: each item is framed as soon as its last byte is in (a scan for
//! quotes, escapes and brackets), parsed where it sits straight into its source's typed struct,
//! prepared and compressed; its bytes are then dropped. A 1,000-alert page (~6 MB) was read
//! whole before it was parsed, so memory grew with Microsoft's page size (issue 12); now the
//! reader holds the unread tail of the body (under a chunk and an item) and the prepared items.
//! The page's own members (`@odata.nextLink`, `@odata.count`, `hasNext`) are read by the same
//! rules serde's derive applied before: a duplicated one refuses the page, unknown ones are
//! skipped, and nothing may follow the object.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::coverage::ParsedPage;
use crate::normalize::{self, KnownVersions, ListedItem, SourceKind};
use crate::store::QuarantineItem;

/// The one field of a submission the slice check reads.
#[derive(Deserialize)]
struct CreatedOnly<'a> {
    #[serde(rename = "createdDateTime", borrow, default)]
    created: Option<Cow<'a, str>>,
}

/// What the caller does with a page that turns out to hold less than its slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Overflowing {
    /// Its items are stored: a single tick's pages are walked, other listings are paged.
    Prepare,
    /// The slice is split and every part listed again (design §4 rule 3), so the items of a
    /// page known to overflow before they are reached are only counted, not prepared: a
    /// backlog drained by splitting prepared and compressed each alert about twice (issue
    /// 12). `top` is the page size asked for: `@odata.count` above it means more than a page.
    Skim { top: usize },
}

/// Parses and prepares a listing page of `kind` held whole (`list` names the submission list
/// polled). `Err` says why the answer is not a whole page; the caller asks for it again.
#[cfg(test)]
pub(super) fn parse_page(
    kind: SourceKind,
    list: &str,
    body: Vec<u8>,
    overflowing: Overflowing,
    known: Option<&KnownVersions>,
) -> Result<ParsedPage, String> {
    let mut page = PageReader::new(kind, list, overflowing, known);
    page.feed(&body)?;
    page.finish()
}

/// Which of the page's item arrays the items came from: `value` wins over `data`, as before.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Items {
    None,
    Data,
    Value,
}

/// What is done with each element of the item array being read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Each {
    Prepare,
    /// The page is known to overflow its slice: items are counted, not prepared.
    Count,
}

/// A page member whose value is read next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Member {
    NextLink,
    Count,
    HasNext,
    /// `value` or `data`: an item array, `null`, or (a `data` after a `value`) anything.
    Listing(Items),
    /// Skipped, whatever it holds, once it is read as JSON.
    Other,
}

/// Where the reader is in the page object.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Open,
    FirstKey,
    Key,
    Colon(Member),
    Value(Member),
    /// Inside an item array: an element or `]` next.
    FirstElement(Items, Each),
    Element(Items, Each),
    AfterElement(Items, Each),
    AfterMember,
    /// The object is closed: only whitespace may follow.
    Done,
}

/// The most of a chunk copied into the reader's buffer at once: its buffer then stays within
/// about twice this beside the item it is in, however large the chunks are.
const FEED_AT_ONCE: usize = 64 * 1024;

/// Reads one listing page (a Graph `value` page or a Cloud Apps `data` page) as its bytes
/// arrive, so a page is never held whole: what stays is the part of the body not read yet
/// (one item at most beyond the slice of a chunk being read) and the page's items, prepared
/// and compressed. `feed` the body's chunks in order, then `finish`.
pub(super) struct PageReader<'k> {
    kind: SourceKind,
    list: &'k str,
    overflowing: Overflowing,
    known: Option<&'k KnownVersions>,
    page: ParsedPage,
    from: Items,
    seen: Seen,
    step: Step,
    /// The body's bytes not consumed yet; `buf[..pos]` is read, and dropped between chunks.
    buf: Vec<u8>,
    pos: usize,
    /// Bytes dropped from the front of `buf`, for positions in errors.
    dropped: usize,
    /// The value starting at `pos` as far as it has been scanned.
    frame: Frame,
    /// The first error: the page is refused, and later chunks are not read.
    failed: Option<String>,
}

#[derive(Default)]
struct Seen {
    value: bool,
    data: bool,
    next: bool,
    count: bool,
    has_next: bool,
}

impl<'k> PageReader<'k> {
    pub(super) fn new(
        kind: SourceKind,
        list: &'k str,
        overflowing: Overflowing,
        known: Option<&'k KnownVersions>,
    ) -> Self {
        Self {
            kind,
            list,
            overflowing,
            known,
            page: ParsedPage::empty(),
            from: Items::None,
            seen: Seen::default(),
            step: Step::Open,
            buf: Vec::new(),
            pos: 0,
            dropped: 0,
            frame: Frame::default(),
            failed: None,
        }
    }

    /// Reads the next chunk of the body. `Err`: the answer is not a page; later chunks change
    /// nothing.
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        // A chunk is whatever one read of the socket gave, megabytes when the network got
        // ahead of the reader: copied whole, it grew the buffer to that size for the rest of
        // the page (4 MB of a 1M drain's peak heap, issue 12).
        for part in chunk.chunks(FEED_AT_ONCE) {
            self.feed_part(part)?;
        }
        Ok(())
    }

    fn feed_part(&mut self, part: &[u8]) -> Result<(), String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        self.buf.extend_from_slice(part);
        if let Err(e) = self.advance() {
            let why = format!("the answer is not a complete page: {e}");
            self.failed = Some(why.clone());
            self.buf = Vec::new();
            return Err(why);
        }
        // What is read goes: the buffer holds the unread tail, not the page.
        self.buf.drain(..self.pos);
        self.dropped += self.pos;
        self.pos = 0;
        Ok(())
    }

    /// The page, once the whole body was fed.
    pub(super) fn finish(mut self) -> Result<ParsedPage, String> {
        if let Some(why) = self.failed {
            return Err(why);
        }
        let complete = || -> Result<(), PageError> {
            if self.step != Step::Done {
                return Err(PageError::Shape(format!(
                    "the page ends at byte {} before it is complete",
                    self.dropped + self.buf.len()
                )));
            }
            if self.from == Items::None {
                return Err(PageError::Shape(
                    "the answer has neither `value` nor `data`: not a listing".into(),
                ));
            }
            Ok(())
        };
        complete().map_err(|e| format!("the answer is not a complete page: {e}"))?;
        Ok(std::mem::replace(&mut self.page, ParsedPage::empty()))
    }

    /// Steps through what the buffer holds; stops where a token or value is not whole yet.
    fn advance(&mut self) -> Result<(), PageError> {
        loop {
            self.skip_whitespace();
            let Some(&next) = self.buf.get(self.pos) else {
                return Ok(());
            };
            match self.step {
                Step::Open => {
                    self.expect(next, b'{')?;
                    self.step = Step::FirstKey;
                }
                Step::FirstKey if next == b'}' => {
                    self.pos += 1;
                    self.step = Step::Done;
                }
                Step::FirstKey | Step::Key => {
                    if next != b'"' {
                        return Err(self.unexpected("`\"`"));
                    }
                    let Some(key) = self.value::<String>()? else {
                        return Ok(());
                    };
                    let member = self.member(&key)?;
                    self.step = Step::Colon(member);
                }
                Step::Colon(member) => {
                    self.expect(next, b':')?;
                    self.step = Step::Value(member);
                }
                Step::Value(member) => {
                    if !self.member_value(member, next)? {
                        return Ok(());
                    }
                }
                Step::FirstElement(items, _) if next == b']' => {
                    self.pos += 1;
                    self.from = items;
                    self.step = Step::AfterMember;
                }
                Step::FirstElement(items, each) | Step::Element(items, each) => {
                    let Some(len) = self.frame_value()? else {
                        return Ok(());
                    };
                    let at = self.pos;
                    self.pos += len;
                    self.frame = Frame::default();
                    let text = text_of(&self.buf[at..at + len]);
                    let read = match each {
                        Each::Prepare => {
                            prepare_item(self.kind, self.list, &text, self.known, &mut self.page)?
                        }
                        Each::Count => count_item(self.kind, &text, &mut self.page)?,
                    };
                    if read != text.len() {
                        return Err(PageError::Shape(format!(
                            "trailing characters in the item at byte {}",
                            self.dropped + at
                        )));
                    }
                    self.step = Step::AfterElement(items, each);
                }
                Step::AfterElement(items, each) => {
                    self.pos += 1;
                    match next {
                        b',' => self.step = Step::Element(items, each),
                        b']' => {
                            self.from = items;
                            self.step = Step::AfterMember;
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.unexpected("`,` or `]`"));
                        }
                    }
                }
                Step::AfterMember => {
                    self.pos += 1;
                    match next {
                        b',' => self.step = Step::Key,
                        b'}' => self.step = Step::Done,
                        _ => {
                            self.pos -= 1;
                            return Err(self.unexpected("`,` or `}`"));
                        }
                    }
                }
                Step::Done => {
                    return Err(PageError::Shape(
                        "trailing characters after the page".into(),
                    ))
                }
            }
        }
    }

    /// Which member `key` names; a second `value`, `data` or page member refuses the page.
    fn member(&mut self, key: &str) -> Result<Member, PageError> {
        Ok(match key {
            "value" => {
                once(&mut self.seen.value, key)?;
                Member::Listing(Items::Value)
            }
            "data" => {
                once(&mut self.seen.data, key)?;
                Member::Listing(Items::Data)
            }
            "@odata.nextLink" => {
                once(&mut self.seen.next, key)?;
                Member::NextLink
            }
            "@odata.count" => {
                once(&mut self.seen.count, key)?;
                Member::Count
            }
            "hasNext" => {
                once(&mut self.seen.has_next, key)?;
                Member::HasNext
            }
            _ => Member::Other,
        })
    }

    /// Reads a member's value, or enters its item array. `false`: the value is not whole yet.
    fn member_value(&mut self, member: Member, next: u8) -> Result<bool, PageError> {
        // A `data` after a `value` gives way to it. It is read whole, as any member not ours
        // (Microsoft sends no listing beside another).
        let skipped = member == Member::Other
            || (member == Member::Listing(Items::Data) && self.from == Items::Value);
        if skipped {
            if self.value::<IgnoredAny>()?.is_none() {
                return Ok(false);
            }
            self.step = Step::AfterMember;
            return Ok(true);
        }
        match member {
            Member::NextLink => {
                let Some(link) = self.value::<Option<String>>()? else {
                    return Ok(false);
                };
                self.page.next_link = link;
            }
            Member::Count => {
                let Some(count) = self.value()? else {
                    return Ok(false);
                };
                self.page.count = count;
            }
            Member::HasNext => {
                let Some(has_next) = self.value()? else {
                    return Ok(false);
                };
                self.page.has_next = has_next;
            }
            Member::Other => {}
            // `"value": null` is no listing, as an absent member is.
            Member::Listing(_) if next == b'n' => {
                if self.value::<()>()?.is_none() {
                    return Ok(false);
                }
            }
            Member::Listing(items) => {
                self.expect(next, b'[')?;
                // A `data` read before a `value` gives way to it.
                self.page.items.clear();
                self.page.quarantine.clear();
                self.page.ids.clear();
                self.page.created.clear();
                self.page.received = 0;
                (self.page.unchanged, self.page.stale) = (0, 0);
                let each = match self.overflowing {
                    Overflowing::Skim { top }
                        if self.page.next_link.is_some()
                            || self.page.count.is_some_and(|n| n > top as i64) =>
                    {
                        Each::Count
                    }
                    _ => Each::Prepare,
                };
                self.step = Step::FirstElement(items, each);
                return Ok(true);
            }
        }
        self.step = Step::AfterMember;
        Ok(true)
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.buf.get(self.pos), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, next: u8, c: u8) -> Result<(), PageError> {
        if next != c {
            return Err(self.unexpected(&format!("`{}`", c as char)));
        }
        self.pos += 1;
        Ok(())
    }

    fn unexpected(&self, wanted: &str) -> PageError {
        let found = match text_of(&self.buf[self.pos..]).chars().next() {
            Some(found) => format!("`{found}`"),
            None => "the end".to_owned(),
        };
        PageError::Shape(format!(
            "expected {wanted} at byte {}, found {found}",
            self.dropped + self.pos
        ))
    }

    /// The length of the value at `pos` once all of it is in the buffer.
    fn frame_value(&mut self) -> Result<Option<usize>, PageError> {
        Ok(self.frame.scan(&self.buf[self.pos..]))
    }

    /// Reads the value at `pos` as `T` once all of it is in the buffer.
    fn value<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, PageError> {
        let Some(len) = self.frame_value()? else {
            return Ok(None);
        };
        let text = text_of(&self.buf[self.pos..self.pos + len]);
        let value = serde_json::from_str(&text)?;
        self.pos += len;
        self.frame = Frame::default();
        Ok(Some(value))
    }
}

/// The text of a value: invalid UTF-8 would otherwise refuse the page for good and stall its
/// slice; replaced, the item still goes, with U+FFFD where Microsoft's bytes were broken.
fn text_of(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// How far a JSON value at the start of a buffer has been scanned, so bytes that arrive later
/// are scanned from where the last look stopped. It only finds the value's end (strings,
/// escapes and nesting); serde_json reads the value and refuses what is not JSON.
#[derive(Default)]
struct Frame {
    scanned: usize,
    depth: u32,
    in_string: bool,
    started: bool,
    scalar: bool,
}

impl Frame {
    /// The value's length once `bytes` holds all of it.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        if !self.started {
            match bytes.first()? {
                b'{' | b'[' => self.depth = 1,
                b'"' => self.in_string = true,
                _ => self.scalar = true,
            }
            self.started = true;
            self.scanned = 1;
        }
        if self.scalar {
            // A number, `true`, `false` or `null` ends where a delimiter starts.
            let rest = &bytes[self.scanned..];
            return match rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
            {
                Some(i) => Some(self.scanned + i),
                None => {
                    self.scanned = bytes.len();
                    None
                }
            };
        }
        loop {
            if self.in_string {
                // Most of an alert's bytes are inside strings: jump to the next quote or escape.
                let Some(i) = memchr::memchr2(b'"', b'\\', &bytes[self.scanned..]) else {
                    self.scanned = bytes.len();
                    return None;
                };
                let at = self.scanned + i;
                if bytes[at] == b'\\' {
                    // The escaped byte is part of the string, whatever it is.
                    if at + 1 >= bytes.len() {
                        self.scanned = at;
                        return None;
                    }
                    self.scanned = at + 2;
                    continue;
                }
                self.in_string = false;
                self.scanned = at + 1;
                if self.depth == 0 {
                    return Some(self.scanned);
                }
                continue;
            }
            let &b = bytes.get(self.scanned)?;
            self.scanned += 1;
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Some(self.scanned);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Prepares the item `rest` starts with into `page`; returns the item's length in bytes.
fn prepare_item(
    kind: SourceKind,
    list: &str,
    rest: &str,
    known: Option<&KnownVersions>,
    page: &mut ParsedPage,
) -> Result<usize, PageError> {
    let listed = normalize::prepare_listed(kind, list, rest, known)?;
    page.received += 1;
    if kind == SourceKind::Submissions {
        page.created.extend(created_at(listed.text));
    }
    match listed.item {
        ListedItem::Prepared(mut p) => {
            p.seal();
            page.ids.push(p.native_id.clone());
            page.items.push(p);
        }
        ListedItem::Known { native_id, stale } => {
            page.ids.push(native_id);
            if stale {
                page.stale += 1;
            } else {
                page.unchanged += 1;
            }
        }
        ListedItem::Unusable(u) => page.quarantine.push(QuarantineItem {
            native_id: u.native_id,
            reason: u.reason,
            raw: listed.text.to_string(),
            list: list.to_string(),
        }),
    }
    Ok(listed.text.len())
}

/// Counts the item `rest` starts with (and reads a submission's creation time, which the
/// slice check needs); returns the item's length in bytes.
fn count_item(kind: SourceKind, rest: &str, page: &mut ParsedPage) -> Result<usize, PageError> {
    let mut item = serde_json::Deserializer::from_str(rest).into_iter::<IgnoredAny>();
    match item.next() {
        Some(Ok(_)) => {}
        Some(Err(e)) => return Err(e.into()),
        None => {
            return Err(PageError::Shape(
                "the page ends where an item should start".into(),
            ))
        }
    }
    let text = &rest[..item.byte_offset()];
    page.received += 1;
    if kind == SourceKind::Submissions {
        page.created.extend(created_at(text));
    }
    Ok(text.len())
}

/// A submission's `createdDateTime` in ticks, when it is readable. An item without a readable
/// time is not evidence either way; it is quarantined or stored by its own rules.
fn created_at(item: &str) -> Option<i64> {
    serde_json::from_str::<CreatedOnly<'_>>(item)
        .ok()
        .and_then(|c| c.created)
        .and_then(|c| crate::time::parse_ticks(&c))
}

fn once(seen: &mut bool, key: &str) -> Result<(), PageError> {
    if std::mem::replace(seen, true) {
        return Err(PageError::duplicate(key));
    }
    Ok(())
}

/// Why a page is not whole.
#[derive(Debug)]
enum PageError {
    Json(serde_json::Error),
    Shape(String),
}

impl PageError {
    fn duplicate(key: &str) -> Self {
        PageError::Shape(format!("duplicate field `{key}`"))
    }
}

impl From<serde_json::Error> for PageError {
    fn from(e: serde_json::Error) -> Self {
        PageError::Json(e)
    }
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageError::Json(e) => write!(f, "{e}"),
            PageError::Shape(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::sources::coverage::prepare_item as prepare_raw_item;
    use crate::sources::mutate::{cases, mutate, reference, Rng, EXAMPLE_PAGES};

    /// The reader before issue 12's single pass: the page into raw items by serde's derive, then
    /// each item on its own. The one-pass reader must give exactly what it gave.
    #[derive(Deserialize)]
    struct TwoPassPage<'a> {
        #[serde(borrow, default)]
        value: Option<Vec<&'a RawValue>>,
        #[serde(borrow, default)]
        data: Option<Vec<&'a RawValue>>,
        #[serde(rename = "@odata.nextLink", default, borrow)]
        next_link: Option<Cow<'a, str>>,
        #[serde(rename = "@odata.count", default)]
        count: Option<i64>,
        #[serde(rename = "hasNext", default)]
        has_next: bool,
    }

    fn two_pass(kind: SourceKind, list: &str, body: &[u8]) -> Result<ParsedPage, String> {
        let page: TwoPassPage<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let values = page
            .value
            .or(page.data)
            .ok_or_else(|| "neither value nor data".to_string())?;
        let mut parsed = ParsedPage::empty();
        parsed.next_link = page.next_link.map(Cow::into_owned);
        parsed.count = page.count;
        parsed.has_next = page.has_next;
        parsed.received = values.len();
        for raw in values {
            if kind == SourceKind::Submissions {
                let t = serde_json::from_str::<CreatedOnly<'_>>(raw.get())
                    .ok()
                    .and_then(|c| c.created)
                    .and_then(|c| crate::time::parse_ticks(&c));
                parsed.created.extend(t);
            }
            match prepare_raw_item(kind, list, raw) {
                Ok(mut p) => {
                    p.seal();
                    parsed.ids.push(p.native_id.clone());
                    parsed.items.push(p);
                }
                Err(u) => parsed.quarantine.push(QuarantineItem {
                    native_id: u.native_id,
                    reason: u.reason,
                    raw: raw.get().to_string(),
                    list: list.to_string(),
                }),
            }
        }
        Ok(parsed)
    }

    /// Everything a page gives the poller, as comparable text.
    fn outcome(page: &Result<ParsedPage, String>) -> String {
        match page {
            Err(_) => "refused".to_owned(),
            Ok(p) => format!(
                "{:?}",
                (
                    &p.items,
                    p.quarantine
                        .iter()
                        .map(|q| (&q.native_id, &q.reason, &q.raw, &q.list))
                        .collect::<Vec<_>>(),
                    &p.next_link,
                    p.count,
                    p.received,
                    &p.ids,
                    p.has_next,
                    &p.created,
                )
            ),
        }
    }

    /// `text` fed to a reader in chunks of the sizes `size` picks, as a network delivers it.
    fn chunked(
        kind: SourceKind,
        list: &str,
        text: &[u8],
        overflowing: Overflowing,
        mut size: impl FnMut() -> usize,
    ) -> Result<ParsedPage, String> {
        let mut reader = PageReader::new(kind, list, overflowing, None);
        let mut rest = text;
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(size().clamp(1, rest.len()));
            reader.feed(chunk)?;
            rest = after;
        }
        reader.finish()
    }

    /// Each of Microsoft's example pages, then its mutations: (kind, list, name, case, page).
    fn example_pages_and_mutations(
        seed: u64,
    ) -> impl Iterator<Item = (SourceKind, &'static str, &'static str, usize, String)> {
        let mut rng = Rng::new(seed);
        EXAMPLE_PAGES
            .into_iter()
            .flat_map(move |(kind, list, name)| {
                let text = reference(name);
                let mut pages = vec![text.clone()];
                pages.extend((0..cases()).map(|_| mutate(&text, &mut rng)));
                pages
                    .into_iter()
                    .enumerate()
                    .map(move |(case, page)| (kind, list, name, case, page))
            })
    }

    #[test]
    fn a_page_read_in_chunks_gives_what_the_whole_page_gives() {
        let mut sizes = Rng::new(0x51ce_5123);
        let (mut same_items, mut both_refused) = (0, 0);
        for (kind, list, name, case, page) in example_pages_and_mutations(0x0c4a_4e5e) {
            let whole = outcome(&parse_page(
                kind,
                list,
                page.clone().into_bytes(),
                Overflowing::Prepare,
                None,
            ));
            // One byte at a time splits every token and every multi-byte character (on some
            // cases only: a byte per call is slow in a debug build).
            if case % 10 == 0 {
                let bytewise = chunked(kind, list, page.as_bytes(), Overflowing::Prepare, || 1);
                assert_eq!(
                    outcome(&bytewise),
                    whole,
                    "{name} case {case}, bytewise:\n{page}"
                );
            }
            let random = chunked(kind, list, page.as_bytes(), Overflowing::Prepare, || {
                1 + sizes.below(600)
            });
            assert_eq!(
                outcome(&random),
                whole,
                "{name} case {case}, random:\n{page}"
            );
            if whole == "refused" {
                both_refused += 1;
            } else {
                same_items += 1;
            }
        }
        assert!(
            same_items > 0 && both_refused > 0,
            "both outcomes were compared"
        );
        // A page cut anywhere is refused, however it was chunked.
        let page = format!("{{\"@odata.count\":2,\"value\":[{ALERT},{ALERT}]}}");
        for cut in 0..page.len() {
            let text = &page.as_bytes()[..cut];
            let e = chunked(SourceKind::Alerts, "", text, Overflowing::Prepare, || 7)
                .err()
                .unwrap_or_else(|| panic!("the page cut at byte {cut} was read"));
            assert!(e.starts_with("the answer is not a complete page"), "{e}");
        }
        // Skimming decides on the members read before the listing, as the whole page did.
        let skim = Overflowing::Skim { top: 1 };
        let p = chunked(SourceKind::Alerts, "", page.as_bytes(), skim, || 3).unwrap();
        assert_eq!((p.received, p.items.len()), (2, 0));
    }

    /// A chunk can end anywhere in an item; the reader keeps the unread tail only.
    #[test]
    fn the_reader_holds_an_item_not_the_page() {
        let items: Vec<String> = (0..500)
            .map(|i| ALERT.replace("da1", &format!("da{i}")))
            .collect();
        let page = format!("{{\"value\":[{}]}}", items.join(","));
        let mut reader = PageReader::new(SourceKind::Alerts, "", Overflowing::Prepare, None);
        let mut largest = 0;
        for chunk in page.as_bytes().chunks(1000) {
            reader.feed(chunk).unwrap();
            largest = largest.max(reader.buf.len());
        }
        assert!(
            largest < 1000 + ALERT.len(),
            "the reader held {largest} bytes"
        );
        let p = reader.finish().unwrap();
        assert_eq!((p.received, p.items.len()), (500, 500));
    }

    /// However large a chunk, the buffer grows to a slice of it, not to the chunk.
    #[test]
    fn a_chunk_of_megabytes_is_read_without_a_buffer_its_size() {
        let n = 8 * FEED_AT_ONCE / ALERT.len();
        let items: Vec<String> = (0..n)
            .map(|i| ALERT.replace("da1", &format!("da{i}")))
            .collect();
        let page = format!("{{\"value\":[{}]}}", items.join(","));
        assert!(page.len() > 8 * FEED_AT_ONCE);
        let mut reader = PageReader::new(SourceKind::Alerts, "", Overflowing::Prepare, None);
        reader.feed(page.as_bytes()).unwrap();
        assert!(
            reader.buf.capacity() <= 2 * (FEED_AT_ONCE + ALERT.len()),
            "the reader kept a buffer of {} bytes for a {}-byte chunk",
            reader.buf.capacity(),
            page.len()
        );
        let p = reader.finish().unwrap();
        assert_eq!((p.received, p.items.len()), (n, n));
    }

    #[test]
    fn one_pass_gives_what_two_passes_gave_on_every_example_page_and_its_mutations() {
        let (mut same_items, mut both_refused) = (0, 0);
        for (kind, list, name, case, page) in example_pages_and_mutations(0x0e9a_55e5) {
            let old = two_pass(kind, list, page.as_bytes());
            let new = parse_page(
                kind,
                list,
                page.clone().into_bytes(),
                Overflowing::Prepare,
                None,
            );
            assert_eq!(outcome(&new), outcome(&old), "{name} case {case}:\n{page}");
            if case == 0 {
                let items = new.as_ref().map(|p| p.items.len());
                assert!(
                    items.is_ok_and(|n| n > 0),
                    "{name}: the example page has items"
                );
            }
            match old {
                Ok(p) if !p.items.is_empty() => same_items += 1,
                Ok(_) => {}
                Err(_) => both_refused += 1,
            }
        }
        assert!(
            same_items > 0 && both_refused > 0,
            "both outcomes were compared"
        );
    }

    fn page(text: &str) -> Result<ParsedPage, String> {
        parse_page(
            SourceKind::Alerts,
            "",
            text.as_bytes().to_vec(),
            Overflowing::Prepare,
            None,
        )
    }

    const ALERT: &str =
        r#"{"id":"da1","lastUpdateDateTime":"2026-11-28T10:00:00Z","title":"t","evidence":[]}"#;

    #[test]
    fn the_pages_own_members_are_read_by_the_rules_the_derive_applied() {
        // Members in any order, with whitespace anywhere JSON allows it.
        let p = page(&format!(
            " {{ \"@odata.count\" : 3 ,\n\"value\":[ {ALERT} ,\t{ALERT}] , \"@odata.nextLink\":\"https://n\" }} \n"
        ))
        .unwrap();
        assert_eq!((p.received, p.items.len()), (2, 2));
        assert_eq!(p.count, Some(3));
        assert_eq!(p.next_link.as_deref(), Some("https://n"));
        // The item's text is what a RawValue of it held: no surrounding whitespace.
        let p = page(&format!("{{\"value\":[5 , {ALERT}]}}")).unwrap();
        assert_eq!(p.quarantine.len(), 1);
        assert_eq!(p.quarantine[0].raw, "5");
        // `value` wins over `data`, whichever comes first; `null` is no listing.
        for text in [
            format!("{{\"data\":[{ALERT},{ALERT}],\"value\":[{ALERT}]}}"),
            format!("{{\"value\":[{ALERT}],\"data\":[{ALERT},{ALERT}]}}"),
            format!("{{\"value\":null,\"data\":[{ALERT}]}}"),
        ] {
            assert_eq!(page(&text).unwrap().received, 1, "{text}");
        }
        // Refused: no listing, a duplicated member, anything after the object, a cut page.
        for text in [
            "{}".to_owned(),
            "{\"value\":null}".to_owned(),
            "[]".to_owned(),
            format!("{{\"value\":[{ALERT}],\"value\":[]}}"),
            "{\"value\":[],\"@odata.count\":1,\"@odata.count\":2}".to_owned(),
            format!("{{\"value\":[{ALERT}]}} x"),
            format!("{{\"value\":[{ALERT},]}}"),
            format!("{{\"value\":[{ALERT}"),
            "{\"value\":[],\"hasNext\":null}".to_owned(),
        ] {
            let e = page(&text)
                .err()
                .unwrap_or_else(|| panic!("{text} was read"));
            assert!(e.starts_with("the answer is not a complete page"), "{e}");
        }
        // Unknown members are skipped whatever they hold.
        let p = page(&format!(
            "{{\"@odata.context\":{{\"a\":[1,\"]\"]}},\"value\":[{ALERT}],\"x\":null}}"
        ))
        .unwrap();
        assert_eq!(p.items.len(), 1);
    }

    #[test]
    fn broken_utf8_in_an_item_is_replaced_and_the_page_still_read() {
        let mut body = format!("{{\"value\":[{ALERT}]}}").into_bytes();
        let at = body.windows(3).position(|w| w == b"\"t\"").unwrap() + 1;
        body[at] = 0xff;
        let p = parse_page(SourceKind::Alerts, "", body, Overflowing::Prepare, None).unwrap();
        assert_eq!(p.items.len(), 1);
        let json = p.items[0].body.json().unwrap();
        assert!(String::from_utf8(json.into_owned())
            .unwrap()
            .contains("\"title\":\"\u{fffd}\""));
    }

    #[test]
    fn a_page_known_to_overflow_before_its_items_is_counted_not_prepared() {
        let skim = Overflowing::Skim { top: 2 };
        let three = format!("[{ALERT},{ALERT},{ALERT}]");
        let read = |text: &str, how| {
            parse_page(SourceKind::Alerts, "", text.as_bytes().to_vec(), how, None).unwrap()
        };
        // Known before the items: a nextLink, or a count above the page size asked for.
        for text in [
            format!("{{\"@odata.nextLink\":\"https://n\",\"value\":{three}}}"),
            format!("{{\"@odata.count\":9,\"value\":{three}}}"),
        ] {
            let p = read(&text, skim);
            assert_eq!(
                (p.received, p.items.len(), p.ids.len()),
                (3, 0, 0),
                "{text}"
            );
            assert!(p.overflows(), "{text}");
            // The same page where the caller walks instead of splitting is prepared whole.
            assert_eq!(read(&text, Overflowing::Prepare).items.len(), 3, "{text}");
        }
        // Not known before the items (a nextLink after them), or no overflow: prepared.
        for text in [
            format!("{{\"value\":{three},\"@odata.nextLink\":\"https://n\"}}"),
            format!("{{\"@odata.count\":2,\"value\":[{ALERT},{ALERT}]}}"),
            format!("{{\"@odata.count\":null,\"value\":{three}}}"),
        ] {
            assert_eq!(read(&text, skim).items.len(), p_len(&text), "{text}");
        }
        // A skimmed page is still read whole: a cut one is refused, and a submission's
        // creation time is still read for the slice check.
        let cut = format!("{{\"@odata.count\":9,\"value\":[{ALERT},{{\"id\":");
        assert!(parse_page(SourceKind::Alerts, "", cut.into_bytes(), skim, None).is_err());
        let submission =
            r#"{"id":"s1","createdDateTime":"2026-11-28T10:00:00Z","contentType":"email"}"#;
        let p = parse_page(
            SourceKind::Submissions,
            "emailThreats",
            format!("{{\"@odata.count\":9,\"value\":[{submission},5]}}").into_bytes(),
            skim,
            None,
        )
        .unwrap();
        assert_eq!((p.received, p.items.len(), p.quarantine.len()), (2, 0, 0));
        assert_eq!(
            p.created,
            vec![crate::time::parse_ticks("2026-11-28T10:00:00Z").unwrap()]
        );
    }

    /// How many items a page's `value` holds.
    fn p_len(text: &str) -> usize {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["value"].as_array().unwrap().len()
    }

    #[test]
    fn items_whose_version_is_stored_are_counted_not_prepared() {
        let at = |id: &str, t: &str| {
            format!(r#"{{"id":"{id}","lastUpdateDateTime":"{t}","title":"x","evidence":[]}}"#)
        };
        let text = format!(
            "{{\"value\":[{},{},{},{},{}]}}",
            at("same", "2026-11-28T10:00:00Z"),
            at("older", "2026-11-28T09:00:00Z"),
            at("newer", "2026-11-28T11:00:00Z"),
            at("unknown", "2026-11-28T10:00:00Z"),
            r#"{"id":"bad","lastUpdateDateTime":"not a time"}"#,
        );
        let ten = crate::time::parse_ticks("2026-11-28T10:00:00Z").unwrap();
        let mut known = KnownVersions::default();
        for id in ["same", "older", "newer", "bad"] {
            known.insert(id, ten);
        }
        for kind in [SourceKind::Alerts, SourceKind::Incidents] {
            let p = parse_page(
                kind,
                "",
                text.clone().into_bytes(),
                Overflowing::Prepare,
                Some(&known),
            )
            .unwrap();
            let prepared: Vec<&str> = p.items.iter().map(|i| i.native_id.as_str()).collect();
            assert_eq!(prepared, ["newer", "unknown"], "{kind:?}");
            assert_eq!((p.unchanged, p.stale), (1, 1), "{kind:?}");
            // Unreadable versions are still quarantined, with the reason the store gives.
            assert_eq!(p.quarantine.len(), 1, "{kind:?}");
            assert_eq!(p.received, 5);
            assert_eq!(p.ids, ["same", "older", "newer", "unknown"], "{kind:?}");
            // Without what the store holds, everything readable is prepared.
            let all = parse_page(
                kind,
                "",
                text.clone().into_bytes(),
                Overflowing::Prepare,
                None,
            )
            .unwrap();
            assert_eq!((all.items.len(), all.unchanged, all.stale), (4, 0, 0));
        }
        // Sources whose version is not a time are always prepared.
        let submissions = parse_page(
            SourceKind::CloudApps,
            "",
            br#"{"data":[{"_id":"same","timestamp":1}]}"#.to_vec(),
            Overflowing::Prepare,
            Some(&known),
        )
        .unwrap();
        assert_eq!(submissions.unchanged + submissions.stale, 0);
    }
}
