//! Issue 11 item 7: more items in one second than a page holds. Graph refuses `$skip` above 500
//! on the security collections, and alerts_v2 has been seen to send no nextLink at all, so the
//! daemon splits such a second with fractional-second filters and pages only inside one tick.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use m365_sim::{Faults, SimConfig, Simulator};

use crate::helpers::*;
use crate::sources::with_sources;

/// The whole second 15 minutes ago, so every generated item falls inside it.
fn one_second_ago() -> SystemTime {
    let secs = ago(900).duration_since(UNIX_EPOCH).unwrap().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Listing requests of `path` that carried a `$filter` bound with a fraction of a second.
fn sub_second_filters(sim: &Simulator, path: &str) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path.ends_with(path))
        .filter(|r| {
            let query = percent_decode(&r.query);
            query.contains("lastUpdateDateTime ge ")
                && query.contains('.')
                && !query.contains("$skip")
        })
        .count()
}

/// The query string decoded, pairs joined back with `&`, for reading in assertions.
fn percent_decode(q: &str) -> String {
    url::form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn refused(sim: &Simulator, path: &str) -> Vec<String> {
    sim.requests()
        .iter()
        .filter(|r| r.path.ends_with(path) && r.status == 400)
        .map(|r| percent_decode(&r.query))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_resolve_of_thousands_in_one_second_is_read_by_splitting_the_second() {
    // 3,000 alerts updated within one second (a bulk resolve), 100 a page: walking that second
    // by nextLink would need $skip up to 2,900, which Graph refuses above 500.
    let sim = sim_with(SimConfig {
        page_cap: 100,
        ..Default::default()
    })
    .await;
    let second = one_second_ago();
    let ids = sim.generate_alerts(TENANT_ID, 3000, second, second + Duration::from_millis(999));
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(
        Duration::from_secs(90),
        "3,000 alerts of one second",
        || sim.delivered_count() >= 3000,
    )
    .await;
    let delivered = native_ids(&delivered_alerts(&sim));
    assert_eq!(delivered.len(), 3000);
    assert!(ids.iter().all(|id| delivered.contains(id)));
    assert_eq!(refused(&sim, "/security/alerts_v2"), Vec::<String>::new());
    assert!(
        sub_second_filters(&sim, "/security/alerts_v2") > 0,
        "the second was split with fractional-second bounds"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_incidents_in_one_second_are_read_without_skip_past_500() {
    // 50 incidents a page: 600 in one second would need $skip=550 on the twelfth page.
    let sim = sim().await;
    let second = one_second_ago();
    sim.generate_incidents(TENANT_ID, 600, second, second + Duration::from_millis(999));
    let (_dir, db) = temp_db();
    let opts = with_sources("[tenants.contoso.sources.submissions]\nenabled = false\n[tenants.contoso.sources.incidents]\ninterval = \"1s\"\nsettle = \"1s\"\n");
    let app = TestApp::spawn(settings(&sim, &db, &opts)).await;
    wait_until(
        Duration::from_secs(90),
        "600 incidents of one second",
        || sim.delivered_count() >= 600,
    )
    .await;
    let counts = delivered_counts(&sim);
    assert_eq!(counts.len(), 600);
    assert!(counts.values().all(|&n| n == 1));
    assert_eq!(refused(&sim, "/security/incidents"), Vec::<String>::new());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_listed_without_next_links_are_read_whole_by_count() {
    // Graph sends @odata.count but no nextLink: a page that holds fewer items than the count
    // is not the whole slice. 25 alerts a millisecond apart split by time; 15 in one tick can
    // only be read by $skip.
    let sim = sim_with(SimConfig {
        page_cap: 10,
        ..Default::default()
    })
    .await;
    insert_in_one_second(&sim, "ms-", 25);
    insert_in_one_tick(&sim, "tick-", 15);
    sim.set_faults(
        TENANT_ID,
        Faults {
            alerts_without_next_link: true,
            ..Default::default()
        },
    );
    let (_dir, db) = temp_db();
    let app = TestApp::spawn(settings(&sim, &db, &Opts::default())).await;
    wait_until(Duration::from_secs(40), "all 40 alerts", || {
        native_ids(&delivered_alerts(&sim)).len() >= 40
    })
    .await;
    assert_eq!(native_ids(&delivered_alerts(&sim)).len(), 40);
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.path.ends_with("/security/alerts_v2")
                && percent_decode(&r.query).contains("$skip=10")),
        "the tick was paged by $skip"
    );
    app.stop().await;
}
