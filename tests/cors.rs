//! CORS in the example server: every read and every request a browser sends
//! (it carries `Origin`) gets the CORS headers; writes from other clients skip
//! the layer.

mod common;

use bytes::Bytes;
use common::process::{server_binary, start, wait_ready, Client};
use http::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_and_reads_get_cors_headers() {
    let dir = tempfile::tempdir().expect("dir");
    let server = start(&server_binary(), "memory", dir.path());
    wait_ready(server.address).await;
    let mut client = Client::connect(server.address).await.expect("connect");
    let text = ("content-type", "text/plain".to_owned());
    let origin = ("origin", "https://app.test".to_owned());
    let allow = "access-control-allow-origin";

    let (status, headers, _) = client
        .send(Method::PUT, "/c", std::slice::from_ref(&text), Bytes::new())
        .await
        .expect("create");
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers.get(allow), None, "a write without Origin");
    assert!(headers.contains_key("stream-next-offset"));
    assert_eq!(headers["x-content-type-options"], "nosniff");

    let (status, headers, _) = client
        .send(
            Method::POST,
            "/c",
            &[text.clone(), origin.clone()],
            Bytes::from_static(b"hi"),
        )
        .await
        .expect("append from a browser");
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers[allow], "*");
    let exposed = headers["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("stream-next-offset"), "{exposed}");

    let (status, headers, _) = client
        .send(Method::POST, "/c", &[text], Bytes::from_static(b"!"))
        .await
        .expect("append");
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers.get(allow), None);

    // A read may be cached and served to any origin: it always has them.
    let (status, headers, body) = client
        .send(Method::GET, "/c?offset=-1", &[], Bytes::new())
        .await
        .expect("read");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hi!");
    assert_eq!(headers[allow], "*");

    let (status, headers, _) = client
        .send(
            Method::OPTIONS,
            "/c",
            &[origin, ("access-control-request-method", "POST".to_owned())],
            Bytes::new(),
        )
        .await
        .expect("preflight");
    assert!(status.is_success(), "{status}");
    assert_eq!(headers[allow], "*");
}
