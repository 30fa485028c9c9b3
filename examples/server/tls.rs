//! TLS termination with rustls: PEM files loaded with `rustls-pki-types`, ALPN
//! offering HTTP/2 and HTTP/1.1, and optional client certificates (mutual TLS).

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSection;

fn certificates(path: &std::path::Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "{key}: cannot read PEM certificates from {}: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{key}: no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// The acceptor for the configured certificate, or `None` without TLS.
pub fn acceptor(tls: &TlsSection) -> Result<Option<TlsAcceptor>, String> {
    let (cert_path, key_path) = match (&tls.cert_path, &tls.key_path) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => return Ok(None),
        _ => return Err("tls.cert_path and tls.key_path must be set together".into()),
    };
    let certs = certificates(cert_path, "tls.cert_path")?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        format!(
            "tls.key_path: cannot read a PEM private key from {}: {e}",
            key_path.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &tls.client_ca_path {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(ca_path, "tls.client_ca_path")? {
                roots
                    .add(ca)
                    .map_err(|e| format!("tls.client_ca_path: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls.client_ca_path: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert_path/tls.key_path: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
