//! Shared setup: a started simulator with one tenant and one app, and small request helpers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use m365_sim::{SimConfig, Simulator};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

pub const TENANT: &str = "6f1c1a4e-1111-4000-8000-00000000000a";
pub const CLIENT: &str = "0b7e5a02-2222-4000-8000-00000000000b";
pub const SECRET: &str = "s3cr3t~value";
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

pub async fn start_with(cfg: SimConfig) -> Simulator {
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    sim.add_tenant(TENANT);
    sim.add_app(
        TENANT,
        CLIENT,
        SECRET,
        &["SecurityAlert.Read.All", "Investigation.read"],
    );
    sim
}

pub async fn start() -> Simulator {
    start_with(SimConfig::default()).await
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn token_request(sim: &Simulator, tenant: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let url = format!("{}/{tenant}/oauth2/v2.0/token", sim.login_url());
    let r = http().post(url).form(form).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

pub async fn graph_token(sim: &Simulator) -> String {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", GRAPH_SCOPE),
    ];
    let (status, body) = token_request(sim, TENANT, &form).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// GET a Graph URL with a bearer token; returns status, headers and the raw body text.
pub async fn get(url: &str, token: &str) -> (u16, HeaderMap, String) {
    let r = http().get(url).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// POST a JSON body to `url` with a bearer token; status, headers and the JSON answer.
pub async fn post_json(url: &str, token: &str, body: &Value) -> (u16, HeaderMap, Value) {
    let r = http()
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, headers, json)
}

pub async fn get_json(url: &str, token: &str) -> (u16, Value) {
    let (s, _, body) = get(url, token).await;
    (
        s,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

/// alerts_v2 with the given query options (values are percent-encoded here).
pub async fn list(sim: &Simulator, token: &str, query: &[(&str, &str)]) -> (u16, Value) {
    let mut url =
        reqwest::Url::parse(&format!("{}/v1.0/security/alerts_v2", sim.graph_url())).unwrap();
    url.query_pairs_mut().extend_pairs(query);
    get_json(url.as_str(), token).await
}

pub fn ids(page: &Value) -> Vec<String> {
    page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

/// A minimal explicit alert.
pub fn alert(id: &str, last_update: &str, service: &str) -> Value {
    json!({"id": id, "lastUpdateDateTime": last_update, "createdDateTime": last_update, "serviceSource": service,
           "severity": "low", "status": "new", "title": format!("alert {id}")})
}

pub fn secs_ago(s: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(s)
}

pub fn at(iso_secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(iso_secs)
}

pub const CLOUD_APPS_SCOPE: &str = "05a65629-4c1b-48c1-a78b-804c4abdd4af/.default";

/// Registers an app `client_id` with `roles` and returns a token for `scope`.
pub async fn app_token(sim: &Simulator, client_id: &str, roles: &[&str], scope: &str) -> String {
    sim.add_app(TENANT, client_id, "pw", roles);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", "pw"),
        ("scope", scope),
    ];
    let (status, body) = token_request(sim, TENANT, &form).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// GET `{graph_url}{path}` with the given query options (values are percent-encoded here).
pub async fn graph_get(
    sim: &Simulator,
    token: &str,
    path: &str,
    query: &[(&str, &str)],
) -> (u16, Value) {
    let mut url = reqwest::Url::parse(&format!("{}{path}", sim.graph_url())).unwrap();
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    get_json(url.as_str(), token).await
}

/// Follows `@odata.nextLink` from `first`, returning every page.
pub async fn all_pages(first: Value, token: &str) -> Vec<Value> {
    let mut pages = vec![first];
    while let Some(next) = pages.last().unwrap()["@odata.nextLink"]
        .as_str()
        .map(str::to_owned)
    {
        let (s, page) = get_json(&next, token).await;
        assert_eq!(s, 200, "{page}");
        pages.push(page);
    }
    pages
}
