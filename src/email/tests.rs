//! End-to-end tests of the public functions on realistic fixtures, and a robustness run
//! feeding thousands of random and mutated inputs to every public function.

use super::fixtures::*;
use super::*;

fn limits() -> Limits {
    Limits::default()
}

#[test]
fn exchange_online_phish_with_both_bodies() {
    let email = parse_mime(phish_alternative().as_bytes(), &limits());
    assert_eq!(email.errors, Vec::<String>::new());
    assert_eq!(
        email.message_id.as_deref(),
        Some("<20250114091158.4YXk2x0Hkqz9sWq@mail.paypa1.com>")
    );
    assert_eq!(
        email.network_message_id(),
        Some("49871234-6dc6-43e8-abcd-08d797f20abe")
    );
    assert_eq!(
        email.crosstenant_id.as_deref(),
        Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
    );
    assert_eq!(
        email.subject.as_deref(),
        Some("Your account has been limited")
    );
    assert_eq!(email.date.as_deref(), Some("2025-01-14T09:11:58Z"));
    assert_eq!(
        email.from,
        Some(Mailbox {
            name: Some("PayPal Service".into()),
            address: Some("service@paypa1.com".into())
        })
    );
    assert_eq!(email.sender, None);
    assert_eq!(
        email.reply_to[0].address.as_deref(),
        Some("support@secure-paypa1-help.net")
    );
    assert_eq!(
        email.return_path.as_deref(),
        Some("bounce@mailer.paypa1-bounces.com")
    );
    assert_eq!(email.to.len(), 1);
    assert_eq!(email.cc.len(), 2);
    assert_eq!(email.cc[1].address.as_deref(), Some("carol@contoso.com"));
    assert_eq!(email.in_reply_to.as_deref(), Some("<prev-1234@paypa1.com>"));

    let auth = &email.authentication;
    assert_eq!(
        (
            auth.spf.as_deref(),
            auth.dkim.as_deref(),
            auth.dmarc.as_deref()
        ),
        (Some("fail"), Some("none"), Some("fail"))
    );
    assert_eq!(auth.compauth.as_deref(), Some("fail"));
    assert_eq!(auth.compauth_reason.as_deref(), Some("000"));
    assert_eq!(auth.dmarc_header_from.as_deref(), Some("paypa1.com"));

    let spam = &email.antispam;
    assert_eq!((spam.scl, spam.bcl, spam.pcl), (Some(5), Some(0), Some(2)));
    assert_eq!(spam.sfv.as_deref(), Some("SPM"));
    assert_eq!(spam.cat.as_deref(), Some("PHSH"));
    assert_eq!(spam.country.as_deref(), Some("RU"));
    assert_eq!(spam.lang.as_deref(), Some("en"));
    assert_eq!(spam.ipv.as_deref(), Some("NLI"));
    assert_eq!(spam.dir.as_deref(), Some("INB"));
    assert_eq!(spam.sfty, None);

    assert_eq!(email.received.len(), 4);
    assert_eq!(
        email.received[0].by.as_deref(),
        Some("AM0PR02MB5634.eurprd02.prod.outlook.com")
    );
    assert_eq!(email.received[0].ip.as_deref(), Some("2603:10a6:10:1f3::9"));
    assert_eq!(email.received[2].from.as_deref(), Some("mail.paypa1.com"));
    assert_eq!(email.received[2].ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(
        email.received[2].at.as_deref(),
        Some("2025-01-14T09:12:01Z")
    );
    assert_eq!(email.received[3].from.as_deref(), Some("[192.168.10.23]"));
    assert_eq!(email.received[3].ip.as_deref(), Some("198.51.100.77"));
    assert_eq!(
        email.received[3].at.as_deref(),
        Some("2025-01-14T09:11:58Z")
    );
    assert_eq!(email.originating_ip.as_deref(), Some("203.0.113.9"));

    assert_eq!(email.body.source, BodySource::Text);
    assert!(email.body.text.starts_with("Dear customer,\n\nWe noticed"));
    assert!(!email.body.truncated);
    assert_eq!(email.body.length, email.body.text.len());

    // The text part's bare URL first; the HTML's Safe Links target, unwrapped, with the
    // address it pretends to be as its text.
    assert_eq!(email.urls.len(), 2);
    assert_eq!(email.urls[0].url, "https://www.paypal.com/signin");
    assert_eq!(email.urls[0].text, None);
    let phish = &email.urls[1];
    assert_eq!(
        phish.url,
        "https://login.paypa1.com/signin?session=8f2a&lang=en"
    );
    assert_eq!(phish.domain.as_deref(), Some("login.paypa1.com"));
    assert_eq!(phish.text.as_deref(), Some("https://www.paypal.com/signin"));
    assert!(phish.wrapped.as_deref().is_some_and(|w| w
        .starts_with("https://nam02.safelinks.protection.outlook.com/?url=")
        && w.contains("&data=05%7C02")));
    assert!(!email.urls_truncated);

    assert_eq!(email.attachments.len(), 1);
    let pdf = &email.attachments[0];
    assert_eq!(pdf.name.as_deref(), Some("Statement_0114.pdf"));
    assert_eq!(pdf.content_type.as_deref(), Some("application/pdf"));
    assert_eq!(pdf.disposition.as_deref(), Some("attachment"));
    assert_eq!(pdf.size, 12);
    assert_eq!(pdf.sha256, Some(decode::sha256_hex(b"%PDF-1.4\n%\xc7\xec")));
    assert_eq!(pdf.nested, None);
}

#[test]
fn indicators_in_first_seen_order() {
    let email = parse_mime(phish_alternative().as_bytes(), &limits());
    let pdf_hash = decode::sha256_hex(b"%PDF-1.4\n%\xc7\xec");
    let expected: Vec<(&str, String)> = vec![
        ("email_sender", "service@paypa1.com".into()),
        ("domain", "paypa1.com".into()),
        ("domain", "secure-paypa1-help.net".into()),
        ("domain", "mailer.paypa1-bounces.com".into()),
        (
            "internet_message_id",
            "<20250114091158.4YXk2x0Hkqz9sWq@mail.paypa1.com>".into(),
        ),
        ("ip", "203.0.113.9".into()),
        ("url", "https://www.paypal.com/signin".into()),
        ("domain", "www.paypal.com".into()),
        (
            "url",
            "https://login.paypa1.com/signin?session=8f2a&lang=en".into(),
        ),
        ("domain", "login.paypa1.com".into()),
        ("sha256", pdf_hash),
        ("file_name", "Statement_0114.pdf".into()),
    ];
    assert_eq!(email.indicators(), expected);
    assert_eq!(
        email.internet_message_id(),
        Some("<20250114091158.4YXk2x0Hkqz9sWq@mail.paypa1.com>")
    );
}

#[test]
fn html_only_body_is_reduced() {
    let email = parse_mime(html_only().as_bytes(), &limits());
    assert_eq!(email.errors, Vec::<String>::new());
    assert_eq!(email.body.source, BodySource::Html);
    assert_eq!(
        email.body.text,
        "Chère cliente,\nVotre colis est bloqué.\nCliquez ici."
    );
    assert_eq!(email.urls.len(), 1);
    assert_eq!(email.urls[0].url, "http://colis-suivi.example.net/t?id=42");
    assert_eq!(email.urls[0].text.as_deref(), Some("ici"));
    assert_eq!(email.urls[0].wrapped, None);
}

#[test]
fn nested_message_is_summarized() {
    let email = parse_mime(with_nested().as_bytes(), &limits());
    assert_eq!(email.errors, Vec::<String>::new());
    assert_eq!(email.body.text, "See the attached message.");
    assert_eq!(email.attachments.len(), 1);
    let eml = &email.attachments[0];
    assert_eq!(eml.content_type.as_deref(), Some("message/rfc822"));
    assert_eq!(eml.name.as_deref(), Some("invoice.eml"));
    let nested = eml.nested.as_deref().unwrap();
    assert_eq!(nested.subject.as_deref(), Some("Facture n° 4411"));
    assert_eq!(
        nested.message_id.as_deref(),
        Some("<inner@invoices-online.example>")
    );
    assert_eq!(
        nested.network_message_id.as_deref(),
        Some("11111111-2222-3333-4444-555555555555")
    );
    assert_eq!(nested.date.as_deref(), Some("2025-01-14T22:45:00Z"));
    assert_eq!(
        nested.from.as_ref().and_then(|f| f.address.as_deref()),
        Some("billing@invoices-online.example")
    );
    assert_eq!(nested.attachments.len(), 1);
    assert_eq!(nested.attachments[0].name.as_deref(), Some("invoice.zip"));
    assert_eq!(
        nested.attachments[0].sha256,
        Some(decode::sha256_hex(b"PK\x03\x04\x0a\x00\x00\x00\x00\x00"))
    );
    // The attachment's bytes are the embedded message exactly as it sits in the part.
    let whole = with_nested();
    let start = whole.find("From: Billing").unwrap();
    let end = whole.find("\r\n--outer--").unwrap();
    assert_eq!(
        eml.sha256,
        Some(decode::sha256_hex(&whole.as_bytes()[start..end]))
    );
    assert_eq!(eml.size as usize, end - start);

    let indicators = email.indicators();
    assert!(indicators.contains(&("file_name", "invoice.zip".into())));
    assert!(indicators.contains(&("file_name", "invoice.eml".into())));
}

#[test]
fn deep_nesting_stops_at_max_depth() {
    let email = parse_mime(deeply_nested(10).as_bytes(), &limits());
    let mut level = 0;
    let mut attachments = &email.attachments;
    while let Some(nested) = attachments.first().and_then(|a| a.nested.as_deref()) {
        level += 1;
        assert_eq!(
            nested.subject.as_deref(),
            Some(format!("level {level}").as_str())
        );
        attachments = &nested.attachments;
    }
    assert_eq!(level, 5);
    assert_eq!(attachments.len(), 1);
    assert!(attachments[0].sha256.is_some());
    assert_eq!(
        email.errors,
        vec![format!(
            "{}an attached message at nesting level 6 was not parsed: the limit is 5",
            "attached message: ".repeat(5)
        )]
    );
}

#[test]
fn rfc2047_subjects() {
    let subject = |header: &str| {
        let raw = format!("From: a@example.org\r\nSubject: {header}\r\n\r\nbody");
        parse_mime(raw.as_bytes(), &limits()).subject.unwrap()
    };
    assert_eq!(subject("=?UTF-8?B?w4koaMOpYW5jZSk=?="), "É(héance)");
    assert_eq!(
        subject("=?iso-8859-1?q?Facture_impay=E9e?="),
        "Facture impayée"
    );
    // Adjacent encoded words join without the space between them.
    assert_eq!(
        subject("=?UTF-8?Q?Votre_compte_?=\r\n =?UTF-8?Q?est_suspendu?="),
        "Votre compte est suspendu"
    );
    // Mixed charsets in one subject.
    let mixed = format!(
        "=?iso-8859-1?Q?Facture_impay=E9e?= =?windows-1252?Q?_=80_?= =?UTF-8?B?{}?= =?ISO-2022-JP?B?{}?=",
        b64("未払い".as_bytes()),
        b64(b"\x1b$B%O%m!<\x1b(B")
    );
    assert_eq!(subject(&mixed), "Facture impayée € 未払いハロー");
    assert_eq!(subject("=?utf-8?B?SGVsbG8=?= world"), "Hello world");
    // A character split across two words.
    assert_eq!(subject("=?UTF-8?B?ww==?=\r\n =?UTF-8?B?iXTDqQ==?="), "Été");
    assert_eq!(subject("=?x-unknown?Q?abc?="), "abc");
}

#[test]
fn charsets_and_transfer_encodings() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            single_part(
                "text/plain; charset=windows-1252",
                "quoted-printable",
                "Caf=E9 =80 5 =96 =93ok=94",
            )
            .into_bytes(),
            "Café € 5 – “ok”",
        ),
        (
            single_part(
                "text/plain; charset=iso-8859-2",
                "base64",
                &b64(b"Za\xbf\xf3\xb3\xe6 g\xea\xb6l\xb1 ja\xbc\xf1"),
            )
            .into_bytes(),
            "Zażółć gęślą jaźń",
        ),
        (
            single_part(
                "text/plain; charset=\"ISO-8859-15\"",
                "base64",
                &b64(b"Prix: 10 \xa4, \xa6, \xbd"),
            )
            .into_bytes(),
            "Prix: 10 €, Š, œ",
        ),
        (
            single_part_bytes("text/plain; charset=iso-8859-1", "8bit", b"na\xefve"),
            "naïve",
        ),
        (
            single_part(
                "text/plain; charset=shift_jis",
                "base64",
                &b64(b"\x83n\x83\x8D\x81[\x81E\x83\x8F\x81[\x83\x8B\x83h"),
            )
            .into_bytes(),
            "ハロー・ワールド",
        ),
        (
            single_part(
                "text/plain; charset=gb2312",
                "base64",
                &b64(b"\xc4\xe3\xba\xc3\xa3\xac\xca\xc0\xbd\xe7"),
            )
            .into_bytes(),
            "你好，世界",
        ),
        (
            single_part(
                "text/plain; charset=utf-16",
                "base64",
                &b64(b"\xff\xfe\xe1\x00\xe9\x00\xed\x00\xf3\x00\xfa\x00"),
            )
            .into_bytes(),
            "áéíóú",
        ),
    ];
    for (message, expected) in cases {
        let email = parse_mime(&message, &limits());
        assert_eq!(email.body.text, expected);
        assert_eq!(email.errors, Vec::<String>::new(), "{expected}");
    }
}

#[test]
fn unknown_charset_is_lossy_with_a_note() {
    let message = single_part_bytes("text/plain; charset=x-unknown", "8bit", b"caf\xe9 ok");
    let email = parse_mime(&message, &limits());
    assert_eq!(email.body.text, "caf\u{fffd} ok");
    assert_eq!(
        email.errors,
        vec!["charset x-unknown is not known: text decoded as UTF-8 with replacement characters"]
    );
}

#[test]
fn missing_closing_boundary_keeps_the_parts() {
    let email = parse_mime(missing_closing_boundary().as_bytes(), &limits());
    assert_eq!(
        email.errors,
        vec![
            "the MIME structure is incomplete: the closing boundary of a multipart part is missing"
        ]
    );
    assert_eq!(email.body.source, BodySource::Text);
    assert_eq!(email.body.text, "Plain part https://plain.example/a");
    let urls: Vec<&str> = email.urls.iter().map(|u| u.url.as_str()).collect();
    assert_eq!(
        urls,
        vec!["https://plain.example/a", "https://html.example/b"]
    );
    assert_eq!(email.urls[1].text.as_deref(), Some("HTML link"));
    assert!(email.attachments.is_empty());
}

#[test]
fn empty_body_and_empty_input() {
    let email = parse_mime(
        b"From: a@example.org\r\nSubject: nothing\r\nMessage-ID: <e@x>\r\n\r\n",
        &limits(),
    );
    assert_eq!(email.body.source, BodySource::None);
    assert_eq!(email.body.text, "");
    assert_eq!(email.body.length, 0);
    assert_eq!(email.subject.as_deref(), Some("nothing"));
    assert_eq!(email.errors, Vec::<String>::new());

    let email = parse_any(b"", &limits());
    assert_eq!(email.errors, vec!["the message is empty"]);
    let email = parse_mime(b"\x00\x01\x02", &limits());
    assert_eq!(email.errors, vec!["the message has no headers"]);
    let email = parse_mime(b"X-Mailer: x\r\n\r\nhello", &limits());
    assert_eq!(
        email.errors,
        vec!["the message has no From, Subject, Date or Message-ID header"]
    );
    assert_eq!(email.body.text, "hello");
}

#[test]
fn two_thousand_urls_are_linear_and_capped() {
    let message = many_urls(2_000);
    let all = Limits {
        max_urls: 5_000,
        ..Limits::default()
    };
    let start = std::time::Instant::now();
    let email = parse_mime(message.as_bytes(), &all);
    assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
    assert_eq!(email.urls.len(), 2_000);
    assert!(!email.urls_truncated);
    assert_eq!(
        email.urls[1_999].url,
        "https://host59.example/path/1999?q=1999"
    );
    assert_eq!(email.urls[1_999].text.as_deref(), Some("link 1999"));

    let email = parse_mime(message.as_bytes(), &limits());
    assert_eq!(email.urls.len(), 500);
    assert!(email.urls_truncated);
    assert_eq!(
        email.errors,
        vec!["more than 500 URLs: only the first 500 are listed"]
    );

    // Ten times as many stays well within budget.
    let start = std::time::Instant::now();
    let email = parse_mime(many_urls(20_000).as_bytes(), &all);
    assert_eq!(email.urls.len(), 5_000);
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
}

#[test]
fn long_body_is_truncated_on_a_char_boundary() {
    let body = "é".repeat(40_000);
    let message = single_part("text/plain; charset=utf-8", "8bit", &body);
    let small = Limits {
        body_max: 10_001,
        ..Limits::default()
    };
    let email = parse_mime(message.as_bytes(), &small);
    assert!(email.body.truncated);
    assert_eq!(email.body.text.len(), 10_000);
    assert_eq!(email.body.length, 80_000);
    assert!(email.body.text.chars().all(|c| c == 'é'));

    let email = parse_mime(message.as_bytes(), &limits());
    assert!(email.body.truncated);
    assert_eq!(email.body.text.len(), 65_536);
}

#[test]
fn msg_with_headers_html_and_attachment() {
    let bytes = phish_msg();
    assert!(is_msg(&bytes));
    let email = parse_any(&bytes, &limits());
    assert_eq!(email.errors, Vec::<String>::new());
    // Everything header-derived matches the MIME reading of the same headers.
    let mime = parse_mime(phish_alternative().as_bytes(), &limits());
    assert_eq!(email.message_id, mime.message_id);
    assert_eq!(email.network_message_id, mime.network_message_id);
    assert_eq!(email.authentication, mime.authentication);
    assert_eq!(email.antispam, mime.antispam);
    assert_eq!(email.received, mime.received);
    assert_eq!(email.from, mime.from);
    assert_eq!(email.originating_ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(
        email.subject.as_deref(),
        Some("Your account has been limited")
    );
    assert_eq!(
        email.sender.as_ref().and_then(|s| s.address.as_deref()),
        Some("service@paypa1.com")
    );

    assert_eq!(email.body.source, BodySource::Html);
    assert_eq!(email.body.text, "Chère cliente, suivre mon colis");
    assert_eq!(email.urls.len(), 1);
    assert_eq!(email.urls[0].url, "https://parcel-track.example/x");
    assert_eq!(email.urls[0].text.as_deref(), Some("suivre mon colis"));
    assert!(email.urls[0].wrapped.is_some());

    assert_eq!(email.attachments.len(), 1);
    let pdf = &email.attachments[0];
    assert_eq!(pdf.name.as_deref(), Some("Statement_0114.pdf"));
    assert_eq!(pdf.content_type.as_deref(), Some("application/pdf"));
    assert_eq!(pdf.size, 12);
    assert_eq!(pdf.sha256, Some(decode::sha256_hex(b"%PDF-1.4\n%\xc7\xec")));
}

#[test]
fn msg_with_embedded_msg() {
    let email = parse_msg(&msg_with_embedded(), &limits());
    assert_eq!(
        email.errors,
        vec!["the .msg has no transport headers: only its properties were read"]
    );
    assert_eq!(email.subject.as_deref(), Some("FW: Invoice 4411 overdue €"));
    assert_eq!(email.date.as_deref(), Some("2025-01-14T09:12:03Z"));
    assert_eq!(
        email.from,
        Some(Mailbox {
            name: Some("Alice Martin".into()),
            address: Some("alice@contoso.com".into())
        })
    );
    assert_eq!(email.body.text, "Forwarding this suspicious item.");
    assert_eq!(
        email.to,
        vec![Mailbox {
            name: Some("SOC".into()),
            address: Some("soc@contoso.com".into())
        }]
    );
    assert_eq!(email.cc[0].address.as_deref(), Some("bob@contoso.com"));
    assert_eq!(email.attachments.len(), 1);
    let item = &email.attachments[0];
    assert_eq!(item.sha256, None);
    assert_eq!(item.size, 4242);
    assert_eq!(
        item.content_type.as_deref(),
        Some("application/vnd.ms-outlook")
    );
    let nested = item.nested.as_deref().unwrap();
    assert_eq!(nested.subject.as_deref(), Some("Invoice 4411 overdue"));
    assert_eq!(
        nested.message_id.as_deref(),
        Some("<embedded@invoices-online.example>")
    );
    assert_eq!(
        nested.network_message_id.as_deref(),
        Some("0badc0de-0000-4000-8000-000000000001")
    );
    assert_eq!(nested.attachments[0].name.as_deref(), Some("invoice.zip"));
    assert_eq!(
        nested.attachments[0].sha256,
        Some(decode::sha256_hex(b"PK\x03\x04"))
    );
}

#[test]
fn msg_rtf_only_and_not_a_msg() {
    let email = parse_msg(
        &build_msg(&MsgSpec {
            subject: Some("rtf".into()),
            rtf_only: true,
            ..MsgSpec::default()
        }),
        &limits(),
    );
    assert_eq!(email.subject.as_deref(), Some("rtf"));
    assert!(email.errors.contains(
        &"the .msg body is only in compressed RTF, which is not read: no body text".to_string()
    ));

    let email = parse_msg(b"From: a@b\r\n\r\nx", &limits());
    assert_eq!(
        email.errors,
        vec!["not an Outlook .msg file (the compound file signature is missing)"]
    );
    let empty_compound = {
        let mut file = cfb::CompoundFile::create_with_version(
            cfb::Version::V3,
            std::io::Cursor::new(Vec::new()),
        )
        .unwrap();
        file.create_stream("/WordDocument").unwrap();
        file.flush().unwrap();
        file.into_inner().into_inner()
    };
    assert_eq!(
        parse_any(&empty_compound, &limits()).errors,
        vec!["not an Outlook .msg file (a compound file without message properties)"]
    );
    let mut fake = CFB_MAGIC.to_vec();
    fake.extend_from_slice(&[0u8; 100]);
    let email = parse_any(&fake, &limits());
    assert!(email.errors[0].starts_with("not an Outlook .msg file ("));
}

#[test]
fn attached_eml_and_msg_files_are_nested() {
    let eml = with_nested();
    let msg = phish_msg();
    let message = format!(
        "From: a@contoso.com\r\nSubject: two\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"orig.eml\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n\
         --b\r\nContent-Type: application/vnd.ms-outlook; name=\"orig.msg\"\r\n\
         Content-Disposition: attachment; filename=\"orig.msg\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        b64(eml.as_bytes()),
        b64(&msg)
    );
    let email = parse_mime(message.as_bytes(), &limits());
    assert_eq!(email.errors, Vec::<String>::new());
    assert_eq!(email.attachments.len(), 2);
    assert_eq!(
        email.attachments[0]
            .nested
            .as_ref()
            .and_then(|n| n.subject.as_deref()),
        Some("FW: invoice")
    );
    assert_eq!(email.attachments[1].sha256, Some(decode::sha256_hex(&msg)));
    assert_eq!(
        email.attachments[1]
            .nested
            .as_ref()
            .and_then(|n| n.network_message_id.as_deref()),
        Some("49871234-6dc6-43e8-abcd-08d797f20abe")
    );
}

#[test]
fn json_shape() {
    let email = parse_mime(with_nested().as_bytes(), &limits());
    let text = serde_json::to_string(&email).unwrap();
    let keys = [
        "message_id",
        "network_message_id",
        "crosstenant_id",
        "subject",
        "date",
        "from",
        "sender",
        "reply_to",
        "return_path",
        "to",
        "cc",
        "in_reply_to",
        "authentication",
        "antispam",
        "received",
        "originating_ip",
        "body",
        "urls",
        "urls_truncated",
        "attachments",
        "forwarded_by",
        "errors",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| text.find(&format!("\"{k}\":")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json.as_object().unwrap().len(), keys.len());
    assert_eq!(json["body"]["source"], "text");
    assert_eq!(json["sender"], serde_json::Value::Null);
    assert_eq!(json["reply_to"], serde_json::json!([]));
    assert_eq!(
        json["attachments"][0]["nested"]["attachments"][0]["name"],
        "invoice.zip"
    );
    if std::env::var_os("EMAIL_PRINT_JSON").is_some() {
        let phish = parse_mime(phish_alternative().as_bytes(), &limits());
        println!("{}", serde_json::to_string_pretty(&phish).unwrap());
        let orig = original(phish_alternative().as_bytes(), "message/rfc822", &limits());
        println!("{}", serde_json::to_string_pretty(&orig).unwrap());
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// One random change: flip bytes, cut, duplicate a slice, or splice in random bytes.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(5) {
            0 => {
                for _ in 0..1 + rng.below(16) {
                    let at = rng.below(len);
                    if let Some(b) = out.get_mut(at) {
                        *b ^= 1 << rng.below(8);
                    }
                }
            }
            1 => out.truncate(rng.below(len + 1)),
            2 => {
                let start = rng.below(len);
                let end = (start + rng.below(512)).min(len);
                let slice = out[start..end].to_vec();
                let at = rng.below(len);
                out.splice(at..at, slice);
            }
            3 => {
                let at = rng.below(len);
                let count = rng.below(64);
                let noise = rng.bytes(count);
                out.splice(at..at, noise);
            }
            _ => {
                let at = rng.below(len);
                let interesting: &[&[u8]] = &[
                    b"\r\n\r\n",
                    b"--",
                    b"=?utf-8?B?",
                    b"?=",
                    b"<a href=\"",
                    b"&#x",
                    b"=\r\n",
                    b"Content-Type: message/rfc822\r\n\r\n",
                    b"boundary=\"",
                    b"https://",
                    b"Content-Transfer-Encoding: base64\r\n",
                ];
                let pick = interesting[rng.below(interesting.len())];
                out.splice(at..at, pick.iter().copied());
            }
        }
    }
    out
}

fn exercise(bytes: &[u8], limits: &Limits) {
    for email in [
        parse_any(bytes, limits),
        parse_mime(bytes, limits),
        parse_msg(bytes, limits),
    ] {
        let _ = email.indicators();
        let _ = serde_json::to_string(&email).unwrap();
        assert!(email.body.text.len() <= limits.body_max);
        assert!(email.urls.len() <= limits.max_urls);
    }
    let text = String::from_utf8_lossy(bytes);
    let _ = parse_wrapper_subject(&text);
    let _ = original(bytes, "message/rfc822", limits);
}

#[test]
fn never_panics_on_random_or_mutated_input() {
    // EMAIL_FUZZ_ROUNDS and EMAIL_FUZZ_SEED run longer or other campaigns by hand.
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let rounds = env("EMAIL_FUZZ_ROUNDS").unwrap_or(3_000);
    let mut rng = Rng(env("EMAIL_FUZZ_SEED").unwrap_or(0x9E37_79B9_7F4A_7C15) | 1);
    let small = Limits {
        body_max: 300,
        max_urls: 20,
        max_attachments: 3,
        max_depth: 2,
        include_original_max: 100,
    };
    let fixtures: Vec<Vec<u8>> = vec![
        phish_alternative().into_bytes(),
        html_only().into_bytes(),
        with_nested().into_bytes(),
        deeply_nested(4).into_bytes(),
        missing_closing_boundary().into_bytes(),
        many_urls(30).into_bytes(),
        single_part(
            "text/plain; charset=shift_jis",
            "base64",
            "g26DjYFbgUWDj4Fbg4uDaA==",
        )
        .into_bytes(),
        phish_msg(),
        msg_with_embedded(),
    ];
    for fixture in &fixtures {
        exercise(fixture, &small);
    }
    for round in 0..rounds {
        let input = match round % 4 {
            0 => {
                let len = rng.below(2_000);
                rng.bytes(len)
            }
            1 => {
                let mut bytes = CFB_MAGIC.to_vec();
                let len = rng.below(3_000);
                bytes.extend(rng.bytes(len));
                bytes
            }
            _ => {
                let fixture = &fixtures[rng.below(fixtures.len())];
                mutate(&mut rng, fixture)
            }
        };
        let limits = if round % 2 == 0 {
            &small
        } else {
            &Limits::default()
        };
        exercise(&input, limits);
    }
}
