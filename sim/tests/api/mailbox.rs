//! The reporting mailbox: delta walks and rounds, moves and deletes, expired sync states, the
//! 5,000-message filter cap, attachments and their `$value`, roles, access policies, Outlook
//! throttling, the report submission policy, and what the generated MIME holds.

use std::collections::HashSet;
use std::time::Duration;

use m365_sim::{
    DeltaExpiry, FormatMix, MailFaults, Report, ReportAttachment, ReportSpec, Simulator,
    ValueRefusal, WrapperFormat,
};
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::helpers::*;

const UPN: &str = "phish-reports@contoso.com";
const IMMUTABLE: &str = "IdType=\"ImmutableId\"";

async fn mail_token(sim: &Simulator) -> String {
    app_token(sim, "mail-reader", &["Mail.Read"], GRAPH_SCOPE).await
}

/// GET with `Prefer` values (each sent as its own header) and a client-request-id.
async fn mget(url: &str, token: &str, prefer: &[&str]) -> (u16, HeaderMap, Vec<u8>) {
    let mut rb = http()
        .get(url)
        .bearer_auth(token)
        .header("client-request-id", "c0ffee00-0000-4000-8000-000000000001");
    for p in prefer {
        rb = rb.header("Prefer", *p);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

async fn mjson(url: &str, token: &str, prefer: &[&str]) -> (u16, HeaderMap, Value) {
    let (s, h, b) = mget(url, token, prefer).await;
    let v = serde_json::from_slice(&b)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b)));
    (s, h, v)
}

fn delta_url(sim: &Simulator, mailbox: &str, folder: &str, query: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse(&format!(
        "{}/v1.0/users/{mailbox}/mailFolders/{folder}/messages/delta",
        sim.graph_url()
    ))
    .unwrap();
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url.to_string()
}

/// Follows nextLinks to the deltaLink: (items, deltaLink, pages).
async fn walk(first: &str, token: &str, prefer: &[&str]) -> (Vec<Value>, String, usize) {
    let mut items = Vec::new();
    let mut url = first.to_string();
    let mut pages = 0;
    loop {
        let (s, _, page) = mjson(&url, token, prefer).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        items.extend(page["value"].as_array().unwrap().iter().cloned());
        if let Some(next) = page["@odata.nextLink"].as_str() {
            assert!(page.get("@odata.deltaLink").is_none());
            url = next.to_string();
            continue;
        }
        let delta = page["@odata.deltaLink"]
            .as_str()
            .expect("deltaLink")
            .to_string();
        return (items, delta, pages);
    }
}

fn id_set(items: &[Value]) -> HashSet<String> {
    items
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

fn spec(count: usize, seed: u64) -> ReportSpec {
    ReportSpec::new(count, secs_ago(86_400 * 2), secs_ago(60), seed)
}

#[tokio::test]
async fn a_full_walk_returns_every_report_once_and_new_ones_come_in_the_next_round() {
    let sim = start().await;
    sim.add_mailbox(TENANT, UPN);
    let facts = sim.add_reports(TENANT, UPN, spec(37, 1));
    let token = mail_token(&sim).await;
    let prefer = ["odata.maxpagesize=10", IMMUTABLE];
    let first = delta_url(&sim, UPN, "inbox", &[]);
    let (s, h, page) = mjson(&first, &token, &prefer).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["value"].as_array().unwrap().len(), 10);
    let applied = h["preference-applied"].to_str().unwrap();
    assert!(applied.contains("odata.maxpagesize=10") && applied.contains("ImmutableId"));
    assert!(h.contains_key("request-id") && h.contains_key("date"));
    assert_eq!(
        h["client-request-id"],
        "c0ffee00-0000-4000-8000-000000000001"
    );
    let next = page["@odata.nextLink"].as_str().unwrap();
    assert!(next.contains("$skiptoken=") && !next.contains("$select"));
    assert_eq!(page["value"][0]["@odata.type"], "#microsoft.graph.message");

    let (items, delta, pages) = walk(&first, &token, &prefer).await;
    assert_eq!(pages, 4);
    assert_eq!(items.len(), 37, "each report exactly once");
    let want: HashSet<String> = facts.iter().map(|f| f.immutable_id.clone()).collect();
    assert_eq!(id_set(&items), want);
    assert!(delta.contains("$deltatoken="));
    // Newest first, and the Graph fields a client needs are there.
    let times: Vec<&str> = items
        .iter()
        .map(|i| i["receivedDateTime"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]));
    let one = &items[0];
    for k in [
        "subject",
        "from",
        "sender",
        "internetMessageId",
        "body",
        "hasAttachments",
        "parentFolderId",
    ] {
        assert!(one.get(k).is_some(), "{k}: {one}");
    }

    // Nothing new: an empty round and a fresh deltaLink.
    let (quiet, delta2, _) = walk(&delta, &token, &prefer).await;
    assert!(quiet.is_empty());
    // A new report appears in the next round, alone.
    let new = sim.add_reports(
        TENANT,
        UPN,
        ReportSpec::new(1, secs_ago(1), secs_ago(0), 99),
    );
    let (round, _, _) = walk(&delta2, &token, &prefer).await;
    assert_eq!(id_set(&round), HashSet::from([new[0].immutable_id.clone()]));
    // Without the immutable-id preference the ids are the mutable kind.
    let (mutable, _, _) = walk(&first, &token, &["odata.maxpagesize=50"]).await;
    assert_eq!(mutable.len(), 38);
    assert!(mutable
        .iter()
        .all(|m| m["id"].as_str().unwrap().starts_with("AAMkAD")));
    assert!(items
        .iter()
        .all(|m| m["id"].as_str().unwrap().starts_with("AAkALg")));
}

#[tokio::test]
async fn a_walk_is_a_snapshot_and_page_size_is_clamped_at_100() {
    let sim = start().await;
    sim.add_reports(TENANT, UPN, spec(130, 2));
    let token = mail_token(&sim).await;
    let first = delta_url(&sim, UPN, "inbox", &[]);
    let (s, h, page) = mjson(&first, &token, &["odata.maxpagesize=500"]).await;
    assert_eq!(s, 200);
    assert_eq!(page["value"].as_array().unwrap().len(), 100);
    assert_eq!(h["preference-applied"], "odata.maxpagesize=100");
    // Default page size, and one header carrying both preferences.
    let both = format!("odata.maxpagesize=7, {IMMUTABLE}");
    let (_, _, page) = mjson(&first, &token, &[both.as_str()]).await;
    assert_eq!(page["value"].as_array().unwrap().len(), 7);
    assert!(page["value"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("AAkALg"));
    let (_, _, page) = mjson(&first, &token, &[]).await;
    assert_eq!(page["value"].as_array().unwrap().len(), 10);

    // Added during the walk: not in this walk, in the next round.
    let (_, _, p1) = mjson(&first, &token, &["odata.maxpagesize=100", IMMUTABLE]).await;
    let added = sim.add_reports(TENANT, UPN, ReportSpec::new(1, secs_ago(1), secs_ago(0), 5));
    let next = p1["@odata.nextLink"].as_str().unwrap();
    let (rest, delta, _) = walk(next, &token, &["odata.maxpagesize=100", IMMUTABLE]).await;
    assert_eq!(rest.len(), 30);
    assert!(!id_set(&rest).contains(&added[0].immutable_id));
    let (round, _, _) = walk(&delta, &token, &[IMMUTABLE]).await;
    assert_eq!(
        id_set(&round),
        HashSet::from([added[0].immutable_id.clone()])
    );
}

#[tokio::test]
async fn a_moved_report_comes_as_removed_and_keeps_its_immutable_id() {
    let sim = start().await;
    let facts = sim.add_reports(TENANT, UPN, spec(5, 3));
    let token = mail_token(&sim).await;
    let (items, delta, _) = walk(&delta_url(&sim, UPN, "inbox", &[]), &token, &[]).await;
    let moved = &facts[2];
    // Find its mutable id in the walk by its internetMessageId.
    let old_mutable = items
        .iter()
        .find(|i| i["internetMessageId"] == moved.internet_message_id.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sim.move_message(TENANT, UPN, &moved.immutable_id, "archive"));
    let (round, _, _) = walk(&delta, &token, &[]).await;
    assert_eq!(round.len(), 1, "{round:?}");
    assert_eq!(round[0]["id"], old_mutable.as_str());
    assert_eq!(round[0]["@removed"]["reason"], "changed");
    assert_eq!(round[0]["@odata.type"], "#microsoft.graph.message");

    // By immutable id it is still there, with the same id; the mutable id changed.
    let url = format!(
        "{}/v1.0/users/{UPN}/messages/{}",
        sim.graph_url(),
        moved.immutable_id
    );
    let (s, _, m) = mjson(&url, &token, &[IMMUTABLE]).await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["id"], moved.immutable_id.as_str());
    let archive = sim.mail_folder_id(TENANT, UPN, "archive").unwrap();
    assert_eq!(m["parentFolderId"], archive.as_str());
    let (_, _, m2) = mjson(&url, &token, &[]).await;
    let new_mutable = m2["id"].as_str().unwrap();
    assert_ne!(new_mutable, old_mutable);
    // The old mutable id no longer resolves.
    let stale = format!(
        "{}/v1.0/users/{UPN}/messages/{old_mutable}",
        sim.graph_url()
    );
    let (s, _, e) = mjson(&stale, &token, &[]).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("ErrorItemNotFound"))
    );
    // The archive folder (by id) lists it under the new mutable id.
    let (arch, _, _) = walk(&delta_url(&sim, UPN, &archive, &[]), &token, &[]).await;
    assert_eq!(id_set(&arch), HashSet::from([new_mutable.to_string()]));

    // With immutable ids, a removal carries the immutable id.
    let (_, d2, _) = walk(&delta_url(&sim, UPN, "inbox", &[]), &token, &[IMMUTABLE]).await;
    assert!(sim.delete_message(TENANT, UPN, &facts[0].immutable_id));
    let (round, _, _) = walk(&d2, &token, &[IMMUTABLE]).await;
    assert_eq!(round.len(), 1);
    assert_eq!(round[0]["id"], facts[0].immutable_id.as_str());
    assert_eq!(round[0]["@removed"]["reason"], "deleted");
    let gone = format!(
        "{}/v1.0/users/{UPN}/messages/{}",
        sim.graph_url(),
        facts[0].immutable_id
    );
    assert_eq!(mjson(&gone, &token, &[]).await.0, 404);
}

#[tokio::test]
async fn updates_and_replays_come_in_a_round() {
    let sim = start().await;
    let facts = sim.add_reports(TENANT, UPN, spec(4, 4));
    let token = mail_token(&sim).await;
    let (_, delta, _) = walk(&delta_url(&sim, UPN, "inbox", &[]), &token, &[IMMUTABLE]).await;
    assert!(sim.set_message_read(TENANT, UPN, &facts[1].immutable_id, true));
    sim.set_mail_faults(
        TENANT,
        MailFaults {
            duplicate_next_rounds: 1,
            ..MailFaults::default()
        },
    );
    let (round, delta2, _) = walk(&delta, &token, &[IMMUTABLE]).await;
    assert_eq!(round.len(), 2, "the update and one replay: {round:?}");
    assert_eq!(round[0]["id"], facts[1].immutable_id.as_str());
    assert_eq!(round[0]["isRead"], true);
    assert!(facts
        .iter()
        .any(|f| round[1]["id"] == f.immutable_id.as_str()));
    let (quiet, _, _) = walk(&delta2, &token, &[IMMUTABLE]).await;
    assert!(quiet.is_empty());
}

#[tokio::test]
async fn a_filtered_walk_stops_at_the_newest_5000() {
    let sim = start().await;
    let mut s = spec(6000, 5);
    s.mix = FormatMix::only(WrapperFormat::ItemAttachment);
    let mut facts = sim.add_reports(TENANT, UPN, s);
    let token = mail_token(&sim).await;
    let first = delta_url(
        &sim,
        UPN,
        "inbox",
        &[
            ("$filter", "receivedDateTime ge 2000-01-01T00:00:00Z"),
            ("$select", "subject,receivedDateTime"),
            ("$orderby", "receivedDateTime desc"),
        ],
    );
    let (items, _, pages) = walk(&first, &token, &["odata.maxpagesize=100", IMMUTABLE]).await;
    assert_eq!(items.len(), 5000);
    assert_eq!(pages, 50);
    assert_eq!(items[0].as_object().unwrap().len(), 5, "{}", items[0]);
    assert!(items[0].get("body").is_none() && items[0].get("subject").is_some());
    facts.sort_by_key(|f| std::cmp::Reverse(f.received));
    let newest: HashSet<String> = facts[..5000]
        .iter()
        .map(|f| f.immutable_id.clone())
        .collect();
    assert_eq!(id_set(&items), newest);
    // Unfiltered: all 6000.
    let (all, _, _) = walk(
        &delta_url(&sim, UPN, "inbox", &[("$select", "subject")]),
        &token,
        &["odata.maxpagesize=100"],
    )
    .await;
    assert_eq!(all.len(), 6000);
}

#[tokio::test]
async fn query_options_are_checked() {
    let sim = start().await;
    sim.add_reports(TENANT, UPN, spec(3, 6));
    let token = mail_token(&sim).await;
    for (q, code) in [
        (("$filter", "subject eq 'x'"), "ErrorInvalidUrlQueryFilter"),
        (
            ("$filter", "receivedDateTime lt 2024-01-01T00:00:00Z"),
            "ErrorInvalidUrlQueryFilter",
        ),
        (("$select", "subject,nonsense"), "RequestBroker--ParseUri"),
        (("$orderby", "receivedDateTime asc"), "ErrorInvalidUrlQuery"),
        (("$expand", "attachments"), "ErrorInvalidUrlQuery"),
        (("changeType", "moved"), "ErrorInvalidUrlQuery"),
    ] {
        let (s, _, e) = mjson(&delta_url(&sim, UPN, "inbox", &[q]), &token, &[]).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (400, Some(code)),
            "{q:?}: {e}"
        );
    }
    // Options on a token request are refused.
    let (_, _, p) = mjson(
        &delta_url(&sim, UPN, "inbox", &[]),
        &token,
        &["odata.maxpagesize=1"],
    )
    .await;
    let next = format!("{}&$select=subject", p["@odata.nextLink"].as_str().unwrap());
    assert_eq!(mjson(&next, &token, &[]).await.0, 400);
    // Unknown mailbox and folder; UPN case and object id both work.
    let (s, _, e) = mjson(
        &delta_url(&sim, "nobody@contoso.com", "inbox", &[]),
        &token,
        &[],
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("ErrorInvalidUser"))
    );
    let (s, _, e) = mjson(&delta_url(&sim, UPN, "outbox", &[]), &token, &[]).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (404, Some("ErrorItemNotFound"))
    );
    let id = sim.add_mailbox(TENANT, UPN);
    for m in [UPN.to_uppercase(), id] {
        let (s, _, p) = mjson(&delta_url(&sim, &m, "InBox", &[]), &token, &[]).await;
        assert_eq!((s, p["value"].as_array().unwrap().len()), (200, 3));
    }
    // changeType=deleted: the first walk is empty.
    let (items, _, _) = walk(
        &delta_url(&sim, UPN, "inbox", &[("changeType", "deleted")]),
        &token,
        &[],
    )
    .await;
    assert!(items.is_empty());
}

#[tokio::test]
async fn expired_tokens_answer_410_with_location_or_400_sync_state_not_found() {
    let sim = start().await;
    sim.add_reports(TENANT, UPN, spec(3, 7));
    let token = mail_token(&sim).await;
    let first = delta_url(&sim, UPN, "inbox", &[("$select", "subject")]);
    let (_, delta, _) = walk(&first, &token, &[]).await;
    sim.expire_delta_tokens(TENANT, DeltaExpiry::Gone);
    let (s, h, e) = mjson(&delta, &token, &[]).await;
    assert_eq!(s, 410, "{e}");
    assert_eq!(e["error"]["code"], "resyncRequired");
    assert_eq!(e["error"]["message"], "Resync required. Replace any local cached messages with the versions from the server. This can be due to a delta token expiration.");
    let location = h["location"].to_str().unwrap();
    assert!(
        location.ends_with("/messages/delta?%24select=subject"),
        "{location}"
    );
    assert!(!location.contains("token"));
    // The Location starts a fresh walk.
    let (items, delta2, _) = walk(location, &token, &[]).await;
    assert_eq!(items.len(), 3);
    let (_, _, p) = mjson(&first, &token, &["odata.maxpagesize=1"]).await;
    let skip = p["@odata.nextLink"].as_str().unwrap().to_string();
    sim.expire_delta_tokens(TENANT, DeltaExpiry::SyncStateNotFound);
    for url in [delta2, skip] {
        let (s, _, e) = mjson(&url, &token, &[]).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (400, Some("syncStateNotFound")),
            "{e}"
        );
    }
    // A token never issued.
    let bogus = format!("{}?$deltatoken=bm9wZQ", delta_url(&sim, UPN, "inbox", &[]));
    assert_eq!(mjson(&bogus, &token, &[]).await.0, 400);
}

fn attachment_url(sim: &Simulator, msg: &str, rest: &str) -> String {
    format!(
        "{}/v1.0/users/{UPN}/messages/{msg}/attachments{rest}",
        sim.graph_url()
    )
}

#[tokio::test]
async fn attachments_of_item_eml_and_msg_reports() {
    let sim = start().await;
    let token = mail_token(&sim).await;
    for (i, format) in [
        WrapperFormat::ItemAttachment,
        WrapperFormat::EmlAttachment,
        WrapperFormat::MsgAttachment,
        WrapperFormat::ThirdParty,
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = spec(3, 10 + i as u64);
        s.mix = FormatMix::only(format);
        for f in sim.add_reports(TENANT, UPN, s) {
            assert_eq!(f.format, format);
            let (st, _, list) =
                mjson(&attachment_url(&sim, &f.immutable_id, ""), &token, &[]).await;
            assert_eq!(st, 200, "{list}");
            let atts = list["value"].as_array().unwrap();
            assert_eq!(
                atts.iter()
                    .map(|a| a["id"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>(),
                f.attachment_ids
            );
            let first = &atts[0];
            let (vs, vh, bytes) = mget(
                &attachment_url(
                    &sim,
                    &f.immutable_id,
                    &format!("/{}/$value", f.attachment_ids[0]),
                ),
                &token,
                &[],
            )
            .await;
            assert_eq!(vs, 200);
            let orig = &f.originals[0];
            match format {
                WrapperFormat::ItemAttachment => {
                    assert_eq!(first["@odata.type"], "#microsoft.graph.itemAttachment");
                    assert!(first.get("contentBytes").is_none());
                    assert!(
                        first["contentType"].is_null() || first["contentType"] == "message/rfc822"
                    );
                    assert_eq!(vh["content-type"], "text/plain");
                    let text = String::from_utf8_lossy(&bytes);
                    assert!(text.contains(orig.message_id.as_deref().unwrap()));
                }
                WrapperFormat::EmlAttachment | WrapperFormat::ThirdParty => {
                    assert_eq!(first["@odata.type"], "#microsoft.graph.fileAttachment");
                    assert_eq!(first["contentType"], "message/rfc822");
                    assert!(first["name"].as_str().unwrap().ends_with(".eml"));
                    let decoded = base64_decode(first["contentBytes"].as_str().unwrap());
                    assert_eq!(decoded, bytes);
                    if format == WrapperFormat::ThirdParty {
                        assert_eq!(atts.len(), 2);
                        assert_eq!(atts[1]["contentType"], "text/plain");
                    }
                }
                _ => {
                    assert_eq!(first["contentType"], "application/vnd.ms-outlook");
                    assert!(first["name"].as_str().unwrap().ends_with(".msg"));
                    assert_eq!(&bytes[..4], &[0xD0, 0xCF, 0x11, 0xE0], "a compound file");
                    assert_eq!(vh["content-type"], "application/vnd.ms-outlook");
                }
            }
            // Listing without the bytes.
            let (_, _, slim) = mjson(
                &attachment_url(&sim, &f.immutable_id, "?$select=id,name,contentType,size"),
                &token,
                &[],
            )
            .await;
            assert!(slim["value"][0].get("contentBytes").is_none());
            assert!(slim["value"][0]["size"].as_u64().unwrap() > 0);
            // The whole report's MIME.
            let (ms, mh, mime) = mget(
                &format!(
                    "{}/v1.0/users/{UPN}/messages/{}/$value",
                    sim.graph_url(),
                    f.immutable_id
                ),
                &token,
                &[],
            )
            .await;
            assert_eq!(
                (ms, mh["content-type"].to_str().unwrap()),
                (200, "text/plain")
            );
            assert!(String::from_utf8_lossy(&mime).contains(&f.internet_message_id));
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    // A tiny decoder so the tests need no base64 dependency of their own.
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c).unwrap() as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn reference_attachments_answer_405_and_faults_hit_value() {
    let sim = start().await;
    let token = mail_token(&sim).await;
    let original =
        b"From: a@b.example\r\nSubject: hi\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n".to_vec();
    let mut r = Report::eml(
        "alexw@contoso.com",
        "Phishing: hi",
        secs_ago(10),
        original.clone(),
    );
    r.attachments.push(ReportAttachment::Reference {
        name: "Screenshot.png".into(),
        source_url: "https://contoso-my.sharepoint.com/x.png".into(),
    });
    let f = sim.add_report(TENANT, UPN, r);
    assert_eq!(f.verdict, "phishing");
    assert_eq!(f.originals[0].message_id.as_deref(), Some("<x@y>"));
    let (_, _, list) = mjson(&attachment_url(&sim, &f.immutable_id, ""), &token, &[]).await;
    assert_eq!(
        list["value"][1]["@odata.type"],
        "#microsoft.graph.referenceAttachment"
    );
    let value = |aid: &str| attachment_url(&sim, &f.immutable_id, &format!("/{aid}/$value"));
    let (s, _, _) = mget(&value(&f.attachment_ids[1]), &token, &[]).await;
    assert_eq!(s, 405);
    let (s, _, b) = mget(&value(&f.attachment_ids[0]), &token, &[]).await;
    assert_eq!((s, b.clone()), (200, original.clone()));

    sim.set_mail_faults(
        TENANT,
        MailFaults {
            truncated: vec![f.attachment_ids[0].clone()],
            ..MailFaults::default()
        },
    );
    let (_, _, b) = mget(&value(&f.attachment_ids[0]), &token, &[]).await;
    assert_eq!(b, original[..original.len() / 2]);
    for (refusal, status) in [
        (ValueRefusal::ServerError, 500),
        (ValueRefusal::AccessDenied, 403),
    ] {
        sim.set_mail_faults(
            TENANT,
            MailFaults {
                refuse_value: vec![(f.attachment_ids[0].clone(), refusal)],
                ..MailFaults::default()
            },
        );
        for _ in 0..2 {
            assert_eq!(
                mget(&value(&f.attachment_ids[0]), &token, &[]).await.0,
                status
            );
        }
    }
    // Deleted between the delta listing and the attachment fetch.
    sim.set_mail_faults(
        TENANT,
        MailFaults {
            delete_on_fetch: vec![f.immutable_id.clone()],
            ..MailFaults::default()
        },
    );
    let (items, delta, _) = walk(&delta_url(&sim, UPN, "inbox", &[]), &token, &[IMMUTABLE]).await;
    assert_eq!(id_set(&items), HashSet::from([f.immutable_id.clone()]));
    assert_eq!(mget(&value(&f.attachment_ids[0]), &token, &[]).await.0, 404);
    assert_eq!(
        mget(&attachment_url(&sim, &f.immutable_id, ""), &token, &[])
            .await
            .0,
        404
    );
    let (round, _, _) = walk(&delta, &token, &[IMMUTABLE]).await;
    assert_eq!(round[0]["@removed"]["reason"], "deleted");
}

#[tokio::test]
async fn many_attachments_page_by_ten() {
    let sim = start().await;
    let token = mail_token(&sim).await;
    let mut r = Report::item(
        "alexw@contoso.com",
        "3|x",
        secs_ago(5),
        b"Subject: x\r\n\r\nx\r\n".to_vec(),
    );
    for i in 0..13 {
        r.attachments.push(ReportAttachment::File {
            name: format!("f{i}.txt"),
            content_type: "text/plain".into(),
            bytes: vec![b'a'; i + 1],
        });
    }
    let f = sim.add_report(TENANT, UPN, r);
    let (_, _, p1) = mjson(&attachment_url(&sim, &f.immutable_id, ""), &token, &[]).await;
    assert_eq!(p1["value"].as_array().unwrap().len(), 10);
    let next = p1["@odata.nextLink"].as_str().unwrap();
    let (_, _, p2) = mjson(next, &token, &[]).await;
    assert_eq!(p2["value"].as_array().unwrap().len(), 4);
    assert!(p2.get("@odata.nextLink").is_none());
}

#[tokio::test]
async fn roles_and_access_policies() {
    let sim = start().await;
    let f = sim.add_reports(TENANT, UPN, spec(2, 8));
    sim.add_mailbox(TENANT, "ceo@contoso.com");
    // No mail role at all.
    let none = graph_token(&sim).await;
    let (s, _, e) = mjson(&delta_url(&sim, UPN, "inbox", &[]), &none, &[]).await;
    assert_eq!(s, 403);
    assert_eq!(e["error"]["code"], "ErrorAccessDenied");
    assert_eq!(
        e["error"]["message"],
        "Access is denied. Check credentials and try again."
    );
    // ReadBasic: metadata yes, bodies and attachments no.
    let basic = app_token(&sim, "basic-reader", &["Mail.ReadBasic.All"], GRAPH_SCOPE).await;
    let (s, _, p) = mjson(&delta_url(&sim, UPN, "inbox", &[]), &basic, &[]).await;
    assert_eq!(s, 200);
    assert!(p["value"][0].get("subject").is_some() && p["value"][0].get("body").is_none());
    assert_eq!(
        mget(&attachment_url(&sim, &f[0].immutable_id, ""), &basic, &[])
            .await
            .0,
        403
    );
    let mv = format!(
        "{}/v1.0/users/{UPN}/messages/{}/$value",
        sim.graph_url(),
        f[0].immutable_id
    );
    assert_eq!(mget(&mv, &basic, &[]).await.0, 403);
    // An Application Access Policy scoped to the reporting mailbox.
    let token = mail_token(&sim).await;
    sim.set_mail_access_policy(TENANT, "mail-reader", Some(vec![UPN.to_string()]));
    assert_eq!(
        mjson(&delta_url(&sim, UPN, "inbox", &[]), &token, &[])
            .await
            .0,
        200
    );
    let (s, _, e) = mjson(
        &delta_url(&sim, "ceo@contoso.com", "inbox", &[]),
        &token,
        &[],
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(e["error"]["code"], "ErrorAccessDenied");
    assert_eq!(e["error"]["message"], "Access to OData is disabled.");
    sim.set_mail_access_policy(TENANT, "mail-reader", None);
    assert_eq!(
        mjson(
            &delta_url(&sim, "ceo@contoso.com", "inbox", &[]),
            &token,
            &[]
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn five_concurrent_requests_trip_the_mailbox_concurrency_limit() {
    let sim = start().await;
    sim.add_reports(TENANT, UPN, spec(2, 9));
    let token = mail_token(&sim).await;
    sim.set_mail_faults(
        TENANT,
        MailFaults {
            delay: Some(Duration::from_millis(400)),
            ..MailFaults::default()
        },
    );
    assert_eq!(sim.mail_throttle_violations(), 0);
    let url = delta_url(&sim, UPN, "inbox", &[]);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move { mjson(&url, &token, &[]).await }));
    }
    let mut throttled = 0;
    for t in tasks {
        let (s, h, body) = t.await.unwrap();
        if s == 429 {
            throttled += 1;
            assert_eq!(body["error"]["code"], "ApplicationThrottled");
            assert_eq!(
                body["error"]["message"],
                "Application is over its MailboxConcurrency limit."
            );
            assert_eq!(h["retry-after"], "1");
        } else {
            assert_eq!(s, 200);
        }
    }
    assert_eq!(throttled, 1);
    assert_eq!(sim.mail_throttle_violations(), 1);

    // The request limit per window, and the forced-429 fault (not a violation).
    sim.set_mail_faults(
        TENANT,
        MailFaults {
            requests_per_window: 3,
            retry_after_secs: 0,
            ..MailFaults::default()
        },
    );
    for _ in 0..3 {
        assert_eq!(mjson(&url, &token, &[]).await.0, 200);
    }
    let (s, _, e) = mjson(&url, &token, &[]).await;
    assert_eq!(
        (s, e["error"]["message"].as_str()),
        (429, Some("Application is over its request limit."))
    );
    assert_eq!(sim.mail_throttle_violations(), 2);
    sim.set_mail_faults(
        TENANT,
        MailFaults {
            throttle_next: 2,
            retry_after_secs: 0,
            ..MailFaults::default()
        },
    );
    assert_eq!(mjson(&url, &token, &[]).await.0, 429);
    assert_eq!(mjson(&url, &token, &[]).await.0, 429);
    assert_eq!(mjson(&url, &token, &[]).await.0, 200);
    assert_eq!(sim.mail_throttle_violations(), 2);
}

#[tokio::test]
async fn the_submission_policy_names_the_reporting_mailbox() {
    let sim = start().await;
    let token = app_token(
        &sim,
        "policy-reader",
        &["ThreatSubmission.Read.All"],
        GRAPH_SCOPE,
    )
    .await;
    let path = "/beta/security/threatSubmission/emailThreatSubmissionPolicies";
    let (s, p) = graph_get(&sim, &token, path, &[]).await;
    assert_eq!(s, 200, "{p}");
    let v = &p["value"][0];
    assert_eq!(v["id"], "DefaultReportSubmissionPolicy");
    assert!(v["customizedReportRecipientEmailAddress"].is_null());
    assert_eq!(v["isReportToCustomizedEmailAddressEnabled"], false);
    assert_eq!(v["isReportToMicrosoftEnabled"], true);
    assert_eq!(v["isAlwaysReportEnabledForUsers"], true);
    assert_eq!(v["isAskMeEnabledForUsers"], false);
    sim.set_report_policy(TENANT, Some(UPN));
    let (_, p) = graph_get(&sim, &token, path, &[]).await;
    assert_eq!(p["value"][0]["customizedReportRecipientEmailAddress"], UPN);
    assert_eq!(
        p["value"][0]["isReportToCustomizedEmailAddressEnabled"],
        true
    );
    // The mail role does not grant it.
    let mail = mail_token(&sim).await;
    assert_eq!(graph_get(&sim, &mail, path, &[]).await.0, 403);
}

/// The unfolded value of a header field in raw MIME.
fn header(mime: &str, name: &str) -> Option<String> {
    let head = mime.split("\r\n\r\n").next().unwrap();
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    unfolded.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[tokio::test]
async fn generated_originals_hold_the_facts_they_claim() {
    let sim = start().await;
    let token = mail_token(&sim).await;
    let mut s = spec(60, 21);
    s.mix = FormatMix::only(WrapperFormat::ItemAttachment);
    let facts = sim.add_reports(TENANT, UPN, s);
    let mut dmarc_failures = 0;
    for f in &facts {
        let (st, _, bytes) = mget(
            &attachment_url(
                &sim,
                &f.immutable_id,
                &format!("/{}/$value", f.attachment_ids[0]),
            ),
            &token,
            &[],
        )
        .await;
        assert_eq!(st, 200);
        let mime = String::from_utf8_lossy(&bytes).to_string();
        assert!(
            !mime.replace("\r\n", "").contains('\n'),
            "CRLF line ends only"
        );
        let o = &f.originals[0];
        assert_eq!(header(&mime, "Message-ID"), o.message_id);
        assert_eq!(
            header(&mime, "X-MS-Exchange-Organization-Network-Message-Id"),
            o.network_message_id
        );
        assert_eq!(
            header(&mime, "X-MS-Exchange-CrossTenant-Id").as_deref(),
            Some(TENANT)
        );
        assert!(header(&mime, "X-Microsoft-Antispam-Message-Info").is_some());
        assert!(header(&mime, "X-Microsoft-Antispam")
            .unwrap()
            .starts_with("BCL:"));
        assert!(header(&mime, "From").unwrap().contains(&o.from));
        let forefront = header(&mime, "X-Forefront-Antispam-Report").unwrap();
        assert!(forefront.starts_with(&format!(
            "CIP:{};CTRY:",
            o.originating_ip.as_deref().unwrap()
        )));
        assert!(
            forefront.contains(";SCL:")
                && forefront.contains(";SFV:")
                && forefront.contains(";CAT:")
        );
        let auth = header(&mime, "Authentication-Results").unwrap();
        assert!(auth.contains("spf=") && auth.contains("dkim=") && auth.contains("dmarc="));
        assert_eq!(auth.contains("dmarc=fail"), o.dmarc_fails.unwrap());
        dmarc_failures += usize::from(o.dmarc_fails.unwrap());
        let hops = mime
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .matches("Received: from")
            .count();
        assert!((4..=5).contains(&hops), "{hops} hops");
        // Safe Links wrap every link; the real target is percent-encoded inside.
        if o.charset != "shift_jis" && o.charset != "gb2312" && !o.urls.is_empty() {
            assert!(
                mime.contains("safelinks.protection.outlook.com/?url=3Dhttps%3A%2F%2F")
                    || mime
                        .replace("=\r\n", "")
                        .contains("safelinks.protection.outlook.com/?url=3Dhttps%3A%2F%2F")
            );
        }
        // The verdict follows the subject prefix.
        let want = if f.subject.starts_with("1|") || f.subject.starts_with("Junk:") {
            "junk"
        } else if f.subject.starts_with("2|") || f.subject.starts_with("Not junk:") {
            "not_junk"
        } else {
            "phishing"
        };
        assert_eq!(f.verdict, want, "{}", f.subject);
        if f.subject.matches('|').count() == 4 {
            assert!(f.subject.contains(o.network_message_id.as_deref().unwrap()));
        }
    }
    assert!(dmarc_failures > 0, "some originals fail DMARC");
    // The report itself, through Graph.
    let url = format!(
        "{}/v1.0/users/{UPN}/messages/{}?$select=subject,from,internetMessageHeaders",
        sim.graph_url(),
        facts[0].immutable_id
    );
    let (s, _, m) = mjson(&url, &token, &[IMMUTABLE]).await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["subject"], facts[0].subject.as_str());
    assert_eq!(
        m["from"]["emailAddress"]["address"],
        facts[0].reporter.as_str()
    );
    assert!(m["internetMessageHeaders"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["name"] == "Message-ID"));
    assert!(m.get("body").is_none());
}

#[tokio::test]
async fn the_default_mix_has_every_format_and_mail_requests_are_recorded() {
    let sim = start().await;
    let facts = sim.add_reports(TENANT, UPN, spec(200, 33));
    let formats: HashSet<WrapperFormat> = facts.iter().map(|f| f.format).collect();
    assert_eq!(formats.len(), 6, "{formats:?}");
    for f in &facts {
        match f.format {
            WrapperFormat::MultipleAttached => {
                assert_eq!((f.originals.len(), f.verdict), (2, "unknown"));
            }
            WrapperFormat::Inline => {
                assert!(f.attachment_ids.is_empty());
                assert!(f.originals[0].message_id.is_none());
            }
            _ => assert_eq!(f.originals.len(), 1),
        }
    }
    let token = mail_token(&sim).await;
    walk(
        &delta_url(&sim, UPN, "inbox", &[]),
        &token,
        &["odata.maxpagesize=100"],
    )
    .await;
    let logged = sim
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/messages/delta"))
        .collect::<Vec<_>>();
    assert_eq!(logged.len(), 2);
    assert!(logged
        .iter()
        .all(|r| r.status == 200 && r.tenant.as_deref() == Some(TENANT)));
}

async fn control(sim: &Simulator, path: &str, body: Value) -> Value {
    let r = http()
        .post(format!("{}/_sim/{path}", sim.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_control_api_drives_the_mailbox() {
    let sim = start().await;
    let id = control(
        &sim,
        "mailboxes",
        serde_json::json!({"tenant_id": TENANT, "upn": UPN}),
    )
    .await;
    assert_eq!(id["id"].as_str().unwrap().len(), 36);
    let made = control(
        &sim,
        "mailboxes/reports/generate",
        serde_json::json!({"tenant_id": TENANT, "mailbox": UPN, "n": 6, "seed": 3, "mix": {"msg": 1}}),
    )
    .await;
    assert_eq!(made["generated"], 6);
    let first = &made["reports"][0];
    assert_eq!(first["format"], "msg_attachment");
    assert!(first["originals"][0]["network_message_id"].is_string());
    control(
        &sim,
        "mailboxes/report_policy",
        serde_json::json!({"tenant_id": TENANT, "mailbox": UPN}),
    )
    .await;
    let token = mail_token(&sim).await;
    let (items, delta, _) = walk(&delta_url(&sim, UPN, "inbox", &[]), &token, &[IMMUTABLE]).await;
    assert_eq!(items.len(), 6);
    let imm = first["immutable_id"].as_str().unwrap();
    control(
        &sim,
        "mailboxes/move",
        serde_json::json!({"tenant_id": TENANT, "mailbox": UPN, "immutable_id": imm, "folder": "junkemail"}),
    )
    .await;
    let (round, _, _) = walk(&delta, &token, &[IMMUTABLE]).await;
    assert_eq!(round[0]["@removed"]["reason"], "changed");
    control(
        &sim,
        "mailboxes/expire",
        serde_json::json!({"tenant_id": TENANT, "mode": "gone"}),
    )
    .await;
    assert_eq!(mjson(&delta, &token, &[]).await.0, 410);
    control(
        &sim,
        "mailboxes/faults",
        serde_json::json!({"tenant_id": TENANT, "throttle_next": 1, "retry_after_secs": 0}),
    )
    .await;
    assert_eq!(
        mjson(&delta_url(&sim, UPN, "inbox", &[]), &token, &[])
            .await
            .0,
        429
    );
    control(&sim, "mailboxes/access_policy", serde_json::json!({"tenant_id": TENANT, "client_id": "mail-reader", "allowed": ["someone@contoso.com"]})).await;
    assert_eq!(
        mjson(&delta_url(&sim, UPN, "inbox", &[]), &token, &[])
            .await
            .0,
        403
    );
    let v: Value = http()
        .get(format!("{}/_sim/mailboxes/violations", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["mail_throttle_violations"], 0);
}

#[tokio::test]
async fn the_demo_stream_drops_reports_into_the_mailbox() {
    let sim = start().await;
    sim.seed_reporting_mailbox(TENANT, UPN, 3);
    sim.start_report_stream(TENANT, UPN, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(sim.mail_folder_count(TENANT, UPN, "inbox") >= 5);
    sim.shutdown().await;
}
