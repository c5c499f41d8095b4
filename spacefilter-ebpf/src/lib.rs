//! Present so that the userspace crate can name this one as a build
//! dependency; the program itself is the `spacefilter` binary.
#![no_std]
