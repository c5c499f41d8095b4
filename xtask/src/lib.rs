//! What the project tasks share with the tests: the Debian package
//! ([`package`]), which `cargo xtask package` builds from the release
//! binary and the tests from theirs.

pub mod package;
