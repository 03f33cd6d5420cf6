//! URLs: finding bare ones in text, unwrapping Safe Links, reading the host, and the
//! deduplicated, capped list that ends up in `urls`.
//!
//! Everything here is one pass over its input with hash-map dedup, so a body with thousands of
//! links stays linear.

use std::collections::HashMap;

use super::model::Link;

/// Longest URL kept; beyond this it is data, not a link.
const MAX_URL_BYTES: usize = 8192;
/// Longest link text kept.
const MAX_LINK_TEXT_CHARS: usize = 300;
/// Safe Links can wrap a Safe Links URL (forwarded between tenants); more than this is a loop.
const MAX_UNWRAP: usize = 5;

/// The distinct URLs of one message, first-seen order, at most `max`.
pub(super) struct UrlSet {
    list: Vec<Link>,
    index: HashMap<String, usize>,
    max: usize,
    truncated: bool,
}

impl UrlSet {
    pub(super) fn new(max: usize) -> Self {
        UrlSet {
            list: Vec::new(),
            index: HashMap::new(),
            max,
            truncated: false,
        }
    }

    /// Adds a URL as written (an `href` or a bare URL) with its link text, if any.
    pub(super) fn add(&mut self, raw: &str, link_text: Option<&str>) {
        let Some(written) = clean_href(raw) else {
            return;
        };
        let (url, wrapped) = unwrap_safelinks(&written);
        let text = link_text
            .map(collapse_whitespace)
            .filter(|t| !t.is_empty() && differs(t, &url, &written));
        if let Some(&at) = self.index.get(&url) {
            // A later occurrence may carry what the first lacked (a bare URL in the text
            // part, then the same URL behind "Click here" in the HTML part).
            if let Some(link) = self.list.get_mut(at) {
                if link.text.is_none() {
                    link.text = text;
                }
                if link.wrapped.is_none() {
                    link.wrapped = wrapped;
                }
            }
            return;
        }
        if self.list.len() >= self.max {
            self.truncated = true;
            return;
        }
        let domain = host_of(&url);
        self.index.insert(url.clone(), self.list.len());
        self.list.push(Link {
            url,
            domain,
            text,
            wrapped,
        });
    }

    /// Adds every bare http(s) URL of a text.
    pub(super) fn add_bare(&mut self, text: &str) {
        for url in bare_urls(text) {
            self.add(url, None);
        }
    }

    /// The list, and whether URLs were dropped at the cap.
    pub(super) fn finish(self) -> (Vec<Link>, bool) {
        (self.list, self.truncated)
    }
}

/// Trims and strips what mail clients leave inside hrefs; `None` for what is not a link to
/// somewhere (fragments, relative paths, `cid:`, `javascript:`, `data:`).
fn clean_href(raw: &str) -> Option<String> {
    let mut url: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
    if url.is_empty() || url.starts_with('#') {
        return None;
    }
    if !url.starts_with("//") {
        let scheme = url.split(':').next().unwrap_or_default();
        let has_scheme = url.contains(':')
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !has_scheme {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        if matches!(
            scheme.as_str(),
            "cid" | "javascript" | "data" | "about" | "mid"
        ) {
            return None;
        }
    }
    super::decode::truncate(&mut url, MAX_URL_BYTES);
    Some(url)
}

/// Safe Links hosts: `*.safelinks.protection.outlook.com` and the government clouds'.
fn is_safelinks_host(host: &str) -> bool {
    host.ends_with(".safelinks.protection.outlook.com")
        || host.ends_with(".safelinks.protection.office365.us")
        || host.ends_with(".safelinks.protection.outlook.cn")
}

/// The real target of a Safe Links URL (nested ones too) and the wrapper as written.
pub(super) fn unwrap_safelinks(url: &str) -> (String, Option<String>) {
    let mut current = url.to_string();
    let mut unwrapped = false;
    for _ in 0..MAX_UNWRAP {
        let inner = host_of(&current)
            .filter(|h| is_safelinks_host(h))
            .and_then(|_| query_param(&current, "url"))
            .map(percent_decode)
            .filter(|v| !v.is_empty());
        match inner {
            Some(inner) => {
                current = inner;
                unwrapped = true;
            }
            None => break,
        }
    }
    if unwrapped {
        (current, Some(url.to_string()))
    } else {
        (current, None)
    }
}

/// The raw (still percent-encoded) value of a query parameter.
fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or_default();
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.eq_ignore_ascii_case(name).then_some(value)
    })
}

/// `%XX` decoding; invalid escapes are kept, invalid UTF-8 becomes U+FFFD.
pub(super) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            if let (Some(h), Some(l)) = (bytes.get(i + 1), bytes.get(i + 2)) {
                if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The lowercased host of a hierarchical URL (`scheme://host…` or `//host…`), no port or
/// user info; `None` for `mailto:` and the like.
pub(super) fn host_of(url: &str) -> Option<String> {
    let rest = match url.find("://") {
        Some(at) => url.get(at + 3..)?,
        None => url.strip_prefix("//")?,
    };
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    let host = host.trim_end_matches('.').to_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Every `http://` / `https://` URL in plain text, in order (duplicates included).
pub(super) fn bare_urls(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let Some(offset) = bytes[i..].iter().position(|b| *b == b'h' || *b == b'H') else {
            break;
        };
        let start = i + offset;
        let scheme_len = if starts_with_ci(&bytes[start..], b"https://") {
            8
        } else if starts_with_ci(&bytes[start..], b"http://") {
            7
        } else {
            i = start + 1;
            continue;
        };
        let mut end = start + scheme_len;
        while let Some(&b) = bytes.get(end) {
            if b <= b' ' || matches!(b, b'<' | b'>' | b'"' | b'\'' | b'`' | 0x7f) {
                break;
            }
            end += 1;
        }
        let url = trim_url_end(&text[start..end]);
        if url.len() > scheme_len {
            found.push(url);
        }
        i = end.max(start + 1);
    }
    found
}

fn starts_with_ci(haystack: &[u8], prefix: &[u8]) -> bool {
    haystack.len() >= prefix.len() && haystack[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Drops the sentence punctuation and unbalanced closing brackets that follow a URL in
/// prose ("see https://x.test/a)." → "https://x.test/a").
fn trim_url_end(url: &str) -> &str {
    let count = |c: char| url.chars().filter(|x| *x == c).count();
    let mut balance = [
        ('(', ')', count('(') as isize - count(')') as isize),
        ('[', ']', count('[') as isize - count(']') as isize),
        ('{', '}', count('{') as isize - count('}') as isize),
    ];
    let mut url = url;
    while let Some(last) = url.chars().last() {
        let cut = match last {
            '.' | ',' | ';' | ':' | '!' | '?' | '*' => true,
            ')' | ']' | '}' => match balance.iter_mut().find(|(_, close, _)| *close == last) {
                // More closing than opening: this one closes the surrounding prose.
                Some((_, _, open_minus_close)) if *open_minus_close < 0 => {
                    *open_minus_close += 1;
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !cut {
            break;
        }
        url = &url[..url.len() - last.len_utf8()];
    }
    url
}

fn collapse_whitespace(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        if out.chars().count() >= MAX_LINK_TEXT_CHARS {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.chars().count() > MAX_LINK_TEXT_CHARS {
        out = out.chars().take(MAX_LINK_TEXT_CHARS).collect();
    }
    out
}

/// Whether link text shows something else than the target: any words ("Click here"), or a
/// URL other than the target or its wrapper.
fn differs(text: &str, url: &str, written: &str) -> bool {
    let shown = comparable(text);
    shown != comparable(url) && shown != comparable(written)
}

fn comparable(url: &str) -> String {
    let lower = url.trim().to_lowercase();
    let lower = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .unwrap_or(&lower);
    lower.trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safelinks_unwrap_nested() {
        let inner = "https://login.paypa1.com/signin?x=1&y=2";
        let once = format!(
            "https://nam02.safelinks.protection.outlook.com/?url={}&data=05%7C02&reserved=0",
            "https%3A%2F%2Flogin.paypa1.com%2Fsignin%3Fx%3D1%26y%3D2"
        );
        let (url, wrapped) = unwrap_safelinks(&once);
        assert_eq!(url, inner);
        assert_eq!(wrapped.as_deref(), Some(once.as_str()));

        let twice = format!(
            "https://eur01.safelinks.protection.outlook.com/?url={}&reserved=0",
            once.replace('%', "%25")
                .replace(':', "%3A")
                .replace('/', "%2F")
                .replace('?', "%3F")
                .replace('=', "%3D")
                .replace('&', "%26")
        );
        assert_eq!(unwrap_safelinks(&twice).0, inner);
        assert_eq!(unwrap_safelinks("https://example.com/?url=x").1, None);
    }

    #[test]
    fn hosts() {
        assert_eq!(
            host_of("https://User@Example.COM.:8443/p").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            host_of("http://[2001:db8::1]:80/").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(host_of("//cdn.test/x").as_deref(), Some("cdn.test"));
        assert_eq!(host_of("mailto:a@b.test"), None);
        assert_eq!(host_of("https://"), None);
    }

    #[test]
    fn bare_urls_in_prose() {
        let text = "Go to https://a.test/x). Or (http://b.test/y_(z)), HTTPS://C.test, https://";
        assert_eq!(
            bare_urls(text),
            vec!["https://a.test/x", "http://b.test/y_(z)", "HTTPS://C.test"]
        );
        assert!(bare_urls("ééé hxxp://x h").is_empty());
    }

    #[test]
    fn set_dedups_caps_and_keeps_text() {
        let mut set = UrlSet::new(2);
        set.add("https://a.test/", None);
        set.add(" https://a.test/ ", Some("Click  here"));
        set.add("https://a.test/", Some("https://a.test"));
        set.add("#top", None);
        set.add("cid:image001.png", None);
        set.add("mailto:x@y.test", None);
        set.add("https://c.test/", None);
        let (list, truncated) = set.finish();
        assert!(truncated);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].text.as_deref(), Some("Click here"));
        assert_eq!(list[1].url, "mailto:x@y.test");
        assert_eq!(list[1].domain, None);
    }
}
