//! Bulk lists: one prefix per line, `#` comments and blank lines, as in
//! `FireHOL`'s `.netset` and `.ipset` files; `ipset save` lines
//! (`add SET 198.18.0.0/24`, with `timeout`, `comment`, `packets` and
//! `bytes` options, which do not change what is listed) are read too. All
//! or nothing: the first bad line fails the whole list, naming its number;
//! anything else after a prefix (a second prefix, ipset's `nomatch`, which
//! would turn the entry into an exception) is a bad line.

use std::collections::BTreeSet;

use super::prefix::{Prefix, PrefixError};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {problem}")]
pub struct BulkError {
    pub line: usize,
    #[source]
    pub problem: BulkProblem,
}

/// What is wrong with a line of a bulk list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BulkProblem {
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    #[error(
        "{found:?} after the prefix: a list takes one prefix a line (and ipset `add` lines only the options timeout, comment, packets and bytes)"
    )]
    Extra { found: String },
}

/// The ipset options of an `add` line that take a value and do not change
/// what is listed.
const IPSET_OPTIONS: [&str; 4] = ["timeout", "comment", "packets", "bytes"];

/// The distinct prefixes of a list, in file order.
pub fn parse(text: &str) -> Result<Vec<Prefix>, BulkError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let line = index + 1;
        let mut words = content.split_whitespace();
        let (token, ipset) = match words.next() {
            // `ipset save` output: `create` lines describe the set.
            Some("create") | None => continue,
            Some("add") => (words.nth(1).unwrap_or(""), true),
            Some(word) => (word, false),
        };
        let prefix: Prefix = token.parse().map_err(|source: PrefixError| BulkError {
            line,
            problem: source.into(),
        })?;
        if let Some(found) = extra(&mut words, ipset) {
            return Err(BulkError {
                line,
                problem: BulkProblem::Extra { found },
            });
        }
        if seen.insert(prefix) {
            out.push(prefix);
        }
    }
    Ok(out)
}

/// The first word after a prefix that a list does not take, if any:
/// every word on a plain line; on an ipset `add` line, any but the
/// options that leave the entry as it is, each with its value (a comment
/// may be quoted over several words).
fn extra<'a>(words: &mut impl Iterator<Item = &'a str>, ipset: bool) -> Option<String> {
    while let Some(word) = words.next() {
        if !ipset || !IPSET_OPTIONS.contains(&word) {
            return Some(word.to_owned());
        }
        let value = words.next()?;
        if word == "comment" && value.starts_with('"') && !(value.len() > 1 && value.ends_with('"'))
        {
            // The rest of a quoted comment.
            words.find(|w| w.ends_with('"'))?;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_netset_and_ipset_save() {
        let text = "# FireHOL style\n198.18.0.0/24\n\n198.18.1.7 # one host\n2001:2::/48\n\
                    create bad hash:net\nadd bad 198.19.0.0/16\n198.18.0.0/24\n\
                    add bad 198.20.0.0/16 timeout 300 comment \"seen twice\" packets 4 bytes 400\n";
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
                "198.19.0.0/16",
                "198.20.0.0/16"
            ]
        );
    }

    #[test]
    fn refuses_anything_after_the_prefix() {
        for (text, found) in [
            ("198.18.0.0/24 198.18.1.0/24\n", "198.18.1.0/24"),
            ("198.18.0.1, 198.18.0.2\n", "198.18.0.1,"),
            ("add bad 198.19.0.0/16 nomatch\n", "nomatch"),
            ("add bad 198.19.0.0/16 timeout 5 skbmark 0x1\n", "skbmark"),
        ] {
            let err = parse(&format!("198.18.9.0/24\n{text}")).unwrap_err();
            assert_eq!(err.line, 2, "{text}");
            let shown = err.to_string();
            assert!(shown.contains(&format!("{found:?}")), "{text}: {shown}");
        }
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
