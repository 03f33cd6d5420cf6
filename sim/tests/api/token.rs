//! The Entra token endpoint: success, Basic auth, each AADSTS error, OpenID configuration.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::helpers::*;

fn claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "JWT-shaped: {token}");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

#[tokio::test]
async fn client_credentials_issue_a_graph_token_with_the_apps_graph_roles() {
    let sim = start().await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", GRAPH_SCOPE),
    ];
    let (status, body) = token_request(&sim, TENANT, &form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["aud"], "https://graph.microsoft.com");
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["appid"], CLIENT);
    assert_eq!(c["roles"], serde_json::json!(["SecurityAlert.Read.All"]));
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        3599
    );
    assert_eq!(sim.tokens_issued(TENANT), 1);
}

#[tokio::test]
async fn cloud_apps_scope_gets_cloud_apps_roles_and_graph_refuses_that_token() {
    let sim = start().await;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", "05a65629-4c1b-48c1-a78b-804c4abdd4af/.default"),
    ];
    let (status, body) = token_request(&sim, TENANT, &form).await;
    assert_eq!(status, 200);
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        claims(token)["roles"],
        serde_json::json!(["Investigation.read"])
    );
    let (status, err) = list(&sim, token, &[]).await;
    assert_eq!(status, 401);
    assert_eq!(err["error"]["code"], "InvalidAuthenticationToken");
}

#[tokio::test]
async fn basic_auth_is_accepted_instead_of_form_credentials() {
    let sim = start().await;
    let url = format!("{}/{TENANT}/oauth2/v2.0/token", sim.login_url());
    let r = http()
        .post(url)
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", GRAPH_SCOPE)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn assert_aad_error(
    form: &[(&str, &str)],
    tenant: &str,
    setup: impl FnOnce(&m365_sim::Simulator),
    want_status: u16,
    want_error: &str,
    want_code: u64,
    want_text: &str,
) {
    let sim = start().await;
    setup(&sim);
    let (status, body) = token_request(&sim, tenant, form).await;
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_error, "{body}");
    assert_eq!(body["error_codes"], serde_json::json!([want_code]));
    let desc = body["error_description"].as_str().unwrap();
    assert!(desc.starts_with(&format!("AADSTS{want_code}: ")), "{desc}");
    assert!(desc.contains(want_text), "{desc}");
    for part in ["\r\nTrace ID: ", "\r\nCorrelation ID: ", "\r\nTimestamp: "] {
        assert!(desc.contains(part), "{desc}");
    }
    for key in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[key].is_string(), "{key} in {body}");
    }
    assert_eq!(sim.tokens_issued(TENANT), 0);
}

const OK: [(&str, &str); 4] = [
    ("grant_type", "client_credentials"),
    ("client_id", CLIENT),
    ("client_secret", SECRET),
    ("scope", GRAPH_SCOPE),
];

#[tokio::test]
async fn unknown_tenant_is_aadsts90002() {
    assert_aad_error(
        &OK,
        "no-such-tenant",
        |_| {},
        400,
        "invalid_request",
        90002,
        "Tenant 'no-such-tenant' not found",
    )
    .await;
}

#[tokio::test]
async fn unknown_client_is_aadsts700016() {
    let form = [OK[0], ("client_id", "nobody"), OK[2], OK[3]];
    assert_aad_error(
        &form,
        TENANT,
        |_| {},
        400,
        "unauthorized_client",
        700016,
        "Application with identifier 'nobody' was not found",
    )
    .await;
}

#[tokio::test]
async fn wrong_secret_is_aadsts7000215() {
    let form = [OK[0], OK[1], ("client_secret", "wrong"), OK[3]];
    assert_aad_error(
        &form,
        TENANT,
        |_| {},
        401,
        "invalid_client",
        7000215,
        "Invalid client secret provided",
    )
    .await;
}

#[tokio::test]
async fn expired_secret_is_aadsts7000222() {
    assert_aad_error(
        &OK,
        TENANT,
        |s| s.set_secret_expired(TENANT, CLIENT, true),
        401,
        "invalid_client",
        7000222,
        "are expired",
    )
    .await;
}

#[tokio::test]
async fn bad_scope_is_aadsts70011() {
    let form = [
        OK[0],
        OK[1],
        OK[2],
        ("scope", "https://foo.microsoft.com/.default"),
    ];
    assert_aad_error(
        &form,
        TENANT,
        |_| {},
        400,
        "invalid_scope",
        70011,
        "https://foo.microsoft.com/.default is not valid",
    )
    .await;
}

#[tokio::test]
async fn other_grant_types_are_aadsts70003() {
    let form = [("grant_type", "password"), OK[1], OK[2], OK[3]];
    assert_aad_error(
        &form,
        TENANT,
        |_| {},
        400,
        "unsupported_grant_type",
        70003,
        "unsupported grant type",
    )
    .await;
}

#[tokio::test]
async fn openid_configuration_points_at_the_token_endpoint() {
    let sim = start().await;
    let url = format!(
        "{}/{TENANT}/v2.0/.well-known/openid-configuration",
        sim.login_url()
    );
    let body: Value = http().get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        body["token_endpoint"],
        format!("{}/{TENANT}/oauth2/v2.0/token", sim.login_url())
    );
    let url = format!(
        "{}/nope/v2.0/.well-known/openid-configuration",
        sim.login_url()
    );
    assert_eq!(http().get(url).send().await.unwrap().status(), 400);
}

#[tokio::test]
async fn requests_are_recorded_with_tenant_and_status() {
    let sim = start().await;
    let token = graph_token(&sim).await;
    let _ = list(&sim, &token, &[]).await;
    let log = sim.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (
            log[0].method.as_str(),
            log[0].status,
            log[0].tenant.as_deref()
        ),
        ("POST", 200, Some(TENANT))
    );
    assert!(!log[0].has_authorization);
    assert_eq!(
        (
            log[1].path.as_str(),
            log[1].status,
            log[1].tenant.as_deref()
        ),
        ("/graph/v1.0/security/alerts_v2", 200, Some(TENANT))
    );
    assert!(log[1].has_authorization);
}
