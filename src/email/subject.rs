//! The subject of the wrapper report in the reporting mailbox, which carries the user's
//! verdict: `1|`/`Junk:`, `2|`/`Not junk:`, `3|`/`Phishing:`, or the 2020 format
//! `SafetyAPIAction|NetworkMessageId|SenderIp|FromAddress|(Message Subject)`.
//!
//! A subject with none of these is `Unknown`; Microsoft counts such reports as phishing, and
//! leaves that decision to the caller.

use serde::Serialize;

/// What the reporting user said the message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Phishing,
    Junk,
    NotJunk,
    Unknown,
}

/// The fields of a 2020-format subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LegacySubject {
    pub network_message_id: String,
    pub sender_ip: String,
    pub from: String,
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WrapperSubject {
    pub verdict: Verdict,
    /// The prefix as written (`Phishing:`, `3|`), `None` when there was none.
    pub prefix: Option<String>,
    pub legacy: Option<LegacySubject>,
    /// The subject after the prefix (for the legacy format, the original subject).
    pub rest: String,
}

/// Word prefixes, longest first so `Not junk:` is not read as `junk:`.
const WORDS: &[(&str, Verdict)] = &[
    ("not junk:", Verdict::NotJunk),
    ("phishing:", Verdict::Phishing),
    ("junk:", Verdict::Junk),
];

/// Reads the verdict (and the legacy fields) from a wrapper report's subject.
pub fn parse_wrapper_subject(subject: &str) -> WrapperSubject {
    let trimmed = subject.trim_start();
    let numeric = match trimmed.as_bytes() {
        [b'1', b'|', ..] => Some(Verdict::Junk),
        [b'2', b'|', ..] => Some(Verdict::NotJunk),
        [b'3', b'|', ..] => Some(Verdict::Phishing),
        _ => None,
    };
    if let Some(verdict) = numeric {
        let after = &trimmed[2..];
        return WrapperSubject {
            verdict,
            prefix: Some(trimmed[..2].to_string()),
            legacy: legacy(after),
            rest: legacy(after).map_or_else(|| after.trim_start().to_string(), |l| l.subject),
        };
    }
    for (word, verdict) in WORDS {
        let matched = trimmed
            .get(..word.len())
            .filter(|p| p.eq_ignore_ascii_case(word));
        if let Some(prefix) = matched {
            return WrapperSubject {
                verdict: *verdict,
                prefix: Some(prefix.to_string()),
                legacy: None,
                rest: trimmed[word.len()..].trim_start().to_string(),
            };
        }
    }
    WrapperSubject {
        verdict: Verdict::Unknown,
        prefix: None,
        legacy: None,
        rest: subject.trim().to_string(),
    }
}

/// `NetworkMessageId|SenderIp|FromAddress|(Message Subject)`, recognized by its GUID.
fn legacy(after: &str) -> Option<LegacySubject> {
    let mut fields = after.splitn(4, '|');
    let id = fields.next()?.trim();
    let ip = fields.next()?.trim();
    let from = fields.next()?.trim();
    let subject = fields.next()?.trim();
    if !is_guid(id) {
        return None;
    }
    // The subject is wrapped in parentheses; only that outer pair is removed.
    let subject = subject
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(subject);
    Some(LegacySubject {
        network_message_id: id.to_string(),
        sender_ip: ip.to_string(),
        from: from.to_string(),
        subject: subject.to_string(),
    })
}

fn is_guid(value: &str) -> bool {
    let value = value.trim_start_matches('{').trim_end_matches('}');
    value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let cases = [
            (
                "Phishing: Your invoice",
                Verdict::Phishing,
                Some("Phishing:"),
                "Your invoice",
            ),
            ("  PHISHING:x", Verdict::Phishing, Some("PHISHING:"), "x"),
            ("Junk: promo", Verdict::Junk, Some("Junk:"), "promo"),
            (
                "not JUNK: newsletter",
                Verdict::NotJunk,
                Some("not JUNK:"),
                "newsletter",
            ),
            ("1|spam", Verdict::Junk, Some("1|"), "spam"),
            ("2| ok", Verdict::NotJunk, Some("2|"), "ok"),
            ("3|bad", Verdict::Phishing, Some("3|"), "bad"),
            ("FW: Phishing: x", Verdict::Unknown, None, "FW: Phishing: x"),
            ("4|x", Verdict::Unknown, None, "4|x"),
            ("", Verdict::Unknown, None, ""),
            ("é", Verdict::Unknown, None, "é"),
            ("Junk", Verdict::Unknown, None, "Junk"),
        ];
        for (subject, verdict, prefix, rest) in cases {
            let parsed = parse_wrapper_subject(subject);
            assert_eq!(parsed.verdict, verdict, "{subject}");
            assert_eq!(parsed.prefix.as_deref(), prefix, "{subject}");
            assert_eq!(parsed.rest, rest, "{subject}");
            assert_eq!(parsed.legacy, None);
        }
    }

    #[test]
    fn legacy_format() {
        let parsed = parse_wrapper_subject(
            "3|49871234-6dc6-43e8-abcd-08d797f20abe|167.220.232.101|test@contoso.com|(test phish submission)",
        );
        assert_eq!(parsed.verdict, Verdict::Phishing);
        assert_eq!(parsed.prefix.as_deref(), Some("3|"));
        assert_eq!(parsed.rest, "test phish submission");
        assert_eq!(
            parsed.legacy,
            Some(LegacySubject {
                network_message_id: "49871234-6dc6-43e8-abcd-08d797f20abe".into(),
                sender_ip: "167.220.232.101".into(),
                from: "test@contoso.com".into(),
                subject: "test phish submission".into(),
            })
        );
        let parsed = parse_wrapper_subject(
            "1|49871234-6dc6-43e8-abcd-08d797f20abe|203.0.113.9|a@b.test|(a | b (c))",
        );
        assert_eq!(parsed.verdict, Verdict::Junk);
        assert_eq!(parsed.rest, "a | b (c)");
        assert_eq!(
            serde_json::to_value(Verdict::NotJunk).unwrap(),
            serde_json::json!("not_junk")
        );
    }
}
