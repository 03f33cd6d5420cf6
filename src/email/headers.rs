//! Everything read from the header block: identifiers, addresses, the Received chain, and
//! the verdicts Exchange Online stamps (`Authentication-Results`,
//! `X-Forefront-Antispam-Report`, `X-Microsoft-Antispam`).
//!
//! The same code serves a MIME message and the transport headers of a .msg, which are parsed
//! into a header-only mail-parser message.

use std::net::IpAddr;

use mail_parser::{Address, DateTime, HeaderValue, Message};

use super::decode::{decode_words, unfold};
use super::model::{Antispam, Authentication, Mailbox, ReceivedHop, ReportedEmail};

/// The top-level header fields, names lowercased and values unfolded, in header order.
pub(super) struct RawHeaders {
    list: Vec<(String, String)>,
}

impl RawHeaders {
    pub(super) fn of(msg: &Message<'_>) -> Self {
        let raw = msg.raw_message.as_ref();
        let list = msg
            .parts
            .first()
            .map(|root| {
                root.headers
                    .iter()
                    // mail-parser takes any line up to a colon (or the end) as a field; only
                    // RFC 5322 field names are headers.
                    .filter(|h| {
                        let name = h.name.as_str();
                        !name.is_empty()
                            && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
                    })
                    .map(|h| {
                        let value = raw
                            .get(h.offset_start as usize..h.offset_end as usize)
                            .map(String::from_utf8_lossy)
                            .unwrap_or_default();
                        (h.name.as_str().to_ascii_lowercase(), unfold(&value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        RawHeaders { list }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The first (topmost, so newest) field of that name with a non-empty value.
    pub(super) fn get<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.all(name).find(|v| !v.is_empty())
    }

    pub(super) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.list
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Fills every header-derived field of `out`.
pub(super) fn fill(msg: &Message<'_>, out: &mut ReportedEmail) {
    let headers = RawHeaders::of(msg);
    if headers.is_empty() {
        out.errors.push("the message has no headers".to_string());
        return;
    }
    if ["from", "subject", "date", "message-id"]
        .iter()
        .all(|name| headers.all(name).next().is_none())
    {
        out.errors
            .push("the message has no From, Subject, Date or Message-ID header".to_string());
    }
    out.message_id = headers.get("message-id").map(message_id);
    out.network_message_id = headers
        .get("x-ms-exchange-organization-network-message-id")
        // Exchange writes the same GUID as the filtering correlation id.
        .or_else(|| headers.get("x-ms-office365-filtering-correlation-id"))
        .map(str::to_string);
    out.crosstenant_id = headers
        .get("x-ms-exchange-crosstenant-id")
        .map(str::to_string);
    out.in_reply_to = headers.get("in-reply-to").map(str::to_string);
    out.return_path = headers
        .get("return-path")
        .map(|v| v.trim_start_matches('<').trim_end_matches('>').trim())
        .filter(|v| !v.is_empty())
        .map(str::to_string);

    let root = msg
        .parts
        .first()
        .map(|p| p.headers.as_slice())
        .unwrap_or(&[]);
    let value = |name: &str| {
        root.iter()
            .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
            .map(|h| &h.value)
    };
    out.subject = headers
        .get("subject")
        .or_else(|| headers.all("subject").next())
        .map(|raw| decode_words(raw, &mut out.errors).trim().to_string());
    match value("date") {
        Some(HeaderValue::DateTime(dt)) if dt.is_valid() => out.date = Some(utc(dt)),
        Some(_) => out
            .errors
            .push("the Date header cannot be parsed".to_string()),
        None => {}
    }
    let addresses = |name: &str| match value(name) {
        Some(HeaderValue::Address(address)) => mailboxes(address),
        _ => Vec::new(),
    };
    out.from = addresses("from").into_iter().next();
    out.sender = addresses("sender").into_iter().next();
    out.reply_to = addresses("reply-to");
    out.to = addresses("to");
    out.cc = addresses("cc");
    if out.from.is_none() {
        if let Some(raw) = headers.get("from") {
            // Unparsable but present: keep what was written rather than nothing.
            out.from = Some(Mailbox {
                name: None,
                address: Some(raw.to_string()),
            });
            out.errors
                .push("the From header is not a valid address".to_string());
        }
    }

    out.authentication = authentication(&headers);
    out.antispam = antispam(&headers);
    out.received = headers.all("received").map(received_hop).collect();
    out.originating_ip = originating_ip(&headers, &out.received);
}

/// Message-ID as written: the `<…>` token when there is one, else the trimmed value.
fn message_id(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(start), Some(end)) if start < end => value[start..=end].to_string(),
        _ => value.trim().to_string(),
    }
}

pub(super) fn mailboxes(address: &Address<'_>) -> Vec<Mailbox> {
    address
        .iter()
        .map(|a| Mailbox {
            name: a
                .name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            address: a
                .address
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        })
        .filter(|m| m.name.is_some() || m.address.is_some())
        .collect()
}

/// RFC 3339 in UTC.
pub(super) fn utc(dt: &DateTime) -> String {
    DateTime::from_timestamp(dt.to_timestamp()).to_rfc3339()
}

/// Splits an Authentication-Results value into `(method, result, properties)` statements.
/// `method=result` and its `ptype.property=value` pairs.
type Statement = (String, String, Vec<(String, String)>);

fn auth_statements(value: &str) -> Vec<Statement> {
    let mut statements = Vec::new();
    for segment in split_outside_comments(value, ';') {
        let mut words = strip_comments(segment)
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
            .into_iter();
        let Some(first) = words.next() else { continue };
        let Some((method, result)) = first.split_once('=') else {
            // The authserv-id (`spf.protection.outlook.com`) or an ARC instance number.
            continue;
        };
        let props = words
            .filter_map(|w| {
                let (k, v) = w.split_once('=')?;
                Some((k.to_ascii_lowercase(), v.trim_matches('"').to_string()))
            })
            .collect();
        statements.push((
            method.to_ascii_lowercase(),
            result.trim_matches('"').to_ascii_lowercase(),
            props,
        ));
    }
    statements
}

fn split_outside_comments(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            c if c == separator && depth == 0 && !quoted => {
                parts.push(&value[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

fn strip_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut depth = 0usize;
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => out.push(' '),
        }
    }
    out
}

fn authentication(headers: &RawHeaders) -> Authentication {
    let mut auth = Authentication::default();
    // Topmost first: the results our own tenant's front door wrote are the ones to trust;
    // ARC results (what an earlier hop saw) only fill gaps.
    let sources = headers
        .all("authentication-results")
        .chain(headers.all("arc-authentication-results"));
    for value in sources {
        for (method, result, props) in auth_statements(value) {
            let prop = |name: &str| {
                props
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.to_ascii_lowercase())
                    .filter(|v| !v.is_empty())
            };
            match method.as_str() {
                "spf" if auth.spf.is_none() => {
                    auth.spf = Some(result);
                    auth.spf_domain = prop("smtp.mailfrom")
                        .map(|d| d.rsplit('@').next().unwrap_or_default().to_string());
                }
                "dkim" if auth.dkim.is_none() => {
                    auth.dkim = Some(result);
                    auth.dkim_domain = prop("header.d").or_else(|| {
                        prop("header.i").map(|i| i.rsplit('@').next().unwrap_or_default().into())
                    });
                }
                "dmarc" if auth.dmarc.is_none() => {
                    auth.dmarc = Some(result);
                    auth.dmarc_header_from = prop("header.from");
                }
                "compauth" if auth.compauth.is_none() => {
                    auth.compauth = Some(result);
                    auth.compauth_reason = prop("reason");
                }
                _ => {}
            }
        }
    }
    if auth.spf.is_none() {
        // `Received-SPF: Fail (protection.outlook.com: domain of x does not designate …)
        // receiver=…; client-ip=…; helo=…;`
        if let Some(value) = headers.get("received-spf") {
            auth.spf = value
                .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
                .next()
                .map(str::to_ascii_lowercase)
                .filter(|v| !v.is_empty());
            if auth.spf_domain.is_none() {
                auth.spf_domain = split_outside_comments(value, ';')
                    .into_iter()
                    .chain(strip_comments(value).split_whitespace())
                    .filter_map(|kv| kv.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("envelope-from"))
                    .map(|(_, v)| {
                        v.trim()
                            .trim_matches('"')
                            .rsplit('@')
                            .next()
                            .unwrap_or_default()
                            .to_ascii_lowercase()
                    })
                    .filter(|v| !v.is_empty());
            }
        }
    }
    auth
}

/// `KEY:VALUE;KEY:VALUE;` as in the Forefront and Microsoft antispam headers.
fn key_values(value: &str) -> Vec<(String, String)> {
    value
        .split(';')
        .filter_map(|pair| {
            let (k, v) = pair.split_once(':')?;
            Some((k.trim().to_ascii_uppercase(), v.trim().to_string()))
        })
        .collect()
}

fn antispam(headers: &RawHeaders) -> Antispam {
    let report = headers
        .get("x-forefront-antispam-report")
        .map(key_values)
        .unwrap_or_default();
    let microsoft = headers
        .get("x-microsoft-antispam")
        .map(key_values)
        .unwrap_or_default();
    let text = |list: &[(String, String)], key: &str| {
        list.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let number = |value: Option<String>| value.and_then(|v| v.trim().parse::<i64>().ok());
    let header_number = |name: &str| number(headers.get(name).map(str::to_string));
    Antispam {
        scl: number(text(&report, "SCL"))
            .or_else(|| header_number("x-ms-exchange-organization-scl")),
        bcl: number(text(&microsoft, "BCL")),
        sfv: text(&report, "SFV"),
        cat: text(&report, "CAT"),
        pcl: number(text(&microsoft, "PCL"))
            .or_else(|| header_number("x-ms-exchange-organization-pcl")),
        country: text(&report, "CTRY"),
        lang: text(&report, "LANG"),
        ipv: text(&report, "IPV"),
        dir: text(&report, "DIR"),
        sfty: text(&report, "SFTY"),
    }
}

/// One Received header: `from X (… [ip] …) by Y …; date`.
fn received_hop(value: &str) -> ReceivedHop {
    let (route, date) = match value.rfind(';') {
        Some(at) => (&value[..at], Some(&value[at + 1..])),
        None => (value, None),
    };
    let lower = route.to_ascii_lowercase();
    let from_at = word_at(&lower, "from");
    let by_at = word_at(&lower, "by");
    let token_after = |at: usize, word: &str| {
        route
            .get(at + word.len()..)?
            .split(|c: char| c.is_whitespace() || c == ';')
            .find(|t| !t.is_empty())
            .map(|t| t.trim_end_matches(['(', ')']).to_string())
            .filter(|t| !t.is_empty() && !t.starts_with('('))
    };
    let from = from_at.and_then(|at| token_after(at, "from"));
    let by = by_at.and_then(|at| token_after(at, "by"));
    let ip = from_at.and_then(|start| {
        let end = by_at.filter(|b| *b > start).unwrap_or(route.len());
        first_ip(route.get(start + 4..end)?)
    });
    let at = date
        .and_then(|d| DateTime::parse_rfc822(d.trim()))
        .filter(DateTime::is_valid)
        .map(|dt| utc(&dt));
    ReceivedHop { from, by, ip, at }
}

/// Byte offset of `word` as a whole word (start of text or after whitespace, then whitespace).
fn word_at(lower: &str, word: &str) -> Option<usize> {
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(offset) = lower.get(from..)?.find(word) {
        let at = from + offset;
        let before_ok = at == 0 || bytes.get(at - 1).is_some_and(|c| c.is_ascii_whitespace());
        let after_ok = bytes
            .get(at + word.len())
            .is_none_or(|c| c.is_ascii_whitespace());
        if before_ok && after_ok {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// The connecting IP of a `from` clause: the one the receiving server wrote in its comment
/// (`from mail.x (203.0.113.9)`, `from [10.0.0.5] (unknown [198.51.100.7])`), else the
/// HELO name itself when it is an address literal (`from [IPv6:2001:db8::5]`).
fn first_ip(clause: &str) -> Option<String> {
    let clause = clause.trim_start();
    let split = clause
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(clause.len());
    let (helo, comment) = clause.split_at(split);
    let ips = |text: &str| {
        text.split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | ',' | '='))
            .find_map(parse_ip)
    };
    ips(comment).or_else(|| ips(helo)).map(|ip| ip.to_string())
}

fn parse_ip(token: &str) -> Option<IpAddr> {
    let token = token.trim();
    let token = token
        .get(..5)
        .filter(|p| p.eq_ignore_ascii_case("ipv6:"))
        .map_or(token, |_| &token[5..]);
    token.parse().ok()
}

/// Whether an address is outside private, loopback and link-local space.
fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

fn originating_ip(headers: &RawHeaders, received: &[ReceivedHop]) -> Option<String> {
    let from_header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| parse_ip(v.trim().trim_start_matches('[').trim_end_matches(']')))
    };
    let cip = || {
        let report = key_values(headers.get("x-forefront-antispam-report")?);
        let (_, value) = report.into_iter().find(|(k, _)| k == "CIP")?;
        parse_ip(&value)
    };
    from_header("x-originating-ip")
        .or_else(|| from_header("x-ms-exchange-organization-originalclientipaddress"))
        .or_else(cip)
        .or_else(|| {
            received
                .iter()
                .rev()
                .filter_map(|hop| hop.ip.as_deref()?.parse::<IpAddr>().ok())
                .find(is_public)
        })
        .map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_authentication_results() {
        let value = "spf=fail (sender IP is 203.0.113.9) smtp.mailfrom=paypa1.com; dkim=none \
                     (message not signed) header.d=none;dmarc=fail action=quarantine \
                     header.from=paypa1.com;compauth=fail reason=000";
        let headers = RawHeaders {
            list: vec![("authentication-results".into(), value.into())],
        };
        let auth = authentication(&headers);
        assert_eq!(auth.spf.as_deref(), Some("fail"));
        assert_eq!(auth.spf_domain.as_deref(), Some("paypa1.com"));
        assert_eq!(auth.dkim.as_deref(), Some("none"));
        assert_eq!(auth.dkim_domain.as_deref(), Some("none"));
        assert_eq!(auth.dmarc.as_deref(), Some("fail"));
        assert_eq!(auth.dmarc_header_from.as_deref(), Some("paypa1.com"));
        assert_eq!(auth.compauth.as_deref(), Some("fail"));
        assert_eq!(auth.compauth_reason.as_deref(), Some("000"));
    }

    #[test]
    fn received_spf_fallback() {
        let headers = RawHeaders {
            list: vec![(
                "received-spf".into(),
                "SoftFail (protection.outlook.com: domain of transitioning x.test discourages \
                 use of 203.0.113.9 as permitted sender) receiver=protection.outlook.com; \
                 client-ip=203.0.113.9; helo=mail.x.test; envelope-from=\"b@x.test\";"
                    .into(),
            )],
        };
        let auth = authentication(&headers);
        assert_eq!(auth.spf.as_deref(), Some("softfail"));
        assert_eq!(auth.spf_domain.as_deref(), Some("x.test"));
    }

    #[test]
    fn arc_results_fill_gaps_only() {
        let headers = RawHeaders {
            list: vec![
                (
                    "authentication-results".into(),
                    "mx.test; dkim=pass header.d=a.test".into(),
                ),
                (
                    "arc-authentication-results".into(),
                    "i=1; mx.microsoft.com 1; spf=pass smtp.mailfrom=b.test; dkim=fail \
                     header.d=c.test"
                        .into(),
                ),
            ],
        };
        let auth = authentication(&headers);
        assert_eq!(auth.spf.as_deref(), Some("pass"));
        assert_eq!(auth.spf_domain.as_deref(), Some("b.test"));
        assert_eq!(auth.dkim.as_deref(), Some("pass"));
        assert_eq!(auth.dkim_domain.as_deref(), Some("a.test"));
    }

    #[test]
    fn originating_ip_precedence() {
        let hops = vec![
            received_hop("from mx.test (203.0.113.1) by x; Tue, 14 Jan 2025 09:12:01 +0000"),
            received_hop("from client (10.1.2.3) by mx.test; Tue, 14 Jan 2025 09:12:00 +0000"),
        ];
        let headers = |list: &[(&str, &str)]| RawHeaders {
            list: list
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let ip = |list: &[(&str, &str)]| originating_ip(&headers(list), &hops);
        assert_eq!(ip(&[]).as_deref(), Some("203.0.113.1"));
        assert_eq!(
            ip(&[("x-forefront-antispam-report", "CIP:198.51.100.2;CTRY:FR;")]).as_deref(),
            Some("198.51.100.2")
        );
        assert_eq!(
            ip(&[
                ("x-forefront-antispam-report", "CIP:198.51.100.2;"),
                (
                    "x-ms-exchange-organization-originalclientipaddress",
                    "2001:db8::7"
                ),
            ])
            .as_deref(),
            Some("2001:db8::7")
        );
        assert_eq!(
            ip(&[
                (
                    "x-ms-exchange-organization-originalclientipaddress",
                    "2001:db8::7"
                ),
                ("x-originating-ip", "[198.51.100.9]"),
            ])
            .as_deref(),
            Some("198.51.100.9")
        );
        assert_eq!(
            ip(&[("x-originating-ip", "garbage")]).as_deref(),
            Some("203.0.113.1")
        );
    }

    #[test]
    fn received_hops() {
        let hop = received_hop(
            "from mail.paypa1.com (203.0.113.9) by AM2PEPF0001C70F.mail.protection.outlook.com \
             (10.167.16.196) with Microsoft SMTP Server id 15.20.8356.11 via Frontend \
             Transport; Tue, 14 Jan 2025 10:12:01 +0100",
        );
        assert_eq!(hop.from.as_deref(), Some("mail.paypa1.com"));
        assert_eq!(
            hop.by.as_deref(),
            Some("AM2PEPF0001C70F.mail.protection.outlook.com")
        );
        assert_eq!(hop.ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(hop.at.as_deref(), Some("2025-01-14T09:12:01Z"));

        let hop = received_hop("from [IPv6:2001:db8::5] (helo=x) by mx.test; garbage");
        assert_eq!(hop.ip.as_deref(), Some("2001:db8::5"));
        assert_eq!(hop.at, None);
        let hop = received_hop("by mx.test with LMTP; Tue, 14 Jan 2025 09:12:01 +0000");
        assert_eq!((hop.from, hop.ip), (None, None));
        assert_eq!(hop.by.as_deref(), Some("mx.test"));
    }
}
