//! The TLS listener's server side: a rustls configuration built once from the PEM files named in
//! [`TlsConfig`], and the stream type a handshake yields.
//!
//! Protocol versions are TLS 1.3 and TLS 1.2 only. That is not a setting: rustls implements
//! neither TLS 1.0 nor 1.1 (nor SSL), so a client offering only those fails the handshake. The
//! crypto provider is `ring`, named explicitly rather than taken from a process-wide default, so
//! two providers linked into one binary can never make the choice ambiguous.
//!
//! What it does not do: reload certificates while running (restart the broker), OCSP stapling,
//! revocation lists, or map a client certificate to an MQTT identity (a verified client still
//! authenticates with its CONNECT credentials).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::version::{TLS12, TLS13};
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
pub use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why the TLS listener's configuration could not be built. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The crypto provider offers no cipher suite for TLS 1.2 or 1.3 (never with ring's
    /// default provider; kept so a provider change cannot panic).
    #[error("the TLS crypto provider: {0}")]
    Provider(rustls::Error),
    /// The certificate chain file is unreadable or not PEM.
    #[error("reading the certificate chain {path}: {source}")]
    Certificates { path: PathBuf, source: pem::Error },
    /// The certificate chain file holds no `CERTIFICATE` section.
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    /// The key file is unreadable, not PEM, or holds no private key.
    #[error("reading the private key {path}: {source}")]
    Key { path: PathBuf, source: pem::Error },
    /// rustls refused the pair: an unsupported key type, or a key that does not match the
    /// certificate.
    #[error("certificate {cert} with key {key}: {source}")]
    Pair { cert: PathBuf, key: PathBuf, source: rustls::Error },
    /// The client CA file is unreadable or not PEM.
    #[error("reading the client CA bundle {path}: {source}")]
    ClientCaFile { path: PathBuf, source: pem::Error },
    /// A certificate in the client CA file is not a usable trust anchor.
    #[error("client CA bundle {path}: {source}")]
    ClientCa { path: PathBuf, source: rustls::Error },
    /// The client CA file yielded no trust anchor at all.
    #[error("client CA bundle {path}: {source}")]
    ClientVerifier { path: PathBuf, source: rustls::server::VerifierBuilderError },
}

/// Builds the acceptor for the TLS listener from its configured files.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(TlsError::Provider)?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = client_roots(path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier { path: path.clone(), source })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = certificates(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|source| TlsError::Key { path: config.key.clone(), source })?;
    let server = builder.with_single_cert(chain, key).map_err(|source| TlsError::Pair {
        cert: config.cert.clone(),
        key: config.key.clone(),
        source,
    })?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Runs the server handshake on an accepted socket. The caller bounds it in time.
pub async fn handshake(acceptor: TlsAcceptor, stream: TcpStream) -> io::Result<TlsConnection> {
    let inner = acceptor.accept(stream).await?;
    Ok(TlsConnection { inner, unflushed: false })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| TlsError::Certificates { path: path.to_owned(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(chain)
}

fn client_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| TlsError::ClientCaFile { path: path.to_owned(), source })?;
    let mut roots = RootCertStore::empty();
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|source| TlsError::ClientCa { path: path.to_owned(), source })?;
    }
    Ok(roots)
}

/// A server-side TLS stream that gets every write onto the socket without waiting for an
/// explicit flush.
///
/// tokio-rustls accepts plaintext into rustls and returns as soon as the socket would block,
/// leaving the encrypted records buffered until the next write or flush. The connection driver
/// writes a batch and then waits on the next read, so a record stranded there would delay a
/// delivery indefinitely. This wrapper finishes that flush from `poll_read`, which the driver is
/// always polling, and the read's waker then also covers the socket becoming writable.
pub struct TlsConnection {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    /// Records were left in rustls by a write whose flush would have blocked.
    unflushed: bool,
}

impl TlsConnection {
    /// Pushes out records left behind by an earlier write, if the socket takes them now.
    fn poll_pending_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A pending flush must not hold up reading; its waker is registered either way.
        if let Poll::Ready(Err(error)) = this.poll_pending_flush(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending_flush(cx))?;
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        // The bytes are accepted either way; a blocked flush is finished later.
        this.unflushed = true;
        if let Poll::Ready(result) = this.poll_pending_flush(cx) {
            result?;
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
