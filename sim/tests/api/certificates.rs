//! Certificate credentials at the token endpoint: a PS256 client assertion is accepted only when
//! its signature verifies against a certificate uploaded for the app, found by `x5t#S256`, and its
//! audience, issuer, subject and time window are Entra's.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::*;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A self-signed RSA certificate valid for `days` more days, and its key.
struct Cert {
    pem: String,
    key: EncodingKey,
    thumbprint: String,
}

fn cert(days: i64) -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["app.test".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    let end = now() + days * 86_400;
    params.not_after =
        rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(end as u64);
    let c = params.self_signed(&key).unwrap();
    Cert {
        pem: c.pem(),
        key: EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes()).unwrap(),
        thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(c.der())),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn assertion(signing: &EncodingKey, thumbprint: &str, claims: Value) -> String {
    let mut header = Header::new(Algorithm::PS256);
    header.x5t_s256 = Some(thumbprint.to_string());
    jsonwebtoken::encode(&header, &claims, signing).unwrap()
}

fn claims_for(sim: &m365_sim::Simulator) -> Value {
    let t = now();
    json!({
        "aud": format!("{}/{TENANT}/oauth2/v2.0/token", sim.login_url()),
        "iss": CLIENT, "sub": CLIENT, "jti": "j-1", "iat": t, "nbf": t, "exp": t + 600,
    })
}

async fn with_assertion(sim: &m365_sim::Simulator, jwt: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", jwt),
        ("scope", GRAPH_SCOPE),
    ];
    token_request(sim, TENANT, &form).await
}

fn aadsts(body: &Value) -> String {
    body["error_description"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn a_signed_assertion_of_an_uploaded_certificate_gets_a_token() {
    let sim = start().await;
    let c = cert(90);
    sim.add_app_certificate(TENANT, CLIENT, &c.pem).unwrap();
    let (status, body) =
        with_assertion(&sim, &assertion(&c.key, &c.thumbprint, claims_for(&sim))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(sim.tokens_issued(TENANT), 1);
}

#[tokio::test]
async fn another_key_under_the_uploaded_thumbprint_is_an_invalid_signature() {
    let sim = start().await;
    let uploaded = cert(90);
    let other = cert(90);
    sim.add_app_certificate(TENANT, CLIENT, &uploaded.pem)
        .unwrap();
    let forged = assertion(&other.key, &uploaded.thumbprint, claims_for(&sim));
    let (status, body) = with_assertion(&sim, &forged).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        aadsts(&body).starts_with("AADSTS700027: Client assertion contains an invalid signature"),
        "{body}"
    );
    assert_eq!(sim.tokens_issued(TENANT), 0);
}

#[tokio::test]
async fn a_certificate_never_uploaded_is_a_key_not_found() {
    let sim = start().await;
    let c = cert(90);
    let (status, body) =
        with_assertion(&sim, &assertion(&c.key, &c.thumbprint, claims_for(&sim))).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        aadsts(&body).contains("AADSTS700027") && aadsts(&body).contains("The key was not found"),
        "{body}"
    );
}

#[tokio::test]
async fn an_expired_certificate_a_stale_assertion_and_wrong_claims_are_refused() {
    let sim = start().await;
    let expired = cert(-1);
    sim.add_app_certificate(TENANT, CLIENT, &expired.pem)
        .unwrap();
    let (status, body) = with_assertion(
        &sim,
        &assertion(&expired.key, &expired.thumbprint, claims_for(&sim)),
    )
    .await;
    assert_eq!(status, 401);
    assert!(aadsts(&body).contains("The key used is expired"), "{body}");

    let c = cert(90);
    sim.add_app_certificate(TENANT, CLIENT, &c.pem).unwrap();
    let mut stale = claims_for(&sim);
    stale["nbf"] = json!(now() - 3_600);
    stale["exp"] = json!(now() - 3_000);
    let (status, body) = with_assertion(&sim, &assertion(&c.key, &c.thumbprint, stale)).await;
    assert_eq!(status, 401);
    assert!(aadsts(&body).starts_with("AADSTS700024"), "{body}");

    let mut wrong_aud = claims_for(&sim);
    wrong_aud["aud"] = json!("https://login.microsoftonline.com/other/oauth2/v2.0/token");
    let (status, body) = with_assertion(&sim, &assertion(&c.key, &c.thumbprint, wrong_aud)).await;
    assert_eq!(status, 401);
    assert!(aadsts(&body).starts_with("AADSTS50027"), "{body}");

    let mut wrong_iss = claims_for(&sim);
    wrong_iss["iss"] = json!("someone-else");
    let (status, body) = with_assertion(&sim, &assertion(&c.key, &c.thumbprint, wrong_iss)).await;
    assert_eq!(status, 401);
    assert!(aadsts(&body).starts_with("AADSTS700021"), "{body}");

    let mut rs256 = Header::new(Algorithm::RS256);
    rs256.x5t_s256 = Some(c.thumbprint.clone());
    let jwt = jsonwebtoken::encode(&rs256, &claims_for(&sim), &c.key).unwrap();
    let (status, body) = with_assertion(&sim, &jwt).await;
    assert_eq!(status, 401);
    assert!(aadsts(&body).contains("not PS256"), "{body}");
    assert_eq!(sim.tokens_issued(TENANT), 0);
}
