//! The HTTPS connections the agent makes (to an OTLP collector over http/protobuf, to the
//! Kubernetes API server): rustls with ring, trusting the system's roots plus, when given,
//! a CA of the user's (PEM); HTTP/1.1; plain `http://` too.

use std::sync::Arc;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::{
    pem::{self, PemObject},
    CertificateDer,
};

/// What is wrong with a CA given to trust, or with TLS itself.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    NotPem(pem::Error),
    #[error("{0}")]
    Rejected(rustls::Error),
    #[error("no PEM certificate in it")]
    Empty,
    /// The TLS library offers no protocol version it considers safe.
    #[error("{0}")]
    TlsVersions(rustls::Error),
}

/// A connector for `http://` and `https://` URLs, trusting the system's roots and the
/// certificates of `extra_ca` (PEM).
pub fn connector(extra_ca: Option<&[u8]>) -> Result<HttpsConnector<HttpConnector>, CaError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = extra_ca {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots
                .add(cert.map_err(CaError::NotPem)?)
                .map_err(CaError::Rejected)?;
            added += 1;
        }
        if added == 0 {
            return Err(CaError::Empty);
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(CaError::TlsVersions)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}
