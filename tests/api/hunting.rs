//! The advanced-hunting client against the simulator: campaign context for a message sent to 40
//! people, 3 of whom clicked; one query per batch and none for a message already looked up; a
//! hostile id stays one literal; 403, 429 (call rate and CPU quota) and timeouts classified, and
//! no request sent before Microsoft allows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use m365_ingest::auth::{graph_scope, Credentials, TokenProvider};
use m365_ingest::config::ContextConfig;
use m365_ingest::hunting::{HuntingClient, HuntingError, Landed};
use m365_ingest::microsoft::MicrosoftClock;
use m365_sim::{Faults, HuntingFaults, HuntingMessage, Simulator};

use crate::helpers::*;

const MSG: &str = "<F00DCAFE0001@phish.example>";

fn client(sim: &Simulator, cfg: &ContextConfig) -> HuntingClient {
    let (_dir, db) = temp_db();
    let settings = settings(sim, &db, &Opts::default());
    let t = &settings.tenants["contoso"];
    let http = m365_ingest::app::http_client(m365_ingest::hunting::REQUEST_TIMEOUT).unwrap();
    let tokens = Arc::new(TokenProvider::new(
        Credentials::of_tenant("contoso", t).unwrap(),
        graph_scope(&t.effective_graph_url()),
        http.clone(),
    ));
    HuntingClient::new(
        "contoso",
        &t.effective_graph_url(),
        http,
        tokens,
        Arc::new(MicrosoftClock::default()),
        None,
        cfg,
    )
    .unwrap()
}

#[tokio::test]
async fn a_message_sent_to_40_people_3_of_whom_clicked_gets_its_counts_and_clickers() {
    let sim = hunting_sim().await;
    let m = HuntingMessage::forty_with_three_clickers(MSG);
    let copy = m.recipients[5].network_message_id.clone();
    let clickers: Vec<String> = m.clicks.iter().map(|c| c.account.clone()).collect();
    sim.add_hunting_message(TENANT_ID, m);
    let c = client(&sim, &ContextConfig::default());

    // The alert's evidence gives the internet message id, a submission perhaps one copy's
    // network message id: both find the message.
    let got = c.lookup(&[MSG.to_string(), copy.clone()]).await.unwrap();
    assert_eq!(got.len(), 2);
    for id in [MSG, copy.as_str()] {
        let ctx = &got[id];
        assert_eq!(ctx.internet_message_id, MSG);
        assert_eq!(ctx.recipients.count, 40);
        assert_eq!(ctx.recipients.first.len(), 10, "max_listed rows only");
        assert_eq!(ctx.clicks.clickers, 3);
        let who: Vec<&str> = ctx
            .clicks
            .first
            .iter()
            .map(|k| k.account.as_str())
            .collect();
        assert_eq!(who, clickers);
        assert_eq!(
            ctx.clicks
                .first
                .iter()
                .filter(|k| k.clicked_through)
                .count(),
            1
        );
        // Every 5th copy was removed after delivery, as ZAP does.
        assert_eq!(ctx.recipients.first[4].landed, Landed::RemovedByZap);
        assert_eq!(ctx.recipients.first[0].landed, Landed::Delivered);
        assert_eq!(ctx.query.rows, 2);
    }
    let json = serde_json::to_value(&got[MSG]).unwrap();
    assert_eq!(json["recipients"]["count"], 40);
    assert_eq!(json["clicks"]["clickers"], 3);
    assert_eq!(json["recipients"]["first"][4]["landed"], "removed_by_zap");
    // It is what the published contract calls `context.campaign`.
    let mut alert = example_alert();
    alert["change"] = "context".into();
    alert["context"] = serde_json::json!({ "campaign": json });
    assert_valid_alert(&alert);
    alert["context"]["campaign"]["recipients"]["first"][0]["landed"] = "elsewhere".into();
    assert!(std::panic::catch_unwind(|| assert_valid_alert(&alert)).is_err());
}

#[tokio::test]
async fn two_hundred_messages_take_four_queries_and_none_the_second_time() {
    let sim = hunting_sim().await;
    let c = client(&sim, &ContextConfig::default());
    let ids: Vec<String> = (0..200)
        .map(|i| format!("<{i:024X}@mail.example>"))
        .collect();
    // Each id twice (an alert and a submission about the same message): asked about once.
    let twice: Vec<String> = ids.iter().chain(&ids).cloned().collect();
    let got = c.lookup(&twice).await.unwrap();
    assert_eq!(
        got.len(),
        200,
        "the simulator derives every generated message"
    );
    assert_eq!(hunting_calls(&sim), 200_usize.div_ceil(50));
    // Already looked up: answered from the window, no query.
    let again = c.lookup(&ids[..120]).await.unwrap();
    assert_eq!(again.len(), 120);
    assert_eq!(again[&ids[7]], got[&ids[7]]);
    assert_eq!(hunting_calls(&sim), 4);
}

#[tokio::test]
async fn an_id_with_quotes_pipes_backslashes_and_a_line_break_stays_one_literal() {
    let sim = hunting_sim().await;
    let c = client(&sim, &ContextConfig::default());
    let hostile = "<a\"b'c|d\\e\nf@evil.example>\" | union DeviceEvents | where '1'=='1";
    let got = c
        .lookup(&[hostile.to_string(), MSG.to_string()])
        .await
        .unwrap();
    assert!(got.contains_key(MSG));
    let sent = sim.hunting_queries(TENANT_ID);
    assert_eq!(sent.len(), 1);
    // The simulator parses only the template: the query it got has exactly these two ids.
    let parsed = m365_sim::parse_hunting_query(&sent[0]).unwrap();
    assert_eq!(parsed.ids, vec![hostile.to_string(), MSG.to_string()]);
}

#[tokio::test]
async fn without_the_role_the_error_names_it_and_asks_no_more_for_a_while() {
    let sim = sim().await; // ALL_ROLES: no ThreatHunting.Read.All
    let c = client(&sim, &ContextConfig::default());
    let e = c.lookup(&[MSG.to_string()]).await.unwrap_err();
    assert!(matches!(e, HuntingError::NotGranted { .. }), "{e}");
    assert!(e.fix().contains(
        "grant ThreatHunting.Read.All (application) to the app registration and admin-consent it"
    ));
    let calls = hunting_calls(&sim);
    let e = c.lookup(&["<other@x>".to_string()]).await.unwrap_err();
    assert_eq!(e.kind(), "not_granted");
    assert_eq!(hunting_calls(&sim), calls, "no request while paused");
    for t in sim.issued_tokens() {
        assert!(!format!("{e} {e:?} {}", e.fix()).contains(&t));
    }
}

#[tokio::test]
async fn a_spent_cpu_quota_stops_the_client_asking() {
    let sim = hunting_sim().await;
    sim.set_hunting_faults(
        TENANT_ID,
        HuntingFaults {
            cpu_quota_for: Some(Duration::from_secs(600)),
            ..Default::default()
        },
    );
    let c = client(&sim, &ContextConfig::default());
    let e = c.lookup(&[MSG.to_string()]).await.unwrap_err();
    let HuntingError::CpuQuota { retry_after, .. } = &e else {
        panic!("{e}")
    };
    // Microsoft's Retry-After, not the 5 minutes the shared budget caps it at.
    assert!(*retry_after >= Duration::from_secs(590), "{retry_after:?}");
    assert!(e.fix().contains("15-minute cycle"));
    let e = c.lookup(&["<other@x>".to_string()]).await.unwrap_err();
    assert_eq!(e.kind(), "cpu_quota");
    assert_eq!(hunting_calls(&sim), 1);
    assert_eq!(sim.throttle_violations(), 0);
}

#[tokio::test]
async fn a_429_is_honoured_until_its_retry_after_has_passed() {
    let sim = hunting_sim().await;
    // Every second Graph request of the tenant is throttled for 2 s.
    sim.set_faults(
        TENANT_ID,
        Faults {
            throttle_every: Some(2),
            retry_after: Some("2".into()),
            ..Faults::default()
        },
    );
    let c = client(&sim, &ContextConfig::default());
    c.lookup(&[MSG.to_string()]).await.unwrap();
    let e = c.lookup(&["<B@x>".to_string()]).await.unwrap_err();
    assert!(matches!(e, HuntingError::Throttled { .. }), "{e}");
    let throttled_at = Instant::now();
    // Asked again at once: refused here, not sent.
    assert_eq!(
        c.lookup(&["<C@x>".to_string()]).await.unwrap_err().kind(),
        "throttled"
    );
    assert_eq!(hunting_calls(&sim), 2);
    let deadline = Instant::now() + Duration::from_secs(15);
    let got = loop {
        match c.lookup(&["<C@x>".to_string()]).await {
            Ok(got) => break got,
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.len(), 1);
    assert!(throttled_at.elapsed() >= Duration::from_millis(1500));
    assert_eq!(
        sim.throttle_violations(),
        0,
        "a request came before Retry-After"
    );
}

#[tokio::test]
async fn a_query_past_the_timeout_is_a_timeout_and_pascal_case_schemas_are_read() {
    let sim = hunting_sim().await;
    sim.set_hunting_faults(
        TENANT_ID,
        HuntingFaults {
            delay: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_millis(200)),
            ..Default::default()
        },
    );
    let c = client(&sim, &ContextConfig::default());
    let e = c.lookup(&[MSG.to_string()]).await.unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(e.fix().contains("batch_size"));

    // Our own bound: a query Microsoft is slow to answer is given up.
    sim.set_hunting_faults(
        TENANT_ID,
        HuntingFaults {
            delay: Some(Duration::from_secs(5)),
            ..Default::default()
        },
    );
    let started = Instant::now();
    let impatient =
        client(&sim, &ContextConfig::default()).with_timeout(Duration::from_millis(300));
    let e = impatient.lookup(&[MSG.to_string()]).await.unwrap_err();
    assert_eq!(e.kind(), "timeout", "{e}");
    assert!(started.elapsed() < Duration::from_secs(4));

    sim.add_hunting_message(TENANT_ID, HuntingMessage::forty_with_three_clickers(MSG));
    sim.set_hunting_faults(
        TENANT_ID,
        HuntingFaults {
            pascal_schema: true,
            ..Default::default()
        },
    );
    let got = c.lookup(&[MSG.to_string()]).await.unwrap();
    assert_eq!(got[MSG].recipients.count, 40);
}
