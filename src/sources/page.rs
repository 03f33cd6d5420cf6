//! Reads one listing page (a Graph `value` page or a Cloud Apps `data` page) in a single pass:
//! each item is parsed where it sits, straight into its source's typed struct, and its text is
//! taken from where that parse stopped. Deserializing the page into raw items first, then each
//! item again, read every byte twice (issue 12). The page's own members (`@odata.nextLink`,
//! `@odata.count`, `hasNext`) are read by the same rules serde's derive applied before: a
//! duplicated one refuses the page, unknown ones are skipped, and nothing may follow the object.

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

/// Parses and prepares a listing page of `kind` (`list` names the submission list polled).
/// `Err` says why the answer is not a whole page; the caller asks for it again.
pub(super) fn parse_page(
    kind: SourceKind,
    list: &str,
    body: Vec<u8>,
    overflowing: Overflowing,
    known: Option<&KnownVersions>,
) -> Result<ParsedPage, String> {
    // Invalid UTF-8 would otherwise refuse the page for good and stall its slice; replaced, the
    // item still goes, with U+FFFD where Microsoft's bytes were broken.
    let text = match std::str::from_utf8(&body) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(&body),
    };
    read_page(kind, list, &text, overflowing, known)
        .map_err(|e| format!("the answer is not a complete page: {e}"))
}

/// Which of the page's item arrays the items came from: `value` wins over `data`, as before.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Items {
    None,
    Data,
    Value,
}

fn read_page(
    kind: SourceKind,
    list: &str,
    text: &str,
    overflowing: Overflowing,
    known: Option<&KnownVersions>,
) -> Result<ParsedPage, PageError> {
    let mut page = ParsedPage::empty();
    let mut from = Items::None;
    let (mut seen_value, mut seen_data) = (false, false);
    let (mut seen_next, mut seen_count, mut seen_has_next) = (false, false, false);
    let mut at = Reader { text, pos: 0 };
    at.expect(b'{')?;
    if !at.eat(b'}') {
        loop {
            let key: Cow<'_, str> = at.value()?;
            at.expect(b':')?;
            match key.as_ref() {
                "value" | "data" => {
                    let this = if key == "value" {
                        once(&mut seen_value, &key)?;
                        Items::Value
                    } else {
                        once(&mut seen_data, &key)?;
                        Items::Data
                    };
                    if this == Items::Data && from == Items::Value {
                        at.value::<IgnoredAny>()?;
                    } else if at.null()? {
                        // `"value": null` is no listing, as an absent member is.
                    } else {
                        // A `data` read before a `value` gives way to it.
                        page.items.clear();
                        page.quarantine.clear();
                        page.ids.clear();
                        page.created.clear();
                        page.received = 0;
                        (page.unchanged, page.stale) = (0, 0);
                        let known_to_overflow = match overflowing {
                            Overflowing::Prepare => false,
                            Overflowing::Skim { top } => {
                                page.next_link.is_some()
                                    || page.count.is_some_and(|n| n > top as i64)
                            }
                        };
                        if known_to_overflow {
                            at.items(|rest| count_item(kind, rest, &mut page))?;
                        } else {
                            at.items(|rest| prepare_item(kind, list, rest, known, &mut page))?;
                        }
                        from = this;
                    }
                }
                "@odata.nextLink" => {
                    once(&mut seen_next, &key)?;
                    page.next_link = at.value::<Option<Cow<'_, str>>>()?.map(Cow::into_owned);
                }
                "@odata.count" => {
                    once(&mut seen_count, &key)?;
                    page.count = at.value()?;
                }
                "hasNext" => {
                    once(&mut seen_has_next, &key)?;
                    page.has_next = at.value()?;
                }
                _ => {
                    at.value::<IgnoredAny>()?;
                }
            }
            if at.eat(b',') {
                continue;
            }
            at.expect(b'}')?;
            break;
        }
    }
    at.skip_whitespace();
    if at.pos != text.len() {
        return Err(PageError::Shape(
            "trailing characters after the page".into(),
        ));
    }
    if from == Items::None {
        return Err(PageError::Shape(
            "the answer has neither `value` nor `data`: not a listing".into(),
        ));
    }
    Ok(page)
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

/// A position in the page's text, moved over JSON's structural characters by hand and over
/// values by serde_json.
struct Reader<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn skip_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while matches!(bytes.get(self.pos), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Steps over `c` (after whitespace) if it is next.
    fn eat(&mut self, c: u8) -> bool {
        self.skip_whitespace();
        if self.text.as_bytes().get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), PageError> {
        if self.eat(c) {
            return Ok(());
        }
        let found = match self.text[self.pos..].chars().next() {
            Some(found) => format!("`{found}`"),
            None => "the end".to_owned(),
        };
        Err(PageError::Shape(format!(
            "expected `{}` at byte {}, found {found}",
            c as char, self.pos
        )))
    }

    /// Reads one JSON value as `T`.
    fn value<T: Deserialize<'a>>(&mut self) -> Result<T, PageError> {
        self.skip_whitespace();
        let mut values = serde_json::Deserializer::from_str(&self.text[self.pos..]).into_iter();
        match values.next() {
            Some(Ok(v)) => {
                self.pos += values.byte_offset();
                Ok(v)
            }
            Some(Err(e)) => Err(e.into()),
            None => Err(PageError::Shape(
                "the page ends where a value should".into(),
            )),
        }
    }

    /// Reads a `null` if one is next.
    fn null(&mut self) -> Result<bool, PageError> {
        self.skip_whitespace();
        if self.text.as_bytes().get(self.pos) != Some(&b'n') {
            return Ok(false);
        }
        self.value::<()>()?;
        Ok(true)
    }

    /// Reads an array, handing each element's text onwards to `item`, which says how long the
    /// element was.
    fn items(
        &mut self,
        mut item: impl FnMut(&'a str) -> Result<usize, PageError>,
    ) -> Result<(), PageError> {
        self.expect(b'[')?;
        if self.eat(b']') {
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            self.pos += item(&self.text[self.pos..])?;
            if self.eat(b',') {
                continue;
            }
            return self.expect(b']');
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

    #[test]
    fn one_pass_gives_what_two_passes_gave_on_every_example_page_and_its_mutations() {
        let mut rng = Rng::new(0x0e9a_55e5);
        let (mut same_items, mut both_refused) = (0, 0);
        for (kind, list, name) in EXAMPLE_PAGES {
            let text = reference(name);
            let mut pages = vec![text.clone()];
            pages.extend((0..cases()).map(|_| mutate(&text, &mut rng)));
            for (case, page) in pages.iter().enumerate() {
                let old = two_pass(kind, list, page.as_bytes());
                let new = parse_page(
                    kind,
                    list,
                    page.clone().into_bytes(),
                    Overflowing::Prepare,
                    None,
                );
                assert_eq!(outcome(&new), outcome(&old), "{name} case {case}:\n{page}");
                match old {
                    Ok(p) if !p.items.is_empty() => same_items += 1,
                    Ok(_) => {}
                    Err(_) => both_refused += 1,
                }
            }
            assert!(
                !parse_page(kind, list, text.into_bytes(), Overflowing::Prepare, None)
                    .unwrap()
                    .items
                    .is_empty(),
                "{name}: the example page has items"
            );
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
