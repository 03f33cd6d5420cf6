//! Graph advanced hunting, `POST /v1.0/security/runHuntingQuery` (API.md §6), over the email
//! messages the simulator knows: EmailEvents (one row per recipient copy) and UrlClickEvents.
//!
//! It is as strict as Microsoft's documentation: a Graph token with ThreatHunting.Read.All
//! (403 otherwise), 45 calls per sliding minute per tenant (429 with `Retry-After` beyond), a
//! bounded query length, the 3-minute timeout (504, as seen in the wild), and it parses only the
//! query shape m365-ingest's fixed template produces ([`parse_query`]); anything else is a 400
//! "Query could not be parsed". Faults per tenant ([`HuntingFaults`]): the CPU quota spent
//! (429 with the quota reason in the body), a 403, a slow query, `schema` spelled `Name`/`Type`.
//!
//! Messages are either registered by a test ([`Simulator::add_hunting_message`]) or derived
//! deterministically from their internet message id ([`HuntingMessage::derived`]), so every
//! message id the generator puts in alerts and submissions has recipients and clicks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{graph, lock, tenant_key, Inner, Simulator};

/// The application permission runHuntingQuery requires.
pub const HUNTING_ROLE: &str = "ThreatHunting.Read.All";
/// Calls per sliding minute per tenant: the documented "at least 45", simulated as exactly 45.
pub const HUNTING_PER_MINUTE: usize = 45;
/// The longest query text accepted. Microsoft documents no number; a bound exists, and a client
/// must keep its batches under one.
pub const MAX_QUERY_CHARS: usize = 100_000;
/// How far back advanced hunting's data goes.
pub const RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// The documented per-query timeout.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(180);

/// The message of the 429 when the tenant's CPU quota is spent. Microsoft says only that "the
/// reason is in the body"; this text joins the portal's wording to the documented reason.
pub const CPU_QUOTA_MESSAGE: &str = "Query execution has exceeded the allowed limits. The tenant has used 100% of its allocated CPU resources; queries are blocked until the next 15-minute cycle.";

/// Faults of one tenant's hunting traffic. `Default` is "none".
#[derive(Clone, Debug, Default)]
pub struct HuntingFaults {
    /// The tenant's CPU quota is spent for this long from now: 429 with [`CPU_QUOTA_MESSAGE`] and
    /// `Retry-After` until then.
    pub cpu_quota_for: Option<Duration>,
    /// Every query answers 403 (a role granted but, say, no Defender license).
    pub forbidden: bool,
    /// Every query runs this long before answering.
    pub delay: Option<Duration>,
    /// Overrides the 3-minute timeout (tests cannot wait 3 minutes).
    pub timeout: Option<Duration>,
    /// `schema` items spelled `Name`/`Type`, as one docs example has, instead of `name`/`type`.
    pub pascal_schema: bool,
}

/// One recipient copy of a message (an EmailEvents row).
#[derive(Clone, Debug, PartialEq)]
pub struct HuntingRecipient {
    pub address: String,
    /// Differs per recipient copy.
    pub network_message_id: String,
    pub delivery_action: String,
    pub latest_delivery_action: String,
    pub latest_delivery_location: String,
}

/// A click on a URL of a message (a UrlClickEvents row).
#[derive(Clone, Debug, PartialEq)]
pub struct HuntingClick {
    pub account: String,
    pub network_message_id: String,
    pub url: String,
    /// `ClickAllowed`, `ClickBlocked`, `ClickedThrough`, …
    pub action_type: String,
    pub clicked_through: bool,
}

/// One email message as advanced hunting sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct HuntingMessage {
    pub internet_message_id: String,
    pub sender: String,
    pub subject: String,
    pub received: SystemTime,
    pub recipients: Vec<HuntingRecipient>,
    pub clicks: Vec<HuntingClick>,
}

const SUBJECTS: &[&str] = &[
    "Action required: verify your mailbox",
    "Invoice INV-20931 overdue",
    "Your package could not be delivered",
    "Shared document: Q3 salary review",
];
const PEOPLE: &[&str] = &[
    "adele.vance",
    "alex.wilber",
    "diego.siciliani",
    "grady.archie",
    "henrietta.mueller",
    "isaiah.langer",
    "johanna.lorenz",
    "joni.sherman",
    "lee.gu",
    "lidia.holloway",
    "lynne.robbins",
    "megan.bowen",
    "miriam.graham",
    "nestor.wilke",
    "patti.fernandez",
    "pradeep.gupta",
];

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// A GUID-shaped id derived from `seed`.
fn derived_guid(seed: &str) -> String {
    let d = digest(seed);
    let h: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl HuntingMessage {
    /// A message sent by `sender` with `subject` to `recipients` addresses, `clickers` of whom
    /// (the first ones) clicked its URL, the first of them through the warning. Everything else
    /// (network message ids, delivery) is derived from the internet message id.
    pub fn campaign(
        internet_message_id: &str,
        sender: &str,
        subject: &str,
        received: SystemTime,
        recipients: usize,
        clickers: usize,
    ) -> HuntingMessage {
        let domain = sender.rsplit_once('@').map_or("contoso.com", |(_, d)| d);
        let url = format!(
            "https://{domain}/login/verify?id={}",
            &derived_guid(internet_message_id)[..8]
        );
        let recipients: Vec<HuntingRecipient> = (0..recipients)
            .map(|i| {
                let person = PEOPLE[i % PEOPLE.len()];
                let address = if i < PEOPLE.len() {
                    format!("{person}@contoso.com")
                } else {
                    format!("{person}{}@contoso.com", i / PEOPLE.len())
                };
                // Mostly delivered; every 7th junked, every 9th quarantined at delivery, every
                // 5th delivered then removed by ZAP.
                let (action, latest_action, location) = if i % 9 == 8 {
                    ("Blocked", "", "Quarantine")
                } else if i % 7 == 6 {
                    ("Junked", "", "Junk folder")
                } else if i % 5 == 4 {
                    ("Delivered", "Moved to quarantine", "Quarantine")
                } else {
                    ("Delivered", "", "Inbox/folder")
                };
                HuntingRecipient {
                    network_message_id: derived_guid(&format!("{internet_message_id}|{address}")),
                    address,
                    delivery_action: action.into(),
                    latest_delivery_action: latest_action.into(),
                    latest_delivery_location: location.into(),
                }
            })
            .collect();
        let clicks = recipients
            .iter()
            .take(clickers)
            .enumerate()
            .map(|(i, r)| HuntingClick {
                account: r.address.clone(),
                network_message_id: r.network_message_id.clone(),
                url: url.clone(),
                action_type: if i == 0 {
                    "ClickedThrough"
                } else {
                    "ClickAllowed"
                }
                .into(),
                clicked_through: i == 0,
            })
            .collect();
        HuntingMessage {
            internet_message_id: internet_message_id.into(),
            sender: sender.into(),
            subject: subject.into(),
            received,
            recipients,
            clicks,
        }
    }

    /// The campaign issue 13's tests share: `internet_message_id` sent by `billing@phish.example`
    /// with the subject "Invoice overdue", 30 minutes ago, to 40 people, 3 of whom clicked (the
    /// first through the warning); see [`HuntingMessage::campaign`].
    pub fn forty_with_three_clickers(internet_message_id: &str) -> HuntingMessage {
        HuntingMessage::campaign(
            internet_message_id,
            "billing@phish.example",
            "Invoice overdue",
            SystemTime::now() - Duration::from_secs(1800),
            40,
            3,
        )
    }

    /// The message advanced hunting knows for an internet message id it was not told about:
    /// deterministic in the id. One message in three went to 40 recipients, 3 of whom clicked;
    /// the others to 1–6 recipients, with 0 or 1 clicker. The sender's domain is the id's; its
    /// sender is its own, so it is a campaign of one message.
    pub fn derived(internet_message_id: &str, received: SystemTime) -> HuntingMessage {
        let d = digest(internet_message_id);
        let domain = internet_message_id
            .trim_end_matches('>')
            .rsplit_once('@')
            .map_or("contoso-mail.com", |(_, d)| d);
        let (recipients, clickers) = if d[0].is_multiple_of(3) {
            (40, 3)
        } else {
            (1 + usize::from(d[1] % 6), usize::from(d[2] % 2))
        };
        let subject = SUBJECTS[usize::from(d[3]) % SUBJECTS.len()];
        // A sender of its own, so derived messages never form a campaign by accident: the
        // answer about one does not depend on which others were asked about before.
        HuntingMessage::campaign(
            internet_message_id,
            &format!(
                "notifications-{:02x}{:02x}{:02x}@{domain}",
                d[4], d[5], d[6]
            ),
            subject,
            received,
            recipients,
            clickers,
        )
    }

    fn has_key(&self, key: &str) -> bool {
        self.internet_message_id == key
            || self.recipients.iter().any(|r| r.network_message_id == key)
    }
}

/// Per-tenant hunting state.
#[derive(Default)]
pub(crate) struct HuntingTenant {
    messages: Vec<HuntingMessage>,
    faults: HuntingFaults,
    cpu_blocked_until: Option<Instant>,
    /// When admitted calls arrived, for the sliding minute.
    calls: VecDeque<Instant>,
    /// The end of the last `Retry-After` this tenant was given.
    throttled_until: Option<Instant>,
    queries: Vec<String>,
}

#[derive(Default)]
pub(crate) struct HuntingState {
    tenants: HashMap<String, HuntingTenant>,
}

/// What a query of m365-ingest's template asks: the message ids of its one `in (…)` list, and
/// the size of its `make_list` samples.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedQuery {
    pub ids: Vec<String>,
    pub first_n: u32,
}

/// The query shape m365-ingest sends, as tokens: `{ids}` stands for a non-empty comma-separated
/// list of string literals, `{n}` for a positive integer.
const TEMPLATE: &str = r#"let Seeds = EmailEvents
| where Timestamp > ago(30d)
| mv-expand Key = pack_array(InternetMessageId, NetworkMessageId) to typeof(string)
| where Key in ({ids})
| summarize SeedTime = min(Timestamp), SeedMessage = take_any(InternetMessageId) by Key, SenderFromAddress, Subject;
let Copies = Seeds
| join kind=inner (EmailEvents | where Timestamp > ago(30d)) on SenderFromAddress, Subject
| where Timestamp between ((SeedTime - 1h) .. (SeedTime + 1h))
| extend SameMessage = InternetMessageId == SeedMessage;
let Clicks = Copies
| where SameMessage
| join kind=inner (UrlClickEvents | where Timestamp > ago(30d)) on NetworkMessageId
| summarize ClickCount = count(), Clickers = count_distinct(AccountUpn), ClickList = make_list(bag_pack("account", AccountUpn, "url", Url, "action", ActionType, "clicked_through", IsClickedThrough), {n}) by Key;
Copies
| summarize Recipients = count_distinctif(RecipientEmailAddress, SameMessage), RecipientList = make_list_if(bag_pack("address", RecipientEmailAddress, "delivery_action", DeliveryAction, "latest_delivery_action", LatestDeliveryAction, "latest_delivery_location", LatestDeliveryLocation), SameMessage, {n}), CampaignRecipients = count_distinct(RecipientEmailAddress), CampaignMessages = count_distinct(InternetMessageId), CampaignList = make_list_if(bag_pack("address", RecipientEmailAddress, "internet_message_id", InternetMessageId), not(SameMessage), {n}) by Key, SenderFromAddress, Subject, SeedMessage
| join kind=leftouter Clicks on Key
| project Key, InternetMessageId = SeedMessage, SenderFromAddress, Subject, Recipients, RecipientList, CampaignRecipients, CampaignMessages, CampaignList, ClickCount = coalesce(ClickCount, 0), Clickers = coalesce(Clickers, 0), ClickList"#;

/// A query of m365-ingest's template over `ids`, with lists of `first_n` rows: what a client of
/// the simulator sends (tests, `curl`). Ids are written as JSON strings, which are KQL string
/// literals for any id without control characters other than line feeds and tabs.
pub fn template_query(ids: &[&str], first_n: u32) -> String {
    let list = ids
        .iter()
        .map(|id| serde_json::to_string(id).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(", ");
    TEMPLATE
        .replace("{n}", &first_n.to_string())
        .replacen("{ids}", &list, 1)
}

/// One KQL token.
#[derive(Clone, Debug, PartialEq)]
pub enum Token {
    /// A string literal, decoded.
    Str(String),
    /// An identifier, keyword, number or timespan (`30d`), or an operator.
    Word(String),
}

/// Splits KQL text into tokens: string literals in `"` or `'` with the documented backslash
/// escapes (the enclosing quote, `\\`, `\n`, `\t`) and verbatim `@"…"`, words (letters,
/// digits, `_`, `-` inside words such as `mv-expand`), and punctuation (`..`, `==`, `>=`, `<=`,
/// `!=` as one). An unterminated literal or an unknown escape is an error.
pub fn tokenize(q: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = q.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"'
            || c == '\''
            || (c == '@' && matches!(chars.get(i + 1), Some('"' | '\'')))
        {
            let verbatim = c == '@';
            if verbatim {
                i += 1;
            }
            let quote = chars[i];
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err("unterminated string literal".into());
                };
                i += 1;
                if d == quote {
                    if verbatim && chars.get(i) == Some(&quote) {
                        s.push(quote);
                        i += 1;
                        continue;
                    }
                    break;
                }
                if d == '\n' && !verbatim {
                    return Err("line break inside a string literal".into());
                }
                if d == '\\' && !verbatim {
                    // The escapes Kusto documents: the enclosing quote, `\\`, `\n`, `\t`.
                    let e = *chars.get(i).ok_or("unterminated escape")?;
                    i += 1;
                    s.push(match e {
                        '\\' => '\\',
                        'n' => '\n',
                        't' => '\t',
                        q if q == quote => q,
                        other => return Err(format!("unknown escape \\{other}")),
                    });
                } else {
                    s.push(d);
                }
            }
            out.push(Token::Str(s));
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric()
                    || chars[i] == '_'
                    || (chars[i] == '-'
                        && chars.get(i + 1).is_some_and(|n| n.is_alphabetic())
                        && chars[start].is_alphabetic()))
            {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            if matches!(two.as_str(), ".." | "==" | ">=" | "<=" | "!=") {
                out.push(Token::Word(two));
                i += 2;
            } else {
                out.push(Token::Word(c.to_string()));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Parses a query of m365-ingest's template: the ids of its one `in (…)` list and its sample
/// size. Any other query, or the template with anything changed, is refused.
pub fn parse_query(q: &str) -> Result<ParsedQuery, String> {
    let got = tokenize(q)?;
    let want = tokenize(TEMPLATE)?;
    let mut ids = Vec::new();
    let mut first_n: Option<u32> = None;
    let mut g = got.iter().peekable();
    for w in &want {
        match w {
            Token::Word(p) if p == "{" => {}
            Token::Word(p) if p == "}" => {}
            Token::Word(p) if p == "ids" && ids.is_empty() && first_n.is_none() => loop {
                match g.next() {
                    Some(Token::Str(s)) => ids.push(s.clone()),
                    other => {
                        return Err(format!(
                            "expected a string literal in the id list, found {other:?}"
                        ))
                    }
                }
                if g.peek() == Some(&&Token::Word(",".into())) {
                    g.next();
                } else {
                    break;
                }
            },
            Token::Word(p) if p == "n" => {
                let n = match g.next() {
                    Some(Token::Word(n)) => n.parse::<u32>().ok().filter(|n| *n > 0),
                    _ => None,
                }
                .ok_or("expected a positive list size")?;
                if first_n.is_some_and(|f| f != n) {
                    return Err("the list sizes differ".into());
                }
                first_n = Some(n);
            }
            w => {
                if g.next() != Some(w) {
                    return Err(format!("unexpected text where {w:?} belongs"));
                }
            }
        }
    }
    if let Some(extra) = g.next() {
        return Err(format!("unexpected text after the query: {extra:?}"));
    }
    Ok(ParsedQuery {
        ids,
        first_n: first_n.ok_or("no list size")?,
    })
}

/// Runs a parsed query over a tenant's messages: one row per id found.
fn run(tenant: &mut HuntingTenant, q: &ParsedQuery, now: SystemTime) -> Vec<Value> {
    let n = q.first_n as usize;
    let mut rows = Vec::new();
    for key in &q.ids {
        if !tenant.messages.iter().any(|m| m.has_key(key))
            && key.starts_with('<')
            && key.ends_with('>')
            && key.contains('@')
        {
            tenant
                .messages
                .push(HuntingMessage::derived(key, now - Duration::from_secs(600)));
        }
        // Advanced hunting holds 30 days of data (`Timestamp > ago(30d)` in the template).
        let recent = |m: &HuntingMessage| {
            now.duration_since(m.received)
                .map_or(true, |age| age <= RETENTION)
        };
        let Some(seed) = tenant.messages.iter().find(|m| m.has_key(key) && recent(m)) else {
            continue;
        };
        let within = |m: &&HuntingMessage| {
            let gap = m
                .received
                .duration_since(seed.received)
                .or_else(|_| seed.received.duration_since(m.received))
                .unwrap_or_default();
            m.sender == seed.sender
                && m.subject == seed.subject
                && gap <= Duration::from_secs(3600)
                && recent(m)
        };
        let campaign: Vec<&HuntingMessage> = tenant.messages.iter().filter(within).collect();
        let mut all: Vec<&str> = campaign
            .iter()
            .flat_map(|m| m.recipients.iter().map(|r| r.address.as_str()))
            .collect();
        all.sort_unstable();
        all.dedup();
        let others: Vec<Value> = campaign
            .iter()
            .filter(|m| m.internet_message_id != seed.internet_message_id)
            .flat_map(|m| {
                m.recipients.iter().map(
                    |r| json!({"address": r.address, "internet_message_id": m.internet_message_id}),
                )
            })
            .take(n)
            .collect();
        let mut seen: Vec<&str> = seed.recipients.iter().map(|r| r.address.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        let mut clickers: Vec<&str> = seed.clicks.iter().map(|c| c.account.as_str()).collect();
        clickers.sort_unstable();
        clickers.dedup();
        let clicks = seed.clicks.len();
        rows.push(json!({
            "Key": key,
            "InternetMessageId": seed.internet_message_id,
            "SenderFromAddress": seed.sender,
            "Subject": seed.subject,
            "Recipients": seen.len(),
            "RecipientList": seed.recipients.iter().take(n).map(|r| json!({
                "address": r.address,
                "delivery_action": r.delivery_action,
                "latest_delivery_action": r.latest_delivery_action,
                "latest_delivery_location": r.latest_delivery_location,
            })).collect::<Vec<_>>(),
            "CampaignRecipients": all.len(),
            "CampaignMessages": campaign.len(),
            "CampaignList": others,
            // The left-outer join leaves the click columns empty when nobody clicked.
            "ClickCount": clicks,
            "Clickers": clickers.len(),
            "ClickList": if clicks == 0 { Value::Null } else {
                Value::Array(seed.clicks.iter().take(n).map(|c| json!({
                    "account": c.account,
                    "url": c.url,
                    "action": c.action_type,
                    "clicked_through": c.clicked_through,
                })).collect())
            },
        }));
    }
    rows
}

const COLUMNS: &[(&str, &str)] = &[
    ("Key", "String"),
    ("InternetMessageId", "String"),
    ("SenderFromAddress", "String"),
    ("Subject", "String"),
    ("Recipients", "Int64"),
    ("RecipientList", "Object"),
    ("CampaignRecipients", "Int64"),
    ("CampaignMessages", "Int64"),
    ("CampaignList", "Object"),
    ("ClickCount", "Int64"),
    ("Clickers", "Int64"),
    ("ClickList", "Object"),
];

/// What the tenant's state says about a call that passed authentication.
enum Admission {
    Run {
        delay: Option<Duration>,
        timeout: Duration,
        pascal: bool,
    },
    Throttled(u64),
    CpuQuota(u64),
    Forbidden,
}

fn admit(inner: &Inner, tenant: &str, query: &str) -> Admission {
    let now = Instant::now();
    let mut state = lock(&inner.hunting);
    let t = state.tenants.entry(tenant.to_string()).or_default();
    if t.throttled_until.is_some_and(|u| now < u) {
        inner
            .throttle_violations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    while t
        .calls
        .front()
        .is_some_and(|c| now.duration_since(*c) >= Duration::from_secs(60))
    {
        t.calls.pop_front();
    }
    if t.calls.len() >= HUNTING_PER_MINUTE {
        let oldest = t.calls.front().copied().unwrap_or(now);
        let left = Duration::from_secs(60).saturating_sub(now.duration_since(oldest));
        let secs = left.as_secs() + 1;
        t.throttled_until = Some(now + Duration::from_secs(secs));
        return Admission::Throttled(secs);
    }
    t.calls.push_back(now);
    t.queries.push(query.to_string());
    if t.faults.forbidden {
        return Admission::Forbidden;
    }
    if let Some(until) = t.cpu_blocked_until.filter(|u| now < *u) {
        let secs = (until - now).as_secs() + 1;
        t.throttled_until = Some(until);
        return Admission::CpuQuota(secs);
    }
    Admission::Run {
        delay: t.faults.delay,
        timeout: t.faults.timeout.unwrap_or(QUERY_TIMEOUT),
        pascal: t.faults.pascal_schema,
    }
}

async fn run_hunting_query(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = match graph::begin_security(&inner, &headers, &[HUNTING_ROLE]).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let bad = |message: &str| ctx.error(StatusCode::BAD_REQUEST, "BadRequest", message);
    // The docs spell the parameters `Query`/`Timespan`, the metadata `query`/`timespan`.
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let query = parsed.as_ref().and_then(|v| {
        v.get("Query")
            .or_else(|| v.get("query"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let Some(query) = query else {
        return bad("The request body must be a JSON object with a Query string.");
    };
    if query.chars().count() > MAX_QUERY_CHARS {
        return bad(&format!(
            "Query is too long: {} characters, at most {MAX_QUERY_CHARS} are accepted.",
            query.chars().count()
        ));
    }
    let admission = admit(&inner, &ctx.tenant, &query);
    let retry = |secs: u64, message: &str| {
        let mut r = ctx.error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        r
    };
    let (delay, timeout, pascal) = match admission {
        Admission::Throttled(secs) => return retry(secs, "Please retry again later."),
        Admission::CpuQuota(secs) => return retry(secs, CPU_QUOTA_MESSAGE),
        Admission::Forbidden => {
            return ctx.error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The tenant is not allowed to run advanced hunting queries.",
            )
        }
        Admission::Run {
            delay,
            timeout,
            pascal,
        } => (delay, timeout, pascal),
    };
    if tokenize(&query).ok() == tokenize(PROBE_QUERY).ok() {
        return probe_answer(&ctx, &inner, pascal);
    }
    let q = match parse_query(&query) {
        Ok(q) => q,
        Err(why) => {
            tracing::info!(why = %why, "hunting query refused");
            return bad("Query could not be parsed.");
        }
    };
    if let Some(d) = delay {
        if d >= timeout {
            tokio::time::sleep(timeout).await;
            // What Graph answered to queries that ran too long (microsoft-graph-docs #19954).
            return ctx.error(StatusCode::GATEWAY_TIMEOUT, "UnknownError", "");
        }
        tokio::time::sleep(d).await;
    }
    let rows = {
        let mut state = lock(&inner.hunting);
        let t = state.tenants.entry(ctx.tenant.clone()).or_default();
        run(t, &q, SystemTime::now())
    };
    results(&ctx, &inner, COLUMNS, rows, pascal)
}

/// The one other query accepted: m365-ingest's `check` probe, one EmailEvents row.
const PROBE_QUERY: &str = "EmailEvents | take 1";

/// One EmailEvents row, of the tenant's first message or a derived one.
fn probe_answer(ctx: &graph::Ctx, inner: &Inner, pascal: bool) -> Response {
    let m = lock(&inner.hunting)
        .tenants
        .get(&ctx.tenant)
        .and_then(|t| t.messages.first().cloned())
        .unwrap_or_else(|| HuntingMessage::derived("<PROBE0000@contoso.com>", SystemTime::now()));
    let r = m.recipients.first();
    let row = json!({
        "Timestamp": crate::time::iso7(crate::time::ticks(m.received)),
        "NetworkMessageId": r.map(|r| r.network_message_id.as_str()),
        "InternetMessageId": m.internet_message_id,
        "SenderFromAddress": m.sender,
        "RecipientEmailAddress": r.map(|r| r.address.as_str()),
        "Subject": m.subject,
        "DeliveryAction": r.map(|r| r.delivery_action.as_str()),
        "LatestDeliveryLocation": r.map(|r| r.latest_delivery_location.as_str()),
    });
    let columns: Vec<(&str, &str)> = row
        .as_object()
        .map(|o| {
            o.keys()
                .map(|k| {
                    (
                        k.as_str(),
                        if k == "Timestamp" {
                            "DateTime"
                        } else {
                            "String"
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    results(ctx, inner, &columns, vec![row.clone()], pascal)
}

/// A `huntingQueryResults` answer.
fn results(
    ctx: &graph::Ctx,
    inner: &Inner,
    columns: &[(&str, &str)],
    rows: Vec<Value>,
    pascal: bool,
) -> Response {
    let (name, ty) = if pascal {
        ("Name", "Type")
    } else {
        ("name", "type")
    };
    let schema: Vec<Value> = columns
        .iter()
        .map(|(n, t)| json!({ name: n, ty: t }))
        .collect();
    let body = json!({
        "@odata.context": format!("{}/graph/v1.0/$metadata#microsoft.graph.security.huntingQueryResults", inner.base_url),
        "schema": schema,
        "results": rows,
    });
    ctx.ok_whole(body.to_string())
}

pub(crate) fn routes() -> Router<Arc<Inner>> {
    Router::new().route(
        "/graph/v1.0/security/runHuntingQuery",
        post(run_hunting_query),
    )
}

impl Simulator {
    /// Registers a message advanced hunting knows in `tenant` (replacing one with the same
    /// internet message id).
    pub fn add_hunting_message(&self, tenant_id: &str, m: HuntingMessage) {
        let mut state = lock(&self.inner.hunting);
        let t = state.tenants.entry(tenant_key(tenant_id)).or_default();
        t.messages
            .retain(|x| x.internet_message_id != m.internet_message_id);
        t.messages.push(m);
    }

    /// Replaces a tenant's hunting faults; a CPU quota fault starts now.
    pub fn set_hunting_faults(&self, tenant_id: &str, f: HuntingFaults) {
        let mut state = lock(&self.inner.hunting);
        let t = state.tenants.entry(tenant_key(tenant_id)).or_default();
        t.cpu_blocked_until = f.cpu_quota_for.map(|d| Instant::now() + d);
        t.throttled_until = None;
        t.faults = f;
    }

    /// Every query text the tenant's admitted hunting calls carried, in order.
    pub fn hunting_queries(&self, tenant_id: &str) -> Vec<String> {
        lock(&self.inner.hunting)
            .tenants
            .get(&tenant_key(tenant_id))
            .map(|t| t.queries.clone())
            .unwrap_or_default()
    }
}
