//! Bulk lists: one prefix per line, `#` comments and blank lines, as in
//! `FireHOL`'s `.netset` and `.ipset` files; `ipset save` lines
//! (`add SET 198.18.0.0/24`) are read too. All or nothing: the first bad
//! line fails the whole list, naming its number.

use std::collections::BTreeSet;

use super::prefix::{Prefix, PrefixError};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {source}")]
pub struct BulkError {
    pub line: usize,
    #[source]
    pub source: PrefixError,
}

/// The distinct prefixes of a list, in file order.
pub fn parse(text: &str) -> Result<Vec<Prefix>, BulkError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let mut words = content.split_whitespace();
        let token = match words.next() {
            // `ipset save` output: `create` lines describe the set.
            Some("create") | None => continue,
            Some("add") => words.nth(1).unwrap_or(""),
            Some(word) => word,
        };
        let prefix: Prefix = token.parse().map_err(|source| BulkError {
            line: index + 1,
            source,
        })?;
        if seen.insert(prefix) {
            out.push(prefix);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_netset_and_ipset_save() {
        let text = "# FireHOL style\n198.18.0.0/24\n\n198.18.1.7 # one host\n2001:2::/48\n\
                    create bad hash:net\nadd bad 198.19.0.0/16\n198.18.0.0/24\n";
        let got: Vec<String> = parse(text)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "198.18.0.0/24",
                "198.18.1.7/32",
                "2001:2::/48",
                "198.19.0.0/16"
            ]
        );
    }

    #[test]
    fn names_the_bad_line() {
        let err = parse("198.18.0.0/24\n# ok\nnot-an-ip\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(
            err.to_string().starts_with("line 3: \"not-an-ip\""),
            "{err}"
        );
    }
}
