//! The one advanced-hunting query the daemon sends, built from a fixed KQL template over a
//! bounded batch of message ids, each written as a KQL string literal so no id can change the
//! query's shape (a quote, a pipe, a backslash or a line break stays inside its literal).

/// The most ids one query carries.
pub const MAX_BATCH: usize = 100;
/// The longest id looked up, in characters; a longer one is no message id and is not sent.
pub const MAX_ID_CHARS: usize = 320;
/// The most sample rows (`make_list` size) one list of a context carries.
pub const MAX_LISTED: u32 = 100;

/// The query: the messages of the ids (by internet or network message id, one `in (…)` list),
/// every copy sent by the same sender with the same subject within the hour around them, who of
/// the same message's recipients clicked which URL; counts, plus the first `{n}` rows of each
/// list. One row per id found. `{ids}` and `{n}` are the only holes.
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

/// The smallest query `check` sends: one row of EmailEvents, which needs the same permission.
pub const PROBE_QUERY: &str = "EmailEvents | take 1";

/// `s` as a KQL string literal: double quotes, with the escapes Kusto documents (the enclosing
/// quote, `\\`, `\n`, `\t`), so the literal ends exactly at its closing quote. A single quote
/// needs no escape inside double quotes.
pub fn string_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether `id` may be looked up: not empty, at most [`MAX_ID_CHARS`], and no control character
/// other than the two [`string_literal`] escapes (Kusto documents no escape for the others, `\r`
/// included).
pub fn is_queryable(id: &str) -> bool {
    !id.trim().is_empty()
        && id.chars().count() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\t'))
}

/// The query over `ids` (1 to [`MAX_BATCH`] queryable ids) with lists of at most `first_n`
/// rows. `None` for an empty or oversized batch, an id [`is_queryable`] refuses, or a `first_n`
/// outside 1..=[`MAX_LISTED`].
pub fn build(ids: &[&str], first_n: u32) -> Option<String> {
    if ids.is_empty()
        || ids.len() > MAX_BATCH
        || !(1..=MAX_LISTED).contains(&first_n)
        || !ids.iter().all(|id| is_queryable(id))
    {
        return None;
    }
    let list = ids
        .iter()
        .map(|id| string_literal(id))
        .collect::<Vec<_>>()
        .join(", ");
    Some(
        TEMPLATE
            .replace("{n}", &first_n.to_string())
            .replacen("{ids}", &list, 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use m365_sim::{parse_hunting_query, tokenize_kql, KqlToken};

    const HOSTILE: &str =
        "<a\"b'c|d\\e\nf@evil.example> | take 100000\"; DeviceEvents | where 1==1 //";

    #[test]
    fn a_hostile_id_stays_one_literal_in_the_one_in_list() {
        let q = build(&[HOSTILE], 10).unwrap();
        let parsed = parse_hunting_query(&q).unwrap_or_else(|e| panic!("{e}\n{q}"));
        assert_eq!(parsed.ids, vec![HOSTILE.to_string()]);
        assert_eq!(parsed.first_n, 10);
        // The query is the template's tokens plus exactly one more string literal: the id.
        let template = tokenize_kql(&build(&["x"], 10).unwrap()).unwrap();
        let tokens = tokenize_kql(&q).unwrap();
        assert_eq!(tokens.len(), template.len());
        let differing: Vec<_> = tokens
            .iter()
            .zip(&template)
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            differing,
            vec![(&KqlToken::Str(HOSTILE.into()), &KqlToken::Str("x".into()))]
        );
        // And the literal sits inside the `in (…)` list.
        let at = tokens
            .iter()
            .position(|t| *t == KqlToken::Str(HOSTILE.into()))
            .unwrap();
        assert_eq!(
            &tokens[at - 2..at],
            &[KqlToken::Word("in".into()), KqlToken::Word("(".into())]
        );
        assert_eq!(tokens[at + 1], KqlToken::Word(")".into()));
    }

    #[test]
    fn every_special_character_is_escaped_and_round_trips() {
        for id in [
            "\"",
            "'",
            "|",
            "\\",
            "a\nb",
            "\n\tc",
            "\\\"",
            "ü@例え.jp",
            "{ids}",
            "{n}",
        ] {
            let lit = string_literal(id);
            assert_eq!(
                tokenize_kql(&lit).unwrap(),
                vec![KqlToken::Str(id.into())],
                "{lit}"
            );
            let q = build(&[id, "<other@x>"], 3).unwrap();
            let parsed = parse_hunting_query(&q).unwrap_or_else(|e| panic!("{e}\n{q}"));
            assert_eq!(parsed.ids, vec![id.to_string(), "<other@x>".to_string()]);
        }
    }

    #[test]
    fn batches_and_ids_are_bounded() {
        assert!(build(&[], 10).is_none());
        let many: Vec<String> = (0..=MAX_BATCH).map(|i| format!("<{i}@x>")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(build(&many, 10).is_none());
        assert!(build(&many[..MAX_BATCH], 10).is_some());
        assert!(build(&["<a@x>"], 0).is_none());
        assert!(build(&["<a@x>"], MAX_LISTED + 1).is_none());
        assert!(!is_queryable(""));
        assert!(!is_queryable("<a\u{0}@x>"));
        assert!(!is_queryable("<a\rb@x>"), "Kusto documents no \\r escape");
        assert!(!is_queryable(&"a".repeat(MAX_ID_CHARS + 1)));
        // The largest batch of the longest, most-escaped ids stays under the simulator's bound.
        let worst = "\"".repeat(MAX_ID_CHARS);
        let worst: Vec<&str> = vec![worst.as_str(); MAX_BATCH];
        let q = build(&worst, MAX_LISTED).unwrap();
        assert!(
            q.chars().count() <= m365_sim::MAX_QUERY_CHARS,
            "{}",
            q.len()
        );
    }
}
