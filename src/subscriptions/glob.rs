//! Subscription patterns: `/`-separated segments where a segment that is
//! exactly `*` matches one segment and `**` matches any number (none too).
//! Any other segment, `foo-*` included, matches only itself.
//!
//! [`PatternIndex`] finds the patterns a stream name matches without trying
//! every pattern: patterns are filed under their literal leading segments, so
//! an append to a name under no pattern's prefix looks at no pattern at all.

use std::collections::HashMap;
use std::fmt;

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Any,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PatternError(&'static str);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for PatternError {}

/// The longest pattern accepted, in bytes (a stream name's own limit).
const MAX_PATTERN_BYTES: usize = 1024;

impl Pattern {
    /// Parses `text`, a pattern relative to the stream root without a leading
    /// `/` (`events/*`, `tenants/**/audit`).
    pub(crate) fn parse(text: &str) -> Result<Pattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError("a pattern must not be empty"));
        }
        if text.len() > MAX_PATTERN_BYTES {
            return Err(PatternError("a pattern must be at most 1024 bytes"));
        }
        if text.starts_with('/') {
            return Err(PatternError(
                "a pattern is relative to the stream root: no leading /",
            ));
        }
        let mut segments = Vec::new();
        for part in text.split('/') {
            let segment = match part {
                "" => return Err(PatternError("a pattern must not have empty segments")),
                "*" => Segment::One,
                // Two `**` in a row match what one does; keep one.
                "**" if segments.last() == Some(&Segment::Any) => continue,
                "**" => Segment::Any,
                literal => Segment::Literal(literal.to_owned()),
            };
            segments.push(segment);
        }
        Ok(Pattern {
            text: text.to_owned(),
            segments,
        })
    }

    /// The text every matching name starts with: the literal leading
    /// segments, each followed by `/` when another segment must follow (not
    /// before `**`, which may match none). A listing of the names under it
    /// holds every match.
    pub(crate) fn name_prefix(&self) -> String {
        let mut prefix = String::new();
        for (i, segment) in self.segments.iter().enumerate() {
            let Segment::Literal(text) = segment else {
                break;
            };
            prefix.push_str(text);
            if matches!(
                self.segments.get(i + 1),
                Some(Segment::Literal(_) | Segment::One)
            ) {
                prefix.push('/');
            }
        }
        prefix
    }

    /// Whether `name` (relative to the stream root, no leading `/`) matches.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let parts: Vec<&str> = name.split('/').collect();
        matches_from(&self.segments, &parts)
    }

    /// The literal segments before the first wildcard.
    fn literal_prefix(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map_while(|s| match s {
            Segment::Literal(l) => Some(l.as_str()),
            _ => None,
        })
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Matches segment by segment, memoised on (pattern position, name
/// position): each pair is decided once and in constant time (a `**` either
/// ends here or takes one more segment), so the cost is bounded by the
/// product of the two lengths, never exponential.
fn matches_from(pattern: &[Segment], parts: &[&str]) -> bool {
    let mut memo = vec![None; (pattern.len() + 1) * (parts.len() + 1)];
    step(pattern, parts, 0, 0, &mut memo)
}

fn step(
    pattern: &[Segment],
    parts: &[&str],
    p: usize,
    n: usize,
    memo: &mut [Option<bool>],
) -> bool {
    let slot = p * (parts.len() + 1) + n;
    if let Some(known) = memo[slot] {
        return known;
    }
    let result = match pattern.get(p) {
        None => n == parts.len(),
        Some(Segment::Any) => {
            step(pattern, parts, p + 1, n, memo)
                || (n < parts.len() && step(pattern, parts, p, n + 1, memo))
        }
        Some(_) if n == parts.len() => false,
        Some(Segment::One) => step(pattern, parts, p + 1, n + 1, memo),
        Some(Segment::Literal(l)) => l == parts[n] && step(pattern, parts, p + 1, n + 1, memo),
    };
    memo[slot] = Some(result);
    result
}

/// Patterns filed by their literal leading segments, each with a value
/// (a subscription id, say).
#[derive(Debug)]
pub(crate) struct PatternIndex<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    /// Patterns whose literal prefix ends here.
    here: Vec<(Pattern, T)>,
    children: HashMap<String, Node<T>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            here: Vec::new(),
            children: HashMap::new(),
        }
    }
}

impl<T> Default for PatternIndex<T> {
    fn default() -> Self {
        PatternIndex {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: PartialEq> PatternIndex<T> {
    /// Files `pattern` with `value`.
    pub(crate) fn insert(&mut self, pattern: Pattern, value: T) {
        let mut node = &mut self.root;
        let prefix: Vec<String> = pattern.literal_prefix().map(str::to_owned).collect();
        for segment in prefix {
            node = node.children.entry(segment).or_default();
        }
        node.here.push((pattern, value));
        self.len += 1;
    }

    /// Removes the entry of `pattern` with `value`; whether there was one.
    pub(crate) fn remove(&mut self, pattern: &Pattern, value: &T) -> bool {
        let prefix: Vec<&str> = pattern.literal_prefix().collect();
        let removed = remove_from(&mut self.root, &prefix, pattern, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// The values of every pattern `name` matches.
    pub(crate) fn matching<'a>(&'a self, name: &str) -> Vec<&'a T> {
        let parts: Vec<&str> = name.split('/').collect();
        let mut found = Vec::new();
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            for (pattern, value) in &node.here {
                // The literal prefix matched on the way down; the rest is
                // checked against the rest of the name.
                let rest = &pattern.segments[depth..];
                if matches_from(rest, &parts[depth..]) {
                    found.push(value);
                }
            }
            match parts.get(depth).and_then(|part| node.children.get(*part)) {
                Some(child) => {
                    node = child;
                    depth += 1;
                }
                None => return found,
            }
        }
    }

    /// How many patterns are filed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

fn remove_from<T: PartialEq>(
    node: &mut Node<T>,
    prefix: &[&str],
    pattern: &Pattern,
    value: &T,
) -> bool {
    let Some((first, rest)) = prefix.split_first() else {
        let before = node.here.len();
        if let Some(at) = node
            .here
            .iter()
            .position(|(p, v)| p == pattern && v == value)
        {
            node.here.swap_remove(at);
        }
        return node.here.len() < before;
    };
    let Some(child) = node.children.get_mut(*first) else {
        return false;
    };
    let removed = remove_from(child, rest, pattern, value);
    if child.here.is_empty() && child.children.is_empty() {
        node.children.remove(*first);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(name)
    }

    #[test]
    fn one_star_is_one_segment() {
        assert!(matches("events/*", "events/a"));
        assert!(!matches("events/*", "events"));
        assert!(!matches("events/*", "events/a/b"));
        assert!(matches("*/audit", "t1/audit"));
        assert!(!matches("*/audit", "audit"));
    }

    #[test]
    fn two_stars_are_any_number_of_segments() {
        assert!(matches("events/**", "events/a"));
        assert!(matches("events/**", "events/a/b/c"));
        assert!(matches("events/**", "events"));
        assert!(matches("**", "anything/at/all"));
        assert!(matches("t/**/audit", "t/audit"));
        assert!(matches("t/**/audit", "t/x/y/audit"));
        assert!(!matches("t/**/audit", "t/x/y/audit/more"));
        assert!(matches("**/b/**/d", "a/b/c/d"));
    }

    #[test]
    fn other_segments_are_literal() {
        assert!(matches("events/a-*", "events/a-*"));
        assert!(!matches("events/a-*", "events/a-1"));
        assert!(!matches("events/a", "events/ab"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "/events/*", "events//a", "events/"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Pattern::parse(&"a".repeat(1025)).is_err());
    }

    #[test]
    fn many_double_stars_stay_cheap() {
        // Without the memo this is exponential in the number of `**`.
        let text = (0..40).map(|_| "**/x").collect::<Vec<_>>().join("/");
        let pattern = Pattern::parse(&text).unwrap();
        let name = vec!["x"; 39].join("/") + "/y";
        assert!(!pattern.matches(&name));
    }

    #[test]
    fn the_index_finds_what_a_scan_finds() {
        let patterns = [
            "events/*",
            "events/**",
            "**",
            "*/audit",
            "tenants/a/**",
            "tenants/*/audit",
            "tenants/a/audit",
            "other",
        ];
        let mut index = PatternIndex::default();
        for (i, p) in patterns.iter().enumerate() {
            index.insert(Pattern::parse(p).unwrap(), i);
        }
        assert_eq!(index.len(), patterns.len());
        let names = [
            "events/a",
            "events/a/b",
            "events",
            "tenants/a/audit",
            "tenants/b/audit",
            "x/audit",
            "other",
            "nothing/here",
        ];
        for name in names {
            let mut found: Vec<usize> = index.matching(name).into_iter().copied().collect();
            found.sort_unstable();
            let scanned: Vec<usize> = (0..patterns.len())
                .filter(|&i| matches(patterns[i], name))
                .collect();
            assert_eq!(found, scanned, "{name}");
        }
    }

    #[test]
    fn a_name_under_no_prefix_looks_at_no_pattern() {
        let mut index = PatternIndex::default();
        for i in 0..1000 {
            index.insert(Pattern::parse(&format!("tenant-{i}/**")).unwrap(), i);
        }
        assert_eq!(index.root.here.len(), 0);
        assert!(index.matching("elsewhere/x").is_empty());
        assert_eq!(index.matching("tenant-7/x"), vec![&7]);
    }

    #[test]
    fn removed_patterns_stop_matching() {
        let mut index = PatternIndex::default();
        let p = Pattern::parse("events/*").unwrap();
        index.insert(p.clone(), "a");
        index.insert(p.clone(), "b");
        assert!(index.remove(&p, &"a"));
        assert!(!index.remove(&p, &"a"));
        assert_eq!(index.matching("events/x"), vec![&"b"]);
        assert!(index.remove(&p, &"b"));
        assert!(index.root.children.is_empty());
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn every_match_starts_with_the_literal_prefix() {
        for (pattern, prefix) in [
            ("a/b/*", "a/b/"),
            ("a/**", "a"),
            ("**", ""),
            ("*/x", ""),
            ("a/b", "a/b"),
            ("a/*/c", "a/"),
        ] {
            let parsed = Pattern::parse(pattern).unwrap();
            assert_eq!(parsed.name_prefix(), prefix, "{pattern}");
        }
        let pattern = Pattern::parse("a/**").unwrap();
        for name in ["a", "a/x", "a/x/y"] {
            assert!(pattern.matches(name) && name.starts_with(&pattern.name_prefix()));
        }
    }
}
