//! A minimal HTTPS client over one keep-alive HTTP/1.1 connection, trusting one CA certificate:
//! what the tests and the benchmark use to talk to the real server as the API server does.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A TLS connector that trusts only `ca_pem`, without session resumption.
///
/// # Errors
/// When `ca_pem` holds no usable certificate.
pub fn connector(ca_pem: &str) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("CA PEM")?).context("CA certificate")?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Full handshakes, as Go's HTTP client (the API server's) makes without a session cache; a
    // resumed session would also hide which certificate the server serves now.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// One connection to the server.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    /// DER of the certificate the server presented on this connection.
    pub peer_cert: Vec<u8>,
}

impl Client {
    /// Connects and completes the TLS handshake, verifying the server as `server_name`.
    ///
    /// # Errors
    /// When TCP, TLS or the HTTP handshake fails.
    pub async fn connect(addr: SocketAddr, connector: &TlsConnector, server_name: &str) -> Result<Self> {
        let tcp = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(server_name.to_owned()).context("server name")?;
        let tls = connector.connect(name, tcp).await.context("TLS handshake")?;
        let peer_cert =
            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { sender, host: server_name.to_owned(), peer_cert })
    }

    /// Sends one request; returns the status and the whole body.
    ///
    /// # Errors
    /// When the connection fails or closes before the answer.
    pub async fn request(&mut self, method: Method, path: &str, body: Bytes) -> Result<(StatusCode, Bytes)> {
        self.sender.ready().await.context("connection not ready")?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await.context("request")?;
        let status = resp.status();
        let body = resp.into_body().collect().await.context("response body")?.to_bytes();
        Ok((status, body))
    }

    /// POSTs a JSON body.
    ///
    /// # Errors
    /// See [`Self::request`].
    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> Result<(StatusCode, Bytes)> {
        self.request(Method::POST, path, body.into()).await
    }

    /// GETs a path.
    ///
    /// # Errors
    /// See [`Self::request`].
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes)> {
        self.request(Method::GET, path, Bytes::new()).await
    }

    /// Whether the connection can take another request.
    #[must_use]
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}
