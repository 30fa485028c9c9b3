//! The webhook client: one `POST` per delivery over a connection made only
//! to addresses that passed the request-forgery checks, in TLS for `https`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;

use super::target::{check_resolved, Target};

/// The most of a webhook's answer that is read (only `done` matters).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Sends webhook deliveries.
#[derive(Clone)]
pub(crate) struct WebhookClient {
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient").finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// A client trusting Mozilla's roots and `extra_roots` (DER
    /// certificates the host added).
    pub(crate) fn new(extra_roots: &[Vec<u8>]) -> std::io::Result<WebhookClient> {
        let invalid = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for der in extra_roots {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.clone()))
                .map_err(invalid)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(invalid)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(WebhookClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// One webhook `POST`: the name resolved, every address checked, the
    /// connection made only to a checked address, the certificate checked
    /// against the URL's host for `https`, no redirects followed. The
    /// answer's status and (the first 64 KiB of) its body.
    pub(crate) async fn post(
        &self,
        target: &Target,
        body: Bytes,
        signature: String,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let uri = target.uri();
        let https = uri.scheme_str() == Some("https");
        let authority = uri.authority().ok_or("the URL has no host")?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .collect();
        let ips: Vec<IpAddr> = addresses.iter().map(SocketAddr::ip).collect();
        check_resolved(target, &ips).map_err(|e| e.to_string())?;
        let stream = tokio::net::TcpStream::connect(&addresses[..])
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let _ = stream.set_nodelay(true);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = http::Request::post(path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "tower-durable-streams")
            .header("webhook-signature", signature)
            .body(http_body_util::Full::new(body))
            .map_err(|e| e.to_string())?;
        if https {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("{host} is not a name TLS can check: {e}"))?;
            let tls = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            exchange(tls, request).await
        } else {
            exchange(stream, request).await
        }
    }
}

/// Sends `request` over `io` (HTTP/1.1) and reads the answer.
async fn exchange<S>(
    io: S,
    request: http::Request<http_body_util::Full<Bytes>>,
) -> Result<(http::StatusCode, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    use http_body_util::BodyExt as _;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let status = response.status();
        let answer = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok((status, answer))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_that_is_not_a_certificate_is_refused() {
        assert!(WebhookClient::new(&[]).is_ok());
        let refused = WebhookClient::new(&[b"not a certificate".to_vec()]);
        assert_eq!(
            refused.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::InvalidInput)
        );
    }
}
