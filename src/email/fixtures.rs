//! Test fixtures: reported messages in the shapes Exchange Online and mail clients produce,
//! and a writer of small Outlook .msg files (MS-OXMSG) built with the cfb crate.

use std::io::{Cursor, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Headers of a message received from the Internet by Exchange Online, as a user's
/// mailbox holds them (newest Received first).
pub(super) const EXO_HEADERS: &str = "\
Received: from DB9PR02MB7123.eurprd02.prod.outlook.com (2603:10a6:10:1f3::9) by
 AM0PR02MB5634.eurprd02.prod.outlook.com with HTTPS; Tue, 14 Jan 2025 09:12:04 +0000
Received: from AM6P193CA0101.EURP193.PROD.OUTLOOK.COM (2603:10a6:209:88::42)
 by DB9PR02MB7123.eurprd02.prod.outlook.com (2603:10a6:10:1f3::9) with Microsoft
 SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id
 15.20.8356.12; Tue, 14 Jan 2025 09:12:03 +0000
Received: from mail.paypa1.com (203.0.113.9) by
 AM2PEPF0001C70F.mail.protection.outlook.com (10.167.16.196) with Microsoft SMTP
 Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id
 15.20.8356.11 via Frontend Transport; Tue, 14 Jan 2025 10:12:01 +0100
Received: from [192.168.10.23] (unknown [198.51.100.77])
\tby mail.paypa1.com (Postfix) with ESMTPSA id 4YXk2x0Hkqz9sWq
\tfor <alice@contoso.com>; Tue, 14 Jan 2025 09:11:58 +0000 (UTC)
Authentication-Results: spf.protection.outlook.com; spf=fail (sender IP is
 203.0.113.9) smtp.mailfrom=paypa1.com; dkim=none (message not signed)
 header.d=none;dmarc=fail action=quarantine header.from=paypa1.com;compauth=fail
 reason=000
Received-SPF: Fail (protection.outlook.com: domain of paypa1.com does not
 designate 203.0.113.9 as permitted sender) receiver=protection.outlook.com;
 client-ip=203.0.113.9; helo=mail.paypa1.com;
From: \"PayPal Service\" <service@paypa1.com>
Reply-To: support@secure-paypa1-help.net
Return-Path: bounce@mailer.paypa1-bounces.com
To: Alice Martin <alice@contoso.com>
Cc: \"Bob\" <bob@contoso.com>, carol@contoso.com
Subject: Your account has been limited
Date: Tue, 14 Jan 2025 10:11:58 +0100
Message-ID: <20250114091158.4YXk2x0Hkqz9sWq@mail.paypa1.com>
In-Reply-To: <prev-1234@paypa1.com>
MIME-Version: 1.0
X-MS-Exchange-Organization-Network-Message-Id: 49871234-6dc6-43e8-abcd-08d797f20abe
X-MS-Exchange-CrossTenant-Id: 72f988bf-86f1-41af-91ab-2d7cd011db47
X-MS-Exchange-Organization-SCL: 5
X-Microsoft-Antispam: BCL:0;ARA:13230040|4022899009|69100299015;
X-Microsoft-Antispam-Message-Info: kq3+Xb0Yj9v1l2mQ==
X-Forefront-Antispam-Report: CIP:203.0.113.9;CTRY:RU;LANG:en;SCL:5;SRV:;IPV:NLI;
 SFV:SPM;H:mail.paypa1.com;PTR:;CAT:PHSH;SFS:(13230040)(4022899009);DIR:INB;
X-MS-Exchange-Organization-PCL: 2
";

/// The classic: multipart/alternative, text and HTML, Safe Links in the HTML whose text
/// shows another address, a PDF attachment.
pub(super) fn phish_alternative() -> String {
    format!(
        "{EXO_HEADERS}Content-Type: multipart/mixed;
 boundary=\"_004_DB9PR02MB7123mixed_\"

--_004_DB9PR02MB7123mixed_
Content-Type: multipart/alternative;
 boundary=\"_000_DB9PR02MB7123alt_\"

--_000_DB9PR02MB7123alt_
Content-Type: text/plain; charset=\"us-ascii\"
Content-Transfer-Encoding: quoted-printable

Dear customer,

We noticed unusual activity. Please verify your account at
https://www.paypal.com/signin within 24 hours.=20

PayPal
--_000_DB9PR02MB7123alt_
Content-Type: text/html; charset=\"utf-8\"
Content-Transfer-Encoding: quoted-printable

<html><head><meta http-equiv=3D\"Content-Type\" content=3D\"text/html; charset=3D=
utf-8\"><style>p {{margin:0}}</style></head><body>
<p>Dear customer,</p><p>We noticed unusual activity. Please verify your account =
at <a href=3D\"https://nam02.safelinks.protection.outlook.com/?url=3Dhttps%3A%2F=
%2Flogin.paypa1.com%2Fsignin%3Fsession%3D8f2a%26lang%3Den&amp;data=3D05%7C02%7C=
alice%40contoso.com%7C1&amp;sdata=3Dabc&amp;reserved=3D0\">https://www.paypal.com=
/signin</a> within 24&nbsp;hours.</p>
<p>PayPal &copy; 2025</p></body></html>
--_000_DB9PR02MB7123alt_--

--_004_DB9PR02MB7123mixed_
Content-Type: application/pdf; name=\"Statement_0114.pdf\"
Content-Description: Statement_0114.pdf
Content-Disposition: attachment; filename=\"Statement_0114.pdf\"; size=12;
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcfs
--_004_DB9PR02MB7123mixed_--
"
    )
}

/// HTML only, as sent by bulk mailers.
pub(super) fn html_only() -> String {
    format!(
        "{EXO_HEADERS}Content-Type: text/html; charset=\"iso-8859-1\"
Content-Transfer-Encoding: quoted-printable

<html><body><div>Ch=E8re cliente,</div><div>Votre colis est bloqu=E9.<br>Cliquez =
<a href=3D\"http://colis-suivi.example.net/t?id=3D42\">ici</a>.</div>
<script>var x =3D \"https://tracker.example/\";</script></body></html>
"
    )
}

/// A message whose body is `body`, with its own Content-Type and transfer encoding.
pub(super) fn single_part(content_type: &str, encoding: &str, body: &str) -> String {
    format!(
        "From: sender@example.org\r\nTo: alice@contoso.com\r\nSubject: charset test\r\n\
         Message-ID: <charset@example.org>\r\nMIME-Version: 1.0\r\n\
         Content-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n{body}"
    )
}

/// Like [`single_part`], with a body that is not UTF-8.
pub(super) fn single_part_bytes(content_type: &str, encoding: &str, body: &[u8]) -> Vec<u8> {
    let mut message = single_part(content_type, encoding, "").into_bytes();
    message.extend_from_slice(body);
    message
}

/// A forwarded message attached as message/rfc822, itself with an attachment.
pub(super) fn with_nested() -> String {
    "From: Alice Martin <alice@contoso.com>\r
To: security@contoso.com\r
Subject: FW: invoice\r
Date: Wed, 15 Jan 2025 08:00:00 +0000\r
Message-ID: <outer@contoso.com>\r
MIME-Version: 1.0\r
Content-Type: multipart/mixed; boundary=\"outer\"\r
\r
--outer\r
Content-Type: text/plain; charset=utf-8\r
\r
See the attached message.\r
--outer\r
Content-Type: message/rfc822\r
Content-Disposition: attachment; filename=\"invoice.eml\"\r
\r
From: Billing <billing@invoices-online.example>\r
To: alice@contoso.com\r
Subject: =?utf-8?Q?Facture_n=C2=B0_4411?=\r
Date: Tue, 14 Jan 2025 17:45:00 -0500\r
Message-ID: <inner@invoices-online.example>\r
X-MS-Exchange-Organization-Network-Message-Id: 11111111-2222-3333-4444-555555555555\r
MIME-Version: 1.0\r
Content-Type: multipart/mixed; boundary=\"inner\"\r
\r
--inner\r
Content-Type: text/plain\r
\r
Pay now: https://pay.invoices-online.example/4411\r
--inner\r
Content-Type: application/octet-stream; name=\"invoice.zip\"\r
Content-Disposition: attachment; filename=\"invoice.zip\"\r
Content-Transfer-Encoding: base64\r
\r
UEsDBAoAAAAAAA==\r
--inner--\r
--outer--\r
"
    .to_string()
}

/// `levels` messages each attached in the previous one.
pub(super) fn deeply_nested(levels: usize) -> String {
    let mut message = "From: leaf@example.org\r\nSubject: level leaf\r\n\
                       Message-ID: <leaf@example.org>\r\n\r\nThe innermost message.\r\n"
        .to_string();
    for level in (0..levels).rev() {
        message = format!(
            "From: level{level}@example.org\r\nSubject: level {level}\r\n\
             Message-ID: <level{level}@example.org>\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n\
             --b{level}\r\nContent-Type: text/plain\r\n\r\nLevel {level}.\r\n\
             --b{level}\r\nContent-Type: message/rfc822\r\n\r\n{message}\r\n--b{level}--\r\n"
        );
    }
    message
}

/// Two parts, the closing boundary missing: the message was cut.
pub(super) fn missing_closing_boundary() -> String {
    "From: a@example.org\r
To: b@contoso.com\r
Subject: cut\r
Message-ID: <cut@example.org>\r
MIME-Version: 1.0\r
Content-Type: multipart/alternative; boundary=\"XYZ\"\r
\r
--XYZ\r
Content-Type: text/plain; charset=utf-8\r
\r
Plain part https://plain.example/a\r
--XYZ\r
Content-Type: text/html; charset=utf-8\r
Content-Transfer-Encoding: base64\r
\r
PGEgaHJlZj0iaHR0cHM6Ly9odG1sLmV4YW1wbGUvYiI+SFRNTCBsaW5rPC9hPg==\r
"
    .to_string()
}

/// `count` distinct links in one HTML body.
pub(super) fn many_urls(count: usize) -> String {
    let mut html = String::from("<html><body>");
    for i in 0..count {
        html.push_str(&format!(
            "<p><a href=\"https://host{}.example/path/{i}?q={i}\">link {i}</a></p>\n",
            i % 97
        ));
    }
    html.push_str("</body></html>");
    format!(
        "From: bulk@example.org\r\nSubject: many\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/html; charset=utf-8\r\n\r\n{html}"
    )
}

pub(super) fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn utf16le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// An attachment of a test .msg.
pub(super) struct MsgAttachment {
    pub long_name: String,
    pub mime_tag: Option<String>,
    pub data: Option<Vec<u8>>,
    pub embedded: Option<Box<MsgSpec>>,
}

/// What a test .msg holds.
#[derive(Default)]
pub(super) struct MsgSpec {
    pub transport_headers: Option<String>,
    pub subject: Option<String>,
    /// Written as the 8-bit `001E` variant instead of `001F`.
    pub subject_8bit: Option<Vec<u8>>,
    pub body: Option<String>,
    pub html: Option<Vec<u8>>,
    pub internet_cpid: Option<u32>,
    pub sender_name: Option<String>,
    pub sender_smtp: Option<String>,
    pub rtf_only: bool,
    /// (display name, SMTP address, recipient type: 1 To, 2 Cc).
    pub recipients: Vec<(String, String, u32)>,
    pub attachments: Vec<MsgAttachment>,
}

/// Writes `spec` as a .msg compound file.
pub(super) fn build_msg(spec: &MsgSpec) -> Vec<u8> {
    let cursor = Cursor::new(Vec::new());
    let mut file = cfb::CompoundFile::create_with_version(cfb::Version::V3, cursor).unwrap();
    write_message(&mut file, "", spec, 32);
    file.flush().unwrap();
    file.into_inner().into_inner()
}

fn write_stream<F: std::io::Read + Write + std::io::Seek>(
    file: &mut cfb::CompoundFile<F>,
    path: &str,
    bytes: &[u8],
) {
    let mut stream = file.create_stream(path).unwrap();
    stream.write_all(bytes).unwrap();
}

/// A properties stream: a header of `header_len` bytes, then 16-byte entries.
fn properties(header_len: usize, entries: &[(u16, u16, u64)]) -> Vec<u8> {
    let mut bytes = vec![0u8; header_len];
    for (kind, id, value) in entries {
        bytes.extend_from_slice(&kind.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&6u32.to_le_bytes());
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

fn write_message<F: std::io::Read + Write + std::io::Seek>(
    file: &mut cfb::CompoundFile<F>,
    base: &str,
    spec: &MsgSpec,
    header_len: usize,
) {
    let mut props = Vec::new();
    if let Some(cpid) = spec.internet_cpid {
        props.push((0x0003, 0x3FDE, u64::from(cpid)));
    }
    // 2025-01-14T09:12:03Z as FILETIME.
    props.push((
        0x0040,
        0x0039,
        116_444_736_000_000_000 + 1_736_845_923 * 10_000_000,
    ));
    write_stream(
        file,
        &format!("{base}/__properties_version1.0"),
        &properties(header_len, &props),
    );
    let strings = [
        (0x007D, &spec.transport_headers),
        (0x0037, &spec.subject),
        (0x1000, &spec.body),
        (0x0C1A, &spec.sender_name),
        (0x5D01, &spec.sender_smtp),
    ];
    for (id, value) in strings {
        if let Some(value) = value {
            write_stream(
                file,
                &format!("{base}/__substg1.0_{id:04X}001F"),
                &utf16le(value),
            );
        }
    }
    if let Some(subject) = &spec.subject_8bit {
        write_stream(file, &format!("{base}/__substg1.0_0037001E"), subject);
    }
    if let Some(html) = &spec.html {
        write_stream(file, &format!("{base}/__substg1.0_10130102"), html);
    }
    if spec.rtf_only {
        write_stream(
            file,
            &format!("{base}/__substg1.0_10090102"),
            b"\x00\x01\x02\x03",
        );
    }
    for (i, (name, smtp, kind)) in spec.recipients.iter().enumerate() {
        let dir = format!("{base}/__recip_version1.0_#{i:08X}");
        file.create_storage(&dir).unwrap();
        write_stream(
            file,
            &format!("{dir}/__properties_version1.0"),
            &properties(8, &[(0x0003, 0x0C15, u64::from(*kind))]),
        );
        write_stream(file, &format!("{dir}/__substg1.0_3001001F"), &utf16le(name));
        write_stream(file, &format!("{dir}/__substg1.0_39FE001F"), &utf16le(smtp));
        // Exchange-internal recipients carry an X.500 address beside the SMTP one.
        write_stream(
            file,
            &format!("{dir}/__substg1.0_3003001F"),
            &utf16le("/O=EXCHANGELABS/OU=EXCHANGE ADMINISTRATIVE GROUP/CN=RECIPIENTS/CN=X"),
        );
    }
    for (i, attachment) in spec.attachments.iter().enumerate() {
        let dir = format!("{base}/__attach_version1.0_#{i:08X}");
        file.create_storage(&dir).unwrap();
        write_stream(
            file,
            &format!("{dir}/__properties_version1.0"),
            &properties(8, &[(0x0003, 0x0E20, 4242)]),
        );
        write_stream(
            file,
            &format!("{dir}/__substg1.0_3707001F"),
            &utf16le(&attachment.long_name),
        );
        if let Some(mime) = &attachment.mime_tag {
            write_stream(file, &format!("{dir}/__substg1.0_370E001F"), &utf16le(mime));
        }
        if let Some(data) = &attachment.data {
            write_stream(file, &format!("{dir}/__substg1.0_37010102"), data);
        }
        if let Some(embedded) = &attachment.embedded {
            let sub = format!("{dir}/__substg1.0_3701000D");
            file.create_storage(&sub).unwrap();
            write_message(file, &sub, embedded, 24);
        }
    }
}

/// The .msg of the classic phish: transport headers, HTML body in windows-1252, a PDF.
pub(super) fn phish_msg() -> Vec<u8> {
    let headers = EXO_HEADERS.replace('\n', "\r\n");
    build_msg(&MsgSpec {
        transport_headers: Some(headers),
        subject: Some("Your account has been limited".into()),
        html: Some(
            b"<html><body><p>Ch\xe8re cliente, <a href=\"https://eur01.safelinks.protection.outlook.com/?url=https%3A%2F%2Fparcel-track.example%2Fx&amp;data=05&amp;reserved=0\">suivre mon colis</a></p></body></html>"
                .to_vec(),
        ),
        internet_cpid: Some(1252),
        sender_name: Some("PayPal Service".into()),
        sender_smtp: Some("service@paypa1.com".into()),
        attachments: vec![MsgAttachment {
            long_name: "Statement_0114.pdf".into(),
            mime_tag: Some("application/pdf".into()),
            data: Some(b"%PDF-1.4\n%\xc7\xec".to_vec()),
            embedded: None,
        }],
        ..MsgSpec::default()
    })
}

/// A .msg holding another .msg as an embedded item (Outlook's "attach item").
pub(super) fn msg_with_embedded() -> Vec<u8> {
    let inner = MsgSpec {
        transport_headers: Some(
            "From: Billing <billing@invoices-online.example>\r\nSubject: inner\r\n\
             Message-ID: <embedded@invoices-online.example>\r\n\
             X-MS-Exchange-Organization-Network-Message-Id: 0badc0de-0000-4000-8000-000000000001\r\n"
                .into(),
        ),
        subject: Some("Invoice 4411 overdue".into()),
        body: Some("Pay at https://pay.invoices-online.example/4411".into()),
        attachments: vec![MsgAttachment {
            long_name: "invoice.zip".into(),
            mime_tag: Some("application/zip".into()),
            data: Some(b"PK\x03\x04".to_vec()),
            embedded: None,
        }],
        ..MsgSpec::default()
    };
    build_msg(&MsgSpec {
        subject_8bit: Some(b"FW: Invoice 4411 overdue \x80".to_vec()),
        body: Some("Forwarding this suspicious item.".into()),
        sender_name: Some("Alice Martin".into()),
        sender_smtp: Some("alice@contoso.com".into()),
        recipients: vec![
            ("SOC".into(), "soc@contoso.com".into(), 1),
            ("Bob".into(), "bob@contoso.com".into(), 2),
        ],
        attachments: vec![MsgAttachment {
            long_name: "Invoice 4411 overdue".into(),
            mime_tag: None,
            data: None,
            embedded: Some(Box::new(inner)),
        }],
        ..MsgSpec::default()
    })
}
