//! HTML reduced to readable text, plus the links it holds (`<a href>` with their text,
//! `<area href>`).
//!
//! A small forgiving scanner rather than an HTML5 parser: mail HTML is messy and often
//! hostile, and all we need is the words a user saw and where the links point. It makes one
//! pass over the input (the only re-scan, for a quoted attribute that never closes, is done
//! at most once), so size and link count stay linear.

/// One link of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HtmlLink {
    pub href: String,
    pub text: String,
}

#[derive(Debug, Default)]
pub(super) struct HtmlDoc {
    pub text: String,
    pub links: Vec<HtmlLink>,
}

/// Elements rendered with space around them: a blank line at their boundaries.
const PARAGRAPHS: &[&str] = &[
    "blockquote",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "ol",
    "p",
    "pre",
    "table",
    "ul",
];

/// Other elements whose boundaries are line breaks.
const BLOCKS: &[&str] = &[
    "address", "article", "aside", "center", "dd", "div", "dl", "dt", "fieldset", "figure",
    "footer", "form", "header", "li", "main", "nav", "section", "tr",
];

/// Elements whose content is never shown.
const HIDDEN: &[&str] = &["script", "style", "title", "template", "head"];

/// Text being built with HTML whitespace rules: runs of blanks become one space, block
/// boundaries become at most one blank line, nothing at the start or end.
#[derive(Default)]
struct Builder {
    out: String,
    space: bool,
    newlines: u8,
}

impl Builder {
    fn text(&mut self, s: &str) {
        for c in s.chars() {
            if c.is_whitespace() {
                self.space = true;
            } else {
                self.flush();
                self.out.push(c);
            }
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            if self.newlines > 0 {
                for _ in 0..self.newlines.min(2) {
                    self.out.push('\n');
                }
            } else if self.space {
                self.out.push(' ');
            }
        }
        self.space = false;
        self.newlines = 0;
    }

    /// `<br>`: each one counts.
    fn line_break(&mut self) {
        self.newlines = self.newlines.saturating_add(1);
    }

    /// A block boundary: at least `lines` line breaks, however many boundaries meet.
    fn block(&mut self, lines: u8) {
        self.newlines = self.newlines.max(lines);
    }
}

/// Reduces HTML to text and collects its links.
pub(super) fn reduce(html: &str) -> HtmlDoc {
    let bytes = html.as_bytes();
    let mut b = Builder::default();
    let mut links = Vec::new();
    // The open `<a>`: its href and where its text starts in the output.
    let mut open_link: Option<(String, usize)> = None;
    let mut quotes_reliable = true;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => {
                let rest = &bytes[i..];
                if rest.starts_with(b"<!--") {
                    i = find(bytes, i + 4, b"-->").map_or(bytes.len(), |p| p + 3);
                    continue;
                }
                if matches!(rest.get(1), Some(b'!' | b'?')) {
                    i = find(bytes, i + 1, b">").map_or(bytes.len(), |p| p + 1);
                    continue;
                }
                let closing = rest.get(1) == Some(&b'/');
                let name_start = i + 1 + usize::from(closing);
                let mut name_end = name_start;
                while bytes
                    .get(name_end)
                    .is_some_and(|c| c.is_ascii_alphanumeric())
                {
                    name_end += 1;
                }
                if name_end == name_start || !bytes[name_start].is_ascii_alphabetic() {
                    b.text("<");
                    i += 1;
                    continue;
                }
                let name = html[name_start..name_end].to_ascii_lowercase();
                let (attrs_end, next) = tag_end(bytes, name_end, &mut quotes_reliable);
                let attrs = &html[name_end..attrs_end];
                i = next;
                if closing {
                    if name == "a" {
                        if let Some((href, start)) = open_link.take() {
                            links.push(link(href, b.out.get(start..).unwrap_or_default()));
                        }
                    }
                } else if HIDDEN.contains(&name.as_str()) {
                    i = skip_element(bytes, i, &name);
                    continue;
                } else if name == "a" {
                    if let Some((href, start)) = open_link.take() {
                        links.push(link(href, b.out.get(start..).unwrap_or_default()));
                    }
                    if let Some(href) = attribute(attrs, "href") {
                        b.flush();
                        open_link = Some((href, b.out.len()));
                    }
                } else if name == "area" {
                    if let Some(href) = attribute(attrs, "href") {
                        let alt = attribute(attrs, "alt").unwrap_or_default();
                        links.push(link(href, &alt));
                    }
                }
                if name == "br" {
                    b.line_break();
                } else if PARAGRAPHS.contains(&name.as_str()) {
                    b.block(2);
                } else if BLOCKS.contains(&name.as_str()) {
                    b.block(1);
                } else if matches!(name.as_str(), "td" | "th") {
                    b.space = true;
                }
            }
            b'&' => {
                let (decoded, len) = entity(&html[i..]);
                b.text(&decoded);
                i += len;
            }
            _ => {
                let end = bytes[i..]
                    .iter()
                    .position(|c| *c == b'<' || *c == b'&')
                    .map_or(bytes.len(), |p| i + p);
                b.text(&html[i..end]);
                i = end;
            }
        }
    }
    if let Some((href, start)) = open_link.take() {
        links.push(link(href, b.out.get(start..).unwrap_or_default()));
    }
    HtmlDoc { text: b.out, links }
}

fn link(href: String, text: &str) -> HtmlLink {
    HtmlLink {
        href,
        text: text.trim().to_string(),
    }
}

/// Position of `needle` at or after `from`, ASCII case-insensitive.
fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let first = needle.first()?.to_ascii_lowercase();
    let mut at = from;
    while at < haystack.len() {
        let offset = haystack[at..]
            .iter()
            .position(|c| c.to_ascii_lowercase() == first)?;
        let candidate = at + offset;
        if haystack
            .get(candidate..candidate + needle.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
        {
            return Some(candidate);
        }
        at = candidate + 1;
    }
    None
}

/// Where the attributes of a tag end and where scanning resumes (after its `>`).
///
/// Quotes are honoured (`href="a>b"`) until one is found that never closes; from then on, the
/// document is scanned for the next `>` only, so a hostile page cannot make this quadratic.
fn tag_end(bytes: &[u8], from: usize, quotes_reliable: &mut bool) -> (usize, usize) {
    if *quotes_reliable {
        let mut quote: Option<u8> = None;
        let mut j = from;
        while let Some(&c) = bytes.get(j) {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None if c == b'>' => return (j, j + 1),
                None => {}
            }
            j += 1;
        }
        *quotes_reliable = false;
    }
    match find(bytes, from, b">") {
        Some(j) => (j, j + 1),
        None => (bytes.len(), bytes.len()),
    }
}

/// Skips the content of a hidden element up to and including its end tag.
fn skip_element(bytes: &[u8], from: usize, name: &str) -> usize {
    let mut end_tag = Vec::with_capacity(name.len() + 2);
    end_tag.extend_from_slice(b"</");
    end_tag.extend_from_slice(name.as_bytes());
    let mut at = from;
    while let Some(p) = find(bytes, at, &end_tag) {
        // `</style>` but not `</styles>`.
        let after = bytes.get(p + end_tag.len()).copied();
        if after.is_none_or(|c| !c.is_ascii_alphanumeric()) {
            return find(bytes, p, b">").map_or(bytes.len(), |q| q + 1);
        }
        at = p + 1;
    }
    bytes.len()
}

/// The entity-decoded value of an attribute.
fn attribute(attrs: &str, wanted: &str) -> Option<String> {
    let bytes = attrs.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while bytes
            .get(i)
            .is_some_and(|c| c.is_ascii_whitespace() || *c == b'/')
        {
            i += 1;
        }
        let name_start = i;
        while bytes
            .get(i)
            .is_some_and(|c| !c.is_ascii_whitespace() && !matches!(c, b'=' | b'/' | b'>'))
        {
            i += 1;
        }
        if i == name_start {
            i += 1;
            continue;
        }
        let name = &attrs[name_start..i];
        while bytes.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
            i += 1;
        }
        let mut value = None;
        if bytes.get(i) == Some(&b'=') {
            i += 1;
            while bytes.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
                i += 1;
            }
            match bytes.get(i) {
                Some(&q) if q == b'"' || q == b'\'' => {
                    let start = i + 1;
                    let end = bytes[start..]
                        .iter()
                        .position(|c| *c == q)
                        .map_or(bytes.len(), |p| start + p);
                    value = Some(&attrs[start..end]);
                    i = end + 1;
                }
                _ => {
                    let start = i;
                    while bytes.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                        i += 1;
                    }
                    value = Some(&attrs[start..i]);
                }
            }
        }
        if name.eq_ignore_ascii_case(wanted) {
            return value.map(decode_entities);
        }
    }
    None
}

/// Decodes every character reference of a string.
pub(super) fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let (decoded, len) = entity(&rest[at..]);
        out.push_str(&decoded);
        rest = rest.get(at + len..).unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// Decodes the character reference at the start of `s` (which starts with `&`): the text and
/// the bytes consumed. Anything that is not a known reference is a literal `&`.
fn entity(s: &str) -> (String, usize) {
    let bytes = s.as_bytes();
    if bytes.get(1) == Some(&b'#') {
        let hex = matches!(bytes.get(2), Some(b'x' | b'X'));
        let start = if hex { 3 } else { 2 };
        let mut end = start;
        while bytes.get(end).is_some_and(|c| {
            if hex {
                c.is_ascii_hexdigit()
            } else {
                c.is_ascii_digit()
            }
        }) && end - start < 8
        {
            end += 1;
        }
        if end > start {
            let digits = &s[start..end];
            let value = u32::from_str_radix(digits, if hex { 16 } else { 10 }).unwrap_or(0);
            let c = match value {
                0 => '\u{fffd}',
                // Windows-1252 numbers that HTML maps (&#150; is a dash, not a control).
                0x80..=0x9f => super::decode::charset_decode(&[value as u8], Some("windows-1252"))
                    .chars()
                    .next()
                    .unwrap_or('\u{fffd}'),
                _ => char::from_u32(value).unwrap_or('\u{fffd}'),
            };
            let len = if bytes.get(end) == Some(&b';') {
                end + 1
            } else {
                end
            };
            return (c.to_string(), len);
        }
        return ("&".to_string(), 1);
    }
    let mut end = 1;
    while bytes.get(end).is_some_and(|c| c.is_ascii_alphanumeric()) && end < 12 {
        end += 1;
    }
    let name = &s[1..end];
    match named(name) {
        Some(text) => {
            let len = if bytes.get(end) == Some(&b';') {
                end + 1
            } else {
                end
            };
            (text.to_string(), len)
        }
        None => ("&".to_string(), 1),
    }
}

fn named(name: &str) -> Option<&'static str> {
    Some(match name {
        "amp" | "AMP" => "&",
        "lt" | "LT" => "<",
        "gt" | "GT" => ">",
        "quot" | "QUOT" => "\"",
        "apos" => "'",
        "nbsp" | "ensp" | "emsp" | "thinsp" => " ",
        "shy" | "zwnj" | "zwj" | "lrm" | "rlm" => "",
        "copy" => "©",
        "reg" => "®",
        "trade" => "™",
        "hellip" => "…",
        "mdash" => "—",
        "ndash" => "–",
        "lsquo" => "‘",
        "rsquo" => "’",
        "sbquo" => "‚",
        "ldquo" => "“",
        "rdquo" => "”",
        "bdquo" => "„",
        "laquo" => "«",
        "raquo" => "»",
        "bull" => "•",
        "middot" => "·",
        "euro" => "€",
        "pound" => "£",
        "yen" => "¥",
        "cent" => "¢",
        "sect" => "§",
        "para" => "¶",
        "deg" => "°",
        "times" => "×",
        "divide" => "÷",
        "plusmn" => "±",
        "iexcl" => "¡",
        "iquest" => "¿",
        "dagger" => "†",
        "rarr" => "→",
        "larr" => "←",
        "auml" => "ä",
        "ouml" => "ö",
        "uuml" => "ü",
        "Auml" => "Ä",
        "Ouml" => "Ö",
        "Uuml" => "Ü",
        "szlig" => "ß",
        "eacute" => "é",
        "egrave" => "è",
        "ecirc" => "ê",
        "Eacute" => "É",
        "aacute" => "á",
        "agrave" => "à",
        "acirc" => "â",
        "iacute" => "í",
        "oacute" => "ó",
        "uacute" => "ú",
        "ntilde" => "ñ",
        "ccedil" => "ç",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_markup_to_text() {
        let doc = reduce(
            "<html><head><title>T</title><style>p{color:red}</style></head>\
             <body><!-- hidden --><p>Dear&nbsp;customer,</p><div>Your   account\n is\t\
             <b>locked</b>.</div><script>alert('<p>x</p>')</script>\
             <p>Caf&eacute; &#233;&#x20AC; &#150; &unknown; a&b &lt;tag&gt;<br>line2</p>\
             <table><tr><td>a</td><td>b</td></tr></table></body></html>",
        );
        assert_eq!(
            doc.text,
            "Dear customer,\n\nYour account is locked.\n\nCafé é€ – &unknown; a&b <tag>\nline2\n\na b"
        );
    }

    #[test]
    fn collects_links_with_text() {
        let doc = reduce(
            "<a href=\"https://x.test/?a=1&amp;b=2\">Sign <b>in</b></a> \
             <A HREF=https://y.test/>https://y.test/</A><a name=top>no href</a>\
             <map><area shape=rect href='https://z.test/' alt=\"Map\"></map>\
             <a href=\"https://open.test/\">never closed",
        );
        let links: Vec<(&str, &str)> = doc
            .links
            .iter()
            .map(|l| (l.href.as_str(), l.text.as_str()))
            .collect();
        assert_eq!(
            links,
            vec![
                ("https://x.test/?a=1&b=2", "Sign in"),
                ("https://y.test/", "https://y.test/"),
                ("https://z.test/", "Map"),
                ("https://open.test/", "never closed"),
            ]
        );
    }

    #[test]
    fn hostile_markup_does_not_hang_or_panic() {
        for input in [
            "<",
            "<a",
            "<a href=\"",
            "&#",
            "&#x;",
            "&#99999999999;",
            "<!--",
            "<script>",
            "<a href='x'>é<",
            "<<<>>>",
            "<é>",
            "&amp",
            "<a href=\"é\"",
            "</",
            "<!",
        ] {
            let _ = reduce(input);
        }
        let hostile = "<a href=\"".repeat(20_000) + &"<p>x".repeat(20_000);
        let start = std::time::Instant::now();
        let doc = reduce(&hostile);
        assert!(start.elapsed().as_secs() < 5);
        assert!(doc.text.len() < hostile.len());
    }
}
