//! What an advanced-hunting answer says about a message, as the normalized alert carries it in
//! `context.campaign`: the recipients of the same message, the campaign (same sender and subject
//! within the hour), where each copy landed, who clicked; counts plus the first N rows only.
//! Also the lenient reading of the answer (`schema` items as `name`/`type` or `Name`/`Type`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `context.campaign` of a normalized alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CampaignContext {
    /// The message's internet message id (shared by every recipient copy).
    pub internet_message_id: String,
    pub sender: String,
    pub subject: String,
    /// Recipients of this very message.
    pub recipients: Recipients,
    /// Messages from the same sender with the same subject within the hour, this one included.
    pub campaign: Campaign,
    /// Clicks on this message's URLs.
    pub clicks: Clicks,
    /// The query that answered.
    pub query: QueryInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recipients {
    /// Distinct recipient addresses.
    pub count: u64,
    /// The first N recipients.
    pub first: Vec<Recipient>,
}

/// One recipient copy and where it landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recipient {
    pub address: String,
    /// Where the copy is now, from the delivery action and the latest delivery action/location.
    pub landed: Landed,
    /// Microsoft's own values, for what `landed` simplifies.
    pub delivery_action: String,
    pub latest_delivery_action: String,
    pub latest_delivery_location: String,
}

/// Where a recipient copy ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Landed {
    Delivered,
    Junked,
    Blocked,
    Quarantined,
    /// Delivered, then moved away by zero-hour auto purge (or a later remediation).
    RemovedByZap,
    Other,
}

impl Landed {
    /// Reads EmailEvents' `DeliveryAction`, `LatestDeliveryAction` and `LatestDeliveryLocation`.
    pub fn from_columns(action: &str, latest_action: &str, latest_location: &str) -> Landed {
        let has = |s: &str, w: &str| s.to_ascii_lowercase().contains(w);
        // A move after delivery (ZAP, or an admin's remediation) is the latest fact.
        if has(action, "delivered")
            && (has(latest_action, "zap")
                || has(latest_action, "moved to")
                || has(latest_action, "delete"))
        {
            return Landed::RemovedByZap;
        }
        if has(latest_location, "quarantine") {
            return Landed::Quarantined;
        }
        if has(latest_location, "junk") || has(action, "junked") {
            return Landed::Junked;
        }
        if has(action, "blocked") {
            return Landed::Blocked;
        }
        if has(action, "delivered") || has(latest_location, "inbox") {
            return Landed::Delivered;
        }
        Landed::Other
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Campaign {
    /// Distinct recipients of every message of the campaign.
    pub recipients: u64,
    /// Distinct messages of the campaign, this one included.
    pub messages: u64,
    /// The first N recipients of the campaign's other messages.
    pub first_others: Vec<CampaignCopy>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CampaignCopy {
    pub address: String,
    pub internet_message_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Clicks {
    /// Click events.
    pub count: u64,
    /// Distinct accounts that clicked.
    pub clickers: u64,
    /// The first N clicks.
    pub first: Vec<Click>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Click {
    pub account: String,
    pub url: String,
    /// UrlClickEvents' `ActionType` (`ClickAllowed`, `ClickBlocked`, …).
    pub action: String,
    /// The user went on past Safe Links' warning page.
    pub clicked_through: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueryInfo {
    /// When the answer arrived (RFC 3339, UTC).
    pub at: String,
    /// Rows the query returned (one per message id found in its batch).
    pub rows: u64,
    /// How long the query took, in milliseconds.
    pub elapsed_ms: u64,
}

/// A `schema` item, either casing (its `type`/`Type` is not needed: each column is read by
/// what it must hold).
#[derive(Deserialize)]
struct Column {
    #[serde(alias = "Name")]
    name: String,
}

/// `huntingQueryResults`, read leniently.
#[derive(Deserialize)]
struct Results {
    #[serde(default, alias = "Schema")]
    schema: Vec<Column>,
    #[serde(default, alias = "Results")]
    results: Vec<Value>,
}

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable advanced hunting answer: {0}")]
pub struct ParseError(String);

/// The expected columns: a 200 without them is not an answer to our query.
const REQUIRED: &[&str] = &["Key", "InternetMessageId", "Recipients"];

/// Reads an answer to the template's query: each row under its `Key` (the id asked for).
pub fn parse(
    body: &[u8],
    query: &QueryInfo,
) -> Result<HashMap<String, CampaignContext>, ParseError> {
    let r: Results = serde_json::from_slice(body).map_err(|e| ParseError(e.to_string()))?;
    if !r.results.is_empty() {
        for c in REQUIRED {
            if !r.schema.iter().any(|s| s.name == *c) {
                return Err(ParseError(format!("no `{c}` column in the schema")));
            }
        }
    }
    let mut out = HashMap::new();
    for row in &r.results {
        let Some(key) = row.get("Key").and_then(Value::as_str) else {
            continue;
        };
        out.entry(key.to_string())
            .or_insert_with(|| context(row, query));
    }
    Ok(out)
}

fn text(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// A count column: a JSON number, or a string holding one (Int64 may come as text).
fn count(v: &Value, k: &str) -> u64 {
    match v.get(k) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A `dynamic` list column: a JSON array, or a string holding one.
fn list(v: &Value, k: &str) -> Vec<Value> {
    match v.get(k) {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn flag(v: &Value, k: &str) -> bool {
    match v.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        Some(Value::Number(n)) => n.as_u64() == Some(1),
        _ => false,
    }
}

fn context(row: &Value, query: &QueryInfo) -> CampaignContext {
    CampaignContext {
        internet_message_id: text(row, "InternetMessageId"),
        sender: text(row, "SenderFromAddress"),
        subject: text(row, "Subject"),
        recipients: Recipients {
            count: count(row, "Recipients"),
            first: list(row, "RecipientList")
                .iter()
                .map(|r| {
                    let (a, la, ll) = (
                        text(r, "delivery_action"),
                        text(r, "latest_delivery_action"),
                        text(r, "latest_delivery_location"),
                    );
                    Recipient {
                        address: text(r, "address"),
                        landed: Landed::from_columns(&a, &la, &ll),
                        delivery_action: a,
                        latest_delivery_action: la,
                        latest_delivery_location: ll,
                    }
                })
                .collect(),
        },
        campaign: Campaign {
            recipients: count(row, "CampaignRecipients"),
            messages: count(row, "CampaignMessages"),
            first_others: list(row, "CampaignList")
                .iter()
                .map(|c| CampaignCopy {
                    address: text(c, "address"),
                    internet_message_id: text(c, "internet_message_id"),
                })
                .collect(),
        },
        clicks: Clicks {
            count: count(row, "ClickCount"),
            clickers: count(row, "Clickers"),
            first: list(row, "ClickList")
                .iter()
                .map(|c| Click {
                    account: text(c, "account"),
                    url: text(c, "url"),
                    action: text(c, "action"),
                    clicked_through: flag(c, "clicked_through"),
                })
                .collect(),
        },
        query: query.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> QueryInfo {
        QueryInfo {
            at: "2026-11-27T22:00:00Z".into(),
            rows: 1,
            elapsed_ms: 12,
        }
    }

    const ROW: &str = r#"{"Key":"<m@x>","InternetMessageId":"<m@x>","SenderFromAddress":"a@evil","Subject":"Hi",
        "Recipients":2,"RecipientList":[{"address":"u1@c","delivery_action":"Delivered","latest_delivery_action":"Moved to quarantine","latest_delivery_location":"Quarantine"},
        {"address":"u2@c","delivery_action":"Junked","latest_delivery_action":"","latest_delivery_location":"Junk folder"}],
        "CampaignRecipients":"5","CampaignMessages":2,"CampaignList":"[{\"address\":\"u3@c\",\"internet_message_id\":\"<n@x>\"}]",
        "ClickCount":1,"Clickers":1,"ClickList":[{"account":"u1@c","url":"https://evil/x","action":"ClickedThrough","clicked_through":true}]}"#;

    #[test]
    fn both_schema_casings_are_read() {
        for (n, t) in [("name", "type"), ("Name", "Type")] {
            let body = format!(
                r#"{{"schema":[{{"{n}":"Key","{t}":"String"}},{{"{n}":"InternetMessageId","{t}":"String"}},{{"{n}":"Recipients","{t}":"Int64"}}],"results":[{ROW}]}}"#
            );
            let got = parse(body.as_bytes(), &info()).unwrap();
            let c = &got["<m@x>"];
            assert_eq!(c.recipients.count, 2);
            assert_eq!(c.recipients.first[0].landed, Landed::RemovedByZap);
            assert_eq!(c.recipients.first[1].landed, Landed::Junked);
            assert_eq!((c.campaign.recipients, c.campaign.messages), (5, 2));
            assert_eq!(c.campaign.first_others[0].internet_message_id, "<n@x>");
            assert_eq!((c.clicks.count, c.clicks.clickers), (1, 1));
            assert!(c.clicks.first[0].clicked_through);
        }
    }

    #[test]
    fn an_answer_without_our_columns_is_refused_and_an_empty_one_is_nothing_found() {
        let wrong =
            br#"{"schema":[{"name":"Timestamp","type":"DateTime"}],"results":[{"Timestamp":"x"}]}"#;
        assert!(parse(wrong, &info()).is_err());
        assert!(parse(b"<html>", &info()).is_err());
        let empty = br#"{"schema":[],"results":[]}"#;
        assert!(parse(empty, &info()).unwrap().is_empty());
    }

    #[test]
    fn landing_places_are_told_apart() {
        assert_eq!(
            Landed::from_columns("Delivered", "", "Inbox/folder"),
            Landed::Delivered
        );
        assert_eq!(
            Landed::from_columns("Blocked", "", "Quarantine"),
            Landed::Quarantined
        );
        assert_eq!(
            Landed::from_columns("Blocked", "", "Dropped"),
            Landed::Blocked
        );
        assert_eq!(
            Landed::from_columns("Junked", "", "Junk folder"),
            Landed::Junked
        );
        assert_eq!(Landed::from_columns("Replaced", "", ""), Landed::Other);
    }
}
