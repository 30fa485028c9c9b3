//! The example server's Prometheus endpoint after some traffic.

mod common;

use bytes::Bytes;
use common::process::{server_binary, start, wait_ready, Client};
use http::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic() {
    let dir = tempfile::tempdir().expect("dir");
    let server = start(&server_binary(), "file-durable", dir.path());
    wait_ready(server.address).await;
    let mut client = Client::connect(server.address).await.expect("connect");
    let text = [("content-type", "text/plain".to_owned())];
    client
        .send(Method::PUT, "/m", &text, Bytes::new())
        .await
        .expect("create");
    for _ in 0..3 {
        let (status, _, _) = client
            .send(Method::POST, "/m", &text, Bytes::from_static(b"12345"))
            .await
            .expect("append");
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    client
        .send(Method::GET, "/m", &[], Bytes::new())
        .await
        .expect("read");
    client
        .send(Method::GET, "/missing", &[], Bytes::new())
        .await
        .expect("404");

    let request = http::Request::get("/metrics")
        .header("host", "localhost")
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("request");
    client.0.ready().await.expect("connection ready");
    let response = client.0.send_request(request).await.expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    use http_body_util::BodyExt;
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let metrics = String::from_utf8_lossy(&body);
    let value = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}"))
    };
    assert_eq!(value("durable_streams_appends_total"), 3.0);
    assert_eq!(value("durable_streams_append_bytes_total"), 15.0);
    assert_eq!(value("durable_streams_read_bytes_total"), 15.0);
    assert_eq!(
        value("durable_streams_requests_total{operation=\"append\",status=\"204\"}"),
        3.0
    );
    assert_eq!(
        value("durable_streams_requests_total{operation=\"read\",status=\"404\"}"),
        1.0
    );
    assert!(
        value("durable_streams_storage_fsyncs_total") >= 4.0,
        "one per flush at least"
    );
    assert!(metrics.contains("durable_streams_storage_batch_size_bucket{le=\"1\"}"));
    assert!(metrics.contains("durable_streams_request_duration_seconds_bucket"));
    assert!(metrics.trim_end().ends_with("# EOF"));
    // A real OpenMetrics parser reads all of it, with the types we declare.
    let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&metrics)
        .unwrap_or_else(|e| panic!("not OpenMetrics text: {e:?}\n{metrics}"));
    for (family, kind) in [
        ("durable_streams_appends", "counter"),
        ("durable_streams_requests", "counter"),
        ("durable_streams_request_duration_seconds", "histogram"),
        ("durable_streams_live_readers", "gauge"),
        ("durable_streams_storage_fsyncs", "counter"),
        ("durable_streams_storage_batch_size", "histogram"),
    ] {
        let found = parsed
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"));
        assert_eq!(
            format!("{:?}", found.family_type).to_lowercase(),
            kind,
            "{family}"
        );
    }
    server.kill();
}
