//! HTTPS for the simulator (`SimConfig::tls`): a self-signed certificate made at start for
//! `localhost`, `127.0.0.1` and `::1` (plus the bound address), and an axum [`Listener`] that
//! hands axum only connections whose TLS handshake has finished.
//!
//! Why HTTPS at all: Microsoft's own client libraries (MSAL, azure-identity, the Graph SDKs)
//! refuse `http://` authorities, so they can only sign in and page through the simulator when it
//! serves TLS. Clients trust the certificate by its PEM ([`crate::Simulator::tls_certificate_pem`]).
//!
//! Handshakes run in their own tasks (with a deadline) so one slow or silent client cannot hold
//! up accepting the others; axum's own connection handling, graceful shutdown included, is kept.
//! The crypto provider is aws-lc-rs, the one reqwest's rustls already uses: no second provider,
//! no OpenSSL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose handshake finished, waiting for axum to take them.
const READY_QUEUE: usize = 64;

/// The certificate made at start and the server configuration that presents it.
pub(crate) struct TlsIdentity {
    /// The certificate, PEM: what a client adds to its trusted roots.
    pub(crate) cert_pem: String,
    config: Arc<rustls::ServerConfig>,
}

/// Makes a fresh self-signed certificate (ECDSA P-256) naming `localhost`, the loopback
/// addresses and `bound` (when it is a specific address), and a TLS 1.2/1.3 server config.
pub(crate) fn make_identity(bound: IpAddr) -> std::io::Result<TlsIdentity> {
    let mut names: Vec<String> = vec![
        "localhost".into(),
        Ipv4Addr::LOCALHOST.to_string(),
        Ipv6Addr::LOCALHOST.to_string(),
    ];
    if !bound.is_unspecified() && !bound.is_loopback() {
        names.push(bound.to_string());
    }
    let mut params = rcgen::CertificateParams::new(names).map_err(std::io::Error::other)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "m365-sim (self-signed)");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().map_err(std::io::Error::other)?;
    let cert = params.self_signed(&key).map_err(std::io::Error::other)?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
        rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
    );
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(std::io::Error::other)?;
    // The simulator speaks HTTP/1.1 only (axum's `http1` feature).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsIdentity {
        cert_pem: cert.pem(),
        config: Arc::new(config),
    })
}

/// An axum [`Listener`] of finished TLS connections. A background task accepts TCP connections
/// until `stop` and spawns a handshake for each.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub(crate) fn new(
        tcp: TcpListener,
        identity: &TlsIdentity,
        stop: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(identity.config.clone());
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(tcp, acceptor, tx, stop));
        Ok(TlsListener { ready, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = tcp.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off as axum's own listener does.
                tracing::warn!(error = %e, "simulator accept failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    // Fails only when the server has stopped; the connection is then dropped.
                    let _ = ready.send((tls, peer)).await;
                }
                // A client that does not trust the certificate ends here; that is its business.
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop ended, so the simulator is stopping: axum's graceful shutdown
            // (on the same token) ends the serve loop; until then there is nothing to accept.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
