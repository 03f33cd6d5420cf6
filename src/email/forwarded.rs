//! A report forwarded inline (no attached message): the user's mail client quoted the
//! original's header block in the body ("From: … Sent: … To: … Subject: …", Outlook's and
//! Gmail's forward formats). Its From and Subject are the reported message's, not the
//! forward's; this reads them back so the alert names the real sender.

use super::model::{Mailbox, ReportedEmail};

/// The quoted header block of a forwarded message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardedHeaders {
    pub from: Option<Mailbox>,
    pub subject: Option<String>,
}

/// Lines after a `From:` within which the block's `Subject:` must come.
const BLOCK_LINES: usize = 8;

/// The first quoted header block in `text`: a `From:` line followed, within a few lines, by a
/// `Subject:` line. `None` when the body quotes no such block.
pub fn forwarded_headers(text: &str) -> Option<ForwardedHeaders> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(from) = field(line, &["from:", "von:", "de:", "van:", "da:"]) else {
            continue;
        };
        let subject = lines.iter().skip(i + 1).take(BLOCK_LINES).find_map(|l| {
            field(
                l,
                &[
                    "subject:",
                    "betreff:",
                    "objet:",
                    "onderwerp:",
                    "asunto:",
                    "oggetto:",
                ],
            )
        });
        if let Some(subject) = subject {
            return Some(ForwardedHeaders {
                from: Some(mailbox(from)),
                subject: Some(subject.to_string()),
            });
        }
    }
    None
}

/// The value of `line` when it starts with one of `names` (ASCII case-insensitive).
fn field<'a>(line: &'a str, names: &[&str]) -> Option<&'a str> {
    let line = line.trim_start_matches(['*', '>', ' ']);
    names.iter().find_map(|n| {
        let head = line.get(..n.len())?;
        head.eq_ignore_ascii_case(n)
            .then(|| line[n.len()..].trim().trim_matches('*').trim())
    })
}

/// `Name <address>`, `"Name" <address>`, `address`, or `Name [mailto:address]` (Outlook).
fn mailbox(v: &str) -> Mailbox {
    let (open, close) = if let Some(i) = v.rfind('<') {
        (i, v[i..].find('>').map(|j| i + j))
    } else if let Some(i) = v.find("[mailto:") {
        (i, v[i..].find(']').map(|j| i + j))
    } else {
        let address = v.trim().to_string();
        return Mailbox {
            name: None,
            address: address.contains('@').then_some(address),
        };
    };
    let inner = &v[open + 1..close.unwrap_or(v.len())];
    let address = inner.trim_start_matches("mailto:").trim().to_string();
    let name = v[..open].trim().trim_matches('"').trim().to_string();
    Mailbox {
        name: (!name.is_empty()).then_some(name),
        address: address.contains('@').then_some(address),
    }
}

impl ReportedEmail {
    /// For a report forwarded inline: the quoted original's From and Subject replace the
    /// forward's own (kept in `forwarded_by`). Returns whether a quoted block was found.
    pub fn use_forwarded_original(&mut self) -> bool {
        let Some(quoted) = forwarded_headers(&self.body.text) else {
            return false;
        };
        if quoted
            .from
            .as_ref()
            .and_then(|m| m.address.as_ref())
            .is_none()
        {
            return false;
        }
        self.forwarded_by = self.from.take();
        self.from = quoted.from;
        if quoted.subject.is_some() {
            self.subject = quoted.subject;
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn outlook_and_gmail_forward_blocks_are_read() {
        let outlook = "Looks like phishing?\r\n\r\n________________________________\r\nFrom: Satya (CEO) <ceo.office.86@gmail-secure.com>\r\nSent: Monday, 24 November 2026 21:37\r\nTo: Megan Bowen <meganb@contoso.com>\r\nSubject: Quick favour\r\n\r\nDear Megan,";
        let f = forwarded_headers(outlook).unwrap();
        assert_eq!(
            f.from.unwrap().address.as_deref(),
            Some("ceo.office.86@gmail-secure.com")
        );
        assert_eq!(f.subject.as_deref(), Some("Quick favour"));
        let gmail = "---------- Forwarded message ---------\nFrom: **PayPal** <service@paypa1.com>\nDate: Tue, Jan 14, 2025\nSubject: Your account\nTo: <alice@contoso.com>\n";
        let f = forwarded_headers(gmail).unwrap();
        assert_eq!(
            f.from.unwrap().address.as_deref(),
            Some("service@paypa1.com")
        );
        let mailto = "From: Bad Actor [mailto:bad@evil.example]\nSubject: hi";
        assert_eq!(
            forwarded_headers(mailto)
                .unwrap()
                .from
                .unwrap()
                .address
                .as_deref(),
            Some("bad@evil.example")
        );
    }

    #[test]
    fn a_body_without_a_quoted_block_changes_nothing() {
        assert!(forwarded_headers("From: nobody\n\n\n\n\n\n\n\n\n\n\nSubject: far").is_none());
        assert!(forwarded_headers("").is_none());
        assert!(forwarded_headers("From:").is_none());
    }
}
