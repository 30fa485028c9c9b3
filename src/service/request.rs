//! Parsing the parts of a request that every operation needs: the query and
//! header values as text.

use http::{HeaderMap, HeaderName};
use percent_encoding::percent_decode_str;

use super::problem::Problem;

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
