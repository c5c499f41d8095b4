//! The lists a prefix can be on. Named by `allow`, `block` and `auto` on
//! the wire and on disk alike.

use serde::{Deserialize, Serialize};

/// The two lists. The allowlist wins over the blocklist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum List {
    Allow,
    Block,
    /// Sources the rate limiter blocked for staying over their limit. They
    /// live in the limiter's own map, not in the rule maps.
    Auto,
}

impl List {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Block => "block",
            List::Auto => "auto",
        }
    }
}

impl Serialize for List {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than a `String`: a listing reads a million of
        // them, and a `&str` needs no allocation.
        struct Name;

        impl serde::de::Visitor<'_> for Name {
            type Value = List;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list name")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<List, E> {
                match name {
                    "allow" => Ok(List::Allow),
                    "block" => Ok(List::Block),
                    "auto" => Ok(List::Auto),
                    other => Err(E::custom(format!(
                        "unknown list {other:?}; expected \"allow\", \"block\" or \"auto\""
                    ))),
                }
            }
        }

        d.deserialize_str(Name)
    }
}
