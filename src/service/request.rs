//! Parsing the parts of a request that every operation needs: the stream key
//! and the query.

use http::{HeaderMap, HeaderName};
use percent_encoding::percent_decode_str;

use super::problem::Problem;
use http::StatusCode;

/// Longest stream path accepted, in bytes.
const MAX_PATH_LEN: usize = 1024;

/// The stream key of a request path: the path below the mount point, with a
/// leading `/`, still percent-encoded.
pub(crate) fn stream_key(path: &str, base_path: Option<&str>) -> Result<String, Problem> {
    let relative = match base_path {
        Some(base) => match path.strip_prefix(base) {
            Some(rest) if rest.starts_with('/') => rest,
            Some("") => "/",
            _ => path,
        },
        None => path,
    };
    validate_key(relative)?;
    Ok(relative.to_owned())
}

fn validate_key(key: &str) -> Result<(), Problem> {
    if key.len() > MAX_PATH_LEN {
        return Err(Problem::bad_request(format!(
            "stream path is longer than {MAX_PATH_LEN} bytes"
        )));
    }
    let Some(rest) = key.strip_prefix('/').filter(|r| !r.is_empty()) else {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "STREAM_NOT_FOUND",
            "no stream path given",
        ));
    };
    for (i, segment) in rest.split('/').enumerate() {
        let decoded = percent_decode_str(segment)
            .decode_utf8()
            .map_err(|_| Problem::bad_request("stream path is not valid UTF-8"))?;
        if decoded.is_empty() {
            return Err(Problem::bad_request("stream path has an empty segment"));
        }
        if decoded == "." || decoded == ".." {
            return Err(Problem::bad_request(
                "stream path must not contain . or .. segments",
            ));
        }
        if decoded.chars().any(char::is_control) || decoded.contains('/') {
            return Err(Problem::bad_request(
                "stream path segments must not contain control characters or encoded slashes",
            ));
        }
        if i == 0 && decoded == "__ds" {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "RESERVED_PATH",
                "paths under __ds are reserved for Durable Streams control APIs, which this server does not provide",
            ));
        }
    }
    Ok(())
}

/// The key of a `Stream-Forked-From` value: a path on this server (or a URL whose
/// path is), below the mount point.
pub(crate) fn fork_source_key(value: &str, base_path: Option<&str>) -> Result<String, Problem> {
    let path = match value.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => value,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    stream_key(path, base_path)
}

/// The query parameters the protocol reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Query {
    pub offset: Option<String>,
    pub live: Option<String>,
    pub cursor: Option<String>,
}

pub(crate) fn parse_query(query: Option<&str>) -> Result<Query, Problem> {
    let mut parsed = Query::default();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "offset" => &mut parsed.offset,
            "live" => &mut parsed.live,
            "cursor" => &mut parsed.cursor,
            _ => continue,
        };
        let value = percent_decode_str(&value.replace('+', " "))
            .decode_utf8()
            .map_err(|_| {
                Problem::bad_request(format!("query parameter {name} is not valid UTF-8"))
            })?
            .into_owned();
        if slot.replace(value).is_some() {
            return Err(Problem::bad_request(format!(
                "query parameter {name} is given more than once"
            )));
        }
    }
    Ok(parsed)
}

/// A header's value as text; `Ok(None)` when absent, 400 when not visible ASCII.
pub(crate) fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, Problem> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| Problem::bad_request(format!("header {name} is not visible ASCII")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_relative_to_the_mount() {
        let base = Some("/v1/stream");
        assert_eq!(stream_key("/v1/stream/a/b", base).unwrap(), "/a/b");
        assert_eq!(stream_key("/a/b", base).unwrap(), "/a/b");
        assert_eq!(stream_key("/a", None).unwrap(), "/a");
        assert_eq!(stream_key("/v1/streamx", base).unwrap(), "/v1/streamx");
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in [
            "/",
            "",
            "/a//b",
            "/a/../b",
            "/a/%2e%2e/b",
            "/a/%2Fb",
            "/a/%00",
            "/a/",
        ] {
            assert!(stream_key(bad, None).is_err(), "{bad}");
        }
        let reserved = stream_key("/v1/stream/__ds/subscriptions/x", Some("/v1/stream"));
        assert_eq!(reserved.unwrap_err().code, "RESERVED_PATH");
        assert!(stream_key("/a/__ds", None).is_ok());
    }

    #[test]
    fn fork_sources_accept_paths_and_urls() {
        let base = Some("/v1/stream");
        assert_eq!(fork_source_key("/v1/stream/src", base).unwrap(), "/src");
        assert_eq!(
            fork_source_key("http://h:1/v1/stream/src?x=1", base).unwrap(),
            "/src"
        );
    }

    #[test]
    fn query_rejects_repeats_and_decodes() {
        let q = parse_query(Some("offset=0%201&live=sse&foo=bar")).unwrap();
        assert_eq!(q.offset.as_deref(), Some("0 1"));
        assert_eq!(q.live.as_deref(), Some("sse"));
        assert!(parse_query(Some("offset=a&offset=b")).is_err());
        assert_eq!(
            parse_query(Some("offset=")).unwrap().offset.as_deref(),
            Some("")
        );
    }
}
