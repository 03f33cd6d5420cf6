//! Certificate credentials (`client_certificate_file`): the app registration's X.509 certificate
//! and its RSA private key, in one PEM file, sign a short-lived client assertion (RFC 7523,
//! `private_key_jwt`) instead of sending a client secret. Entra wants PS256 and the certificate's
//! SHA-256 thumbprint in the `x5t#S256` header. The file is read and checked once, at start, so
//! a wrong file stops the daemon with the fix instead of failing every token request later.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use x509_cert::der::Decode;

/// rsaEncryption: Entra signs client assertions with RSA keys only.
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";

/// How long an assertion is valid; Microsoft asks for 5–10 minutes at most.
const ASSERTION_LIFETIME_S: i64 = 600;

/// A loaded certificate credential. Holds the private key: `Debug` shows only what identifies it.
pub struct ClientCertificate {
    path: PathBuf,
    key: EncodingKey,
    thumbprint_s256: String,
    not_after: i64,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("path", &self.path)
            .field("x5t#S256", &self.thumbprint_s256)
            .field("not_after", &self.not_after)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl ClientCertificate {
    /// Reads `path`: the first certificate in it is the app's, the one private key must be its
    /// RSA key (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`, not encrypted). `key` names
    /// the setting in messages.
    pub fn load(key: &str, path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("{key} `{}` cannot be read: {e}", path.display()))?;
        Self::from_pem(key, path, &text)
    }

    fn from_pem(key: &str, path: &Path, text: &[u8]) -> Result<Self, String> {
        let at = || format!("{key} `{}`", path.display());
        let howto = "it must hold the certificate and its private key, PEM-encoded (e.g. `cat cert.pem key.pem > app.pem`)";
        let blocks =
            pem::parse_many(text).map_err(|e| format!("{} is not PEM ({e}): {howto}", at()))?;
        let cert = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or_else(|| format!("{} holds no CERTIFICATE block: {howto}", at()))?;
        if blocks.iter().any(|b| b.tag() == "ENCRYPTED PRIVATE KEY") {
            return Err(format!("{}: the private key is encrypted; the daemon cannot ask for its password. Export it unencrypted (`openssl pkcs8 -topk8 -nocrypt -in key.pem`) and protect the file by its permissions instead", at()));
        }
        let private: Vec<&pem::Pem> = blocks
            .iter()
            .filter(|b| b.tag().ends_with("PRIVATE KEY"))
            .collect();
        let private = match private.as_slice() {
            [one] => *one,
            [] => return Err(format!("{} holds no private key: {howto}", at())),
            _ => {
                return Err(format!(
                    "{} holds more than one private key: keep only the certificate's own",
                    at()
                ))
            }
        };
        let parsed = CertificateFacts::from_der(cert.contents())
            .map_err(|e| format!("{}: the certificate cannot be read: {e}", at()))?;
        if !matches!(private.tag(), "PRIVATE KEY" | "RSA PRIVATE KEY") {
            return Err(format!("{}: the private key is a {}; Entra needs an RSA key (create the certificate with an RSA key of 2048 bits or more)", at(), private.tag()));
        }
        let signing = EncodingKey::from_rsa_pem(pem::encode(private).as_bytes()).map_err(|e| {
            format!(
                "{}: the private key cannot be read as an RSA key ({e})",
                at()
            )
        })?;
        // A key from another certificate would only fail later, at Entra, as AADSTS700027.
        let probe = b"m365-ingest certificate check";
        let matches = jsonwebtoken::crypto::sign(probe, &signing, Algorithm::PS256)
            .and_then(|sig| {
                jsonwebtoken::crypto::verify(
                    &sig,
                    probe,
                    &jsonwebtoken::DecodingKey::from_rsa_der(&parsed.rsa_public_key),
                    Algorithm::PS256,
                )
            })
            .unwrap_or(false);
        if !matches {
            return Err(format!("{}: the private key does not belong to the certificate in the file: put the certificate and its own key together", at()));
        }
        Ok(ClientCertificate {
            path: path.to_path_buf(),
            key: signing,
            thumbprint_s256: parsed.thumbprint_s256,
            not_after: parsed.not_after,
        })
    }

    /// When the certificate stops being valid, as Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The certificate's thumbprint as Entra shows it under Certificates & secrets (SHA-1 hex
    /// is what the portal lists; the SHA-256 one identifies it in the assertion and in our logs).
    pub fn thumbprint_s256(&self) -> &str {
        &self.thumbprint_s256
    }

    /// A signed client assertion for a token request to `audience` (the token endpoint's URL).
    pub fn assertion(&self, client_id: &str, audience: &str, now: i64) -> Result<String, String> {
        let mut header = Header::new(Algorithm::PS256);
        header.typ = Some("JWT".to_string());
        header.x5t_s256 = Some(self.thumbprint_s256.clone());
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME_S,
        });
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| {
            format!(
                "the client assertion could not be signed with {}: {e}",
                self.path.display()
            )
        })
    }
}

/// What the token side needs of a certificate: its thumbprint, RSA public key and end of validity.
struct CertificateFacts {
    thumbprint_s256: String,
    /// PKCS#1 `RSAPublicKey`.
    rsa_public_key: Vec<u8>,
    not_after: i64,
}

impl CertificateFacts {
    fn from_der(der: &[u8]) -> Result<Self, String> {
        let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info();
        if spki.algorithm.oid.to_string() != RSA_ENCRYPTION {
            return Err(format!(
                "its key is not RSA (algorithm {}); Entra needs an RSA certificate",
                spki.algorithm.oid
            ));
        }
        let rsa_public_key = spki
            .subject_public_key
            .as_bytes()
            .ok_or("its public key is not a whole number of bytes")?
            .to_vec();
        let not_after = tbs.validity().not_after.to_unix_duration().as_secs();
        Ok(CertificateFacts {
            thumbprint_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(der)),
            rsa_public_key,
            not_after: i64::try_from(not_after).unwrap_or(i64::MAX),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed RSA certificate valid `not_after_days` more days and its key, both PEM.
    pub(crate) fn generated(not_after_days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["m365-ingest.test".into()]).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        params.not_after = rcgen::date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs((now + not_after_days * 86_400) as u64);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_cert_and_key_and_signs_a_ps256_assertion_with_the_thumbprint() {
        let (cert, key) = generated(90);
        let c = ClientCertificate::from_pem(
            "k",
            Path::new("app.pem"),
            format!("{key}{cert}").as_bytes(),
        )
        .unwrap();
        let jwt = c
            .assertion(
                "client-1",
                "https://login.example/t/oauth2/v2.0/token",
                1_700_000_000,
            )
            .unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, Algorithm::PS256);
        assert_eq!(header.x5t_s256.as_deref(), Some(c.thumbprint_s256()));
        let der = pem::parse(cert.as_bytes()).unwrap();
        assert_eq!(
            c.thumbprint_s256(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(der.contents()))
        );
        let days = (c.not_after() - crate::time::unix_seconds_now()) / 86_400;
        assert!((89..=90).contains(&days), "{days}");
        assert!(!format!("{c:?}").contains("PRIVATE"));
    }

    #[test]
    fn refuses_a_key_of_another_certificate_a_missing_key_and_an_encrypted_key() {
        let (cert, _) = generated(90);
        let (_, other_key) = generated(90);
        let e = ClientCertificate::from_pem(
            "k",
            Path::new("a.pem"),
            format!("{cert}{other_key}").as_bytes(),
        )
        .unwrap_err();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        let e = ClientCertificate::from_pem("k", Path::new("a.pem"), cert.as_bytes()).unwrap_err();
        assert!(e.contains("no private key"), "{e}");
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = ClientCertificate::from_pem(
            "k",
            Path::new("a.pem"),
            format!("{cert}{encrypted}").as_bytes(),
        )
        .unwrap_err();
        assert!(e.contains("encrypted") && e.contains("-nocrypt"), "{e}");
        let e = ClientCertificate::from_pem("k", Path::new("a.pem"), b"not pem").unwrap_err();
        assert!(e.contains("CERTIFICATE"), "{e}");
    }
}
